"""The compaction strategies: sliding window, summarize, hybrid.

    strategy = get_strategy(policy.strategy)
    result = await strategy.compact(snapshot, policy, summarizer)   # None: nothing to do
    # commit: mark = result.new_mark, summary = result.summary, summary_items = ...

Every new mark is the position of a turn start in the snapshot that splits no tool
pair, and at least the last turn stays in view, so the model's view
``[summary] + summary_items + items[mark:]`` keeps every call with its output.  The
strategies never mutate the snapshot; summaries come from the summarizer passed in
(wrap it with ``validated`` so a failed one raises ``SummaryError`` instead).

* ``sliding_window``: the last ``window_turns`` turns (fewer if they exceed the target),
  no summary; cheapest, forgets everything before the window.
* ``summarize``: evicts the oldest turns until the rest plus the summary budget fit
  ``target_tokens``, and folds them into the running summary.
* ``hybrid``: like summarize, but tool call/output pairs from evicted turns stay
  verbatim (ids stripped) in ``summary_items``, up to half the summary budget, so the
  model can still compare tool results it fetched long ago.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.compaction.base import (
    CompactionResult,
    CompactionStrategy,
    ContextPolicy,
    Item,
    Snapshot,
    Summarizer,
    ViewItem,
)
from shared.compaction.turns import safe_cuts
from shared.tokens import HeuristicEstimator, TokenEstimator

__all__ = ["STRATEGIES", "Hybrid", "SlidingWindow", "Summarize", "get_strategy"]


def _suffix_tokens(items: Sequence[ViewItem]) -> list[int]:
    """suffix[i] = tokens of items[i:] (suffix[len] = 0)."""
    suffix = [0] * (len(items) + 1)
    for i in range(len(items) - 1, -1, -1):
        suffix[i] = suffix[i + 1] + items[i].tokens
    return suffix


def _cuts(snapshot: Snapshot) -> list[int]:
    return safe_cuts([v.item for v in snapshot.items])


def _summary_cut(snapshot: Snapshot, reserve: int, target: int) -> int | None:
    """The fewest whole turns to evict so the rest plus ``reserve`` fit ``target``.

    Always keeps the last turn; None when there is no turn to evict.
    """
    cuts = [c for c in _cuts(snapshot) if c > 0]
    if not cuts:
        return None
    suffix = _suffix_tokens(snapshot.items)
    for cut in cuts:
        if suffix[cut] + reserve <= target:
            return cut
    return cuts[-1]


class _Strategy:
    """Counts the tokens of items the snapshot has no count for (kept summary items)."""

    name: str

    def __init__(self, estimator: TokenEstimator | None = None) -> None:
        self.estimator = estimator or HeuristicEstimator()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    async def compact(
        self, snapshot: Snapshot, policy: ContextPolicy, summarizer: Summarizer
    ) -> CompactionResult | None:
        raise NotImplementedError


class SlidingWindow(_Strategy):
    name = "sliding_window"

    async def compact(
        self, snapshot: Snapshot, policy: ContextPolicy, summarizer: Summarizer
    ) -> CompactionResult | None:
        cuts = _cuts(snapshot)
        if not cuts:
            return None
        suffix = _suffix_tokens(snapshot.items)
        turns = min(policy.window_turns, len(cuts))
        while turns > 1 and suffix[cuts[-turns]] > policy.target_tokens:
            turns -= 1
        cut = cuts[-turns]
        if cut == 0 and snapshot.summary is None and not snapshot.summary_items:
            return None
        return CompactionResult(
            new_mark=snapshot.items[cut].position,
            summary=None,
            summary_items=[],
            evicted=list(snapshot.items[:cut]),
        )


class Summarize(_Strategy):
    name = "summarize"

    async def compact(
        self, snapshot: Snapshot, policy: ContextPolicy, summarizer: Summarizer
    ) -> CompactionResult | None:
        if snapshot.tokens <= policy.target_tokens:
            return None
        kept_items = list(snapshot.summary_items)
        reserve = policy.summary_max_tokens + (
            self.estimator.count_items(kept_items) if kept_items else 0
        )
        cut = _summary_cut(snapshot, reserve, policy.target_tokens)
        if cut is None:
            return None
        evicted = list(snapshot.items[:cut])
        summary = await summarizer(
            snapshot.summary, [v.item for v in evicted], max_tokens=policy.summary_max_tokens
        )
        return CompactionResult(
            new_mark=snapshot.items[cut].position,
            summary=summary,
            summary_items=kept_items,
            evicted=evicted,
        )


Pair = tuple[Item, Item]


def _split_pairs(items: Sequence[Item]) -> tuple[list[tuple[int, int, Pair]], list[int]]:
    """Complete call/output pairs as (call index, output index, pair), and the other indexes.

    A pair's call loses its ``id`` (the reasoning item it may link to is not kept).
    """
    calls: dict[str, int] = {}
    pairs: list[tuple[int, int, Pair]] = []
    for i, item in enumerate(items):
        call_id = item.get("call_id")
        if not isinstance(call_id, str):
            continue
        if item.get("type") == "function_call" and call_id not in calls:
            calls[call_id] = i
        elif item.get("type") == "function_call_output" and call_id in calls:
            start = calls.pop(call_id)
            call = {k: v for k, v in items[start].items() if k != "id"}
            pairs.append((start, i, (call, dict(item))))
    pairs.sort(key=lambda p: p[0])
    used = {i for start, end, _ in pairs for i in (start, end)}
    return pairs, [i for i in range(len(items)) if i not in used]


class Hybrid(_Strategy):
    name = "hybrid"

    def _keep(self, pairs: Sequence[Pair], budget: int) -> tuple[list[Pair], list[Pair], int]:
        """(kept, dropped, tokens): the newest pairs that fit ``budget``, oldest dropped first.

        A pair too big for the budget on its own never blocks older ones.
        """
        costs = [self.estimator.count_items(list(p)) for p in pairs]
        keep: set[int] = set()
        used = 0
        for i in range(len(pairs) - 1, -1, -1):
            if costs[i] > budget:
                continue
            if used + costs[i] > budget:
                break
            keep.add(i)
            used += costs[i]
        kept = [p for i, p in enumerate(pairs) if i in keep]
        dropped = [p for i, p in enumerate(pairs) if i not in keep]
        return kept, dropped, used

    async def compact(
        self, snapshot: Snapshot, policy: ContextPolicy, summarizer: Summarizer
    ) -> CompactionResult | None:
        if snapshot.tokens <= policy.target_tokens:
            return None
        cut = _summary_cut(snapshot, policy.summary_max_tokens, policy.target_tokens)
        if cut is None:
            return None
        evicted = list(snapshot.items[:cut])
        evicted_items = [v.item for v in evicted]
        old_pairs, old_rest = _split_pairs(snapshot.summary_items)
        new_pairs, new_rest = _split_pairs(evicted_items)
        kept, _, pair_tokens = self._keep(
            [p for *_, p in old_pairs] + [p for *_, p in new_pairs], policy.summary_max_tokens // 2
        )
        # Whatever is not kept verbatim goes into the text summary, oldest first.
        kept_ids = {id(p) for p in kept}
        old_text = set(old_rest) | {
            i for start, end, p in old_pairs if id(p) not in kept_ids for i in (start, end)
        }
        new_text = set(new_rest) | {
            i for start, end, p in new_pairs if id(p) not in kept_ids for i in (start, end)
        }
        to_text = [item for i, item in enumerate(snapshot.summary_items) if i in old_text]
        to_text += [item for i, item in enumerate(evicted_items) if i in new_text]
        summary = snapshot.summary
        if to_text:
            summary = await summarizer(
                snapshot.summary, to_text, max_tokens=policy.summary_max_tokens - pair_tokens
            )
        return CompactionResult(
            new_mark=snapshot.items[cut].position,
            summary=summary,
            summary_items=[item for pair in kept for item in pair],
            evicted=evicted,
        )


STRATEGIES: dict[str, type[_Strategy]] = {
    "sliding_window": SlidingWindow,
    "summarize": Summarize,
    "hybrid": Hybrid,
}


def get_strategy(name: str, estimator: TokenEstimator | None = None) -> CompactionStrategy:
    """The strategy called ``name`` (``ContextPolicy.strategy``), counting with ``estimator``."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown compaction strategy {name!r}: use {', '.join(STRATEGIES)}"
        ) from None
    return cls(estimator)
