"""Typed errors every entry point (Python client, HTTP, CLI) maps to a clear message.

``NotFound`` is deliberately the same for "does not exist" and "belongs to someone
else": a caller can never tell the two apart (I10).
"""

from __future__ import annotations


class TurnqError(Exception):
    """Base class; ``code`` is stable and machine-readable (HTTP maps it to a status)."""

    code = "turnq_error"


class InvalidInput(TurnqError, ValueError):
    code = "invalid_input"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ContentTooLarge(InvalidInput):
    code = "content_too_large"


class NotFound(TurnqError, LookupError):
    code = "not_found"


class SessionNotFound(NotFound):
    code = "session_not_found"

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id!r} not found")


class TurnNotFound(NotFound):
    code = "turn_not_found"

    def __init__(self, turn_id: str) -> None:
        super().__init__(f"turn {turn_id!r} not found")


class IdempotencyConflict(TurnqError):
    code = "idempotency_conflict"

    def __init__(self, key: str, turn_id: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was already used for turn {turn_id} with different content"
        )
        self.key = key
        self.turn_id = turn_id


class Fenced(TurnqError):
    """A worker's write was refused: another worker took the session over (I1)."""

    code = "fenced"


class WaitTimeout(TurnqError, TimeoutError):
    code = "wait_timeout"


class SessionBusy(TurnqError):
    """multitask_strategy="reject" and the session has a turn queued or running."""

    code = "session_busy"

    def __init__(self, turn_id: str, status: str) -> None:
        super().__init__(f"the session is busy: turn {turn_id} is {status}")
        self.turn_id = turn_id
        self.status = status


class TurnNotCancellable(TurnqError):
    code = "turn_not_cancellable"

    def __init__(self, turn_id: str, status: str) -> None:
        super().__init__(f"turn {turn_id} already {status}; it cannot be cancelled")
        self.turn_id = turn_id
        self.status = status


class AgentConflict(TurnqError):
    """A turn named another agent than the one its session was created with."""

    code = "agent_conflict"

    def __init__(self, session_id: str, entry_agent: str, asked: str) -> None:
        super().__init__(
            f"session {session_id!r} belongs to agent {entry_agent!r}; a turn cannot ask for "
            f"{asked!r} (start a new session for another agent)"
        )
        self.entry_agent = entry_agent
        self.asked = asked


class ApprovalNotFound(NotFound):
    """The turn never asked about this tool call (or the turn is not the caller's)."""

    code = "approval_not_found"

    def __init__(self, turn_id: str, call_id: str) -> None:
        super().__init__(f"turn {turn_id!r} has no approval for tool call {call_id!r}")


class ApprovalConflict(TurnqError):
    """The other decision was already recorded for this tool call."""

    code = "approval_conflict"

    def __init__(self, turn_id: str, call_id: str, recorded: str) -> None:
        super().__init__(
            f"tool call {call_id!r} of turn {turn_id} was already {recorded}; a decision is "
            "recorded once"
        )
        self.turn_id = turn_id
        self.call_id = call_id
        self.recorded = recorded


class ApprovalNotPending(TurnqError):
    """The turn no longer waits for this decision (cancelled, expired or finished)."""

    code = "approval_not_pending"

    def __init__(self, turn_id: str, call_id: str, status: str) -> None:
        super().__init__(
            f"turn {turn_id} no longer waits for a decision on tool call {call_id!r} "
            f"(it is {status})"
        )
        self.turn_id = turn_id
        self.call_id = call_id
        self.status = status
