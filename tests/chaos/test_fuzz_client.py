"""Hostile input through the Python client, with a real worker answering what is accepted.

Every input either fails with a typed error (``shared.errors``) and writes nothing, or is
accepted, run by the worker, and read back byte-identical from the turn and the history.
Afterwards every session touched still works (history readable, the next turn succeeds)
and the worker is still alive.  tests/service/test_client_inputs.py covers each field's
refusals without a worker; this file adds the worker, hostile combinations, huge values
and the reading routes' arguments.
"""

from __future__ import annotations

import base64
import re
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import psycopg
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from producer import Client
from shared.errors import (
    IdempotencyConflict,
    InvalidInput,
    NotFound,
    SessionBusy,
    TurnqError,
)
from shared.settings import get_settings
from shared.status import TurnStatus
from tests.support.adversarial import (
    ALL,
    fuzz_settings,
    hostile_content,
    hostile_id,
    json_value,
    stored_parts,
    turn_inputs,
)
from tests.support.workers import WorkerProcess
from tests.system.conftest import FAST_RECOVERY

pytestmark = [pytest.mark.chaos, pytest.mark.system]

EXAMPLES = 300
REFUSALS = (InvalidInput, IdempotencyConflict, SessionBusy)


def raw(s: str) -> bytes:
    """Exact bytes of any Python string, lone surrogates included."""
    return s.encode("utf-8", "surrogatepass")


@pytest.fixture(scope="module")
def worker(stack_env: dict[str, str]) -> Iterator[WorkerProcess]:
    env = {**stack_env, **FAST_RECOVERY, "TURNQ_AGENT": "tests.agents:echo"}
    w = WorkerProcess(env, name=f"fuzz-client-{secrets.token_hex(3)}", concurrency=8)
    w.start()
    yield w
    w.stop()
    assert "Traceback" not in w.log_text(), w.log_text()[-3000:]


@pytest.fixture(scope="module")
def client(stack_env: dict[str, str]) -> Iterator[Client]:
    """A client of the worker's deployment (it checks agent names against its agents)."""
    settings = get_settings().model_copy(update={"agent": "tests.agents:echo"})
    with Client.from_settings(settings) as c:
        yield c


@pytest.fixture(scope="module")
def written(database_url: str) -> Iterator[Callable[[], tuple[int, int]]]:
    """(sessions, turns) row counts: only an accepted enqueue adds to either."""
    with psycopg.connect(database_url, autocommit=True) as conn:

        def counts() -> tuple[int, int]:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM turns)"
            ).fetchone()
            assert row is not None
            return int(row[0]), int(row[1])

        yield counts


@dataclass
class Accepted:
    turn_id: str
    session: str
    user: str
    content: str


def refused_cleanly(written: Callable[[], tuple[int, int]], call: Callable[[], Any]) -> TurnqError:
    before = written()
    with pytest.raises(TurnqError) as err:
        call()
    assert isinstance(err.value, (*REFUSALS, NotFound)), repr(err.value)
    assert str(err.value), "a refusal without a message"
    assert written() == before, f"{err.value!r} wrote rows"
    return err.value


def said_hello(client: Client, session: str, user: str) -> str:
    turn = client.enqueue(session, user, "hello")
    assert client.wait(turn.id, timeout=60).status is TurnStatus.SUCCEEDED
    return turn.id


def check_sessions_work(
    client: Client, accepted: list[Accepted], worker: WorkerProcess, others: list[str]
) -> int:
    """Every accepted turn ran and reads back byte-identical; each session takes a next turn."""
    by_session: dict[tuple[str, str], list[Accepted]] = {}
    for a in accepted:
        by_session.setdefault((a.session, a.user), []).append(a)
    for a in accepted:
        done = client.wait(a.turn_id, timeout=120, user_id=a.user)
        assert done.status is TurnStatus.SUCCEEDED, (raw(a.content)[:80], done.error)
        assert raw(done.input) == raw(a.content)
        assert done.output is not None and raw(done.output).startswith(b"echo: " + raw(a.content))
    for (session, user), turns in by_session.items():
        history = client.history(session, user)
        mine = [raw(i["content"]) for i in history if i.get("role") == "user"]
        assert mine[-len(turns) :] == [raw(a.content) for a in turns], session[:40]
        nxt = client.enqueue(session, user, "still fine?")
        done = client.wait(nxt.id, timeout=60, user_id=user)
        assert done.status is TurnStatus.SUCCEEDED and done.output is not None
        assert done.output.startswith("echo: still fine?")
        assert [t.seq for t in client.turns(session, user)] == list(range(1, nxt.seq + 1))
    assert worker.alive(), worker.log_text()[-3000:]
    for other in others:  # sessions that were never written to still read as not found
        with pytest.raises(NotFound):
            client.history(other, "nobody")
    return len(by_session)


def test_hostile_turns_are_refused_or_round_trip_through_a_worker(
    client: Client, worker: WorkerProcess, written: Callable[[], tuple[int, int]], uid: str
) -> None:
    home, user = f"home-{uid}", f"u-{uid}"
    said_hello(client, home, user)
    accepted: list[Accepted] = []
    outcomes: dict[str, int] = {}

    @fuzz_settings(EXAMPLES)
    @given(
        hostile=st.sampled_from(["content", "content", "session", "user", "idem", "strategy"]),
        value=hostile_id(),
        content=hostile_content(),
        fresh=st.booleans(),
    )
    def one(hostile: str, value: str, content: str, fresh: bool) -> None:
        """Hostile content, plus at most one other hostile field."""
        session = value if hostile == "session" else f"fresh-{uid}" if fresh else home
        user_id = value if hostile == "user" else user
        idem = value if hostile == "idem" else None
        strategy = value if hostile == "strategy" else "enqueue"
        before = written()
        try:
            turn = client.enqueue(session, user_id, content, idem, strategy)
        except REFUSALS as err:
            outcome = f"refused {type(err).__name__}: {getattr(err, 'field', '')}"
            assert written() == before, f"{err!r} wrote rows"
        else:
            outcome = "accepted" if turn.created else "idempotent replay"
            if turn.created:
                accepted.append(Accepted(turn.id, session, user_id, content))
                got = client.get_turn(turn.id, user_id)
                assert raw(got.input) == raw(content) and got.session_id == session
        event(outcome)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    one()
    sessions = check_sessions_work(client, accepted, worker, [f"never-{uid}"])
    print(
        f"client fuzz: {EXAMPLES} cases, {sessions} sessions, outcomes {sorted(outcomes.items())}"
    )
    assert outcomes.get("accepted", 0) >= 10, outcomes  # the fuzzing reached the worker
    assert sum(v for k, v in outcomes.items() if k.startswith("refused")) >= 10, outcomes


def test_hostile_agents_metadata_and_content_parts_are_refused_or_round_trip(
    client: Client, worker: WorkerProcess, written: Callable[[], tuple[int, int]], uid: str
) -> None:
    user = f"u-{uid}"
    accepted: list[tuple[str, str, Any, Any]] = []  # (turn id, session, message, metadata)
    outcomes: dict[str, int] = {}

    @fuzz_settings(EXAMPLES)
    @given(inputs=turn_inputs("echo"), fresh=st.booleans())
    def one(inputs: tuple[str | None, Any, Any], fresh: bool) -> None:
        agent, metadata, content = inputs
        session = f"parts-{uid}-{len(accepted)}" if fresh else f"parts-{uid}"
        before = written()
        try:
            turn = client.enqueue(session, user, content, agent=agent, metadata=metadata)
        except REFUSALS as err:
            field = re.sub(r"\[\d+\]", "[i]", getattr(err, "field", ""))
            outcome = f"refused {type(err).__name__}: {field}"
            assert written() == before, f"{err!r} wrote rows"
            assert len(str(err)) < 500, f"the error echoes the input: {str(err)[:100]}"
        else:
            outcome = "accepted"
            message = stored_parts(content)
            accepted.append((turn.id, session, message, metadata))
            got = client.get_turn(turn.id, user)
            assert got.content == message
            assert json_value(got.metadata) == json_value(metadata)
        event(outcome)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    one()
    sent: dict[str, list[Any]] = {}
    for turn_id, session, message, metadata in accepted:
        done = client.wait(turn_id, timeout=120, user_id=user)
        assert done.status is TurnStatus.SUCCEEDED, (str(message)[:200], done.error)
        assert json_value(done.metadata) == json_value(metadata)
        sent.setdefault(session, []).append(message)
    for session, messages in sent.items():  # the transcript holds each message as given
        history = client.history(session, user)
        assert [i["content"] for i in history if i.get("role") == "user"] == messages
    assert worker.alive(), worker.log_text()[-3000:]
    print(f"agents/metadata/parts fuzz: {EXAMPLES} cases, outcomes {sorted(outcomes.items())}")
    assert outcomes.get("accepted", 0) >= 30, outcomes
    assert sum(v for k, v in outcomes.items() if "content[i]" in k) >= 10, outcomes
    assert sum(v for k, v in outcomes.items() if k.endswith(": metadata")) >= 10, outcomes
    assert sum(v for k, v in outcomes.items() if k.endswith(": agent")) >= 10, outcomes


def test_huge_values_are_refused_before_anything_is_written(
    client: Client, worker: WorkerProcess, written: Callable[[], tuple[int, int]], uid: str
) -> None:
    limit = client.settings.max_content_bytes
    session, user = f"huge-{uid}", f"u-{uid}"
    mb = 1024 * 1024
    enqueue = partial(client.enqueue, session, user)
    deep: dict[str, Any] = {}
    for _ in range(100_000):
        deep = {"d": deep}
    image = "data:image/png;base64," + "A" * 10 * mb
    cases: list[tuple[str, Callable[[], Any], str]] = [
        ("5 MB of text", partial(enqueue, "a" * 5 * mb), "content"),
        ("5 MB of NULs", partial(enqueue, "\x00" * 5 * mb), "content"),
        ("surrogates", partial(enqueue, "\ud800" * mb), "content"),
        ("limit+1 in emoji", partial(enqueue, "😀" * (limit // 4 + 1)), "content"),
        ("1 MB session id", partial(client.enqueue, "s" * mb, user, "hi"), "session_id"),
        ("1 MB user id", partial(client.enqueue, session, "u" * mb, "hi"), "user_id"),
        ("1 MB idempotency key", partial(enqueue, "hi", "k" * mb), "idempotency_key"),
        ("1 MB strategy", partial(enqueue, "hi", None, "x" * mb), "multitask_strategy"),
        ("1 MB agent name", partial(enqueue, "hi", agent="e" * mb), "agent"),
        ("1 MB of metadata", partial(enqueue, "hi", metadata={"k": "v" * mb}), "metadata"),
        ("metadata 100,000 deep", partial(enqueue, "hi", metadata=deep), "metadata"),
        ("10 MB image", partial(enqueue, [{"type": "input_image", "image_url": image}]),
         "content"),
        ("1,000 parts", partial(enqueue, [{"type": "input_text", "text": "x"}] * 1000),
         "content"),
        ("5 MB text part", partial(enqueue, [{"type": "input_text", "text": "a" * 5 * mb}]),
         "content"),
    ]  # fmt: skip
    for name, call, field in cases:
        err = refused_cleanly(written, call)
        assert isinstance(err, InvalidInput) and err.field == field, (name, err)
        assert len(str(err)) < 500, f"{name}: the error echoes the input ({len(str(err))} chars)"

    # At the limit exactly, in 4-byte characters: accepted, run, returned byte-identical.
    at_limit = "😀" * (limit // 4)
    turn = client.enqueue(session, user, at_limit)
    accepted = [Accepted(turn.id, session, user, at_limit)]
    check_sessions_work(client, accepted, worker, [])


def test_reading_routes_refuse_hostile_arguments(
    client: Client, worker: WorkerProcess, written: Callable[[], tuple[int, int]], uid: str
) -> None:
    session, user = f"reads-{uid}", f"u-{uid}"
    turn_id = said_hello(client, session, user)
    deep = base64.urlsafe_b64encode(b"[" * 100_000 + b"]" * 100_000).decode()
    cursors = [
        *ALL,
        deep,
        "x" * 1_000_000,
        base64.urlsafe_b64encode(b'["1999-01-01", "not-a-uuid"]').decode(),
        base64.urlsafe_b64encode(b'{"a": 1, "b": 2}').decode(),
        base64.urlsafe_b64encode(b"\xff\xfe\x00").decode(),
    ]
    positions = [-2, -(2**63), 2**63, 2**64, 10**30]
    calls: list[tuple[str, Callable[[], Any]]] = []
    for bad in [*ALL, "x" * 1_000_000, str(uuid.uuid4()) + "\x00"]:
        calls += [
            (f"get_turn {bad[:20]!r}", partial(client.get_turn, bad, user)),
            (f"wait {bad[:20]!r}", partial(client.wait, bad, 0.1, user)),
            (f"cancel {bad[:20]!r}", partial(client.cancel, bad, user)),
            (f"cancel mode {bad[:20]!r}", partial(client.cancel, turn_id, user, bad)),
            (f"items {bad[:20]!r}", partial(client.items, bad, user)),
            (f"turns {bad[:20]!r}", partial(client.turns, session, bad)),
            (f"compactions {bad[:20]!r}", partial(client.compactions, bad, user)),
            (f"delete {bad[:20]!r}", partial(client.delete_session, bad, user)),
            (f"list {bad[:20]!r}", partial(client.list_sessions, bad)),
        ]
    calls += [(f"cursor {c[:20]!r}", partial(client.list_sessions, user, 5, c)) for c in cursors]
    calls += [(f"after {p}", partial(client.items, session, user, p)) for p in positions[:2]]
    calls += [(f"limit {n}", partial(client.items, session, user, -1, n)) for n in positions]
    calls += [(f"list limit {n}", partial(client.list_sessions, user, n)) for n in positions]
    for name, call in calls:
        try:
            err = refused_cleanly(written, call)
        except BaseException as exc:
            raise AssertionError(f"{name}: {exc!r}"[:500]) from exc
        assert isinstance(err, InvalidInput), (name, err)
    for bad_id in ("\x00", "99999999999999999999-0", "0-0\r\nX: y", "-1"):
        with pytest.raises(InvalidInput):
            _events(client, turn_id, user, bad_id)
    for far in positions[2:]:  # past the end: an empty page, not an error
        assert client.items(session, user, far) == []
    print(f"client reads: {len(calls) + 4} hostile calls refused")
    # Nothing above touched the session.
    assert [t.status for t in client.turns(session, user)] == [TurnStatus.SUCCEEDED]
    check_sessions_work(client, [], worker, [])


def _events(client: Client, turn_id: str, user: str, last_id: str) -> list[Any]:
    async def collect() -> list[Any]:
        return [e async for e in client._inner.events(turn_id, user, last_id, idle_timeout=2)]

    return client._portal.run(collect(), timeout=30)
