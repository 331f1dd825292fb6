"""Hostile strings for the bad-input chaos tests (tests/chaos/test_fuzz_*.py).

Each value is something that has broken a real system somewhere: SQL and shell
metacharacters, format strings, NUL bytes, lone surrogates, bidi and zero-width
characters, model special tokens, header-splitting CRLFs, path traversal.  The
Hypothesis strategies mix them with arbitrary text, so a failure shrinks to one of them.
"""

from __future__ import annotations

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


def fuzz_settings(examples: int) -> settings:
    """A bounded run against live processes: no deadline, no example database."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
