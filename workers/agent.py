"""Load the user's agent from ``TURNQ_AGENT=package.module:attr``.

``attr`` may be an ``agents.Agent`` or a zero-argument factory returning one.  The
import happens once per worker process (``import agents`` alone costs ~2.6 s).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

from agents import Agent, Handoff, Model

from workers.models import wrapped


class AgentSpecError(ValueError):
    pass


def load_context_overrides(spec: str) -> dict[str, Any]:
    """An agent's own context policy: ``TURNQ_CONTEXT = {"window_tokens": 32000}`` in its module."""
    module = importlib.import_module(spec.partition(":")[0])
    overrides = getattr(module, "TURNQ_CONTEXT", None) or {}
    if not isinstance(overrides, dict):
        raise AgentSpecError(f"TURNQ_CONTEXT in {module.__name__} must be a dict")
    return dict(overrides)


def load_agent(spec: str) -> Agent[Any]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AgentSpecError(f"TURNQ_AGENT must look like 'package.module:attr', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AgentSpecError(f"TURNQ_AGENT: cannot import {module_name!r}: {exc}") from exc
    try:
        target = getattr(module, attr)
    except AttributeError as exc:
        raise AgentSpecError(f"TURNQ_AGENT: {module_name!r} has no attribute {attr!r}") from exc
    agent = target if isinstance(target, Agent) else target() if callable(target) else None
    if not isinstance(agent, Agent):
        raise AgentSpecError(
            f"TURNQ_AGENT: {spec!r} is neither an Agent nor a factory returning one"
        )
    return agent


def agent_graph(entry: Agent[Any]) -> Iterator[Agent[Any]]:
    """Every agent reachable from ``entry`` through handoffs, each once, entry first."""
    seen: set[int] = set()
    todo: list[Agent[Any]] = [entry]
    while todo:
        agent = todo.pop(0)
        if id(agent) in seen:
            continue
        seen.add(id(agent))
        yield agent
        for target in agent.handoffs:
            if isinstance(target, Agent):
                todo.append(target)
            elif isinstance(target, Handoff):
                ref = getattr(target, "_agent_ref", None)  # set by agents.handoff(agent)
                found = ref() if ref is not None else None
                if isinstance(found, Agent):
                    todo.append(found)


def wrap_agent_models(entry: Agent[Any], default_model: str) -> None:
    """Route every model call of the graph through turnq (``workers.models``).

    An agent given a ``Model`` object gets it wrapped in place (the worker owns the
    agents it imported); one with no model gets the deployment's chat model by name,
    which ``RunConfig.model_provider`` resolves -- so a handoff target without a model
    never falls through to the SDK's default OpenAI provider.
    """
    for agent in agent_graph(entry):
        if isinstance(agent.model, Model):
            agent.model = wrapped(agent.model)
        elif not agent.model:
            agent.model = default_model
