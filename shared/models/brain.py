"""A deterministic, rule-based "brain" shared by the offline model and the stub HTTP server.

Tests and demos need a model that behaves like a chat model where it matters to turnq --
it calls tools, answers from tool results, remembers facts and can only compare what
its context still holds -- without a network or weights.  The brain takes plain
Responses-API input items (dicts) so both front ends can feed it:

    from shared.models.brain import ToolSpec, think
    reply = think("Be brief.", [{"role": "user", "content": "Weather in Austin?"}],
                  [ToolSpec("get_weather", "Weather for a city.", schema)])
    reply.tool_calls   # (ToolCall(name="get_weather", arguments={"city": "Austin"}),)

Every answer is derived from the context passed in, never from hidden state: drop the
tool results from the context and the brain can no longer compare them, which is
exactly what context-management tests need to observe.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.tokens import ATTACHMENT_TOKENS, text_and_attachments

__all__ = [
    "Reply",
    "ToolCall",
    "ToolSpec",
    "estimate_tokens",
    "first_tool_call",
    "item_text",
    "think",
]


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model may call: its name, description and JSON-schema parameters."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Reply:
    """Either tool calls (``text`` is None) or a text answer (``tool_calls`` is empty)."""

    text: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()


def estimate_tokens(obj: object) -> int:
    """Roughly chars/4 of the text or JSON, never 0, so usage and compaction triggers move."""
    if obj is None:
        return 1
    text, attachments = text_and_attachments(obj)  # an image is not its base64 text
    return max(1, math.ceil(len(text) / 4)) + attachments * ATTACHMENT_TOKENS


# --- reading items -----------------------------------------------------------

_MESSAGE_ROLES = frozenset({"user", "assistant", "system", "developer"})


def item_text(value: object) -> str:
    """The text of a message content or tool output: a string or a list of text parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        if value.get("type") in ("input_image", "input_file"):
            return _attachment(value)
        for key in ("text", "output", "content", "refusal"):
            if isinstance(value.get(key), str):
                return str(value[key])
        return ""
    if isinstance(value, Iterable):
        return " ".join(t for t in (item_text(part) for part in value) if t)
    return ""


def _attachment(part: Mapping[str, Any]) -> str:
    """An image or file the model cannot look at, described by its name."""
    kind = "image" if part.get("type") == "input_image" else "file"
    name = part.get("filename") or part.get("file_id")
    url = part.get("image_url") or part.get("file_url") or part.get("file_data") or ""
    if not name and isinstance(url, str):
        name = "inline data" if url.startswith("data:") else url.rsplit("/", 1)[-1].split("?")[0]
    return f"[{kind}: {name or 'unnamed'}]"


def _role(item: Mapping[str, Any]) -> str | None:
    """The message role, or None for tool items (a message has no type or type "message")."""
    if item.get("type", "message") != "message":
        return None
    role = item.get("role")
    return role if role in _MESSAGE_ROLES else None


def _user_indices(items: Sequence[Mapping[str, Any]]) -> list[int]:
    return [i for i, item in enumerate(items) if _role(item) == "user"]


# --- words and entities --------------------------------------------------------

_STOP_WORDS = frozenset(
    """a an and also are as at be but by can could did do does for from give had has have
    hello hey hi how i i'd i'm if in is it it's let me my no now of ok okay on or please
    same show so tell thanks thank that the then there these this those to today tomorrow
    was we what what's when where which who why will with would yes you your""".split()
)
_VERB_PREFIXES = frozenset(
    "get fetch lookup look up find search list query read check retrieve show calc compute".split()
)
_CAP_RUN = re.compile(r"[A-Z][\w'\-]*(?:[ \t]+[A-Z][\w'\-]*)*")
_TRAILING_PLACE = re.compile(r"\b(?:in|for|at|about)\s+([a-z][a-z \-']*?)\s*[?.!]*$")
_FOLLOW_UP = re.compile(
    r"^\s*(?:(?:and\s+)?(?:how|what)\s+about\b|and\s+(?:in|for|at|now)\b|(?:same|ditto)\s+for\b"
    r"|and\b|also\b|then\b)",
    re.IGNORECASE,
)
_COMPARISON = re.compile(
    r"\b(warmer|warmest|hotter|hottest|colder|coldest|cooler|coolest)\b", re.IGNORECASE
)
_TEMPERATURE = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:°|º|deg(?:rees)?)?\s*([CF])\b")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


HANDOFF_PREFIX = "transfer_to_"  # the SDK's handoff tools: transfer_to_<agent name>


def is_handoff(name: str) -> bool:
    return name.startswith(HANDOFF_PREFIX)


def tool_topics(tool: ToolSpec) -> frozenset[str]:
    """Words of the tool *name* minus verbs ("get_weather" -> {"weather"}); a handoff's
    are the target agent's ("transfer_to_billing" -> {"billing"}).

    Description words are deliberately not topics: they are generic ("city", "current")
    and would hijack questions such as "Which city is warmer?".
    """
    name = tool.name[len(HANDOFF_PREFIX) :] if is_handoff(tool.name) else tool.name
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    words = {w for w in _words(spaced.replace("_", " ").replace("-", " ")) if len(w) > 2}
    return frozenset(words - _VERB_PREFIXES - _STOP_WORDS)


def _mentions(text: str, topics: Iterable[str]) -> bool:
    words = set(_words(text))
    return any(t in words or f"{t}s" in words for t in topics)


def extract_entities(text: str, extra_stop: Iterable[str] = ()) -> list[str]:
    """Capitalised names ("Austin", "New York"), skipping stop words such as "What"/"How"."""
    stop = _STOP_WORDS | {w.lower() for w in extra_stop}
    found: list[str] = []
    for run in _CAP_RUN.findall(text):
        kept: list[str] = []
        for word in run.split():
            if word.lower().strip("'") in stop:
                if kept:
                    found.append(" ".join(kept))
                kept = []
            else:
                kept.append(word)
        if kept:
            found.append(" ".join(kept))
    if not found:
        match = _TRAILING_PLACE.search(text.strip())
        if match and match.group(1).split()[0] not in stop:
            found.append(match.group(1).strip().title())
    unique: list[str] = []
    for name in found:
        if name not in unique:
            unique.append(name)
    return unique


# --- facts ---------------------------------------------------------------------

_SYNONYMS = {"favorite": "favourite", "color": "colour"}
_STATEMENT = re.compile(
    r"^(?:(?:please\s+)?remember(?:\s+that)?[:,]?\s+)?(?P<owner>my|the|our)\s+"
    r"(?P<key>[a-z][\w'\- ]{0,40}?)\s+(?:is|are|=)\s+(?P<value>[^?]+?)\s*[.!]*$",
    re.IGNORECASE,
)
_CALL_ME = re.compile(r"^(?:you\s+can\s+)?call\s+me\s+(?P<value>[^?.!]+?)\s*[.!]*$", re.IGNORECASE)
_QUESTION = re.compile(
    r"(?:what(?:'s|\u2019s|\s+is|\s+was|\s+are)|do\s+you\s+(?:know|remember)|tell\s+me|remind\s+me\s+of)"
    r"\s+(?P<owner>my|the|our)\s+(?P<key>[a-z][\w'\- ]{0,40}?)(?:\s+(?:is|was|again))?\s*\?*\s*$",
    re.IGNORECASE,
)


def _norm_key(key: str) -> str:
    return " ".join(_SYNONYMS.get(w, w) for w in key.lower().split())


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]


def parse_statement(text: str) -> tuple[str, str, str] | None:
    """("my", "name", "Ada") for "My name is Ada."; None for questions and other text."""
    for sentence in _sentences(text):
        if sentence.endswith("?"):
            continue
        match = _STATEMENT.match(sentence)
        if match:
            return match["owner"].lower(), _norm_key(match["key"]), match["value"].strip()
        match = _CALL_ME.match(sentence)
        if match:
            return "my", "name", match["value"].strip()
    return None


def _key_pattern(key: str) -> re.Pattern[str]:
    """Finds "<key> is <value>" in free text (summaries too), tolerating favorite/favourite."""
    reverse = {v: k for k, v in _SYNONYMS.items()}
    parts = []
    for word in key.split():
        alts = {word, reverse.get(word, word)}
        parts.append("(?:" + "|".join(re.escape(a) for a in sorted(alts)) + ")")
    return re.compile(
        r"(?<![\w-])" + r"[\s_]+".join(parts) + r"[\"']?\s*(?:(?:is|was)\s+|[=:]\s*)[\"']?"
        r"(?P<value>[^\s\"'].*?)[\"']?"
        r"(?=\s*(?:[;,\n}]|\.(?:\s|$)|!|$|\s+and\s+(?:my|the|your|their|her|his)\b))",
        re.IGNORECASE,
    )


def recall(key: str, texts: Sequence[str]) -> str | None:
    """The most recent value stated for ``key`` anywhere in ``texts`` (oldest first)."""
    pattern = _key_pattern(key)
    for text in reversed(texts):
        matches = [m["value"].strip() for m in pattern.finditer(text) if m["value"].strip()]
        if matches:
            return matches[-1].rstrip(".")
    return None


def _owner_phrase(owner: str) -> str:
    return "your" if owner in {"my", "our"} else "the"


# --- tool results ----------------------------------------------------------------


@dataclass(frozen=True)
class _Result:
    tool: str
    arguments: dict[str, Any]
    output: str


def _results(items: Sequence[Mapping[str, Any]], start: int = 0) -> list[_Result]:
    """Tool outputs from ``start`` on, joined to their calls by ``call_id`` where present."""
    calls = {item.get("call_id"): item for item in items if item.get("type") == "function_call"}
    found = []
    for item in items[start:]:
        if item.get("type") != "function_call_output":
            continue
        call = calls.get(item.get("call_id"), {})
        if is_handoff(str(call.get("name", ""))):
            continue  # a handoff's output says who answers now, not a result to report
        try:
            arguments = json.loads(call.get("arguments") or "{}")
        except (TypeError, ValueError):
            arguments = {}
        found.append(
            _Result(
                tool=str(call.get("name", "")),
                arguments=arguments if isinstance(arguments, dict) else {},
                output=item_text(item.get("output")),
            )
        )
    return found


def _topic_phrase(tool_name: str) -> str:
    topics = [w for w in _words(tool_name.replace("_", " ")) if w not in _VERB_PREFIXES]
    return " ".join(topics) or "result"


_PLACE_PARAMS = frozenset({"city", "location", "place", "country", "town", "region", "area"})


def _restate(result: _Result) -> str:
    """ "Austin: 31°C, sunny" from get_weather -> "The weather in Austin is 31°C and sunny." """
    topic = _topic_phrase(result.tool) if result.tool else "result"
    match = re.match(r"^\s*([^:\n]{1,80}):\s*(.+?)\s*\.?\s*$", result.output, re.DOTALL)
    if not match:
        verb = "are" if topic.endswith("s") and not topic.endswith("ss") else "is"
        return f"Here {verb} the {topic}: {result.output.strip()}"
    subject, facts = match.group(1).strip(), [f.strip() for f in match.group(2).split(",")]
    facts = [f for f in facts if f]
    said = facts[0] if len(facts) == 1 else ", ".join(facts[:-1]) + " and " + facts[-1]
    place_like = not result.arguments or any(k in _PLACE_PARAMS for k in result.arguments)
    return f"The {topic} {'in' if place_like else 'for'} {subject} is {said}."


def _place_of(result: _Result) -> str | None:
    match = re.match(r"^\s*([^:\n]{1,80}):", result.output)
    if match:
        return match.group(1).strip()
    strings = [v for v in result.arguments.values() if isinstance(v, str)]
    return strings[0] if strings else None


def _compare(question: str, results: Sequence[_Result]) -> str:
    """Name the warmest/coldest place among every temperature reading still in context."""
    readings: dict[str, tuple[float, str]] = {}
    for result in results:
        temp = _TEMPERATURE.search(result.output)
        place = _place_of(result)
        if temp and place:
            value = float(temp.group(1))
            celsius = (value - 32) * 5 / 9 if temp.group(2).upper() == "F" else value
            readings[place] = (celsius, temp.group(0).replace(" ", ""))
    if len(readings) < 2:
        have = f" I only have a reading for {next(iter(readings))}." if readings else ""
        return (
            "I can't compare temperatures: I don't have readings for two places in this "
            f"conversation.{have}"
        )
    word = _COMPARISON.search(question)
    want_cold = bool(word and word.group(1).lower().startswith(("cold", "cool")))
    ranked = sorted(readings.items(), key=lambda kv: kv[1][0], reverse=not want_cold)
    (best, (best_c, best_txt)), rest = ranked[0], ranked[1:]
    adjective = "colder" if want_cold else "warmer"
    if all(abs(best_c - c) < 1e-9 for _, (c, _) in rest):
        return (
            "They are the same temperature: "
            + ", ".join(f"{p} ({t})" for p, (_, t) in ranked)
            + "."
        )
    named = [f"{p} ({t})" for p, (_, t) in rest]
    others = named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
    return f"{best} is {adjective} ({best_txt}) than {others}."


# --- choosing tools ----------------------------------------------------------------


def _required_strings(tool: ToolSpec) -> list[str]:
    props = tool.parameters.get("properties", {}) if tool.parameters else {}
    required = tool.parameters.get("required", list(props)) if tool.parameters else []
    return [p for p in required if props.get(p, {}).get("type", "string") == "string"]


def _calls_for(tool: ToolSpec, entities: Sequence[str]) -> list[ToolCall]:
    params = _required_strings(tool)
    if not params:
        return [ToolCall(tool.name, {})]
    if len(params) == 1:
        return [ToolCall(tool.name, {params[0]: e}) for e in entities]
    if len(entities) >= len(params):
        return [ToolCall(tool.name, dict(zip(params, entities, strict=False)))]
    return []


def _previous_turn_tools(items: Sequence[Mapping[str, Any]], users: Sequence[int]) -> list[str]:
    """Tools called by the most recent earlier user turn that called any."""
    bounds = [*users, len(items)]
    for start, end in reversed(list(itertools.pairwise(bounds))[:-1]):
        names = [
            str(it.get("name")) for it in items[start:end] if it.get("type") == "function_call"
        ]
        if names:
            return list(dict.fromkeys(names))
    return []


def _choose_tools(
    message: str,
    items: Sequence[Mapping[str, Any]],
    users: Sequence[int],
    tools: Sequence[ToolSpec],
) -> Reply | None:
    topics = {tool.name: tool_topics(tool) for tool in tools}
    all_topics: set[str] = set().union(*topics.values())
    entities = extract_entities(message, extra_stop=all_topics)
    chosen = [tool for tool in tools if _mentions(message, topics[tool.name])]
    if not chosen and _FOLLOW_UP.match(message) and entities:
        previous = _previous_turn_tools(items, users)
        chosen = [tool for tool in tools if tool.name in previous]
    if not chosen:
        return None
    handoffs = [tool for tool in chosen if is_handoff(tool.name)]
    if handoffs:  # hand the conversation over; the next agent takes it from there
        return Reply(tool_calls=(ToolCall(handoffs[0].name, {}),))
    calls = [call for tool in chosen for call in _calls_for(tool, entities)]
    if calls:
        return Reply(tool_calls=tuple(calls))
    tool = chosen[0]
    param = (_required_strings(tool) or ["details"])[0]
    return Reply(text=f"Which {param} do you want the {_topic_phrase(tool.name)} for?")


# --- the brain ----------------------------------------------------------------------


def _context_texts(instructions: str | None, items: Sequence[Mapping[str, Any]]) -> list[str]:
    texts = [instructions] if instructions else []
    texts += [item_text(item.get("content")) for item in items if _role(item)]
    return texts


def _answer_fact_question(message: str, texts: Sequence[str]) -> str | None:
    match = _QUESTION.search(message.strip())
    if not match:
        return None
    key, owner = _norm_key(match["key"]), _owner_phrase(match["owner"].lower())
    value = recall(key, texts)
    if value is None:
        return f"I don't know {owner} {key} yet."
    return f"{owner.capitalize()} {key} is {value}."


def _handed_over(items: Sequence[Mapping[str, Any]]) -> bool:
    """The last item is a handoff's output: the agent answering now was just handed it."""
    if not items or items[-1].get("type") != "function_call_output":
        return False
    call_id = items[-1].get("call_id")
    names = [
        str(it.get("name", ""))
        for it in items
        if it.get("type") == "function_call" and it.get("call_id") == call_id
    ]
    return bool(names) and is_handoff(names[-1])


def think(
    instructions: str | None,
    items: str | Sequence[Mapping[str, Any]],
    tools: Sequence[ToolSpec] = (),
) -> Reply:
    """Decide the next model output for this context. Pure and deterministic."""
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    users = _user_indices(items)
    message = item_text(items[users[-1]].get("content")).strip() if users else ""
    turn_start = users[-1] + 1 if users else 0

    handed_over = _handed_over(items)
    if handed_over:  # a new agent takes the conversation: it may not hand it back at once
        tools = [tool for tool in tools if not is_handoff(tool.name)]
    elif items and items[-1].get("type") == "function_call_output":
        if _COMPARISON.search(message):
            return Reply(text=_compare(message, _results(items)))
        sentences = [_restate(r) for r in _results(items, turn_start)]
        return Reply(text=" ".join(sentences))

    statement = parse_statement(message)
    if statement:
        owner, key, value = statement
        return Reply(text=f"Got it: {_owner_phrase(owner)} {key} is {value}.")

    if _COMPARISON.search(message):
        return Reply(text=_compare(message, _results(items)))

    chosen = _choose_tools(message, items, users, tools)
    if chosen is not None:
        return chosen

    answer = _answer_fact_question(message, _context_texts(instructions, items))
    if answer is not None:
        return Reply(text=answer)
    if not message:
        return Reply(text="Hello! How can I help?")
    return Reply(text=f"Noted: {message[:80]}")


def first_tool_call(items: Sequence[Mapping[str, Any]], tools: Sequence[ToolSpec]) -> Reply | None:
    """A call for a model that looks something up before every answer (the realistic
    profile's tool-first flow): the tool the brain would pick, else the first one, with
    the message's names as arguments.  None without tools or once this turn called one."""
    if not tools:
        return None
    users = _user_indices(items)
    start = users[-1] + 1 if users else 0
    if any(item.get("type") == "function_call" for item in items[start:]):
        return None
    message = item_text(items[users[-1]].get("content")).strip() if users else ""
    chosen = _choose_tools(message, items, users, tools)
    if chosen is not None and chosen.tool_calls:
        return chosen
    tool = tools[0]
    entities = extract_entities(message, extra_stop=tool_topics(tool)) or ["turnq"]
    params = _required_strings(tool)
    arguments = {p: entities[min(i, len(entities) - 1)] for i, p in enumerate(params)}
    return Reply(tool_calls=(ToolCall(tool.name, arguments),))
