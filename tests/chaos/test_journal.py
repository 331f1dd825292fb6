"""The step journal under ``kill -9`` (I14): a re-run turn replays what completed.

Two real workers run ``tests.agents_steps:steps`` under a steady chaos load.  Each round
enqueues one scripted turn in a session of its own, tells it (through Redis) where to stop,
waits until a worker is there (the worker says so: deterministic, no sleeps), kills that
worker with ``kill -9`` and lets the other take the turn over.  Model calls and tool
effects are counted in Redis by the agent itself, so the counts survive the kill.

A step that completed before the kill must never run again; the step in flight may run
again (a model call, an idempotent tool: with the same idempotency key), except a
non-idempotent tool, which never does: the model is told its outcome is unknown.  The
load's turns and the scripted ones get the harness's lost/duplicated/order checks, and
each fault adds a row (kills, steps repeated) to the chaos table.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
import redis

from ops.processes import ManagedProcess
from producer import Client
from shared.settings import Settings, get_settings
from shared.status import TurnStatus
from shared.turn_events import read_events
from tests.agents_steps import (
    at_key,
    calls_key,
    go_key,
    idempotency_keys_key,
    inputs_key,
    stop_key,
)
from tests.chaos.harness import Cluster, Load, libpq, pick, run_under_load, time_limit
from tests.support.servers import wait_until
from tests.system.conftest import FAST_RECOVERY
from workers.journal import UNKNOWN_OUTCOME

pytestmark = [pytest.mark.chaos, pytest.mark.system, pytest.mark.timeout(time_limit(300))]

STEPS = {"TURNQ_AGENT": "tests.agents_steps:steps"}
LOAD = {"sessions": 6, "rate": 5.0, "producers": 2}


@dataclass
class Stack:
    cluster: Cluster
    workers: list[ManagedProcess]
    client: Client
    redis: redis.Redis
    database_url: str
    respawning: list[threading.Thread] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def kill(self, pid: int) -> None:
        """kill -9 the worker with this pid; a fresh one starts in the background."""
        victim = next(w for w in self.workers if w.alive() and w.pid == pid)
        victim.kill()
        self.workers.remove(victim)

        def respawn() -> None:
            try:
                self.workers.append(self.cluster.respawn(victim))
            except BaseException as exc:  # reported by settle()
                self.errors.append(exc)

        thread = threading.Thread(target=respawn, name=f"respawn-{victim.name}")
        thread.start()
        self.respawning.append(thread)

    def settle(self) -> None:
        for thread in self.respawning:
            thread.join(120)
        self.respawning.clear()
        assert not self.errors, f"a killed worker could not be restarted: {self.errors!r}"
        assert len(self.workers) == 2 and all(w.alive() for w in self.workers)


@pytest.fixture(scope="module")
def stack(stack_env: dict[str, str]) -> Iterator[Stack]:
    cluster = Cluster({**stack_env, **FAST_RECOVERY, **STEPS})
    workers: list[ManagedProcess] = [cluster.worker("ja"), cluster.worker("jb")]
    client = Client.from_settings()
    r = redis.Redis.from_url(get_settings().require_redis_url())
    try:
        cluster.start(*workers, cluster.beat())
        stack = Stack(cluster, workers, client, r, stack_env["TURNQ_DATABASE_URL"])
        yield stack
        stack.settle()  # no worker left starting while the cluster stops
    finally:
        client.close()
        r.close()
        cluster.close()


@dataclass
class Round:
    """What one killed turn did, read back from the agent's counters and the turn."""

    tag: str
    stop: str
    turn_id: str
    calls: dict[str, int]
    idempotency: list[str]
    inputs: list[dict[str, Any]]
    events: list[dict[str, str]]
    output: str


def kill_at(stack: Stack, load: Load, user: str, tag: str, kind: str, stop: str) -> Round:
    """Enqueue ``<tag> <kind>``, kill -9 the worker that reaches ``stop``, wait for the end."""
    r, client = stack.redis, stack.client
    stack.settle()  # two live workers: the other one takes the turn over
    r.set(stop_key(tag), stop, ex=600)
    session, content = f"journal-{tag}", f"{tag} {kind}"
    turn = client.enqueue(session, user, content)
    load.add(turn.id, session, content)
    if kind == "[approve]":
        wait_until(
            lambda: client.get_turn(turn.id).status is TurnStatus.WAITING, 60,
            message="the turn never paused for its approval",
        )  # fmt: skip
        pending = [i for i in client.get_turn(turn.id).pending_items or [] if i.get("approval")]
        assert len(pending) == 1, pending
        assert client.approve(turn.id, user, pending[0]["call_id"]).resumed
    wait_until(lambda: r.get(at_key(tag)) is not None, 60, message=f"no worker reached {stop}")
    where, pid = r.get(at_key(tag)).decode().split()  # type: ignore[union-attr]
    assert where == stop
    stack.kill(int(pid))
    done = client.wait(turn.id, timeout=120)
    assert done.status is TurnStatus.SUCCEEDED, (done.status, done.error_code, done.error)
    assert done.attempts >= 2, "the kill did not hit the turn"
    events = [f for _, f in asyncio.run(read_events(_Async(r), turn.id, get_settings().namespace))]
    return Round(
        tag, stop, turn.id,
        calls={k.decode(): int(v) for k, v in r.hgetall(calls_key(tag)).items()},
        idempotency=[k.decode() for k in r.lrange(idempotency_keys_key(tag), 0, -1)],
        inputs=[json.loads(i) for i in r.lrange(inputs_key(tag), 0, -1)],
        events=events,
        output=done.output or "",
    )  # fmt: skip


class _Async:
    """The reads read_events makes, on the test's (synchronous) client."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r

    async def xrange(self, key: str, min: str = "-") -> Any:
        return self.r.xrange(key, min=min)


def live_only(r: Round) -> None:
    """Streaming: the re-run said ``resumed`` and sent no text of a replayed step."""
    types = [e.get("type") for e in r.events]
    assert "resumed" in types, types
    after = "".join(e.get("text", "") for e in r.events[types.index("resumed") :])
    assert f"step 0 of {r.tag}" not in after, after  # step 0 completed before any kill


def fault_test(
    stack: Stack,
    uid: str,
    name: str,
    kind: str,
    stops: list[str],
    done: dict[str, list[str]],
    flight: dict[str, list[str]],
    times: int = 2,
) -> list[Round]:
    """``times`` rounds (or a soak's worth) of kill_at under load; records the row."""
    user = f"journal-{uid}"
    seen: list[Round] = []

    def inject(load: Load) -> None:
        n = len(seen)
        seen.append(kill_at(stack, load, user, f"j{uid}r{n}", kind, pick(stops, n)))

    row = run_under_load(
        f"journal: {name}", Settings(), stack.database_url, user, inject, times=times,
        after_s=1.0, suspects=lambda: list(stack.workers), **LOAD,
    )  # fmt: skip
    steps = {f"{s}:done": v for s, v in done.items()} | {
        f"{s}:flight": v for s, v in flight.items()
    }
    row.kills = len(seen)
    row.model_repeats = _split(seen, steps, "model:")
    row.tool_repeats = _split(seen, steps, "", exclude="model:")
    assert row.failed == 0, row.summary()
    assert row.model_repeats[0] == row.tool_repeats[0] == 0, seen  # completed: never again
    for r in seen:
        live_only(r)
    return seen


def _split(
    rounds: list[Round], steps: dict[str, list[str]], prefix: str, exclude: str | None = None
) -> tuple[int, int]:
    def runs_again(r: Round, which: str) -> int:
        names = [
            s for s in steps[f"{r.stop}:{which}"]
            if s.startswith(prefix) and not (exclude and s.startswith(exclude))
        ]  # fmt: skip
        return sum(max(0, r.calls.get(s, 0) - 1) for s in names)

    return sum(runs_again(r, "done") for r in rounds), sum(runs_again(r, "flight") for r in rounds)


# --- the faults ------------------------------------------------------------------------


def test_kill_during_the_2nd_of_3_model_calls(stack: Stack, uid: str) -> None:
    rounds = fault_test(
        stack, uid, "kill -9 in model call 2 of 3", "[three]", ["model:1"],
        done={"model:1": ["model:0", "note:a"]}, flight={"model:1": ["model:1"]},
    )  # fmt: skip
    for r in rounds:
        # Steps 1 and 2 once each plus one retry of step 2 (not of step 1); each tool once.
        assert r.calls == {"model:0": 1, "model:1": 2, "model:2": 1, "note:a": 1, "note:b": 1}
        assert r.output.startswith(f"done: {r.tag} [three] | noted a | noted b"), r.output


def test_kill_while_an_idempotent_tool_runs(stack: Stack, uid: str) -> None:
    rounds = fault_test(
        stack, uid, "kill -9 in an idempotent tool", "[three]", ["tool:note:a"],
        done={"tool:note:a": ["model:0"]}, flight={"tool:note:a": ["note:a"]},
    )  # fmt: skip
    for r in rounds:
        assert r.calls["model:0"] == 1 and r.calls["model:1"] == 1, r.calls
        assert r.calls["note:a"] >= 1 and r.calls["note:b"] == 1, r.calls
        first = [k for k in r.idempotency if k.startswith("note:a ")]
        assert len(first) == r.calls["note:a"] and len(set(first)) == 1, first  # same key
        assert first[0].split(" ", 1)[1].startswith(f"{r.turn_id}:call_"), first


def test_kill_while_a_non_idempotent_tool_runs(stack: Stack, uid: str) -> None:
    rounds = fault_test(
        stack, uid, "kill -9 in a non-idempotent tool", "[pay]", ["tool:pay"],
        done={"tool:pay": ["model:0"]}, flight={"tool:pay": ["pay"]},
    )  # fmt: skip
    for r in rounds:
        assert r.calls == {"model:0": 1, "pay": 1, "model:1": 1}, r.calls  # never twice
        told = [i for i in r.inputs if i["step"] == 1]
        assert [i["outputs"] for i in told] == [[UNKNOWN_OUTCOME]], told


def test_kill_after_a_tool_before_the_next_model_call(stack: Stack, uid: str) -> None:
    rounds = fault_test(
        stack, uid, "kill -9 after a tool", "[three]", ["after:note"],
        done={"after:note": ["model:0", "note:a"]}, flight={"after:note": []},
    )  # fmt: skip
    for r in rounds:
        assert r.calls == {"model:0": 1, "note:a": 1, "model:1": 1, "note:b": 1, "model:2": 1}
        assert r.output.startswith(f"done: {r.tag} [three] | noted a | noted b"), r.output


def test_kill_after_an_approved_tool_ran(stack: Stack, uid: str) -> None:
    """Approvals (I13) on the journal: the approved call runs at most once, whether the
    worker dies once it returned (its output is replayed) or inside it (unknown)."""
    rounds = fault_test(
        stack, uid, "kill -9 in/after an approved tool", "[approve]",
        ["after:transfer", "tool:transfer"],
        done={"after:transfer": ["model:0", "transfer"], "tool:transfer": ["model:0"]},
        flight={"after:transfer": [], "tool:transfer": ["transfer"]},
    )  # fmt: skip
    for r in rounds:
        assert r.calls == {"model:0": 1, "transfer": 1, "model:1": 1}, r.calls
        told = [i["outputs"] for i in r.inputs if i["step"] == 1]
        want = "transferred 5" if r.stop == "after:transfer" else UNKNOWN_OUTCOME
        assert told == [[want]], told


# --- payloads Postgres cannot hold as they are -----------------------------------------


def test_a_nul_character_in_a_tool_output_and_the_answer_ends_the_turn(
    stack: Stack, uid: str
) -> None:
    """JSONB cannot hold U+0000: the journal stores such a step safely (as the transcript
    does, U+FFFD) instead of taking the refused write for Postgres being down and running
    the turn again and again (I12)."""
    stack.settle()
    tag = f"j{uid}nul"
    turn = stack.client.enqueue(f"journal-{tag}", f"journal-{uid}", f"{tag} [nul]")
    done = stack.client.wait(turn.id, timeout=60)
    assert done.status is TurnStatus.SUCCEEDED, (done.status, done.error_code, done.error)
    assert done.attempts == 1, "the turn was run again"
    calls = {k.decode(): int(v) for k, v in stack.redis.hgetall(calls_key(tag)).items()}
    assert calls == {"model:0": 1, "nul": 1, "model:1": 1}, calls
    assert done.output is not None and "nul\ufffdhere" in done.output, done.output
    assert "nul\ufffdoutput" in done.output, done.output


# --- a stale holder -----------------------------------------------------------------------


def test_a_holder_frozen_in_a_tool_past_its_lock_stops_when_it_wakes(
    stack: Stack, uid: str
) -> None:
    """SIGSTOP inside a tool past the lock TTL: the other worker takes the turn over and
    finishes it; the woken holder's journal write is refused (Fenced) inside the tool,
    where the Agents SDK turns a tool's exception into its output.  It must stop there:
    no model call, no tool, nothing more from the stale run."""
    stack.settle()
    r, client = stack.redis, stack.client
    tag = f"j{uid}stale"
    r.set(stop_key(tag), "tool:note:a", ex=600)
    turn = client.enqueue(f"journal-{tag}", f"journal-{uid}", f"{tag} [three]")
    wait_until(lambda: r.get(at_key(tag)) is not None, 60, message="no worker reached the tool")
    pid = int(r.get(at_key(tag)).decode().split()[1])  # type: ignore[union-attr]
    frozen = next(w for w in stack.workers if w.pid == pid)
    log_before = len(frozen.log_text())
    frozen.pause()
    try:
        done = client.wait(turn.id, timeout=120)  # taken over and finished by the other
    finally:
        r.set(go_key(tag), "1", ex=600)  # the frozen run goes on from inside its tool
        frozen.resume()
    assert done.status is TurnStatus.SUCCEEDED, (done.status, done.error_code, done.error)
    wait_until(
        lambda: "fenced out" in (t := frozen.log_text()[log_before:]) or "lock lost" in t,
        60, message="the stale holder never noticed",
    )  # fmt: skip
    calls = {k.decode(): int(v) for k, v in r.hgetall(calls_key(tag)).items()}
    # note:a ran in both (idempotent, in flight); everything after it only in the new holder.
    assert calls == {"model:0": 1, "note:a": 2, "model:1": 1, "note:b": 1, "model:2": 1}, calls
    assert frozen.alive()
    assert "drain failed" not in frozen.log_text()[log_before:]  # stopped as fenced out


# --- cancel ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["rollback", "interrupt"])
def test_cancel_stops_a_replaying_turn_and_a_rolled_back_journal_is_not_replayed(
    stack: Stack, uid: str, mode: str
) -> None:
    """Killed in model call 2, taken over (step 1 and its tool replayed), then cancelled
    while the re-run is in its last model call: it stops there, no step runs again; with
    rollback nothing of it stays in the history and its journal is marked rolled back
    (never replayed)."""
    stack.settle()
    r, client, user = stack.redis, stack.client, f"journal-{uid}"
    tag, session = f"j{uid}{mode}", f"journal-{uid}-{mode}"
    r.set(stop_key(tag), "model:1", ex=600)
    turn = client.enqueue(session, user, f"{tag} [three]")
    wait_until(lambda: r.get(at_key(tag)) is not None, 60, message="no worker reached model:1")
    pid = int(r.get(at_key(tag)).decode().split()[1])  # type: ignore[union-attr]
    r.delete(at_key(tag))
    r.set(stop_key(tag), "model:2", ex=600)  # the re-run stops in its last model call
    stack.kill(pid)
    wait_until(lambda: r.get(at_key(tag)) is not None, 90, message="the re-run never got far")
    assert client.get_turn(turn.id).attempts >= 2
    client.cancel(turn.id, user, mode=mode)
    r.set(go_key(tag), "1", ex=600)
    done = client.wait(turn.id, timeout=60)
    assert done.status is TurnStatus.CANCELLED, (done.status, done.error)
    calls = {k.decode(): int(v) for k, v in r.hgetall(calls_key(tag)).items()}
    assert calls == {"model:0": 1, "model:1": 2, "note:a": 1, "note:b": 1, "model:2": 1}, calls
    if mode == "interrupt":
        return  # the turn keeps what it had done
    assert client.history(session, user) == []  # nothing of a rolled-back turn stays
    with psycopg.connect(libpq(stack.database_url)) as conn:
        steps = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE rolled_back) FROM turn_steps"
            " WHERE turn_id = %s", (turn.id,),
        ).fetchone()  # fmt: skip
    assert steps is not None and steps[0] > 0 and steps[0] == steps[1], steps
