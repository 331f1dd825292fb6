"""Chaos harness: a steady load of turns across many sessions, and the invariants after a fault.

    with Load(settings, user) as load:          # enqueues from a background thread
        load.wait_accepted(20)
        ... inject a fault ...
        heal = time.time()
    row = check(load, "redis restart", database_url, heal)    # waits, then asserts nothing
    assert row.clean, row.violations                          # lost/duplicated/out-of-order

``Load`` keeps enqueuing ``s{k} msg {n}`` into ``sessions`` sessions at ``rate`` turns/s
from its own asyncio loop, one producer coroutine per slice of sessions, so each session's
enqueues are sequential and their order is well defined.  A turn is *accepted* when
``enqueue`` returned its id; an enqueue that raised (Postgres down) or timed out is
*rejected* and the load goes on.  A rejected enqueue may still have committed (the reply
was lost): such a *ghost* turn is legal, and it is checked like the accepted ones.

``check`` waits until every turn is terminal, then reads the turns and the items table and
counts, per the invariants (docs/reliability.md):

* lost: an accepted turn that never became terminal, a failed one with no error, a
  succeeded one whose user message or answer is missing from the history;
* duplicated: a turn whose items were written twice, items written for a turn that did
  not succeed, a turn nobody enqueued;
* out of order: a session whose turns got sequence numbers, items or run times in another
  order than they were enqueued (or overlapped).

Each check appends a ``Row`` to ``ROWS``; tests/chaos/conftest.py prints them at the end.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psycopg
import redis

from ops.processes import ManagedProcess
from producer.client import AsyncClient
from shared import keys
from shared.settings import Settings
from tests.support.servers import wait_until
from tests.support.workers import BeatProcess, WorkerProcess

TERMINAL = ("succeeded", "failed", "cancelled")
SOAK_ENV = "TURNQ_SOAK_S"


# --- load -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    turn_id: str
    session: str
    content: str
    order: int  # position among this session's accepted turns
    at: float  # time.time() when enqueue returned


class Load:
    """Enqueue turns round-robin over ``sessions`` sessions until ``stop()``."""

    def __init__(
        self,
        settings: Settings,
        user: str,
        *,
        sessions: int = 30,
        rate: float = 12.0,
        producers: int = 4,
        enqueue_timeout_s: float = 5.0,
        prefix: str = "chaos",
        pad: int = 0,
    ) -> None:
        self.settings = settings
        self.user = user
        self.sessions = [f"{prefix}-{user}-s{k}" for k in range(sessions)]
        self.rate = rate
        self.producers = max(1, min(producers, sessions))
        self.enqueue_timeout_s = enqueue_timeout_s
        self.pad = pad  # characters of filler after each message (to grow the context)
        self.accepted: list[Accepted] = []
        self.rejected: list[tuple[str, str, str]] = []  # (session, content, error type)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-load", daemon=True)
        self.started_at = 0.0
        self.stopped_at = 0.0
        self.crash: BaseException | None = None

    # -- lifecycle
    def start(self) -> Self:
        self.started_at = time.time()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.enqueue_timeout_s + 30)
        assert not self._thread.is_alive(), "the load generator did not stop"
        self.stopped_at = time.time()
        if self.crash is not None:
            raise AssertionError(f"the load generator crashed: {self.crash!r}")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._stop.is_set():
            self.stop()

    # -- observation
    @property
    def accepted_count(self) -> int:
        with self._lock:
            return len(self.accepted)

    def add(self, turn_id: str, session: str, content: str) -> None:
        """A turn the test enqueued itself (in a session of its own, one turn each): it is
        checked with the load's turns."""
        with self._lock:
            self.accepted.append(Accepted(turn_id, session, content, 0, time.time()))
            self.sessions.append(session)

    def wait_accepted(self, more: int, timeout: float = 60.0) -> None:
        """Block until ``more`` further turns have been accepted (the load is flowing)."""
        target = self.accepted_count + more
        wait_until(
            lambda: self.accepted_count >= target or self.crash is not None,
            timeout,
            message=f"the load did not reach {target} accepted turns",
        )

    def wait_total(self, total: int, timeout: float = 120.0) -> None:
        """Block until ``total`` turns have been accepted in all (a test's minimum volume)."""
        wait_until(
            lambda: self.accepted_count >= total or self.crash is not None,
            timeout,
            message=f"the load did not reach {total} accepted turns",
        )

    def keep_going(self, seconds: float) -> None:
        """Let the load run (sleep, but fail fast if the generator died)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.crash is None:
            time.sleep(0.05)

    # -- the generator
    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by stop()
            self.crash = exc

    async def _main(self) -> None:
        client = AsyncClient.from_settings(self.settings)
        try:
            await asyncio.gather(*(self._producer(client, p) for p in range(self.producers)))
        finally:
            await client.close()

    async def _producer(self, client: AsyncClient, p: int) -> None:
        mine = self.sessions[p :: self.producers]
        interval = self.producers / self.rate
        counters: Counter[str] = Counter()
        orders: Counter[str] = Counter()
        nxt = time.monotonic() + p * interval / self.producers
        i = 0
        while not self._stop.is_set():
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
            nxt = max(nxt + interval, time.monotonic())
            session = mine[i % len(mine)]
            i += 1
            content = f"{session.rsplit('-', 1)[1]} msg {counters[session]}" + _filler(self.pad)
            counters[session] += 1
            try:
                turn = await asyncio.wait_for(
                    client.enqueue(session, self.user, content), self.enqueue_timeout_s
                )
            except Exception as exc:  # any refusal counts as rejected
                with self._lock:
                    self.rejected.append((session, content, type(exc).__name__))
                continue
            with self._lock:
                self.accepted.append(
                    Accepted(turn.id, session, content, orders[session], time.time())
                )
            orders[session] += 1


def _filler(chars: int) -> str:
    words = "the meeting moved to room {} so bring the slides and the notes".split()
    text = " ".join(w.format(i) for i in range(chars // 40 + 1) for w in words)
    return (" " + text)[:chars] if chars else ""


# --- fault rounds: once by default, in a random loop under --soak ------------------------


def soak_seconds() -> float:
    """``--soak SECONDS`` (tests/conftest.py sets the variable) or ``TURNQ_SOAK_S``."""
    try:
        return max(0.0, float(os.environ.get(SOAK_ENV, "0") or 0))
    except ValueError:
        return 0.0


def rounds(default: int) -> Iterator[int]:
    """Round numbers for a fault loop: ``default`` rounds, or as many as fit the soak time."""
    soak = soak_seconds()
    if not soak:
        yield from range(default)
        return
    deadline = time.monotonic() + soak
    n = 0
    while time.monotonic() < deadline:
        yield n
        n += 1


def time_limit(default_s: float) -> float:
    """A test's pytest-timeout: its default budget, plus the soak time in soak mode."""
    return default_s + 1.5 * soak_seconds()


def pick(options: list[str], n: int) -> str:
    """Each option in turn by default; at random in soak mode."""
    return random.choice(options) if soak_seconds() else options[n % len(options)]


def gap(default_s: float) -> float:
    """Time between faults: fixed by default, random (0.5x-2x) in soak mode."""
    return default_s * random.uniform(0.5, 2.0) if soak_seconds() else default_s


# --- invariants ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DbTurn:
    id: str
    sid: str  # the session's internal id
    session: str
    seq: int
    status: str
    error: str | None
    input: str
    output: str | None
    attempts: int
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@dataclass
class Row:
    fault: str
    accepted: int = 0
    rejected: int = 0
    ghosts: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    first_ok_s: float | None = None
    all_done_s: float | None = None
    max_latency_s: float | None = None
    retried: int = 0  # turns that needed more than one attempt (the fault hit them)
    # Step journal faults (tests/chaos/test_journal.py): kills, and the steps run again,
    # as "completed/in flight" (a step completed before the kill must never run again).
    kills: int | None = None
    model_repeats: tuple[int, int] | None = None
    tool_repeats: tuple[int, int] | None = None
    violations: list[str] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)  # the load's session ids

    @property
    def clean(self) -> bool:
        return self.lost == self.duplicated == self.out_of_order == 0

    def summary(self) -> str:
        return (
            f"{self.fault}: accepted={self.accepted} lost={self.lost} "
            f"duplicated={self.duplicated} out_of_order={self.out_of_order}; "
            + "; ".join(self.violations[:30])
        )


ROWS: list[Row] = []

COLUMNS: list[tuple[str, Callable[[Row], object]]] = [
    ("fault", lambda r: r.fault),
    ("accepted", lambda r: r.accepted),
    ("rejected", lambda r: r.rejected),
    ("ghosts", lambda r: r.ghosts),
    ("succeeded", lambda r: r.succeeded),
    ("failed", lambda r: r.failed),
    ("cancelled", lambda r: r.cancelled),
    ("lost", lambda r: r.lost),
    ("duplicated", lambda r: r.duplicated),
    ("out of order", lambda r: r.out_of_order),
    ("retried", lambda r: r.retried),
    ("first ok (s)", lambda r: _secs(r.first_ok_s)),
    ("all done (s)", lambda r: _secs(r.all_done_s)),
    ("max latency (s)", lambda r: _secs(r.max_latency_s)),
    ("kills", lambda r: "-" if r.kills is None else r.kills),
    ("model calls repeated (done/in flight)", lambda r: _pair(r.model_repeats)),
    ("tool effects repeated (done/in flight)", lambda r: _pair(r.tool_repeats)),
]


def _pair(value: tuple[int, int] | None) -> str:
    return "-" if value is None else f"{value[0]}/{value[1]}"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(rows: list[Row]) -> str:
    """A Markdown table (pasted as is into docs/reliability.md)."""
    cells = [[str(get(r)) for _, get in COLUMNS] for r in rows]
    heads = [name for name, _ in COLUMNS]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]

    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    out = [line(heads), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(c) for c in cells]
    return "\n".join(out)


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _rows(database_url: str, sql: str, user: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq(database_url), connect_timeout=5) as conn:
        return conn.execute(sql, (user,)).fetchall()


def _read_turns(database_url: str, user: str) -> dict[str, DbTurn]:
    rows = _rows(
        database_url,
        "SELECT t.id::text, s.id::text, s.key, t.seq, t.status, t.error, t.input, t.output,"
        " t.attempts, t.queued_at, t.started_at, t.finished_at"
        " FROM turns t JOIN sessions s ON s.id = t.session_id WHERE s.user_id = %s",
        user,
    )
    return {r[0]: DbTurn(*r) for r in rows}


def _read_items(database_url: str, user: str) -> dict[str, list[tuple[int, str | None, Any]]]:
    rows = _rows(
        database_url,
        "SELECT s.key, i.position, i.turn_id::text, i.item"
        " FROM items i JOIN sessions s ON s.id = i.session_id WHERE s.user_id = %s"
        " ORDER BY s.key, i.position",
        user,
    )
    out: dict[str, list[tuple[int, str | None, Any]]] = defaultdict(list)
    for key, pos, tid, item in rows:
        out[key].append((pos, tid, item))
    return out


def running_turns(database_url: str, user: str) -> int:
    """How many of the user's turns are running now (a fault should land mid-turn)."""
    rows = _rows(
        database_url,
        "SELECT count(*) FROM turns t JOIN sessions s ON s.id = t.session_id"
        " WHERE s.user_id = %s AND t.status = 'running'",
        user,
    )
    return int(rows[0][0]) if rows else 0


def wait_terminal(database_url: str, user: str, ids: set[str], timeout: float) -> float | None:
    """Poll until every turn in ``ids`` is terminal; returns when that was seen, or None."""
    deadline = time.monotonic() + timeout
    while True:
        turns = _read_turns(database_url, user)
        if all(tid in turns and turns[tid].status in TERMINAL for tid in ids):
            return time.time()
        if time.monotonic() > deadline:
            return None
        time.sleep(0.25)


def _text(item: Any) -> str:
    content = item.get("content") if isinstance(item, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
    return ""


def check(
    load: Load,
    fault: str,
    database_url: str,
    heal_at: float | None,
    *,
    timeout: float = 120.0,
    record: bool = True,
) -> Row:
    """Wait for the load's turns to finish, then count what the invariants forbid."""
    assert load.stopped_at, "stop the load before checking"
    row = Row(fault, accepted=len(load.accepted), rejected=len(load.rejected))
    row.sessions = list(load.sessions)
    accepted = {a.turn_id: a for a in load.accepted}
    wait_terminal(database_url, load.user, set(accepted), timeout)
    turns = _read_turns(database_url, load.user)
    items = _read_items(database_url, load.user)

    _check_statuses(row, turns, accepted, {(s, c) for s, c, _ in load.rejected})
    by_session: dict[str, list[DbTurn]] = defaultdict(list)
    for t in turns.values():
        by_session[t.session].append(t)
    for session, session_turns in by_session.items():
        session_turns.sort(key=lambda t: t.seq)
        _check_session(row, session, session_turns, items.get(session, []), accepted)
    _recovery(row, load, turns, heal_at)
    if row.lost:
        row.violations.extend(_diagnose(load, database_url, turns))
    if record:
        ROWS.append(row)
    return row


def _check_statuses(
    row: Row,
    turns: dict[str, DbTurn],
    accepted: dict[str, Accepted],
    rejected: set[tuple[str, str]],
) -> None:
    """I3: every accepted turn is terminal, a failed one says why; count the outcomes."""
    for tid, acc in accepted.items():
        t = turns.get(tid)
        if t is None or t.status not in TERMINAL:
            row.lost += 1
            row.violations.append(f"turn {acc.content!r} of {acc.session} is {t and t.status}")
    for t in turns.values():
        if t.id not in accepted:
            if (t.session, t.input) in rejected:
                row.ghosts += 1  # committed, but its enqueue reported an error
            else:
                row.duplicated += 1
                row.violations.append(f"turn {t.input!r} of {t.session} was never enqueued")
        if t.status == "succeeded":
            row.succeeded += 1
        elif t.status == "failed":
            row.failed += 1
            if not (t.error or "").strip():
                row.lost += 1
                row.violations.append(f"turn {t.input!r} failed without an error")
        elif t.status == "cancelled":
            row.cancelled += 1
        row.retried += t.attempts > 1


def _check_session(
    row: Row,
    session: str,
    turns: list[DbTurn],
    items: list[tuple[int, str | None, Any]],
    accepted: dict[str, Accepted],
) -> None:
    # I2: sequence numbers follow the enqueue order, without gaps or repeats.
    if [t.seq for t in turns] != list(range(1, len(turns) + 1)):
        row.out_of_order += 1
        row.violations.append(f"{session}: seqs {[t.seq for t in turns]}")
    orders = [accepted[t.id].order for t in turns if t.id in accepted]
    if orders != sorted(orders):
        row.out_of_order += 1
        row.violations.append(f"{session}: accepted order {orders} after sorting by seq")
    # I1/I2: each turn started after the previous one finished.
    for before, after in itertools.pairwise(turns):
        if before.finished_at and after.started_at and after.started_at < before.finished_at:
            row.out_of_order += 1
            row.violations.append(f"{session}: turn {after.seq} overlapped turn {before.seq}")
    # I4: a succeeded turn's items are there once, contiguous, in seq order; others wrote none.
    per_turn: dict[str | None, list[tuple[int, Any]]] = defaultdict(list)
    for pos, tid, item in items:
        per_turn[tid].append((pos, item))
    known = {t.id for t in turns}
    for tid in per_turn:
        if tid not in known:
            row.duplicated += 1
            row.violations.append(f"{session}: items of unknown turn {tid}")
    for t in turns:
        _check_turn_items(row, session, t, per_turn.get(t.id, []))
    blocks = [tid for i, (_, tid, _) in enumerate(items) if i == 0 or items[i - 1][1] != tid]
    seq_of = {t.id: t.seq for t in turns}
    block_seqs = [seq_of.get(tid or "", -1) for tid in blocks]
    if len(blocks) != len(set(blocks)) or block_seqs != sorted(block_seqs):
        row.out_of_order += 1
        row.violations.append(f"{session}: items interleaved or out of seq order {block_seqs}")


def _check_turn_items(row: Row, session: str, t: DbTurn, mine: list[tuple[int, Any]]) -> None:
    users = [item for _, item in mine if isinstance(item, dict) and item.get("role") == "user"]
    answers = [
        item
        for _, item in mine
        if isinstance(item, dict) and item.get("role") == "assistant" and _text(item)
    ]
    if t.status == "cancelled" and len(users) <= 1:
        return  # an interrupted turn keeps what it had done
    if t.status != "succeeded":
        if mine:
            row.duplicated += 1
            row.violations.append(f"{session}: {t.status} turn {t.input!r} wrote {len(mine)} items")
        return
    if len(users) != 1 or _text(users[0]) != t.input:
        if not users:
            row.lost += 1
        else:
            row.duplicated += 1
        row.violations.append(f"{session}: turn {t.input!r} has user items {users}")
    if not answers:
        row.lost += 1
        row.violations.append(f"{session}: turn {t.input!r} has no answer in the history")
    elif t.output is not None and _text(answers[-1]) != t.output:
        row.duplicated += 1
        row.violations.append(f"{session}: turn {t.input!r} answer differs from its output")
    outputs = Counter(_text(a) for a in answers)
    if any(n > 1 for n in outputs.values()):
        row.duplicated += 1
        row.violations.append(f"{session}: turn {t.input!r} answered twice: {outputs}")


def _diagnose(load: Load, database_url: str, turns: dict[str, DbTurn]) -> list[str]:
    """Why a turn is stuck: who holds its session's lock, what Postgres is waiting on."""
    notes: list[str] = []
    stuck = {t.sid for t in turns.values() if t.status not in TERMINAL}
    client = redis.Redis.from_url(load.settings.require_redis_url(), socket_timeout=5)
    try:
        for sid in sorted(stuck)[:5]:
            key = keys.lock_key(sid, load.settings.namespace)
            notes.append(f"lock {sid}: holder={client.get(key)!r} ttl_ms={client.pttl(key)}")
    except redis.RedisError as exc:
        notes.append(f"redis unreachable: {exc}")
    finally:
        client.close()
    with psycopg.connect(libpq(database_url), connect_timeout=5) as conn:
        for r in conn.execute(
            "SELECT pid, state, wait_event_type, wait_event, now() - xact_start, left(query, 120)"
            " FROM pg_stat_activity WHERE datname = current_database() AND state <> 'idle'"
            " AND pid <> pg_backend_pid()"
        ).fetchall():
            notes.append(f"pg backend {r}")
    return notes


def _recovery(row: Row, load: Load, turns: dict[str, DbTurn], heal_at: float | None) -> None:
    mine = [turns[a.turn_id] for a in load.accepted if a.turn_id in turns]
    latencies = [
        (t.finished_at - t.queued_at).total_seconds() for t in mine if t.finished_at is not None
    ]
    row.max_latency_s = max(latencies, default=None)
    if heal_at is None:
        return
    after = [
        t.finished_at.timestamp()
        for t in turns.values()
        if t.status == "succeeded" and t.finished_at and t.finished_at.timestamp() >= heal_at
    ]
    if after:
        row.first_ok_s = min(after) - heal_at
    before = [turns.get(a.turn_id) for a in load.accepted if a.at <= heal_at]
    done = [t.finished_at.timestamp() for t in before if t is not None and t.finished_at]
    if done and len(done) == len(before):
        row.all_done_s = max(0.0, max(done) - heal_at)


# --- one fault test ----------------------------------------------------------------------


def run_under_load(
    fault: str,
    settings: Settings,
    database_url: str,
    user: str,
    inject: Callable[[Load], object],
    *,
    times: int = 1,
    after_s: float = 2.0,
    min_accepted: int = 0,
    suspects: Callable[[], list[ManagedProcess]] = list,
    **load_options: Any,
) -> Row:
    """Start the load, ``inject(load)`` once per round, let it run on, then check.

    ``times`` rounds by default, rounds for the whole soak time with ``--soak``.  Heal time
    is when the last round returned; the load then runs on until it has ``min_accepted``
    turns in all, and ``after_s`` more.  The row is recorded and must be clean (if it is
    not, the stacks of the ``suspects()`` processes go into the failure message).
    """
    done = 0
    with Load(settings, user, **load_options) as load:
        load.wait_accepted(20)
        for _ in rounds(times):
            inject(load)
            done += 1
        heal = time.time()
        load.wait_total(min_accepted)
        load.keep_going(after_s)
    load.stop()
    row = check(load, f"{fault} x{done}", database_url, heal)
    if not row.clean:
        row.violations.extend(stack_dump(p) for p in suspects() if p.alive())
    assert row.clean, row.summary()
    return row


def stack_dump(proc: ManagedProcess) -> str:
    """Every thread's stack of a live process (py-spy), to see where a stuck drain waits."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        return f"{proc.name}: no py-spy to dump its stacks"
    out = subprocess.run(
        [str(spy), "dump", "--pid", str(proc.pid)], capture_output=True, text=True, timeout=60
    )
    return f"--- {proc.name} (pid {proc.pid}) ---\n{(out.stdout + out.stderr)[-6000:]}"


# --- processes ----------------------------------------------------------------------------


class Cluster:
    """Worker and beat processes on one environment, started in parallel, stopped at close."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: list[ManagedProcess] = []

    def worker(
        self,
        name: str,
        *,
        concurrency: int = 50,
        queues: tuple[str, ...] = ("turns", "maintenance"),
        **env: str,
    ) -> WorkerProcess:
        w = WorkerProcess({**self.env, **env}, name=name, concurrency=concurrency, queues=queues)
        self.procs.append(w)
        return w

    def beat(self, **env: str) -> BeatProcess:
        b = BeatProcess({**self.env, **env})
        self.procs.append(b)
        return b

    def respawn(self, old: ManagedProcess, **env: str) -> ManagedProcess:
        """A fresh process with the same command and environment (after a kill), started;
        ``env`` overrides variables (e.g. a new ``PGAPPNAME`` to tell the two apart)."""
        new = ManagedProcess(old.args, {**old.env, **env}, old.name, ready=old.ready)
        self.procs.append(new)
        new.start()
        return new

    @staticmethod
    def start(*procs: ManagedProcess) -> None:
        """Start several at once (each takes seconds to import the SDK)."""
        errors: list[BaseException] = []

        def one(p: ManagedProcess) -> None:
            try:
                p.start()
            except BaseException as exc:  # re-raised below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(p,)) for p in procs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def close(self) -> None:
        for p in reversed(self.procs):
            p.stop()
