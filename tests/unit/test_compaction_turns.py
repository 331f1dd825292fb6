"""Turn boundaries, repair and the emergency trim: examples plus properties on any input."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.compaction.turns import (
    INTERRUPTED_OUTPUT,
    is_user_message,
    pairing_problems,
    repair,
    safe_cuts,
    trim_to_budget,
    turn_starts,
)
from shared.tokens import HeuristicEstimator

Item = dict[str, Any]
EST = HeuristicEstimator()
COUNT = EST.count_items
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- item builders (shared with test_strategies) ------------------------------------------


def user(text: str) -> Item:
    return {"role": "user", "content": text}


def assistant(text: str, id: str = "msg_1") -> Item:
    return {
        "type": "message",
        "role": "assistant",
        "id": id,
        "content": [{"type": "output_text", "text": text, "annotations": []}],
        "status": "completed",
    }


def call(call_id: str, name: str = "get_weather", args: str = '{"city": "Austin"}') -> Item:
    return {
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": args,
        "id": f"fc_{call_id}",
        "status": "completed",
    }


def output(call_id: str, text: str = "Austin: 31°C, sunny") -> Item:
    return {"type": "function_call_output", "call_id": call_id, "output": text}


def reasoning(id: str = "rs_1") -> Item:
    return {"type": "reasoning", "id": id, "summary": [{"type": "summary_text", "text": "hmm"}]}


def system(text: str) -> Item:
    return {"role": "system", "content": "Summary of the earlier conversation:\n" + text}


def filler(size: int, salt: int = 0) -> str:
    words = ("lorem", "ipsum", "dolor", "sit", "amet", "café", "東京", "naïve")
    text = " ".join(words[(i + salt) % len(words)] for i in range(size // 5 + 1))
    return text[:size]


@st.composite
def conversations(draw: st.DrawFn, max_turns: int = 10) -> list[Item]:
    """Well-formed transcripts: turns with 0-3 tool calls (some parallel), some reasoning."""
    ids = itertools.count()
    items: list[Item] = []
    for t in range(draw(st.integers(1, max_turns))):
        items.append(user(filler(draw(st.integers(0, 600)), t)))
        calls_left = draw(st.integers(0, 3))
        while calls_left:
            if draw(st.booleans()):
                items.append(reasoning(f"rs_{next(ids)}"))
            batch = draw(st.integers(1, calls_left))
            calls_left -= batch
            cids = [f"call_{next(ids)}" for _ in range(batch)]
            items += [call(c) for c in cids]
            order = draw(st.permutations(cids))
            items += [output(c, filler(draw(st.integers(0, 900)), 3)) for c in order]
        if draw(st.booleans()):
            items.append(reasoning(f"rs_{next(ids)}"))
        items.append(assistant(filler(draw(st.integers(0, 400)), 5), f"msg_{next(ids)}"))
    return items


@st.composite
def prefixed_conversations(draw: st.DrawFn) -> list[Item]:
    """A conversation behind a summary message and kept tool pairs (hybrid's view)."""
    prefix: list[Item] = []
    if draw(st.booleans()):
        prefix.append(system(filler(draw(st.integers(1, 800)), 1)))
    for i in range(draw(st.integers(0, 3))):
        prefix += [call(f"kept_{i}"), output(f"kept_{i}", filler(draw(st.integers(0, 300))))]
    return prefix + draw(conversations())


_CALL_IDS = st.sampled_from(["a", "b", "c", None])


@st.composite
def soups(draw: st.DrawFn) -> list[Item]:
    """Anything: orphans, duplicates, outputs before calls, reasoning at the end, no users."""
    kinds = st.sampled_from(["user", "assistant", "call", "output", "reasoning", "system"])
    items: list[Item] = []
    for n, kind in enumerate(draw(st.lists(kinds, max_size=25))):
        text = filler(draw(st.integers(0, 300)), n)
        if kind == "user":
            items.append(user(text))
        elif kind == "assistant":
            items.append(assistant(text, f"msg_{n}"))
        elif kind == "system":
            items.append(system(text))
        elif kind == "reasoning":
            items.append(reasoning(f"rs_{n}"))
        else:
            cid = draw(_CALL_IDS)
            item = call(cid or "x") if kind == "call" else output(cid or "x", text)
            if cid is None:
                del item["call_id"]
            elif kind == "output" and draw(st.booleans()):
                item["id"] = f"fco_{n}"
            items.append(item)
    return items


# --- turn_starts / safe_cuts --------------------------------------------------------------


def test_turns_start_at_user_messages_and_the_prefix_is_no_cut_point() -> None:
    items = [system("s"), call("k"), output("k"), user("a"), assistant("x"), user("b")]
    assert turn_starts(items) == [3, 5]
    assert turn_starts([]) == []
    typed = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]}
    assert is_user_message(typed) and not is_user_message(assistant("x"))


def test_safe_cuts_skip_a_turn_boundary_inside_a_tool_pair() -> None:
    items = [user("a"), call("c1"), user("b"), output("c1"), user("c")]
    assert safe_cuts(items) == [0, 4]


# --- repair -------------------------------------------------------------------------------


def test_repair_drops_orphan_outputs_and_answers_dangling_calls_after_their_group() -> None:
    items = [
        output("ghost"),
        user("weather?"),
        call("a"),
        call("b"),
        output("a"),
        assistant("half done"),
    ]
    fixed = repair(items)
    assert fixed == [
        user("weather?"),
        call("a"),
        call("b"),
        output("a"),
        {"type": "function_call_output", "call_id": "b", "output": INTERRUPTED_OUTPUT},
        assistant("half done"),
    ]
    assert pairing_problems(fixed) == []
    assert items[0] == output("ghost")  # input untouched


def test_repair_keeps_the_first_use_of_a_call_id_and_the_first_output() -> None:
    items = [user("q"), call("a"), output("a", "one"), call("a"), output("a", "two")]
    assert repair(items) == [user("q"), call("a"), output("a", "one")]


def test_an_output_before_its_call_is_an_orphan() -> None:
    fixed = repair([user("q"), output("a"), call("a")])
    assert fixed == [user("q"), call("a"), output("a", INTERRUPTED_OUTPUT)]


def test_repair_drops_reasoning_without_its_item_and_the_id_that_pointed_at_it() -> None:
    with_id = {**output("a"), "id": "fco_1"}
    items = [user("q"), reasoning("rs_1"), call("a"), reasoning("rs_2"), with_id, reasoning("rs_3")]
    fixed = repair(items)
    assert fixed == [user("q"), reasoning("rs_1"), call("a"), output("a")]
    assert "id" in with_id  # the input's item keeps it
    assert repair([user("q"), reasoning(), user("r")]) == [user("q"), user("r")]
    assert repair([reasoning("a"), reasoning("b"), assistant("x")]) == [
        reasoning("a"),
        reasoning("b"),
        assistant("x"),
    ]


def test_calls_without_call_id_cannot_be_paired_and_are_dropped() -> None:
    nameless = call("x")
    del nameless["call_id"]
    assert repair([user("q"), nameless, assistant("a")]) == [user("q"), assistant("a")]


def _subsequence(small: list[Item], big: list[Item]) -> bool:
    it = iter(big)
    return all(any(x == y for y in it) for x in small)


def _without_ids(items: list[Item]) -> list[Item]:
    return [{k: v for k, v in i.items() if k != "id"} for i in items]


@PROPS
@given(soups())
def test_repair_gives_perfect_pairing_is_idempotent_and_keeps_order(items: list[Item]) -> None:
    before = copy.deepcopy(items)
    fixed = repair(items)
    assert items == before
    assert pairing_problems(fixed) == []
    assert repair(fixed) == fixed
    originals = [i for i in fixed if i.get("output") != INTERRUPTED_OUTPUT]
    assert _subsequence(_without_ids(originals), _without_ids(items))
    for i, item in enumerate(fixed):  # every kept reasoning run ends at a model output
        if item.get("type") == "reasoning":
            nxt = next((x for x in fixed[i + 1 :] if x.get("type") != "reasoning"), None)
            assert nxt is not None and not is_user_message(nxt)
            assert nxt.get("type") != "function_call_output"


@PROPS
@given(conversations())
def test_repair_leaves_a_well_formed_conversation_alone(items: list[Item]) -> None:
    assert repair(items) == items


# --- trim_to_budget -----------------------------------------------------------------------


def _turns(items: list[Item]) -> list[list[Item]]:
    starts = turn_starts(items)
    bounds = [*starts, len(items)]
    return [items[a:b] for a, b in itertools.pairwise(bounds)]


def test_within_the_limit_nothing_is_trimmed() -> None:
    items = [user("hi"), assistant("hello")]
    assert trim_to_budget(items, 10_000, COUNT) == (items, False)


def test_trim_drops_the_oldest_whole_turns_and_keeps_the_prefix() -> None:
    prefix = [system("facts"), call("k"), output("k")]
    turns = [
        [user(f"question {i} " + filler(400)), call(f"c{i}"), output(f"c{i}"), assistant("a")]
        for i in range(6)
    ]
    items = prefix + [x for t in turns for x in t]
    limit = COUNT(prefix + turns[-2] + turns[-1])
    trimmed, did = trim_to_budget(items, limit, COUNT)
    assert did and COUNT(trimmed) <= limit
    assert trimmed == prefix + turns[-2] + turns[-1]


def test_trim_then_drops_kept_pairs_before_the_summary() -> None:
    prefix = [system("the facts"), call("k", args="{}"), output("k", filler(800))]
    last = [user("now"), assistant("ok")]
    items = [*prefix, user(filler(2000)), assistant("old"), *last]
    limit = COUNT([prefix[0], *last])
    trimmed, did = trim_to_budget(items, limit, COUNT)
    assert did and trimmed == [prefix[0], *last]


def test_trim_shortens_the_longest_texts_of_the_last_turn_with_a_marker() -> None:
    last = [user("summarise this: " + "x" * 20_000), call("c"), output("c", "y" * 50_000)]
    last.append(assistant("short answer"))
    items = [system("s"), user("old"), assistant("old"), *last]
    trimmed, did = trim_to_budget(items, 3_000, COUNT)
    assert did and COUNT(trimmed) <= 3_000
    assert pairing_problems(trimmed) == []
    assert [i.get("type", "message") for i in trimmed] == [
        "message",
        "function_call",
        "function_call_output",
        "message",
    ]
    assert trimmed[0]["content"].startswith("summarise this: ")
    assert "[... truncated " in trimmed[2]["output"]
    assert trimmed[3] == last[3]  # short texts are left alone
    assert "x" * 20_000 in items[3]["content"]  # input untouched


def test_trim_always_fits_even_an_absurd_limit() -> None:
    items = [user("hello there"), call("c"), output("c"), assistant("answer")]
    for limit in (0, 1, 5, 12, 30):
        trimmed, did = trim_to_budget(items, limit, COUNT)
        assert did and COUNT(trimmed) <= limit and pairing_problems(trimmed) == []


@PROPS
@given(prefixed_conversations(), st.floats(0, 1.2))
def test_trim_is_always_within_the_limit_and_pair_safe(items: list[Item], share: float) -> None:
    before = copy.deepcopy(items)
    limit = int(COUNT(items) * share)
    trimmed, did = trim_to_budget(items, limit, COUNT)
    assert items == before
    assert COUNT(trimmed) <= limit
    assert pairing_problems(trimmed) == []
    assert did == (COUNT(items) > limit)
    last_turn = _turns(items)[-1]
    starts = turn_starts(items)
    if limit >= COUNT(items[: starts[0]] + last_turn):
        # only whole old turns went: the result is the prefix plus the newest turns
        assert trimmed[: starts[0]] == items[: starts[0]]
        kept = trimmed[starts[0] :]
        assert kept == items[len(items) - len(kept) :]
        assert turn_starts(kept)[0] == 0


@PROPS
@given(soups(), st.integers(0, 3_000))
def test_trim_of_any_soup_is_within_the_limit_and_pair_safe(items: list[Item], limit: int) -> None:
    trimmed, _ = trim_to_budget(items, limit, COUNT)
    assert COUNT(trimmed) <= limit
    assert pairing_problems(trimmed) == []
    assert repair(trimmed) == trimmed
