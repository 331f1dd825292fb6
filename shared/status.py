"""Turn statuses, the transitions between them, and why a turn failed: the one table.

    queued ──claim──▶ running ──succeed───────────────▶ succeeded
      │                 ├──fail (error_code)──────────▶ failed
      │                 ├──stop (a cancel request)────▶ cancelled
      │                 ├──pause (tool needs approval)▶ waiting ──resume──▶ queued
      │                 ├──takeover (holder vanished)─▶ running, under a new fence
      │                 └──give_up (vanished too often)▶ failed (worker_lost)
      └──cancel─────────▶ cancelled          waiting ──cancel──▶ cancelled

Every status change in the database is one guarded statement in ``shared/sql/``:
``UPDATE turns SET status = {{to:claim}} ... WHERE ... status IN {{from:claim}}``.
``shared.sql.render`` fills those markers from ``TRANSITIONS`` below, and
``tests/unit/test_state_machine.py`` reads the rendered SQL back and checks every
status-changing statement against this table, so the two cannot drift.  A guarded
statement that matches no row lost a race (the turn moved meanwhile) and says so;
it never overwrites.
"""

from __future__ import annotations

from enum import StrEnum


class TurnStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"  # paused for a human decision (tool approval); holds no lock
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({TurnStatus.SUCCEEDED, TurnStatus.FAILED, TurnStatus.CANCELLED})
# Not finished: the session's later turns wait behind these (I2, FIFO).
OPEN = frozenset({TurnStatus.QUEUED, TurnStatus.RUNNING, TurnStatus.WAITING})
# Needs a worker: what the reaper looks after and a drain claims.
RUNNABLE = frozenset({TurnStatus.QUEUED, TurnStatus.RUNNING})

GROUPS: dict[str, frozenset[TurnStatus]] = {
    "terminal": TERMINAL,
    "open": OPEN,
    "runnable": RUNNABLE,
}


class Move(StrEnum):
    """A named transition; each is one guarded statement in ``shared/sql/``."""

    CLAIM = "claim"
    TAKEOVER = "takeover"
    SUCCEED = "succeed"
    FAIL = "fail"
    GIVE_UP = "give_up"
    STOP = "stop"
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"


_Q, _R, _W = TurnStatus.QUEUED, TurnStatus.RUNNING, TurnStatus.WAITING

TRANSITIONS: dict[Move, tuple[frozenset[TurnStatus], TurnStatus]] = {
    Move.CLAIM: (frozenset({_Q}), _R),
    # The previous holder's execution never ended (crash, OOM, kill, or a pause past
    # the lock TTL): a new holder runs it again under a new fence.
    Move.TAKEOVER: (frozenset({_R}), _R),
    Move.SUCCEED: (frozenset({_R}), TurnStatus.SUCCEEDED),
    Move.FAIL: (frozenset({_R}), TurnStatus.FAILED),
    Move.GIVE_UP: (frozenset({_R}), TurnStatus.FAILED),
    Move.STOP: (frozenset({_R}), TurnStatus.CANCELLED),
    Move.PAUSE: (frozenset({_R}), _W),
    Move.RESUME: (frozenset({_W}), _Q),
    Move.CANCEL: (frozenset({_Q, _W}), TurnStatus.CANCELLED),
}


def can_transition(old: TurnStatus, new: TurnStatus) -> bool:
    return any(old in sources and new == target for sources, target in TRANSITIONS.values())


def sources_of(move: Move) -> frozenset[TurnStatus]:
    return TRANSITIONS[move][0]


def target_of(move: Move) -> TurnStatus:
    return TRANSITIONS[move][1]


class ErrorCode(StrEnum):
    """Why a turn failed: a closed set clients branch on (``turns.error_code``)."""

    MODEL_ERROR = "model_error"
    MODEL_UNAVAILABLE = "model_unavailable"
    TIMEOUT = "timeout"
    GUARDRAIL = "guardrail"
    MAX_TURNS = "max_turns"
    AGENT_ERROR = "agent_error"
    WORKER_LOST = "worker_lost"
    STATE_UNREADABLE = "state_unreadable"


ERROR_MEANINGS: dict[ErrorCode, str] = {
    ErrorCode.MODEL_ERROR: "the model refused the request (a permanent 4xx) or its answer "
    "could not be used; not retried",
    ErrorCode.MODEL_UNAVAILABLE: "the model kept failing transiently (429, 5xx, timeouts, "
    "broken responses) past the retries",
    ErrorCode.TIMEOUT: "the turn did not finish within TURNQ_TURN_TIMEOUT_S",
    ErrorCode.GUARDRAIL: "an input, output or tool guardrail tripped",
    ErrorCode.MAX_TURNS: "the agent made more model calls than TURNQ_MAX_TURNS allows",
    ErrorCode.AGENT_ERROR: "the agent's own code (a tool, a hook, instructions, output "
    "parsing) raised",
    ErrorCode.WORKER_LOST: "the worker running the turn vanished (crash, OOM, kill) "
    "TURNQ_MAX_ATTEMPTS times",
    ErrorCode.STATE_UNREADABLE: "a paused turn's saved run state could not be loaded when "
    "it resumed (its agent renamed or gone, another Agents SDK version, a damaged row)",
}
