"""The demo assistant: one weather tool whose answers are fixed per city.

    from shared.demo_agent import build_agent
    agent = build_agent()          # no model set: the worker passes it via RunConfig(model=...)

Answers are deterministic (a table for well-known cities, a hash of the name otherwise)
so tests can assert on them and the offline brain can compare two cities' readings.
Loaded by import path (``Settings.agent``) in every worker, so it stays cheap.
"""

from __future__ import annotations

import hashlib

from agents import Agent, function_tool

INSTRUCTIONS = (
    "You are a concise assistant. Use get_weather for weather questions and answer from "
    "its result. Remember facts the user tells you."
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


def build_agent() -> Agent[None]:
    """A fresh agent per call, so callers may mutate it (hooks, tools) without sharing state."""
    return Agent(name="Assistant", instructions=INSTRUCTIONS, tools=[get_weather])
