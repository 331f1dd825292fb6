"""What every run of a turn gets as its run context: whose request it serves.

    @function_tool
    def my_orders(ctx: RunContextWrapper[TurnContext]) -> str:
        return orders_of(ctx.context.user_id)        # never another user's

A deployment may build its own context from it (``TURNQ_CONTEXT_FACTORY``, see
``shared.registry``), e.g. load the customer record; the factory gets this object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
        to the systems a tool calls (payment APIs take one)."""
        return f"{self.turn_id}:{call_id}"
