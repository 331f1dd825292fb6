"""Double texting: what happens when a message arrives while its session is busy.

enqueue   (default) run after the turns already accepted
reject    refuse with SessionBusy naming the turn that is queued or running
interrupt cancel earlier pending turns; the running one stops at its next safe point
          (between model calls or tool calls), keeps its finished items with dangling
          tool calls repaired, and ends ``cancelled``; then the new turn runs
rollback  like interrupt, but the running turn writes nothing to the session's history
"""

from __future__ import annotations

from enum import StrEnum

from shared.errors import InvalidInput


class Multitask(StrEnum):
    ENQUEUE = "enqueue"
    REJECT = "reject"
    INTERRUPT = "interrupt"
    ROLLBACK = "rollback"


class CancelMode(StrEnum):
    INTERRUPT = "interrupt"  # keep what the turn finished
    ROLLBACK = "rollback"  # keep nothing


def check_multitask(value: object) -> Multitask:
    try:
        return Multitask(value if isinstance(value, str) else "")
    except ValueError:
        choices = ", ".join(m.value for m in Multitask)
        raise InvalidInput("multitask_strategy", f"must be one of {choices}") from None


def check_cancel_mode(value: object) -> CancelMode:
    try:
        return CancelMode(value if isinstance(value, str) else "")
    except ValueError:
        choices = ", ".join(m.value for m in CancelMode)
        raise InvalidInput("mode", f"must be one of {choices}") from None
