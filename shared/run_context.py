"""What every run of a turn gets as its run context: whose request it serves.

    @function_tool
    def my_orders(ctx: RunContextWrapper[TurnContext]) -> str:
        return orders_of(ctx.context.user_id)        # never another user's

A deployment may build its own context from it (``TURNQ_CONTEXT_FACTORY``, see
``shared.registry``), e.g. load the customer record; the factory gets this object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class TurnContext:
    user_id: str
    session_id: str  # the caller's session id (their key), not turnq's internal id
    turn_id: str
    seq: int
    attempt: int  # executions of this turn started so far (1 on the first)
    entry_agent: str  # the session's entry agent (a registry name)
    active_agent: str  # the agent the turn started at (Agent.name)
    metadata: dict[str, Any] = field(default_factory=dict)  # given at enqueue

    def idempotency_key(self, call_id: str) -> str:
        """A stable key for one tool call, the same on every attempt of this turn: pass it
        to the systems a tool calls (payment APIs take one).  In a tool:
        ``ctx.context.idempotency_key(ctx.tool_call_id)``."""
        return idempotency_key(self.turn_id, call_id)


def idempotency_key(turn_id: str, call_id: str) -> str:
    return f"{turn_id}:{call_id}"


IDEMPOTENT_ATTR = "turnq_idempotent"


def non_idempotent(tool: T) -> T:
    """Mark a tool whose effect must never happen twice (a payment, an email).

        @non_idempotent
        @function_tool
        def refund(ctx: RunContextWrapper[TurnContext], order: str) -> str: ...

    turnq journals the call before it runs; if its worker dies before the outcome is
    recorded, the call is not run again: the model is told the outcome is unknown (or a
    person decides, with ``TURNQ_UNKNOWN_OUTCOME=ask_human``).  Tools that need approval
    are non-idempotent unless marked ``idempotent``; other tools are idempotent.
    """
    setattr(tool, IDEMPOTENT_ATTR, False)
    return tool


def idempotent(tool: T) -> T:
    """Mark a tool safe to run again after a crash (its default unless it needs approval)."""
    setattr(tool, IDEMPOTENT_ATTR, True)
    return tool
