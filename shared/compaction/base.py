"""Context budget and compaction: the types every strategy and summarizer shares.

    policy = ContextPolicy.from_settings(settings)          # per agent: see workers/agent.py
    strategy = get_strategy(policy.strategy)                 # sliding_window | summarize | hybrid
    result = await strategy.compact(snapshot, policy, summarizer)

Compaction changes what the model sees, never the transcript (I9): the model's view
is ``[summary message] + summary_items + items at positions >= mark``.  A strategy
returns a new mark (always the first position of a turn, so a ``function_call`` is
never separated from its ``function_call_output``), the new summary text, and the
``summary_items`` it keeps verbatim (hybrid: tool call/output pairs).  Nothing is
deleted; the caller commits the result with a compare-and-swap on the mark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Item = dict[str, Any]
StrategyName = Literal["sliding_window", "summarize", "hybrid"]


@dataclass(frozen=True)
class ContextPolicy:
    """How big the model's context may get, and how it is brought back down."""

    window_tokens: int = 128_000  # the model's context window
    trigger_tokens: int = 96_000  # compaction is requested above this
    target_tokens: int = 48_000  # compaction brings the view down to about this
    strategy: StrategyName = "summarize"
    window_turns: int = 20  # sliding_window: the last N turns
    reserve_output_tokens: int = 4_000  # kept free in the window for the answer
    summary_max_tokens: int = 4_000  # the summary (plus kept tool items) is capped at this

    def __post_init__(self) -> None:
        if not 0 < self.target_tokens <= self.trigger_tokens <= self.window_tokens:
            raise ValueError(
                "context policy needs 0 < target_tokens <= trigger_tokens <= window_tokens, got "
                f"{self.target_tokens} / {self.trigger_tokens} / {self.window_tokens}"
            )
        if self.reserve_output_tokens >= self.window_tokens:
            raise ValueError("reserve_output_tokens must be smaller than window_tokens")
        if self.window_turns < 1:
            raise ValueError("window_turns must be at least 1")

    @property
    def input_limit(self) -> int:
        """Largest input a model call may be sent (I8)."""
        return self.window_tokens - self.reserve_output_tokens


@dataclass(frozen=True)
class ViewItem:
    position: int
    item: Item
    tokens: int


@dataclass(frozen=True)
class Snapshot:
    """The model's current view of a session, read at a turn boundary."""

    session_id: str
    mark: int
    summary: str | None
    summary_items: list[Item]
    items: list[ViewItem]  # positions >= mark, ascending, whole turns only
    summary_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.summary_tokens + sum(i.tokens for i in self.items)


@dataclass(frozen=True)
class CompactionResult:
    new_mark: int
    summary: str | None
    summary_items: list[Item] = field(default_factory=list)
    evicted: list[ViewItem] = field(default_factory=list)


class SummaryError(Exception):
    """The summarizer failed or produced nothing usable; nothing may be committed."""


class Summarizer(Protocol):
    """Fold newly evicted items into the previous summary (incremental)."""

    async def __call__(
        self, previous: str | None, evicted: Sequence[Item], *, max_tokens: int
    ) -> str: ...


class CompactionStrategy(Protocol):
    name: str

    async def compact(
        self, snapshot: Snapshot, policy: ContextPolicy, summarizer: Summarizer
    ) -> CompactionResult | None:
        """None when there is nothing to do (already within target)."""
        ...


def _tokens(value: float, window: int) -> int:
    return int(value * window) if value <= 1 else int(value)


def policy_from_settings(settings: Any, overrides: dict[str, Any] | None = None) -> ContextPolicy:
    """The deployment's policy (Settings), with an agent's own overrides on top."""
    window = int(settings.context_window_tokens)
    fields: dict[str, Any] = {
        "window_tokens": window,
        "trigger_tokens": _tokens(settings.compact_trigger, window),
        "target_tokens": _tokens(settings.compact_target, window),
        "strategy": settings.compaction_strategy,
        "window_turns": settings.window_turns,
        "reserve_output_tokens": min(settings.reserve_output_tokens, window // 4),
        "summary_max_tokens": settings.summary_max_tokens,
    }
    fields.update(overrides or {})
    return ContextPolicy(**fields)
