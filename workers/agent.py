"""What a worker does to the deployment's agents (``shared.registry``) before running them.

registry = registry_for(settings.agent)
wrap_agent_models(registry, settings.chat_model)
policy = policy_from_settings(settings, load_context_overrides(settings.agent))
"""

from __future__ import annotations

import importlib
from typing import Any

from agents import Model

from shared.registry import AgentSpecError, Registry
from workers.models import wrapped


def load_context_overrides(spec: str) -> dict[str, Any]:
    """An agent's own context policy: ``TURNQ_CONTEXT = {"window_tokens": 32000}`` in its module."""
    module = importlib.import_module(spec.partition(":")[0])
    overrides = getattr(module, "TURNQ_CONTEXT", None) or {}
    if not isinstance(overrides, dict):
        raise AgentSpecError(f"TURNQ_CONTEXT in {module.__name__} must be a dict")
    return dict(overrides)


def approval_ttls(spec: str, default_s: float) -> tuple[float, dict[str, float]]:
    """The approval TTL: ``TURNQ_APPROVAL_TTL_S`` in the agent's module -- seconds, or a
    mapping of agent names to seconds (the others keep the deployment's)."""
    module = importlib.import_module(spec.partition(":")[0])
    value = getattr(module, "TURNQ_APPROVAL_TTL_S", None)
    if value is None:
        return default_s, {}
    if isinstance(value, int | float) and value > 0:
        return float(value), {}
    if isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, int | float) and v > 0 for k, v in value.items()
    ):
        return default_s, {k: float(v) for k, v in value.items()}
    raise AgentSpecError(
        f"TURNQ_APPROVAL_TTL_S in {module.__name__} must be seconds or {{agent name: seconds}}"
    )


def non_idempotent_tools(spec: str) -> frozenset[str]:
    """Tool names the agent's module lists in ``TURNQ_NON_IDEMPOTENT_TOOLS``."""
    module = importlib.import_module(spec.partition(":")[0])
    names = getattr(module, "TURNQ_NON_IDEMPOTENT_TOOLS", None) or ()
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise AgentSpecError(f"TURNQ_NON_IDEMPOTENT_TOOLS in {module.__name__} must list names")
    return frozenset(names)


def wrap_agent_models(registry: Registry, default_model: str) -> None:
    """Route every model call of every agent through turnq (``workers.models``).

    An agent given a ``Model`` object gets it wrapped in place (the worker owns the
    agents it imported); one with no model gets the deployment's chat model by name,
    which ``RunConfig.model_provider`` resolves -- so a handoff target without a model
    never falls through to the SDK's default OpenAI provider.
    """
    for agent in registry.all_agents():
        if isinstance(agent.model, Model):
            agent.model = wrapped(agent.model)
        elif not agent.model:
            agent.model = default_model
