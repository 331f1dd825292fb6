"""The deployment's agents: ``TURNQ_AGENT`` names one ``Agent``, a factory, or a mapping.

    registry = load_registry("myapp.agents:AGENTS")   # {"triage": triage, "billing": billing}
    registry.default                                   # "triage": the first key
    registry.check("billing")                          # raises InvalidInput if unknown
    agent, fell_back = registry.resolve("triage", "Billing")   # where a session's turn starts

``attr`` may be an ``Agent``, a mapping of names to agents, or a zero-argument callable
returning either.  The first entry is the default unless the module sets
``TURNQ_DEFAULT_AGENT = "name"``.  A session is bound to its *entry* agent (a registry
key) when it is created; its *active* agent is the ``Agent.name`` that answered last,
found again through the entry agent's handoff graph.  The module may also define
``TURNQ_CONTEXT_FACTORY``: a callable building the run context tools see from a
``shared.run_context.TurnContext`` (``TURNQ_CONTEXT_FACTORY=pkg.mod:attr`` also works).

Workers and producers load the same registry (producers to validate names and to
describe the agents); the import happens once per process.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from agents import Agent, FunctionTool, Handoff

from shared.errors import InvalidInput


class AgentSpecError(ValueError):
    pass


def import_attr(spec: str, setting: str = "TURNQ_AGENT") -> tuple[Any, Any]:
    """(module, attribute) for ``package.module:attr``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AgentSpecError(f"{setting} must look like 'package.module:attr', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AgentSpecError(f"{setting}: cannot import {module_name!r}: {exc}") from exc
    try:
        return module, getattr(module, attr)
    except AttributeError as exc:
        raise AgentSpecError(f"{setting}: {module_name!r} has no attribute {attr!r}") from exc


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


def _handoff_name(target: Any) -> str:
    return str(target.name if isinstance(target, Agent) else target.agent_name)


def describe_tool(tool: Any) -> dict[str, Any]:
    needs = getattr(tool, "needs_approval", False)
    return {
        "name": getattr(tool, "name", type(tool).__name__),
        "description": getattr(tool, "description", "") or "",
        "needs_approval": "dynamic" if callable(needs) else bool(needs),
        "kind": "function" if isinstance(tool, FunctionTool) else type(tool).__name__,
    }


@dataclass
class Registry:
    entries: dict[str, Agent[Any]]
    default: str
    context_factory: Callable[[Any], Any] | None = None
    _graphs: dict[str, dict[str, Agent[Any]]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.entries)

    def check(self, name: object) -> str:
        """A known entry agent's name, or InvalidInput naming the known ones."""
        if not isinstance(name, str) or name not in self.entries:
            known = ", ".join(sorted(self.entries))
            raise InvalidInput("agent", f"{name!r} is not an agent of this deployment ({known})")
        return name

    def entry(self, name: str | None) -> Agent[Any]:
        return self.entries[name if name in self.entries else self.default]

    def graph(self, entry_name: str | None) -> dict[str, Agent[Any]]:
        """The entry agent's handoff graph by ``Agent.name``."""
        key = entry_name if entry_name in self.entries else self.default
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._graphs[key] = {}
            for agent in agent_graph(self.entries[key]):
                graph.setdefault(agent.name, agent)
        return graph

    def resolve(self, entry_name: str | None, active_name: str | None) -> tuple[Agent[Any], bool]:
        """The agent a session's next turn starts at: its active agent, found through its
        entry agent's handoff graph; the entry agent itself when the active one is gone
        (the deployment changed).  Returns (agent, whether it fell back)."""
        entry = self.entry(entry_name)
        if not active_name:
            return entry, False
        found = self.graph(entry_name).get(active_name)
        return (found, False) if found is not None else (entry, True)

    def all_agents(self) -> Iterator[Agent[Any]]:
        seen: set[int] = set()
        for entry in self.entries.values():
            for agent in agent_graph(entry):
                if id(agent) not in seen:
                    seen.add(id(agent))
                    yield agent

    def describe(self) -> list[dict[str, Any]]:
        """Every agent of the deployment for a caller's UI: entry agents first."""
        entry_ids = {id(a): name for name, a in self.entries.items()}
        out = []
        for agent in self.all_agents():
            out.append(
                {
                    "name": agent.name,
                    "entry": entry_ids.get(id(agent)),
                    "default": entry_ids.get(id(agent)) == self.default,
                    "description": agent.handoff_description or "",
                    "handoffs": [_handoff_name(h) for h in agent.handoffs],
                    "tools": [describe_tool(t) for t in agent.tools],
                    "output_type": _output_type_name(agent),
                }
            )
        return out


def _output_type_name(agent: Agent[Any]) -> str | None:
    output_type = agent.output_type
    if output_type is None or output_type is str:
        return None
    return getattr(output_type, "__name__", str(output_type))


def _entries(target: Any, spec: str) -> dict[str, Agent[Any]]:
    if callable(target) and not isinstance(target, Agent | Mapping):
        target = target()
    if isinstance(target, Agent):
        return {target.name: target}
    if isinstance(target, Mapping) and target:
        entries: dict[str, Agent[Any]] = {}
        for name, agent in target.items():
            if not isinstance(name, str) or not isinstance(agent, Agent):
                raise AgentSpecError(f"TURNQ_AGENT: {spec!r} maps {name!r} to a non-Agent")
            entries[name] = agent
        return entries
    raise AgentSpecError(
        f"TURNQ_AGENT: {spec!r} is neither an Agent, a mapping of names to agents, "
        "nor a factory returning one"
    )


def load_registry(spec: str, context_factory: str | None = None) -> Registry:
    module, target = import_attr(spec)
    entries = _entries(target, spec)
    default = getattr(module, "TURNQ_DEFAULT_AGENT", None) or next(iter(entries))
    if default not in entries:
        raise AgentSpecError(f"TURNQ_DEFAULT_AGENT {default!r} is not one of {list(entries)}")
    factory = getattr(module, "TURNQ_CONTEXT_FACTORY", None)
    if context_factory:
        factory = import_attr(context_factory, "TURNQ_CONTEXT_FACTORY")[1]
    if factory is not None and not callable(factory):
        raise AgentSpecError("TURNQ_CONTEXT_FACTORY must be callable")
    return Registry(entries, default, factory)


_cache: dict[tuple[str, str | None], Registry] = {}


def registry_for(spec: str, context_factory: str | None = None) -> Registry:
    """The process's registry for this spec (loaded once)."""
    key = (spec, context_factory)
    if key not in _cache:
        _cache[key] = load_registry(spec, context_factory)
    return _cache[key]
