"""Turn statuses and the transitions between them.

The state machine lives here; storage code only stores what these functions allow.

    queued ──▶ running ──▶ succeeded
       │          │  ╲───▶ failed
       │          ╰───────▶ queued   (never: a running turn that is retried stays running
       │                              until the next attempt takes it; attempts counts tries)
       ╰──▶ cancelled / failed       (cancelled before it ran; failed by validation or poison)
"""

from __future__ import annotations

from enum import StrEnum


class TurnStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({TurnStatus.SUCCEEDED, TurnStatus.FAILED, TurnStatus.CANCELLED})
PENDING = frozenset({TurnStatus.QUEUED, TurnStatus.RUNNING})

_ALLOWED: dict[TurnStatus, frozenset[TurnStatus]] = {
    TurnStatus.QUEUED: frozenset({TurnStatus.RUNNING, TurnStatus.CANCELLED, TurnStatus.FAILED}),
    # running -> running: a new attempt after a crash takes the turn over under a new fence.
    TurnStatus.RUNNING: frozenset(
        {TurnStatus.RUNNING, TurnStatus.SUCCEEDED, TurnStatus.FAILED, TurnStatus.CANCELLED}
    ),
    TurnStatus.SUCCEEDED: frozenset(),
    TurnStatus.FAILED: frozenset(),
    TurnStatus.CANCELLED: frozenset(),
}


def can_transition(old: TurnStatus, new: TurnStatus) -> bool:
    return new in _ALLOWED[old]


def sources_of(new: TurnStatus) -> list[str]:
    """Statuses a turn may be in for a move to ``new`` (used in guarded UPDATEs)."""
    return sorted(s.value for s, targets in _ALLOWED.items() if new in targets)
