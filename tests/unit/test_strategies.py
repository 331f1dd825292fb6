"""Compaction strategies: turn-boundary marks, whole tool pairs, untouched transcripts."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from agents import RunConfig, Runner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.compaction.base import (
    CompactionResult,
    CompactionStrategy,
    ContextPolicy,
    Item,
    Snapshot,
    Summarizer,
    SummaryError,
    ViewItem,
)
from shared.compaction.model_summarizer import validated
from shared.compaction.strategies import Hybrid, SlidingWindow, Summarize, get_strategy
from shared.compaction.summarizers import ExtractiveSummarizer
from shared.compaction.turns import is_user_message, pairing_problems, repair, trim_to_budget
from shared.demo_agent import build_agent
from shared.models.offline import OfflineModel
from shared.sdk_session import summary_item
from shared.tokens import HeuristicEstimator
from tests.unit.test_compaction_turns import (
    assistant,
    call,
    conversations,
    filler,
    output,
    user,
)

EST = HeuristicEstimator()
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Recorder:
    """A fake summarizer: remembers what it was asked, answers with a fixed small text."""

    def __init__(self) -> None:
        self.calls: list[tuple[str | None, list[Item], int]] = []

    async def __call__(
        self, previous: str | None, evicted: Sequence[Item], *, max_tokens: int
    ) -> str:
        self.calls.append((previous, list(evicted), max_tokens))
        return f"summary #{len(self.calls)}"


def snapshot(
    items: list[Item],
    mark: int = 100,
    summary: str | None = None,
    summary_items: list[Item] | None = None,
) -> Snapshot:
    kept = summary_items or []
    summary_tokens = (EST.count_text(summary) if summary else 0) + EST.count_items(kept)
    return Snapshot(
        session_id="s",
        mark=mark,
        summary=summary,
        summary_items=kept,
        items=[ViewItem(mark + i, item, EST.count_items([item])) for i, item in enumerate(items)],
        summary_tokens=summary_tokens,
    )


def policy(target: int = 1_000, summary_max: int = 200, **kw: Any) -> ContextPolicy:
    return ContextPolicy(
        window_tokens=100_000,
        trigger_tokens=max(target, 2_000),
        target_tokens=target,
        summary_max_tokens=summary_max,
        reserve_output_tokens=1_000,
        **kw,
    )


def run(
    strategy: CompactionStrategy, snap: Snapshot, pol: ContextPolicy, summarizer: Summarizer
) -> CompactionResult | None:
    return asyncio.run(strategy.compact(snap, pol, summarizer))


def view(result: CompactionResult, snap: Snapshot) -> list[Item]:
    head = [summary_item(result.summary)] if result.summary else []
    tail = [v.item for v in snap.items if v.position >= result.new_mark]
    return [*head, *result.summary_items, *tail]  # type: ignore[list-item]


def turn(i: int, size: int = 400, calls: int = 0) -> list[Item]:
    items = [user(f"turn {i} " + filler(size, i))]
    for c in range(calls):
        items += [call(f"c{i}_{c}", args=f'{{"city": "City{i}_{c}"}}'), output(f"c{i}_{c}")]
    return [*items, assistant(f"answer {i}", f"msg_{i}")]


def flat(turns: list[list[Item]]) -> list[Item]:
    return [x for t in turns for x in t]


# --- sliding window -----------------------------------------------------------------------


def test_sliding_window_keeps_the_last_n_turns_and_drops_the_summary() -> None:
    turns = [turn(i, size=20) for i in range(8)]
    snap = snapshot(flat(turns), summary="old", summary_items=[call("k"), output("k")])
    result = run(SlidingWindow(), snap, policy(window_turns=3), Recorder())
    assert result is not None
    assert result.new_mark == 100 + len(flat(turns[:5]))
    assert result.summary is None and result.summary_items == []
    assert [v.item for v in result.evicted] == flat(turns[:5])


def test_sliding_window_takes_fewer_turns_when_they_exceed_the_target() -> None:
    turns = [turn(i, size=2_000) for i in range(6)]
    result = run(
        SlidingWindow(), snapshot(flat(turns)), policy(target=1_100, window_turns=4), Recorder()
    )
    assert result is not None and result.new_mark == 100 + len(flat(turns[:5]))  # one turn fits
    one_huge = snapshot(flat([turn(0, size=20), turn(1, size=20_000)]))
    result = run(SlidingWindow(), one_huge, policy(target=1_000, window_turns=4), Recorder())
    assert result is not None and result.new_mark == 102  # but at least one turn is kept


def test_sliding_window_does_nothing_when_the_window_is_the_whole_view() -> None:
    snap = snapshot(flat([turn(i, size=10) for i in range(3)]))
    assert run(SlidingWindow(), snap, policy(window_turns=5), Recorder()) is None


# --- summarize ----------------------------------------------------------------------------


def test_summarize_does_nothing_within_the_target() -> None:
    snap = snapshot(flat([turn(i, size=10) for i in range(3)]))
    recorder = Recorder()
    assert run(Summarize(), snap, policy(target=5_000), recorder) is None
    assert recorder.calls == []


def test_summarize_evicts_the_fewest_oldest_turns_that_make_room() -> None:
    turns = [turn(i, size=400, calls=i % 2) for i in range(10)]
    snap = snapshot(flat(turns), summary="before")
    recorder = Recorder()
    pol = policy(target=1_000, summary_max=300)
    result = run(Summarize(), snap, pol, recorder)
    assert result is not None
    kept_tokens = sum(v.tokens for v in snap.items if v.position >= result.new_mark)
    assert kept_tokens + 300 <= 1_000
    one_more = kept_tokens + sum(
        v.tokens for v in snap.items if v.position < result.new_mark
    )  # the whole thing did not fit
    assert one_more + 300 > 1_000
    evicted = [v.item for v in result.evicted]
    assert recorder.calls == [("before", evicted, 300)]
    assert result.summary == "summary #1"
    assert is_user_message(evicted[0]) and evicted == flat(turns)[: len(evicted)]
    assert is_user_message(next(v.item for v in snap.items if v.position == result.new_mark))


def test_summarize_always_keeps_the_last_turn() -> None:
    snap = snapshot(flat([turn(0), turn(1, size=40_000)]))
    result = run(Summarize(), snap, policy(target=1_000), Recorder())
    assert result is not None and result.new_mark == 100 + len(turn(0))
    single = snapshot(turn(0, size=40_000))
    assert run(Summarize(), single, policy(target=1_000), Recorder()) is None


def test_summarize_keeps_earlier_summary_items() -> None:
    kept = [call("k"), output("k")]
    snap = snapshot(flat([turn(i) for i in range(6)]), summary="s", summary_items=kept)
    result = run(Summarize(), snap, policy(target=600), Recorder())
    assert result is not None and result.summary_items == kept


def test_a_failed_summary_raises_and_produces_no_result() -> None:
    class Broken:
        async def __call__(
            self, previous: str | None, evicted: Sequence[Item], *, max_tokens: int
        ) -> str:
            return "Error: rate limit exceeded"

    snap = snapshot(flat([turn(i) for i in range(6)]))
    for strategy in (Summarize(), Hybrid()):
        with pytest.raises(SummaryError):
            run(strategy, snap, policy(target=600), validated(Broken()))


# --- hybrid -------------------------------------------------------------------------------


def test_hybrid_keeps_evicted_tool_pairs_verbatim_without_ids() -> None:
    turns = [turn(i, size=300, calls=1 if i < 4 else 0) for i in range(10)]
    recorder = Recorder()
    snap = snapshot(flat(turns))
    result = run(Hybrid(), snap, policy(target=1_500, summary_max=800), recorder)
    assert result is not None
    pairs = result.summary_items
    evicted_calls = [v.item for v in result.evicted if v.item.get("type") == "function_call"]
    assert len(pairs) == 2 * len(evicted_calls) > 0
    for c, o, original in zip(pairs[::2], pairs[1::2], evicted_calls, strict=True):
        assert c == {k: v for k, v in original.items() if k != "id"}
        assert o["type"] == "function_call_output" and o["call_id"] == c["call_id"]
    assert all("id" in c for c in evicted_calls)  # the snapshot keeps its ids
    ((_, to_text, max_tokens),) = recorder.calls
    assert not any(i.get("type", "").startswith("function_call") for i in to_text)
    assert max_tokens == 800 - EST.count_items(pairs)


def test_hybrid_drops_the_oldest_pairs_over_half_the_budget_into_the_text_summary() -> None:
    old = [call("old1"), output("old1", "Old1: 10°C"), call("old2"), output("old2", "Old2: 11°C")]
    turns = [turn(i, size=300, calls=1) for i in range(8)]
    recorder = Recorder()
    snap = snapshot(flat(turns), summary="prev", summary_items=old)
    pair_cost = EST.count_items(old[:2])
    result = run(Hybrid(), snap, policy(target=1_500, summary_max=2 * 3 * pair_cost + 1), recorder)
    assert result is not None
    kept_ids = [i["call_id"] for i in result.summary_items[::2]]
    new_ids = [v.item["call_id"] for v in result.evicted if v.item.get("type") == "function_call"]
    assert kept_ids == ([*["old1", "old2"], *new_ids])[-3:]  # the newest three pairs
    ((_, to_text, _),) = recorder.calls
    assert to_text[:2] == old[:2]  # dropped old pairs are summarized first
    assert pairing_problems(view(result, snap)) == []


def test_hybrid_lets_the_offline_brain_compare_results_evicted_long_ago() -> None:
    turns = [
        [user("What is the weather in Austin?"), call("a"), output("a"), assistant("31")],
        [user("What about Seattle?"), call("s", args='{"city": "Seattle"}')],
    ]
    turns[1] += [output("s", "Seattle: 14°C, light rain"), assistant("14")]
    turns += [turn(i, size=500) for i in range(2, 12)]
    snap = snapshot(flat(turns))
    result = run(
        Hybrid(), snap, policy(target=900, summary_max=400), validated(ExtractiveSummarizer())
    )
    assert result is not None and result.new_mark > snap.items[8].position
    answer = asyncio.run(ask(view(result, snap), "Which city is warmer?"))
    assert answer == "Austin is warmer (31°C) than Seattle (14°C)."


# --- all strategies: properties -----------------------------------------------------------


def test_get_strategy_by_name() -> None:
    assert isinstance(get_strategy("sliding_window"), SlidingWindow)
    assert isinstance(get_strategy("summarize"), Summarize)
    hybrid = get_strategy("hybrid", EST)
    assert isinstance(hybrid, Hybrid) and hybrid.name == "hybrid" and hybrid.estimator is EST
    with pytest.raises(ValueError, match="unknown"):
        get_strategy("nope")


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    items = draw(conversations(max_turns=12))
    kept: list[Item] = []
    for i in range(draw(st.integers(0, 2))):
        kept += [call(f"kept{i}"), output(f"kept{i}", filler(draw(st.integers(0, 200))))]
    summary = draw(st.one_of(st.none(), st.just("User facts:\n- My name is Ada.")))
    return snapshot(items, mark=draw(st.integers(0, 1_000)), summary=summary, summary_items=kept)


def _check(
    strategy: CompactionStrategy, snap: Snapshot, pol: ContextPolicy, summarizer: Summarizer
) -> None:
    before = copy.deepcopy(snap)
    result = run(strategy, snap, pol, summarizer)
    assert snap == before  # the transcript is not touched
    if result is None:
        return
    positions = {v.position: v.item for v in snap.items}
    assert result.new_mark in positions and is_user_message(positions[result.new_mark])
    assert result.new_mark <= max(p for p, i in positions.items() if is_user_message(i))
    assert [v.position for v in result.evicted] == [p for p in positions if p < result.new_mark]
    assert pairing_problems(view(result, snap)) == []
    assert repair(view(result, snap)) == view(result, snap) or any(
        i.get("type") == "reasoning" for i in view(result, snap)
    )
    if strategy.name != "sliding_window":
        assert result.summary is not None and result.summary.strip()


@pytest.mark.parametrize("name", ["sliding_window", "summarize", "hybrid"])
@pytest.mark.parametrize("summarizer", ["fake", "extractive"])
@PROPS
@given(
    snap=snapshots(),
    target=st.integers(100, 6_000),
    summary_max=st.integers(50, 800),
    window=st.integers(1, 8),
)
def test_every_strategy_keeps_pairs_whole_and_marks_turn_starts(
    name: str, summarizer: str, snap: Snapshot, target: int, summary_max: int, window: int
) -> None:
    pol = policy(target=target, summary_max=summary_max, window_turns=window)
    chosen: Summarizer = Recorder() if summarizer == "fake" else validated(ExtractiveSummarizer())
    _check(get_strategy(name), snap, pol, chosen)


# --- 200 turns with the offline model -----------------------------------------------------


async def ask(items: list[Item], question: str) -> str:
    config = RunConfig(model=OfflineModel(), tracing_disabled=True)
    result = await Runner.run(build_agent(), [*items, user(question)], run_config=config)  # type: ignore[list-item]
    return str(result.final_output)


@dataclass
class Session:
    """What the store and the workers do, in memory: transcript, mark, summary, trims."""

    strategy: CompactionStrategy
    pol: ContextPolicy
    summarizer: Summarizer = field(default_factory=lambda: validated(ExtractiveSummarizer()))
    transcript: list[Item] = field(default_factory=list)
    mark: int = 0
    summary: str | None = None
    summary_items: list[Item] = field(default_factory=list)
    compactions: int = 0
    trims: int = 0

    def view(self) -> list[Item]:
        head = [summary_item(self.summary)] if self.summary else []
        return [*head, *self.summary_items, *self.transcript[self.mark :]]  # type: ignore[list-item]

    async def say(self, text: str) -> str:
        items = [*self.view(), user(text)]
        items, trimmed = trim_to_budget(repair(items), self.pol.input_limit, EST.count_items)
        self.trims += trimmed
        config = RunConfig(model=OfflineModel(), tracing_disabled=True)
        result = await Runner.run(build_agent(), items, run_config=config)  # type: ignore[arg-type]
        new = [user(text), *(i.to_input_item() for i in result.new_items)]
        self.transcript += new  # type: ignore[arg-type]
        return str(result.final_output)

    async def compact(self) -> None:
        snap = Snapshot(
            session_id="s",
            mark=self.mark,
            summary=self.summary,
            summary_items=self.summary_items,
            items=[
                ViewItem(p, it, EST.count_items([it]))
                for p, it in enumerate(self.transcript)
                if p >= self.mark
            ],
            summary_tokens=(EST.count_text(self.summary) if self.summary else 0)
            + EST.count_items(self.summary_items),
        )
        before = copy.deepcopy(self.transcript)
        result = await self.strategy.compact(snap, self.pol, self.summarizer)
        assert self.transcript == before
        if result is not None:
            assert result.new_mark >= self.mark
            self.mark, self.summary = result.new_mark, result.summary
            self.summary_items = result.summary_items
            self.compactions += 1
            assert pairing_problems(self.view()) == []


FILLERS = [
    "Tell me something nice about {topic}, I was reading about it on the train today.",
    "I keep thinking about {topic}; what would you recommend reading about it?",
    "Could you explain {topic} to me as if I were a curious beginner?",
    "I walked {n} km this morning and thought about {topic} the whole way.",
]
TOPICS = ["gardening", "jazz", "volcanoes", "chess", "baking", "sailing", "origami", "bees"]


async def long_conversation(strategy: CompactionStrategy) -> tuple[Session, dict[str, str]]:
    pol = ContextPolicy(
        window_tokens=8_000,
        trigger_tokens=4_000,
        target_tokens=2_500,
        reserve_output_tokens=1_000,
        summary_max_tokens=600,
    )
    session = Session(strategy, pol)
    await session.say("Hi! My name is Ada.")
    await session.say("The door code is 4417.")
    assert await session.say("What is the weather in Austin?") == (
        "The weather in Austin is 31°C and sunny."
    )
    assert (
        await session.say("How about Seattle?") == "The weather in Seattle is 14°C and light rain."
    )
    for n in range(4, 230):
        text = FILLERS[n % len(FILLERS)].format(topic=TOPICS[n % len(TOPICS)], n=n)
        await session.say(text)
        if n == 120:
            await session.say("Actually, call me Grace from now on.")
        if n % 20 == 0:
            await session.compact()
    answers = {
        q: await ask(session.view(), q)
        for q in ("What is my name?", "What is the door code?", "Which city is warmer?")
    }
    return session, answers


def behind_the_mark(session: Session) -> bool:
    """The facts and lookups of the first turns are no longer in the window itself."""
    early = [
        p
        for p, item in enumerate(session.transcript)
        if item.get("content") in ("Hi! My name is Ada.", "The door code is 4417.")
        or item.get("type") == "function_call_output"
    ]
    users_after = sum(1 for i in session.transcript[max(early) :] if is_user_message(i))
    return len(early) == 4 and max(early) < session.mark and users_after >= 200


def test_summarize_recalls_facts_stated_200_turns_earlier_with_the_offline_model() -> None:
    session, answers = asyncio.run(long_conversation(Summarize()))
    assert session.compactions >= 8 and behind_the_mark(session)
    assert answers["What is my name?"] == "Your name is Grace."
    assert answers["What is the door code?"] == "The door code is 4417."
    # Only the text summary is left of the lookups: the brain cannot compare them.
    assert answers["Which city is warmer?"].startswith("I can't compare")


def test_hybrid_also_compares_tool_results_looked_up_200_turns_earlier() -> None:
    session, answers = asyncio.run(long_conversation(Hybrid()))
    assert session.compactions >= 8 and behind_the_mark(session)
    assert answers["What is my name?"] == "Your name is Grace."
    assert answers["What is the door code?"] == "The door code is 4417."
    assert answers["Which city is warmer?"] == "Austin is warmer (31°C) than Seattle (14°C)."
    assert all("id" not in i for i in session.summary_items if i["type"] == "function_call")


def test_sliding_window_forgets_what_left_the_window() -> None:
    session, answers = asyncio.run(long_conversation(SlidingWindow()))
    assert session.summary is None and session.compactions >= 8
    assert answers["What is the door code?"] == "I don't know the door code yet."
