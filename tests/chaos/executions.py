"""Every execution of every turn, which worker ran it, and whether faults explain re-runs.

    with ExecutionLog(database_url) as log:      # a trigger notes each claim/takeover
        faults.append(Fault.kill("killed-0", victim.kill))
        ...
    report = attempts_check(log, user, faults, max_attempts=3)
    assert not report.violations

A fault costs a turn at most one extra execution, and only if it *hit* the turn: the
turn was running (started, not finished) on the faulted worker at the fault's moment
(the ``kill -9``, the ``SIGSTOP``).  Hence, for every turn::

    attempts <= 1 + (faults that hit it)

and a turn may end ``failed`` only if at least ``max_attempts`` kills hit it (a poison
turn, ``worker_lost``); a ``SIGSTOP`` never justifies a failure: the frozen worker counts
as vanished only until it wakes and says it left.  Anything more is lock churn: a stale
holder that blocks or steals its session after it wakes, a heartbeat that re-creates an
expired lock, attempts counted per claim.

How "hit" is read from the database: each worker process runs with its own
``PGAPPNAME`` (``killed-0``, ``killed-1`` after the first restart, ``frozen``), and a
trigger this module installs notes every execution's start with the
``application_name`` of the connection that claimed it (table ``chaos_executions``,
filled on every update that moves ``turns.started_at``; ``turns`` itself keeps only the
latest start).  Fault ``f`` on worker ``W`` hits turn ``T`` when

* ``T`` has an execution claimed by ``W`` before ``W`` could act again after the fault
  (a killed incarnation never does; a frozen one only after SIGCONT), and
* ``T`` finished after the fault's moment.

Every turn really hit passes both (a claim sent just before SIGSTOP may commit, with a
later timestamp, during the freeze: it is still counted).  The only turns counted that
were not really running on ``W`` at the moment are ones ``W`` had given up before it
without finishing them, which makes the bound lenient, never wrong.  The trigger is test
machinery, dropped at exit; it reads nothing but ``turns``, so it runs on any version of
the schema.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import psycopg

from tests.chaos.harness import TERMINAL, libpq

_INSTALL = """
CREATE TABLE IF NOT EXISTS chaos_executions (
    turn_id uuid NOT NULL,
    started_at timestamptz NOT NULL,
    worker text NOT NULL
);
CREATE INDEX IF NOT EXISTS chaos_executions_turn ON chaos_executions (turn_id);
CREATE OR REPLACE FUNCTION chaos_note_execution() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO chaos_executions (turn_id, started_at, worker)
    VALUES (NEW.id, NEW.started_at, current_setting('application_name'));
    RETURN NULL;
END
$fn$;
DROP TRIGGER IF EXISTS chaos_executions ON turns;
CREATE TRIGGER chaos_executions AFTER UPDATE OF started_at ON turns
FOR EACH ROW WHEN (NEW.started_at IS NOT NULL
                   AND NEW.started_at IS DISTINCT FROM OLD.started_at)
EXECUTE FUNCTION chaos_note_execution();
"""

_UNINSTALL = """
DROP TRIGGER IF EXISTS chaos_executions ON turns;
DROP FUNCTION IF EXISTS chaos_note_execution();
DROP TABLE IF EXISTS chaos_executions;
"""


@dataclass(frozen=True)
class Fault:
    """One injected fault on one worker process (its ``PGAPPNAME``)."""

    kind: str  # "kill" or "stop"
    worker: str
    at: float  # time.time() just before the signal was sent
    quiet_until: float  # the worker started nothing new before this (inf: it died)

    @classmethod
    def kill(cls, worker: str, send: Callable[[], object]) -> Fault:
        at = time.time()
        send()
        return cls("kill", worker, at, math.inf)

    def hits(self, runs: list[Run], finished_at: float) -> bool:
        return finished_at > self.at and any(
            r.worker == self.worker and r.at < self.quiet_until for r in runs
        )


@dataclass(frozen=True)
class Run:
    """One execution of a turn: when it was claimed, and by which worker."""

    at: float
    worker: str


class ExecutionLog:
    """Installs the trigger that notes each execution's start; removes it at exit."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def __enter__(self) -> Self:
        with psycopg.connect(libpq(self.database_url), autocommit=True) as conn:
            conn.execute(_INSTALL)
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        with psycopg.connect(libpq(self.database_url), autocommit=True) as conn:
            conn.execute(_UNINSTALL)

    def runs(self, user: str) -> dict[str, list[Run]]:
        """Each turn's executions, oldest first."""
        with psycopg.connect(libpq(self.database_url)) as conn:
            rows = conn.execute(
                "SELECT e.turn_id::text, e.started_at, e.worker FROM chaos_executions e"
                " JOIN turns t ON t.id = e.turn_id JOIN sessions s ON s.id = t.session_id"
                " WHERE s.user_id = %s ORDER BY e.started_at",
                (user,),
            ).fetchall()
        out: dict[str, list[Run]] = defaultdict(list)
        for tid, at, worker in rows:
            out[tid].append(Run(at.timestamp(), worker))
        return out

    def unfinished(self, user: str, faults: list[Fault]) -> int:
        """Turns that a fault may have hit and that are not finished yet."""
        n = 0
        with psycopg.connect(libpq(self.database_url)) as conn:
            for f in faults:
                row = conn.execute(
                    "SELECT count(DISTINCT t.id) FROM chaos_executions e"
                    " JOIN turns t ON t.id = e.turn_id JOIN sessions s ON s.id = t.session_id"
                    " WHERE s.user_id = %s AND e.worker = %s AND NOT t.status = ANY(%s)"
                    " AND e.started_at < to_timestamp(%s)",
                    (user, f.worker, list(TERMINAL), f.quiet_until),
                ).fetchone()
                n += int(row[0]) if row else 0
        return n

    def running_on(self, user: str, worker: str, *earlier: str) -> int:
        """Running turns whose latest execution is ``worker``'s and which every one of the
        ``earlier`` workers ran before (a chain of takeovers)."""
        with psycopg.connect(libpq(self.database_url)) as conn:
            row = conn.execute(
                "SELECT count(*) FROM turns t JOIN sessions s ON s.id = t.session_id"
                " WHERE s.user_id = %s AND t.status = 'running'"
                " AND (SELECT e.worker FROM chaos_executions e WHERE e.turn_id = t.id"
                "      ORDER BY e.started_at DESC LIMIT 1) = %s"
                " AND %s::text[] <@ ARRAY(SELECT e.worker FROM chaos_executions e"
                "                 WHERE e.turn_id = t.id)",
                (user, worker, list(earlier)),
            ).fetchone()
        return int(row[0]) if row else 0


@dataclass
class AttemptsReport:
    turns: int = 0
    hit: int = 0  # turns at least one fault hit
    hit_twice: int = 0  # turns two faults or more hit (a kill, the freeze of the taker, ...)
    max_hits: int = 0  # the most faults that hit one turn
    max_attempts: int = 0  # the highest attempts of any turn
    max_excess: int = 0  # the highest attempts - 1 - faults that hit the turn
    over: int = 0  # turns with more attempts than their faults explain
    failed_unexplained: int = 0  # failed turns not hit by max_attempts kills
    attempts: dict[int, int] = field(default_factory=dict)  # attempts -> turns
    errors: dict[str, int] = field(default_factory=dict)  # failed turns' errors -> count
    faults: str = ""
    violations: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"turns={self.turns} hit={self.hit} hit_twice={self.hit_twice} "
            f"max_hits={self.max_hits} "
            f"max_attempts={self.max_attempts} "
            f"over={self.over} failed_unexplained={self.failed_unexplained} "
            f"attempts={dict(sorted(self.attempts.items()))} errors={self.errors} "
            f"faults={self.faults}; " + "; ".join(self.violations[:20])
        )


def attempts_check(
    log: ExecutionLog, user: str, faults: list[Fault], max_attempts: int
) -> AttemptsReport:
    """Every terminal turn of ``user``: attempts explained by the faults that hit it."""
    runs = log.runs(user)
    with psycopg.connect(libpq(log.database_url)) as conn:
        rows = conn.execute(
            "SELECT t.id::text, s.key, t.seq, t.status, t.error, t.attempts, t.finished_at"
            " FROM turns t JOIN sessions s ON s.id = t.session_id WHERE s.user_id = %s",
            (user,),
        ).fetchall()
    report = AttemptsReport()
    attempts: dict[int, int] = defaultdict(int)
    errors: dict[str, int] = defaultdict(int)
    for tid, session, seq, status, error, n, finished in rows:
        if status not in TERMINAL:
            continue  # the harness's check counts it as lost
        report.turns += 1
        attempts[n] += 1
        report.max_attempts = max(report.max_attempts, n)
        mine = runs.get(tid, [])
        name = (
            f"{session} turn {seq} ({status}, attempts {n}, runs "
            + ", ".join(f"{r.worker}@{_clock(r.at)}" for r in mine)
            + f", finished {_clock(finished.timestamp()) if finished else '-'})"
        )
        if len(mine) != n:
            report.violations.append(f"{name}: {len(mine)} executions noted")
        if not mine:
            if status != "cancelled" or n:
                report.violations.append(f"{name}: never started")
            continue
        hits = [f for f in faults if f.hits(mine, finished.timestamp())]
        report.hit += bool(hits)
        report.hit_twice += len(hits) >= 2
        report.max_hits = max(report.max_hits, len(hits))
        excess = n - 1 - len(hits)
        report.max_excess = max(report.max_excess, excess)
        if excess > 0:
            report.over += 1
            report.violations.append(f"{name}: hit by {_faults(hits)}")
        if status == "failed":
            errors[(error or "")[:120]] += 1
            kills = sum(f.kind == "kill" for f in hits)
            if kills < max_attempts:
                report.failed_unexplained += 1
                report.violations.append(f"{name}: failed, hit by {_faults(hits)}: {error}")
    report.attempts = dict(attempts)
    report.errors = dict(errors)
    report.faults = _faults(faults)
    return report


def _faults(faults: list[Fault]) -> str:
    return "[" + ", ".join(f"{f.kind} {f.worker}@{_clock(f.at)}" for f in faults) + "]"


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"
