"""Keep every model call within the window (I8) and account for context size.

    budget = CallBudget(rt.policy, rt.estimator, rt.calibration)
    with budget.active():              # rt.run_config's filter applies the running turn's budget
        await Runner.run(..., run_config=rt.run_config)

Before every model call of a turn (including calls after tool results) the input
is repaired (no dangling tool call or orphan output reaches the provider) and, if
compaction has not caught up, trimmed in memory at turn boundaries to fit.  A
trim never touches storage; the turn asks the summarizer to catch up instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from agents import Agent
from agents.run_config import CallModelData, ModelInputData

from shared.compaction.base import ContextPolicy, Item
from shared.compaction.turns import repair, trim_to_budget
from shared.tokens import TokenEstimator

SAFETY = 0.95  # estimates are estimates: leave a little room


_TOOL_TOKENS: dict[int, int] = {}


def tool_tokens(agent: Agent[Any], estimator: TokenEstimator) -> int:
    """An agent's tool and handoff schemas: sent with each of its calls; counted once per
    agent and process (the instructions, which may be callable, are counted per call)."""
    known = _TOOL_TOKENS.get(id(agent))
    if known is not None:
        return known
    parts: list[str] = []
    for tool in [*agent.tools, *agent.handoffs]:
        name = getattr(tool, "name", None) or getattr(tool, "tool_name", "")
        description = getattr(tool, "description", None) or getattr(tool, "tool_description", "")
        parts.append(f"{name} {description}")
        schema = getattr(tool, "params_json_schema", None) or getattr(
            tool, "input_json_schema", None
        )
        if schema is not None:
            parts.append(json.dumps(schema))
    counted = _TOOL_TOKENS[id(agent)] = estimator.count_text("\n".join(parts)) if parts else 0
    return counted


@dataclass
class CallBudget:
    policy: ContextPolicy
    estimator: TokenEstimator
    calibration: float = 1.0  # measured tokens / estimated tokens, from earlier calls
    overhead: int = 0  # the last call's instructions and tool schemas (its agent's)
    trimmed: bool = False
    calls: int = 0
    largest_input_estimate: int = 0

    @property
    def item_limit(self) -> int:
        """Tokens the input items may use in one call."""
        room = self.policy.input_limit * SAFETY / max(self.calibration, 0.5) - self.overhead
        return max(1, int(room))

    def count(self, items: list[Item]) -> int:
        return self.estimator.count_items(items)

    @contextmanager
    def active(self) -> Iterator[CallBudget]:
        """Make this the budget ``budget_filter`` applies in this task (and the run's tasks)."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def filter(self, data: CallModelData[Any]) -> ModelInputData:
        instructions = data.model_data.instructions or ""
        self.overhead = tool_tokens(data.agent, self.estimator) + (
            self.estimator.count_text(instructions) if instructions else 0
        )
        items = repair(list(data.model_data.input))  # type: ignore[arg-type]
        size = self.count(items)  # one pass over the input when it fits (the usual case)
        if size > self.item_limit:
            items, _ = trim_to_budget(items, self.item_limit, self.count)
            self.trimmed = True
            size = self.count(items)
        self.calls += 1
        self.largest_input_estimate = max(self.largest_input_estimate, size)
        return ModelInputData(input=items, instructions=data.model_data.instructions)  # type: ignore[arg-type]


_ACTIVE: ContextVar[CallBudget] = ContextVar("turnq_call_budget")


def budget_filter(data: CallModelData[Any]) -> ModelInputData:
    """The process's one ``RunConfig.call_model_input_filter``: the running turn's budget.

    One RunConfig per process instead of a copy per turn: building a RunConfig resolves
    type hints, ~6% of a worker's CPU per turn when it was copied for every turn.
    """
    budget = _ACTIVE.get(None)
    return budget.filter(data) if budget is not None else data.model_data


def updated_calibration(old: float, measured: int, estimated: int) -> float:
    """Moving average of what the model measured over what we estimated (bounded 0.5-2)."""
    if measured <= 0 or estimated <= 0:
        return old
    ratio = min(2.0, max(0.5, measured / estimated))
    return 0.8 * old + 0.2 * ratio
