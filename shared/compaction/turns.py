"""Turn boundaries, provider-valid repair and the emergency trim (I8), on plain item dicts.

    from shared.compaction.turns import repair, trim_to_budget, turn_starts
    view = repair([summary_item(summary), *summary_items, *items, user_message])
    view, trimmed = trim_to_budget(view, policy.input_limit, estimator.count_items)

A turn starts at a user message; everything up to the next user message belongs to
it.  Items before the first user message (the summary message, hybrid's kept tool
pairs) are a prefix that is never a cut point.  Every cut made here falls on a turn
boundary, and ``repair`` then guarantees what providers reject otherwise (research
§5.1-5.4): no output without an earlier call, no call without an output, no
reasoning item without the item it belongs to, no item id pointing at a dropped
reasoning item.  All functions are pure: inputs are never mutated.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from shared.compaction.base import Item

__all__ = [
    "INTERRUPTED_OUTPUT",
    "is_user_message",
    "pairing_problems",
    "repair",
    "safe_cuts",
    "shorten_text",
    "trim_to_budget",
    "truncation_marker",
    "turn_starts",
]

INTERRUPTED_OUTPUT = "[no result: the call was interrupted]"

_MESSAGE_ROLES = frozenset({"user", "assistant", "system", "developer"})
Count = Callable[[list[Item]], int]


# --- reading items ------------------------------------------------------------------------


def is_user_message(item: Item) -> bool:
    """A user message: ``{"role": "user", ...}`` with no type, or type "message"."""
    return item.get("type", "message") == "message" and item.get("role") == "user"


def _is_call(item: Item) -> bool:
    return item.get("type") == "function_call"


def _is_output(item: Item) -> bool:
    return item.get("type") == "function_call_output"


def _is_reasoning(item: Item) -> bool:
    return item.get("type") == "reasoning"


def _call_id(item: Item) -> str | None:
    value = item.get("call_id")
    return value if isinstance(value, str) and value else None


def _is_model_output(item: Item) -> bool:
    """An item a model produces after reasoning: not a user/system message nor a tool result."""
    if _is_reasoning(item) or _is_output(item) or str(item.get("type", "")).endswith("_output"):
        return False
    if item.get("type", "message") == "message":
        return item.get("role") == "assistant"
    return True


def turn_starts(items: Sequence[Item]) -> list[int]:
    """Indexes of the user messages: the only places a cut may fall."""
    return [i for i, item in enumerate(items) if is_user_message(item)]


def safe_cuts(items: Sequence[Item]) -> list[int]:
    """Turn starts that do not separate any call from its output (in well-formed data: all).

    A pair spanning a turn boundary is not produced by the SDK, but a cut through one
    would leave an orphan in the model's view, so the strategies skip such cuts.
    """
    open_calls: set[str] = set()
    cuts: list[int] = []
    outputs_after: dict[str, int] = {}
    for i, item in enumerate(items):
        cid = _call_id(item)
        if cid is not None and _is_output(item):
            outputs_after[cid] = i
    for i, item in enumerate(items):
        if is_user_message(item) and not open_calls:
            cuts.append(i)
        cid = _call_id(item)
        if cid is not None and _is_call(item) and outputs_after.get(cid, -1) > i:
            open_calls.add(cid)
        elif cid is not None and _is_output(item):
            open_calls.discard(cid)
    return cuts


def pairing_problems(items: Sequence[Item]) -> list[str]:
    """What a provider would reject about tool pairing (empty when the list is valid)."""
    problems: list[str] = []
    calls: set[str] = set()
    answered: set[str] = set()
    for i, item in enumerate(items):
        cid = _call_id(item)
        if _is_call(item):
            if cid is None or cid in calls:
                problems.append(f"item {i}: call without a unique call_id ({cid!r})")
            else:
                calls.add(cid)
        elif _is_output(item):
            if cid not in calls:
                problems.append(f"item {i}: output for {cid!r} has no earlier call")
            elif cid in answered:
                problems.append(f"item {i}: second output for {cid!r}")
            else:
                answered.add(cid)
    problems += [f"call {cid!r} has no output" for cid in sorted(calls - answered)]
    return problems


# --- repair -------------------------------------------------------------------------------


def _pair_calls(items: Sequence[Item]) -> list[Item]:
    """Drop repeated calls and orphan or repeated outputs; answer calls that have none."""
    kept: list[Item] = []
    calls: set[str] = set()
    answered: set[str] = set()
    for item in items:
        if _is_call(item) or _is_output(item):
            cid = _call_id(item)
            if cid is None:
                continue  # unpairable either way; Chat Completions rejects it (§5.2)
            if _is_call(item):
                if cid in calls:
                    continue  # call_id reuse: keep the first (§5.4 dedupe trap)
                calls.add(cid)
            elif cid not in calls or cid in answered:
                continue
            else:
                answered.add(cid)
        kept.append(item)
    missing = calls - answered
    if not missing:
        return kept
    out: list[Item] = []
    pending: list[str] = []
    for i, item in enumerate(kept):
        out.append(item)
        cid = _call_id(item)
        if _is_call(item) and cid in missing:
            pending.append(cid)
        in_group = _is_call(item) or _is_output(item)
        next_in_group = i + 1 < len(kept) and (_is_call(kept[i + 1]) or _is_output(kept[i + 1]))
        if pending and in_group and not next_in_group:
            out += [
                {"type": "function_call_output", "call_id": c, "output": INTERRUPTED_OUTPUT}
                for c in pending
            ]
            pending = []
    return out


def _drop_lone_reasoning(items: list[Item]) -> list[Item]:
    """Keep a run of reasoning items only when the model output it belongs to follows it."""
    out: list[Item] = []
    i = 0
    while i < len(items):
        if not _is_reasoning(items[i]):
            out.append(items[i])
            i += 1
            continue
        end = i
        while end < len(items) and _is_reasoning(items[end]):
            end += 1
        if end < len(items) and _is_model_output(items[end]):
            out += items[i:end]
        elif end < len(items) and "id" in items[end]:
            # §5.4 (c): an id that links to a dropped reasoning item is rejected too.
            out.append({k: v for k, v in items[end].items() if k != "id"})
            end += 1
        i = end
    return out


def repair(items: Sequence[Item]) -> list[Item]:
    """A provider-valid copy of ``items``; kept items keep their order.  Idempotent.

    * a ``function_call_output`` with no earlier call with its call_id is dropped, and so
      is a second output for the same call, or a call whose call_id was already used;
    * a call with no output after it keeps its place (the record of what was attempted)
      and gets a synthetic output right after its group of tool items;
    * reasoning items not directly followed by the model output they belong to are
      dropped, and the ``id`` of the item that followed them is removed.
    """
    return _drop_lone_reasoning(_pair_calls(items))


# --- emergency trim -----------------------------------------------------------------------


def truncation_marker(removed: int) -> str:
    return f"[... truncated {removed} characters ...]"


def shorten_text(text: str, cap: int) -> str:
    """``text`` in at most ``max(cap, marker length)`` characters: head, marker, short tail."""
    if len(text) <= cap:
        return text
    keep = max(0, cap - len(truncation_marker(len(text))) - 2)
    tail = keep // 4
    head = keep - tail
    marker = truncation_marker(len(text) - keep)
    short = text[:head] + "\n" + marker + "\n" + text[len(text) - tail :]
    return short if len(short) < len(text) else text


def _text_slots(item: Item) -> Iterator[tuple[Any, Any, str]]:
    """(container, key, text) for every free text in an item that may be shortened.

    Function call ``arguments`` are left alone: cut JSON is no longer arguments.
    """
    if _is_output(item):
        yield from _content_slots(item, "output")
    elif _is_reasoning(item):
        for part in item.get("summary") or []:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part, "text", part["text"]
    elif item.get("type", "message") == "message" and item.get("role") in _MESSAGE_ROLES:
        yield from _content_slots(item, "content")


def _content_slots(item: Item, key: str) -> Iterator[tuple[Any, Any, str]]:
    value = item.get(key)
    if isinstance(value, str):
        yield item, key, value
    elif isinstance(value, list):
        for part in value:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part, "text", part["text"]


def _capped(items: Sequence[Item], cap: int) -> list[Item]:
    """A copy of ``items`` with every shortenable text over ``cap`` characters shortened."""
    if not any(len(text) > cap for item in items for _, _, text in _text_slots(item)):
        return list(items)
    out: list[Item] = []
    for item in items:
        if not any(len(text) > cap for _, _, text in _text_slots(item)):
            out.append(item)
            continue
        copy = json.loads(json.dumps(item, ensure_ascii=False, default=str))
        for container, key, text in list(_text_slots(copy)):
            container[key] = shorten_text(text, cap)
        out.append(copy)
    return out


def _smallest_fitting(n: int, fits: Callable[[int], bool]) -> int | None:
    """The smallest k in [0, n) with fits(k), by bisection (fits is monotone in practice)."""
    if n <= 0:
        return None
    if not fits(n - 1):
        return None
    lo, hi = 0, n - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _drop_old_turns(items: list[Item], limit: int, count: Count) -> list[Item] | None:
    starts = turn_starts(items)
    if len(starts) < 2:
        return None
    prefix, bounds = items[: starts[0]], [*starts, len(items)]

    def view(k: int) -> list[Item]:  # the prefix plus turns k.. (k < len(starts))
        return repair(prefix + items[bounds[k] :])

    k = _smallest_fitting(len(starts), lambda k: count(view(k)) <= limit)
    return view(k) if k is not None else None


def _drop_prefix(items: list[Item], limit: int, count: Count) -> list[Item]:
    """Drop prefix items, tool pairs first and the summary message last, oldest first."""
    starts = turn_starts(items)
    first = starts[0] if starts else len(items)
    prefix, rest = items[:first], items[first:]
    tools = [i for i, it in enumerate(prefix) if it.get("role") not in ("system", "developer")]
    order = tools + [i for i in range(len(prefix)) if i not in set(tools)]
    dropped: set[int] = set()
    for index in order:
        dropped.add(index)
        candidate = repair([it for i, it in enumerate(prefix) if i not in dropped] + rest)
        if count(candidate) <= limit:
            return candidate
    return repair(rest)


def _shorten_texts(items: list[Item], limit: int, count: Count) -> list[Item] | None:
    longest = max((len(t) for item in items for _, _, t in _text_slots(item)), default=0)
    if longest == 0:
        return None
    caps = sorted({0, *(1 << b for b in range(longest.bit_length())), longest})
    # the largest cap that fits: bisection over the candidate caps (largest first)
    caps.reverse()
    k = _smallest_fitting(len(caps), lambda k: count(_capped(items, caps[k])) <= limit)
    if k is None:
        return _capped(items, 0)  # the shortest it gets; the last resort takes it from here
    fitting = _capped(items, caps[k])
    if k > 0:  # refine between this cap and the next larger one, which did not fit
        lo, hi = caps[k], caps[k - 1] - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            candidate = _capped(items, mid)
            if count(candidate) <= limit:
                lo, fitting = mid, candidate
            else:
                hi = mid - 1
    return fitting


def _drop_last_turn_items(items: list[Item], limit: int, count: Count) -> list[Item]:
    """Last resort: drop the turn's items after the user message, oldest first, then it."""
    rest = list(items)
    while rest and count(rest) > limit:
        drop = 1 if len(rest) > 1 and is_user_message(rest[0]) else 0
        gone = rest[drop]
        cid = _call_id(gone) if _is_call(gone) else None
        rest = repair(
            [
                it
                for i, it in enumerate(rest)
                if i != drop and not (cid is not None and _is_output(it) and _call_id(it) == cid)
            ]
        )
    return rest


def trim_to_budget(
    items: Sequence[Item], limit_tokens: int, count: Count
) -> tuple[list[Item], bool]:
    """The model's input within ``limit_tokens`` by ``count``, tool-pair safe: (items, trimmed?).

    In order, stopping as soon as the input fits: drop the oldest whole turns (never the
    prefix before the first user message, never the last turn); then drop prefix items
    (kept tool pairs before the summary message); then shorten the longest texts of the
    last turn, marking each cut; then, as a last resort for absurd limits, drop the last
    turn's items.  The result is repaired, so every call keeps its output.  The result is
    always within the limit provided ``count([]) <= limit_tokens``.
    """
    current = repair(items)
    if count(current) <= limit_tokens:
        return current, False
    for step in (_drop_old_turns, _drop_prefix_if_turns, _shorten_texts):
        result = step(current, limit_tokens, count)
        if result is not None:
            if count(result) <= limit_tokens:
                return result, True
            current = result
    return _drop_last_turn_items(current, limit_tokens, count), True


def _drop_prefix_if_turns(items: list[Item], limit: int, count: Count) -> list[Item] | None:
    """Keep only the prefix and last turn, then drop prefix items until it fits."""
    starts = turn_starts(items)
    if starts:
        items = repair(items[: starts[0]] + items[starts[-1] :])
    return _drop_prefix(items, limit, count)
