"""Summarizers: fold the items a compaction evicts into the previous summary.

    from shared.compaction.model_summarizer import load_summarizer
    summarize = load_summarizer("auto", settings)     # extractive offline, a model online
    summary = await summarize(previous, evicted_items, max_tokens=policy.summary_max_tokens)

Every summarizer ``load_summarizer`` returns is wrapped by ``validated``: a summarizer
that fails, returns nothing or returns an error text raises ``SummaryError``, so a
failed summary is never committed over the history it replaces (DESIGN lessons).

The extractive summarizer writes plain-text sections that it parses back next time,
so the summary grows incrementally (previous + newly evicted) within ``max_tokens``::

    User facts:
    - My name is Ada.
    - The door code is 4417.
    Tool results:
    - get_weather({"city": "Austin"}) -> Austin: 31°C, sunny
    Open questions:
    - What is my account balance?
    Earlier topics:
    - Tell me about the history of Rome.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

from shared.compaction.base import Item
from shared.compaction.turns import is_user_message, shorten_text
from shared.tokens import HeuristicEstimator, TokenEstimator

if TYPE_CHECKING:
    pass

__all__ = ["ExtractiveSummarizer", "render_items"]

FACTS, TOOLS, QUESTIONS, TOPICS, EARLIER = (
    "User facts:",
    "Tool results:",
    "Open questions:",
    "Earlier topics:",
    "Earlier summary:",
)
_RENDER_ORDER = (EARLIER, FACTS, TOOLS, QUESTIONS, TOPICS)


# --- reading items ------------------------------------------------------------------------


def _text(value: object) -> str:
    """The text of message content or tool output: a string or a list of text parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        for key in ("text", "output", "content", "refusal"):
            if isinstance(value.get(key), str):
                return str(value[key])
        return ""
    if isinstance(value, list | tuple):
        return " ".join(t for t in (_text(part) for part in value) if t)
    return ""


def _role(item: Item) -> str | None:
    return (
        str(item["role"]) if item.get("type", "message") == "message" and "role" in item else None
    )


def _call_line(call: Item | None, output: Item | None, max_chars: int) -> str:
    name = str(call.get("name", "?")) if call else "?"
    args = str(call.get("arguments", "")) if call else ""
    args = shorten_text(" ".join(args.split()), max(60, max_chars // 4))
    result = _text(output.get("output")).strip() if output else "[no output]"
    return f"{name}({args}) -> {shorten_text(result, max_chars)}"


def _tool_lines(items: Sequence[Item], max_chars: int) -> list[str]:
    """``name(args) -> output`` for every call or output, at the position of its output."""
    calls = {i.get("call_id"): i for i in items if i.get("type") == "function_call"}
    answered = {i.get("call_id") for i in items if i.get("type") == "function_call_output"}
    lines: list[str] = []
    for item in items:
        if item.get("type") == "function_call_output":
            lines.append(_call_line(calls.get(item.get("call_id")), item, max_chars))
        elif item.get("type") == "function_call" and item.get("call_id") not in answered:
            lines.append(_call_line(item, None, max_chars))
    return lines


def render_items(items: Sequence[Item], max_tool_chars: int = 2_000) -> list[str]:
    """A plain-text transcript, one entry per message or tool call (reasoning is skipped)."""
    calls = {i.get("call_id"): i for i in items if i.get("type") == "function_call"}
    answered = {i.get("call_id") for i in items if i.get("type") == "function_call_output"}
    lines: list[str] = []
    for item in items:
        role, kind = _role(item), item.get("type")
        if role is not None:
            text = _text(item.get("content")).strip()
            if text:
                lines.append(f"{role}: {text}")
        elif kind == "function_call_output":
            call = calls.get(item.get("call_id"))
            lines.append("tool call " + _call_line(call, item, max_tool_chars))
        elif kind == "function_call" and item.get("call_id") not in answered:
            lines.append("tool call " + _call_line(item, None, max_tool_chars))
    return lines


# --- facts --------------------------------------------------------------------------------

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_LEAD = r"^(?:(?:please\s+)?(?:remember|note)(?:\s+that)?[:,]?\s+)?"
_MY_KEY = re.compile(
    r"\b(?:my|our)\s+(?P<key>[a-z][\w'\- ]{0,40}?)\s+(?:is|are|was|were|=)\s+\S", re.IGNORECASE
)
_THE_KEY = re.compile(
    _LEAD + r"the\s+(?P<key>[a-z][\w'\- ]{0,40}?)\s+(?:is|are|=)\s+\S", re.IGNORECASE
)
_CALL_ME = re.compile(r"\bcall\s+me\s+(?P<value>[^.;,!?\n]+?)\s*(?:[.;,!?]|$)", re.IGNORECASE)
_QUALIFIER = re.compile(
    r"(?:\s+(?:from\s+now\s+on|going\s+forward|instead|now|please|then|thanks))+$", re.IGNORECASE
)
_I_LIVE = re.compile(r"\bI\s+(?:now\s+)?live\b", re.IGNORECASE)
_STRONG = re.compile(
    r"\bI\s+am\b|\bI['\u2019]m\b|\bremember\b|\bcall\s+me\b|\bmy\s+name\b"
    r"|\bI\s+(?:now\s+)?(?:live|work|moved|was\s+born|prefer)\b",
    re.IGNORECASE,
)
_WEAK = re.compile(r"\d|[\w.+-]+@[\w-]+\.[\w.-]+|https?://\S+|\bwww\.\S+", re.IGNORECASE)
_SYNONYMS = {"favorite": "favourite", "color": "colour", "our": "my"}
_UNABLE = re.compile(
    r"\bI\s+(?:don['\u2019]t|do\s+not|can['\u2019]t|cannot|could\s+not|couldn['\u2019]t)\s+"
    r"(?:know|have|find|answer|tell|access|compare|help|say|see|determine)"
    r"|\bI(?:['\u2019]m|\s+am)\s+not\s+(?:sure|able)|\bunable\s+to\b|\bno\s+information\b",
    re.IGNORECASE,
)
_MAX_FACT_CHARS = 600
_MAX_GIST_CHARS = 120
_MAX_WEAK_FACTS_PER_MESSAGE = 5


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_SPLIT.split(text) if s.strip()]


def _norm(key: str) -> str:
    return " ".join(_SYNONYMS.get(w, w) for w in key.lower().split())


@lru_cache(maxsize=4096)
def _fact_keys(fact: str) -> frozenset[str]:
    """What a fact sets ("my name", "the door code"): a later fact with the key replaces it."""
    keys = {"my " + _norm(m["key"]) for m in _MY_KEY.finditer(fact)}
    match = _THE_KEY.match(fact)
    if match:
        keys.add("the " + _norm(match["key"]))
    if _CALL_ME.search(fact):
        keys.add("my name")
    if _I_LIVE.search(fact):
        keys.add("i live")
    return frozenset(keys)


@lru_cache(maxsize=4096)
def _is_strong(fact: str) -> bool:
    return bool(_STRONG.search(fact) or _fact_keys(fact))


def _fact_entry(sentence: str) -> str:
    """The sentence verbatim; "call me X" also says "My name is X" (how names are asked for)."""
    sentence = shorten_text(sentence, _MAX_FACT_CHARS)
    match = _CALL_ME.search(sentence)
    if match and not _MY_KEY.search(sentence):
        name = _QUALIFIER.sub("", match["value"].strip()) or match["value"].strip()
        return f"My name is {name}; the user said: {sentence}"
    return sentence


def _gist(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_GIST_CHARS else flat[: _MAX_GIST_CHARS - 3].rstrip() + "..."


# --- the summary as sections --------------------------------------------------------------


class _Digest:
    """The summary's sections, oldest entry first; re-adding an entry makes it the newest."""

    def __init__(self) -> None:
        self.sections: dict[str, dict[str, None]] = {s: {} for s in _RENDER_ORDER}
        self._by_key: dict[str, set[str]] = {}  # fact key -> facts that set it

    @classmethod
    def parse(cls, text: str | None) -> _Digest:
        """Sections written by ``render``; any other text is kept as "Earlier summary"."""
        digest = cls()
        current: str | None = None
        entry: str | None = None
        free: list[str] = []

        def flush() -> None:
            if current is not None and entry is not None:
                digest.add(current, entry)

        for line in (text or "").splitlines():
            if line.strip() in digest.sections:
                flush()
                current, entry = line.strip(), None
            elif current is not None and line.startswith("- "):
                flush()
                entry = line[2:]
            elif current is not None and entry is not None and line.startswith("  "):
                entry += "\n" + line[2:]
            elif line.strip():
                flush()
                free.append(line.strip())
                current, entry = None, None
        flush()
        if free:
            earlier = digest.sections[EARLIER]
            digest.sections[EARLIER] = {"\n".join(free): None, **earlier}
        return digest

    def render(self, without: frozenset[tuple[str, str]] = frozenset()) -> str:
        """The summary text, leaving out the (section, entry) pairs in ``without``."""
        parts: list[str] = []
        for name in _RENDER_ORDER:
            entries = [e for e in self.sections[name] if (name, e) not in without]
            if entries:
                parts.append(name)
                parts += ["- " + e.replace("\n", "\n  ") for e in entries]
        return "\n".join(parts)

    def add(self, name: str, entry: str) -> None:
        """Append ``entry`` as the newest of its section, replacing what it supersedes."""
        entry = entry.strip()
        if not entry:
            return
        entries = self.sections[name]
        entries.pop(entry, None)
        if name == FACTS:
            self._supersede(entry)
        entries[entry] = None

    def _supersede(self, fact: str) -> None:
        """Drop older facts whose every key the new fact sets again (a new name, a new code)."""
        keys = _fact_keys(fact)
        for key in keys:
            for old in list(self._by_key.get(key, ())):
                if _fact_keys(old) <= keys:
                    self.sections[FACTS].pop(old, None)
                    for old_key in _fact_keys(old):
                        self._by_key[old_key].discard(old)
            self._by_key.setdefault(key, set()).add(fact)

    def is_empty(self) -> bool:
        return not any(self.sections.values())

    def drop_order(self) -> list[tuple[str, str]]:
        """Oldest first: topics, open questions, tool results, free text, weak then key facts."""
        order = [
            (name, e) for name in (TOPICS, QUESTIONS, TOOLS, EARLIER) for e in self.sections[name]
        ]
        facts = list(self.sections[FACTS])
        order += [(FACTS, e) for e in facts if not _is_strong(e)]
        return order + [(FACTS, e) for e in facts if _is_strong(e)]


def _turns(items: Sequence[Item]) -> list[list[Item]]:
    turns: list[list[Item]] = []
    for item in items:
        if is_user_message(item) or not turns:
            turns.append([])
        turns[-1].append(item)
    return turns


def _assistant_text(turn: Sequence[Item]) -> str:
    texts = [_text(i.get("content")) for i in turn if _role(i) == "assistant"]
    return texts[-1] if texts else ""


@dataclass(frozen=True)
class ExtractiveSummarizer:
    """Deterministic, offline: keeps what the user said and what tools returned, verbatim.

    No model is involved, so it is the default with the offline model and the safe
    fallback anywhere; what it cannot do is paraphrase, so budgets fill with verbatim
    text and the oldest low-value entries go first (see ``_Digest.drop_order``).
    """

    estimator: TokenEstimator = field(default_factory=HeuristicEstimator)
    max_tool_chars: int = 600

    async def __call__(
        self, previous: str | None, evicted: Sequence[Item], *, max_tokens: int
    ) -> str:
        return self.summarize(previous, evicted, max_tokens=max_tokens)

    def summarize(self, previous: str | None, evicted: Sequence[Item], *, max_tokens: int) -> str:
        digest = _Digest.parse(previous)
        for turn in _turns(evicted):
            self._fold_turn(digest, turn)
        if digest.is_empty() and evicted:
            digest.add(TOPICS, f"({len(evicted)} earlier items with no user text)")
        return self._fit(digest, max_tokens)

    def _fold_turn(self, digest: _Digest, turn: Sequence[Item]) -> None:
        unable = bool(_UNABLE.search(_assistant_text(turn)))
        for item in turn:
            if not is_user_message(item):
                continue
            facts: list[str] = []
            other: list[str] = []
            weak = 0
            for sentence in _sentences(_text(item.get("content"))):
                if sentence.endswith("?"):
                    other.append(sentence)
                elif _is_strong(sentence):
                    facts.append(sentence)
                elif _WEAK.search(sentence) and weak < _MAX_WEAK_FACTS_PER_MESSAGE:
                    facts.append(sentence)
                    weak += 1
                else:
                    other.append(sentence)
            for fact in facts:
                digest.add(FACTS, _fact_entry(fact))
            if other:
                questions = [s for s in other if s.endswith("?")] or other
                if unable:
                    digest.add(QUESTIONS, _gist(" ".join(questions)))
                else:
                    digest.add(TOPICS, _gist(" ".join(other)))
        for line in _tool_lines(turn, self.max_tool_chars):
            digest.add(TOOLS, line)

    def _fit(self, digest: _Digest, max_tokens: int) -> str:
        """The digest within ``max_tokens``: the fewest entries dropped in ``drop_order``."""
        order = digest.drop_order()

        def fits(dropped: int) -> str | None:
            text = digest.render(frozenset(order[:dropped]))
            return text if self.estimator.count_text(text) <= max_tokens else None

        text = fits(0)
        if text is not None or not order:
            return text or ""
        if fits(len(order) - 1) is None:  # the most valuable entry: shorten it, not drop it
            name, entry = order[-1]
            return self._shortened(name, entry, max_tokens)
        lo, hi = 1, len(order) - 1  # fits(hi) holds, fits(lo - 1) does not
        while lo < hi:
            mid = (lo + hi) // 2
            if fits(mid) is None:
                lo = mid + 1
            else:
                hi = mid
        return fits(hi) or ""

    def _shortened(self, name: str, entry: str, max_tokens: int) -> str:
        """``entry`` alone, cut to fit (by bisection on its length), or "" if nothing fits."""
        lo, hi, best = 0, len(entry), ""
        while lo <= hi:
            mid = (lo + hi) // 2
            text = f"{name}\n- " + shorten_text(entry, mid).replace("\n", "\n  ")
            if self.estimator.count_text(text) <= max_tokens:
                best, lo = text, mid + 1
            else:
                hi = mid - 1
        return best
