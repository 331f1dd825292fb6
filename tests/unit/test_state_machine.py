"""The turn state machine: one table in ``shared.status``, enforced by the SQL of ``shared/sql``.

The allowed sources of every status change are read back out of the rendered SQL and
compared with the table, so the two cannot drift; and no status change may live
anywhere else.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared import sql
from shared.status import (
    OPEN,
    RUNNABLE,
    TERMINAL,
    TRANSITIONS,
    ErrorCode,
    TurnStatus,
    can_transition,
)

ROOT = Path(__file__).resolve().parents[2]

_UPDATE = re.compile(r"UPDATE\s+turns\b", re.I)
_ASSIGN = re.compile(r"(?:\bSET|,)\s*status\s*=", re.I)
_TARGET = re.compile(r"(?:\bSET|,)\s*status\s*=\s*'(\w+)'", re.I)
_GUARD = re.compile(r"\bstatus\s+IN\s*\(([^)]*)\)", re.I)


def _statement(text: str, start: int) -> str:
    """From ``start`` to the end of the statement: the next ``;`` outside a string literal."""
    quoted = False
    for i in range(start, len(text)):
        if text[i] == "'":
            quoted = not quoted
        elif text[i] == ";" and not quoted:
            return text[start:i]
    return text[start:]


def status_changes() -> list[tuple[str, frozenset[TurnStatus], TurnStatus]]:
    """(file, allowed sources, target) of every statement in shared/sql that sets a status."""
    found = []
    for name, text in zip(sql.FILES, sql.function_sql(), strict=True):
        for match in _UPDATE.finditer(text):
            body = _statement(text, match.end())
            if not _ASSIGN.search(body.split("WHERE")[0]):
                continue  # updates other columns only
            target = _TARGET.search(body)
            guard = _GUARD.search(body.split("WHERE", 1)[1] if "WHERE" in body else "")
            assert target, f"{name}: a status change to a value that is not a literal:\n{body}"
            assert guard, f"{name}: a status change without a status guard:\n{body}"
            sources = frozenset(TurnStatus(s.strip().strip("'")) for s in guard.group(1).split(","))
            found.append((name, sources, TurnStatus(target.group(1))))
    return found


def test_every_status_change_in_the_sql_is_a_transition_of_the_table() -> None:
    changes = status_changes()
    assert len(changes) >= 8
    allowed = {(sources, target) for sources, target in TRANSITIONS.values()}
    for name, sources, target in changes:
        assert (sources, target) in allowed, f"{name}: {sorted(sources)} -> {target} not in table"


def test_every_transition_of_the_table_has_its_statement() -> None:
    implemented = {(sources, target) for _, sources, target in status_changes()}
    missing = [m for m, (src, dst) in TRANSITIONS.items() if (src, dst) not in implemented]
    assert missing == []


def test_no_status_change_outside_shared_sql() -> None:
    """Python code only calls the functions: a status literal set anywhere else is a bug."""
    offenders = []
    for folder in ("shared", "producer", "workers"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            if re.search(r"\bSET\s+status\s*=\s*[':%]|,\s*status\s*=\s*'", text, re.I):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_groups_and_terminal_states() -> None:
    assert TERMINAL.isdisjoint(OPEN) and RUNNABLE < OPEN
    assert OPEN | TERMINAL == set(TurnStatus)
    for done in TERMINAL:
        assert not any(can_transition(done, s) for s in TurnStatus)
    assert can_transition(TurnStatus.RUNNING, TurnStatus.RUNNING)  # a takeover
    assert can_transition(TurnStatus.WAITING, TurnStatus.QUEUED)  # resumed after a decision
    assert not can_transition(TurnStatus.QUEUED, TurnStatus.SUCCEEDED)
    assert not can_transition(TurnStatus.RUNNING, TurnStatus.QUEUED)


def test_markers_render_from_the_table_and_refuse_unknown_names() -> None:
    assert sql.render("{{from:cancel}} {{to:cancel}}") == "('queued', 'waiting') 'cancelled'"
    assert sql.render("{{in:runnable}} {{status:waiting}}") == "('queued', 'running') 'waiting'"
    assert sql.render("{{code:worker_lost}}") == "'worker_lost'"
    for bad in ("{{to:explode}}", "{{status:done}}", "{{code:oops}}", "{{in:all}}"):
        with pytest.raises((ValueError, KeyError)):
            sql.render(bad)
    assert "{{" not in "".join(sql.function_sql())


def test_error_codes_are_a_closed_set_with_meanings() -> None:
    from shared.status import ERROR_MEANINGS

    assert set(ERROR_MEANINGS) == set(ErrorCode)
    assert {c.value for c in ErrorCode} >= {
        "model_error", "model_unavailable", "timeout", "guardrail", "max_turns",
        "agent_error", "worker_lost", "state_unreadable",
    }  # fmt: skip


def test_the_http_docs_list_exactly_the_error_codes_with_their_meanings() -> None:
    from shared.status import ERROR_MEANINGS

    doc = (ROOT / "docs" / "http-api.md").read_text()
    section = doc.split("\n## Error codes\n", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(\w+)` \| (.+?) \|$", section, re.M))
    rows.pop("error_code")  # the header
    assert rows == {code.value: meaning for code, meaning in ERROR_MEANINGS.items()}


def test_every_function_is_plpgsql_so_older_migrations_can_install_it() -> None:
    """Migrations 0006+ install the current files; a ``LANGUAGE sql`` body is checked at
    creation and would fail on columns a later migration adds."""
    for name, text in zip(sql.FILES, sql.function_sql(), strict=True):
        assert re.search(r"LANGUAGE\s+plpgsql", text), name
        assert not re.search(r"LANGUAGE\s+sql\b", text), name
