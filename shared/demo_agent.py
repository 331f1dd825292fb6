"""The demo support desk: an assistant with a weather tool that hands billing questions
over to a Billing agent, whose tools read whose request they serve from the run context.

    from shared.demo_agent import build_agent
    agent = build_agent()          # no model set: the worker's provider supplies one

Answers are deterministic (a table for well-known cities, a hash of the name otherwise;
plans and invoices derived from the user id) so tests can assert on them and the offline
brain can compare two cities' readings.  Loaded by import path (``Settings.agent``) in
every worker and gateway, so it stays cheap.  After the handoff, the session's next turns
start at Billing (its active agent) until it hands back.
"""

from __future__ import annotations

import hashlib
from typing import Any

from agents import Agent, RunContextWrapper, function_tool

from shared.run_context import TurnContext

INSTRUCTIONS = (
    "You are a concise assistant. Use get_weather for weather questions and answer from "
    "its result. Remember facts the user tells you. Hand billing questions to Billing."
)

_KNOWN: dict[str, tuple[int, str]] = {
    "austin": (31, "sunny"),
    "seattle": (14, "light rain"),
    "paris": (21, "sunny"),
    "london": (12, "overcast"),
    "tokyo": (24, "humid"),
    "new york": (18, "partly cloudy"),
    "berlin": (15, "cloudy"),
    "sydney": (22, "clear"),
}
_CONDITIONS = ("sunny", "cloudy", "light rain", "overcast", "windy", "clear", "foggy", "humid")


def weather_report(city: str) -> str:
    """The tool's answer as plain text ("Austin: 31°C, sunny"); separate so tests can call it."""
    name = " ".join(city.split()) or "Nowhere"
    known = _KNOWN.get(name.lower())
    if known is None:
        digest = hashlib.sha256(name.lower().encode()).digest()
        known = (digest[0] % 36 - 5, _CONDITIONS[digest[1] % len(_CONDITIONS)])
    return f"{name}: {known[0]}°C, {known[1]}"


@function_tool
def get_weather(city: str) -> str:
    """Get the current weather for a city.

    Args:
        city: The city name, e.g. "Austin".
    """
    return weather_report(city)


_PLANS = ("Free", "Pro", "Team")


def _user_of(ctx: RunContextWrapper[Any]) -> str:
    """The user the turn serves (turnq's run context); a plain script has none."""
    context = ctx.context
    return context.user_id if isinstance(context, TurnContext) else "an unknown user"


def plan_of(user_id: str) -> str:
    """The demo's billing data: derived from the user id, so tests can predict it."""
    digest = hashlib.sha256(user_id.encode()).digest()
    plan = _PLANS[digest[0] % len(_PLANS)]
    return f"{user_id} is on the {plan} plan, renewing on day {digest[1] % 28 + 1} of the month"


@function_tool
def get_plan(ctx: RunContextWrapper[Any]) -> str:
    """The caller's current plan and renewal day (of the user this turn serves)."""
    return plan_of(_user_of(ctx))


@function_tool
def list_invoices(ctx: RunContextWrapper[Any]) -> str:
    """The caller's last invoices."""
    user = _user_of(ctx)
    n = hashlib.sha256(user.encode()).digest()[2] % 3 + 1
    return f"{n} invoice(s) for {user}, all paid; the last one was {9 + 3 * n} EUR"


@function_tool(needs_approval=True)
def request_refund(ctx: RunContextWrapper[Any]) -> str:
    """Refund the caller's last invoice.  A person approves every refund before it runs."""
    user = _user_of(ctx)
    n = hashlib.sha256(user.encode()).digest()[2] % 3 + 1
    return f"refund of {9 + 3 * n} EUR issued to {user}"


BILLING_INSTRUCTIONS = (
    "You handle billing: plans, invoices and refunds. Use the tools; they know the customer. "
    "Refunds need a person's approval."
)


def build_agent() -> Agent[Any]:
    """A fresh graph per call, so callers may mutate it (hooks, tools) without sharing state."""
    billing = Agent[Any](
        name="Billing",
        handoff_description="Questions about the customer's plan, invoices and refunds.",
        instructions=BILLING_INSTRUCTIONS,
        tools=[get_plan, list_invoices, request_refund],
    )
    return Agent(
        name="Assistant",
        instructions=INSTRUCTIONS,
        tools=[get_weather],
        handoffs=[billing],
    )
