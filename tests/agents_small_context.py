"""An agent module that overrides the deployment's context policy (TURNQ_CONTEXT)."""

from __future__ import annotations

from typing import Any

from agents import Agent

from tests.agents import EchoModel

TURNQ_CONTEXT = {
    "window_tokens": 8000,
    "trigger_tokens": 6000,
    "target_tokens": 3000,
    "strategy": "hybrid",
}


def build() -> Agent[Any]:
    return Agent(name="small-context", model=EchoModel())
