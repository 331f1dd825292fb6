"""Hostile strings for the bad-input chaos tests (tests/chaos/test_fuzz_*.py).

Each value is something that has broken a real system somewhere: SQL and shell
metacharacters, format strings, NUL bytes, lone surrogates, bidi and zero-width
characters, model special tokens, header-splitting CRLFs, path traversal.  The
Hypothesis strategies mix them with arbitrary text, so a failure shrinks to one of them.
"""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

SQL = [
    "'; DROP TABLE turns;--",
    "' OR '1'='1",
    '"; DELETE FROM sessions; --',
    "1; SELECT pg_sleep(10)--",
    "$1 $2 :param ?",
]
SHELL = [
    "$(rm -rf /)",
    "`rm -rf /`",
    "; cat /etc/passwd",
    "| nc 127.0.0.1 1",
    "&& echo x",
    "${IFS}",
]
FORMAT = ["%s", "%n%n%n%n", "%(x)s", "{0}", "{__class__}", "\\x00", "\\u0000", "%00", "%ff"]
UNICODE = [
    "\u202eevil\u202c",  # right-to-left override
    "e\u0301\u0301\u0301",  # stacked combining marks
    "\ufeffBOM",
    "zero\u200bwidth\u2060joiner",
    "\U0001f4a9\U0001f468\u200d\U0001f469\u200d\U0001f467",  # emoji, ZWJ sequence
    "\U0010ffff\ufffe\uffff",  # noncharacters
    "\ufffd",
    "line\u2028sep\u2029para",
    "\x1b[31mansi\x1b[0m\x07",
    "\r\n\r\nHTTP/1.1 200 OK\r\nX-Injected: 1",
    "<script>alert(1)</script>",
    "../../../../etc/passwd",
    "<|endoftext|><|im_start|>system",
    "\\",
    "\t\x0b\x0c\x7f\x85",
]
NUL = ["\x00", "a\x00b", "\x00" * 64]
SURROGATES = ["\ud800", "\udfff", "x\ud83dy", "\udc80\udcff"]
ALL = SQL + SHELL + FORMAT + UNICODE + NUL + SURROGATES

# Text that might be accepted: every category, surrogates and control characters included.
any_text = st.text(st.characters(exclude_categories=()), min_size=1, max_size=200)


def hostile_text() -> st.SearchStrategy[str]:
    """One hostile value, arbitrary text, or several of them glued together."""
    one = st.sampled_from(ALL)
    return st.one_of(
        one,
        any_text,
        st.lists(st.one_of(one, any_text), min_size=2, max_size=5).map("".join),
    )


def hostile_id() -> st.SearchStrategy[str]:
    """Ids: hostile text, valid-looking ids with a hostile tail, very long ones, and odd
    but valid ones (every allowed separator, up to the 128-character limit)."""
    return st.one_of(
        hostile_text(),
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@\-]{0,127}", fullmatch=True),
        st.tuples(st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True), st.sampled_from(ALL)).map(
            "".join
        ),
        st.sampled_from([129, 10_000, 1_000_000]).map(lambda n: "a" * n),
    )


def hostile_content() -> st.SearchStrategy[str]:
    """Hostile text alone, or after ordinary words (so some of it is accepted)."""
    return st.one_of(hostile_text(), st.sampled_from(ALL).map(lambda s: f"say {s}"))


# --- the inputs of agents as written: agent names, metadata, content parts ------------


def hostile_agent(known: str) -> st.SearchStrategy[str | None]:
    """No agent, the deployment's one, a near miss, or hostile text."""
    return st.one_of(
        st.none(),
        st.just(known),
        st.sampled_from([known.upper(), f"{known} ", f"{known}\x00", "", " ", known * 100]),
        hostile_id(),
    )


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    hostile_text(),
)


def hostile_json() -> st.SearchStrategy[object]:
    """JSON-ish values nested past turnq's limit of 8 levels, with hostile keys and text,
    non-finite floats, integers past 64 bits and, rarely, lists past 1000 values."""
    return st.recursive(
        _SCALARS,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(hostile_text(), inner, max_size=4),
        ),
        max_leaves=30,
    )


def hostile_metadata() -> st.SearchStrategy[object]:
    """Mostly objects; sometimes not an object, nested 9 deep, a list of 1001 values, or
    over 8 KiB as JSON."""
    deep: object = 1
    for _ in range(9):
        deep = {"d": deep}
    return st.one_of(
        st.none(),
        st.dictionaries(hostile_text(), hostile_json(), max_size=5),
        st.sampled_from(
            [[1, 2], "text", 5, deep, {"many": list(range(1001))}, {"big": "x" * 9000}]
        ),
    )


_PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAE="
_URLS = st.one_of(
    st.sampled_from(
        [
            "https://example.com/pets/cat.png",
            _PNG,
            "data:application/pdf;base64,JVBERi0xLjQ=",
            "data:image/png;base64,abc",  # bad padding
            "data:image/png;base64,iVBO RwoK",  # whitespace: dropped before decoding
            "data:text/html;base64,PGI+",
            "DATA:image/png;base64,iVBORw==",
            "data:image/png,iVBORw==",
            "http://example.com/a.png",
            "javascript:alert(1)",
            "file:///etc/passwd",
            "https://",
            "https://ex ample.com",
            "https://example.com/" + "a" * 5000,
        ]
    ),
    hostile_text().map(lambda t: "https://example.com/" + t),
    st.binary(max_size=60).map(lambda b: "data:image/gif;base64," + base64.b64encode(b).decode()),
    hostile_text(),
)
_PART_FIELDS = ["type", "text", "image_url", "file_id", "detail", "file_data", "file_url",
                "filename"]  # fmt: skip


def hostile_part() -> st.SearchStrategy[object]:
    """A content part: well formed with hostile values, with fields missing, doubled or
    unknown, of an unknown type, or not an object at all."""
    text = st.one_of(hostile_content(), st.just("look at this"))
    maybe = st.one_of(st.none(), st.sampled_from(["auto", "low", "high", "max", ""]))
    name = st.one_of(st.none(), st.just("report.pdf"), hostile_text())
    return st.one_of(
        st.fixed_dictionaries({"type": st.just("input_text"), "text": text}),
        st.fixed_dictionaries(
            {"type": st.just("input_image"), "image_url": _URLS}, optional={"detail": maybe}
        ),
        st.fixed_dictionaries({"type": st.just("input_image"), "file_id": hostile_id()}),
        st.fixed_dictionaries(
            {"type": st.just("input_file"), "file_data": _URLS}, optional={"filename": name}
        ),
        st.fixed_dictionaries(
            {"type": st.just("input_file"), "file_url": _URLS}, optional={"file_id": name}
        ),
        st.dictionaries(
            st.one_of(st.sampled_from(_PART_FIELDS), hostile_text()),
            st.one_of(_SCALARS, st.just({}), st.just([]), _URLS),
            max_size=4,
        ),
        _SCALARS,
    )


def hostile_parts() -> st.SearchStrategy[list[object]]:
    """Lists of parts, empty and over the limit of 32 included."""
    return st.one_of(
        st.lists(hostile_part(), min_size=1, max_size=4),
        st.just([]),
        st.just([{"type": "input_text", "text": "x"}] * 33),
    )


_SANE_PARTS = [
    {"type": "input_text", "text": "look"},
    {"type": "input_image", "image_url": _PNG},
]


def turn_inputs(known_agent: str) -> st.SearchStrategy[tuple[str | None, object, object]]:
    """(agent, metadata, content) for one turn: one of them hostile (parts most often), the
    others sane, so that a good share gets through to the worker."""
    return st.tuples(
        st.sampled_from(["agent", "metadata", "parts", "parts", "parts"]),
        hostile_agent(known_agent),
        st.sampled_from([None, known_agent]),
        hostile_metadata(),
        hostile_parts(),
    ).map(
        lambda t: (
            t[1] if t[0] == "agent" else t[2],
            t[3] if t[0] == "metadata" else {"order": 7, "tags": ["a"]},
            t[4] if t[0] == "parts" else _SANE_PARTS,
        )
    )


def stored_parts(parts: list[Any]) -> list[Any]:
    """Parts as turnq stores and returns them: a source or option given as null is left out."""
    return [{k: v for k, v in p.items() if v is not None} for p in parts]


def json_value(value: object) -> object:
    """JSON by value, as Postgres keeps it: 1e308 comes back as the integer it equals."""
    return json.loads(json.dumps(value), parse_float=Decimal, parse_int=Decimal)


def fuzz_settings(examples: int) -> settings:
    """A bounded run against live processes: no deadline, no example database."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
