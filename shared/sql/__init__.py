"""The SQL functions behind every turn transition, and the markers that tie them to Python.

    from shared.sql import render
    STALE = render("SELECT ... WHERE status IN {{in:runnable}}")

The plpgsql functions live in the ``*.sql`` files next to this module, one per
function, so changing one is a diff of that file.  They are (re)installed by
``install``, which migration 0006 calls and ``ops.migrate.upgrade`` calls again
whenever the rendered text changed (a repeatable migration: ``turnq_sql_checksum()``
holds the checksum of what is installed).

Markers, filled from ``shared.status`` so the SQL cannot drift from the table:

    {{from:MOVE}}   the statuses MOVE may start from, as ('a', 'b')
    {{to:MOVE}}     the status MOVE ends in, as 'x'
    {{in:GROUP}}    a status group (open, runnable, terminal), as ('a', 'b')
    {{status:S}}    one status, as 's' (checked against TurnStatus)
    {{code:C}}      one error code, as 'c' (checked against ErrorCode)
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable
from pathlib import Path

from shared.status import GROUPS, TRANSITIONS, ErrorCode, Move, TurnStatus

HERE = Path(__file__).parent

# Install order (only readability: every function is plpgsql, whose body is resolved at
# run time, so a file may name a function or a column that comes later -- a ``LANGUAGE
# sql`` body would be checked at creation, by an older migration that installs these).
FILES = (
    "turn_json.sql",
    "hold.sql",
    "usage_delta.sql",
    "append.sql",
    "take.sql",
    "claim.sql",
    "complete.sql",
    "fail.sql",
    "left.sql",
    "close_waiting.sql",
    "cancel.sql",
    "stop_pending.sql",
    "pause.sql",
    "decide.sql",
    "expire.sql",
    "journal.sql",
    "expire_journal.sql",
)

FENCED_SQLSTATE = "TQ001"  # the caller's fence is stale: another worker owns the session

_MARKER = re.compile(r"\{\{(\w+):(\w+)\}\}")


def _quoted(statuses: frozenset[TurnStatus]) -> str:
    return "(" + ", ".join(f"'{s.value}'" for s in sorted(statuses)) + ")"


def _fill(match: re.Match[str]) -> str:
    kind, name = match.group(1), match.group(2)
    if kind == "from":
        return _quoted(TRANSITIONS[Move(name)][0])
    if kind == "to":
        return f"'{TRANSITIONS[Move(name)][1].value}'"
    if kind == "in":
        return _quoted(GROUPS[name])
    if kind == "status":
        return f"'{TurnStatus(name).value}'"
    if kind == "code":
        return f"'{ErrorCode(name).value}'"
    raise ValueError(f"unknown SQL marker {match.group(0)}")


def render(sql: str) -> str:
    """The SQL with its status markers filled in (raises on an unknown name)."""
    return _MARKER.sub(_fill, sql)


@functools.cache
def function_sql() -> tuple[str, ...]:
    """Every function definition, rendered, in install order."""
    return tuple(render((HERE / name).read_text()) for name in FILES)


def checksum() -> str:
    return hashlib.sha256("\n".join(function_sql()).encode()).hexdigest()[:16]


_DROP_ALL = """
DO $drop$
DECLARE f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
             JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = current_schema() AND p.proname LIKE 'turnq\\_%'
    LOOP
        EXECUTE 'DROP FUNCTION ' || f;
    END LOOP;
END
$drop$
"""


def drop_all(execute: Callable[[str], object]) -> None:
    """Drop every ``turnq_*`` function of the current schema."""
    execute(_DROP_ALL)


def install(execute: Callable[[str], object]) -> None:
    """Drop every ``turnq_*`` function and create the current ones (one transaction: the
    caller's).  Dropping first lets a signature change; other sessions see the old
    functions until the transaction commits, then the new ones."""
    drop_all(execute)
    for sql in function_sql():
        execute(sql)
    execute(
        "CREATE FUNCTION turnq_sql_checksum() RETURNS text LANGUAGE sql IMMUTABLE "
        f"AS $$ SELECT '{checksum()}'::text $$"
    )
