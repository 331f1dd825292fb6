"""The Agents SDK ``Session`` contract, run against every implementation.

One suite, every implementation (saq's style): the SDK's own in-memory
``SQLiteSession`` is the reference, ``TurnqSession`` runs on the run's real
Postgres.  Below the contract: what only TurnqSession promises (user scoping,
the shared transcript, the summary view, coexistence with worker commits).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, cast

import pytest
from agents import Agent, Runner, SessionSettings, SQLiteSession, TResponseInputItem, function_tool
from agents.memory import Session
from agents.testing import ScriptedModel, assistant_message, function_call
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from producer import AsyncClient
from shared.errors import InvalidInput
from shared.sdk_session import SUMMARY_PREFIX, TurnqSession, summary_item
from shared.store import Database, ProducerStore, WorkerStore, create_engine, estimate_tokens

pytestmark = pytest.mark.service

IMPLEMENTATIONS = ["sqlite", "turnq"]
_counter = itertools.count()

SessionFactory = Callable[..., Session]


def _pg(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def _msg(text_: str, role: str = "user") -> TResponseInputItem:
    return cast(TResponseInputItem, {"role": role, "content": text_})


def _msgs(tag: str, n: int) -> list[TResponseInputItem]:
    return [_msg(f"{tag}-{i}") for i in range(n)]


@pytest.fixture(scope="module")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    e = create_engine(_pg(database_url), pool_size=5)
    yield e
    await e.dispose()


@pytest.fixture(params=IMPLEMENTATIONS)
def new_session(request: pytest.FixtureRequest, engine: AsyncEngine) -> Iterator[SessionFactory]:
    """Factory: new_session(key=None, user="alice", **kw) -> a fresh Session of one kind."""
    opened: list[SQLiteSession] = []

    def make(key: str | None = None, user: str = "alice", **kw: Any) -> Session:
        key = key or f"s-{next(_counter)}-{request.node.name[:40]}".replace("[", "-").strip("]")
        key = "".join(c if c.isalnum() or c in "-_." else "-" for c in key)
        if request.param == "sqlite":
            s = SQLiteSession(f"{user}/{key}", **kw)
            opened.append(s)
            return s
        return TurnqSession(key, user, engine=engine, **kw)

    yield make
    for s in opened:
        s.close()


# ====================================================================== the contract
@pytest.mark.anyio
async def test_is_a_runtime_session(new_session: SessionFactory) -> None:
    s = new_session()
    assert isinstance(s, Session)
    assert isinstance(s.session_id, str) and s.session_id
    assert s.session_settings is not None and s.session_settings.limit is None


@pytest.mark.anyio
async def test_empty_session(new_session: SessionFactory) -> None:
    s = new_session()
    assert await s.get_items() == []
    assert await s.get_items(limit=3) == []
    assert await s.pop_item() is None
    await s.clear_session()
    assert await s.get_items() == []


@pytest.mark.anyio
async def test_add_then_get_keeps_order(new_session: SessionFactory) -> None:
    s = new_session()
    await s.add_items(_msgs("a", 3))
    await s.add_items([])
    await s.add_items([_msg("reply", "assistant"), *_msgs("b", 2)])
    assert await s.get_items() == [*_msgs("a", 3), _msg("reply", "assistant"), *_msgs("b", 2)]


@pytest.mark.anyio
async def test_items_round_trip_structurally(new_session: SessionFactory) -> None:
    s = new_session()
    items = [
        _msg('naïve ☃ 日本語 \U0001f600 "quotes" \\ back\nslash'),
        cast(
            TResponseInputItem,
            {
                "type": "function_call",
                "call_id": "call-rt",
                "name": "f",
                "arguments": '{"x": [1, 2.5, null, true]}',
            },
        ),
        cast(
            TResponseInputItem,
            {"type": "function_call_output", "call_id": "call-rt", "output": "{}"},
        ),
    ]
    await s.add_items(items)
    assert await s.get_items() == items


@pytest.mark.anyio
async def test_get_items_limit_is_the_latest_n_in_order(new_session: SessionFactory) -> None:
    s = new_session()
    items = _msgs("m", 5)
    await s.add_items(items)
    assert await s.get_items(limit=2) == items[-2:]
    assert await s.get_items(limit=1) == items[-1:]
    assert await s.get_items(limit=5) == items
    assert await s.get_items(limit=50) == items
    assert await s.get_items(limit=0) == []


@pytest.mark.anyio
async def test_session_settings_limit_is_the_default(new_session: SessionFactory) -> None:
    s = new_session(session_settings=SessionSettings(limit=3))
    items = _msgs("m", 5)
    await s.add_items(items)
    assert await s.get_items() == items[-3:]
    assert await s.get_items(limit=1) == items[-1:]  # an explicit limit wins


@pytest.mark.anyio
async def test_pop_item_removes_newest(new_session: SessionFactory) -> None:
    s = new_session()
    items = _msgs("p", 3)
    await s.add_items(items)
    assert await s.pop_item() == items[2]
    assert await s.get_items() == items[:2]
    assert await s.pop_item() == items[1]
    await s.add_items([_msg("after-pop")])
    assert await s.get_items() == [items[0], _msg("after-pop")]
    assert await s.pop_item() == _msg("after-pop")
    assert await s.pop_item() == items[0]
    assert await s.pop_item() is None
    assert await s.get_items() == []


@pytest.mark.anyio
async def test_clear_session_then_reuse(new_session: SessionFactory) -> None:
    s = new_session()
    await s.add_items(_msgs("c", 4))
    await s.clear_session()
    assert await s.get_items() == []
    assert await s.pop_item() is None
    await s.add_items([_msg("fresh")])
    assert await s.get_items() == [_msg("fresh")]


@pytest.mark.anyio
async def test_sessions_are_independent(new_session: SessionFactory) -> None:
    a, b = new_session(), new_session()
    await a.add_items([_msg("for a")])
    await b.add_items([_msg("for b")])
    await a.clear_session()
    assert await a.get_items() == []
    assert await b.get_items() == [_msg("for b")]


@function_tool
def get_weather(city: str) -> str:
    """Weather for a city."""
    return f"{city}: 21C and sunny"


def _shape(items: Any) -> list[tuple[Any, ...]]:
    """What matters of a model input or a history, independent of item ids and statuses."""
    out: list[tuple[Any, ...]] = []
    for item in items:
        d = item if isinstance(item, dict) else item.model_dump()
        kind = d.get("type", "message")
        if kind == "function_call":
            out.append(("function_call", d["call_id"], d["name"]))
        elif kind == "function_call_output":
            out.append(("function_call_output", d["call_id"], d["output"]))
        else:
            content = d["content"]
            if not isinstance(content, str):
                content = "".join(part.get("text", "") for part in content)
            out.append((d["role"], content))
    return out


async def _two_runs(session: Session, call_id: str) -> ScriptedModel:
    model = ScriptedModel(
        [
            [function_call("get_weather", {"city": "Paris"}, call_id=call_id)],
            [assistant_message("Paris: 21C and sunny.", item_id=f"msg-{call_id}-1")],
            [assistant_message("You asked about Paris.", item_id=f"msg-{call_id}-2")],
        ]
    )
    agent = Agent(name="weather", model=model, tools=[get_weather])
    r1 = await Runner.run(agent, "Weather in Paris?", session=session)
    assert r1.final_output == "Paris: 21C and sunny."
    r2 = await Runner.run(agent, "Which city did I ask about?", session=session)
    assert r2.final_output == "You asked about Paris."
    model.assert_complete()
    return model


@pytest.mark.anyio
async def test_runner_multi_turn_with_tool_call(new_session: SessionFactory) -> None:
    s = new_session()
    call_id = f"call-{next(_counter)}"
    model = await _two_runs(s, call_id)

    first_run = [
        ("user", "Weather in Paris?"),
        ("function_call", call_id, "get_weather"),
        ("function_call_output", call_id, "Paris: 21C and sunny"),
        ("assistant", "Paris: 21C and sunny."),
    ]
    assert _shape(model.calls[0].input) == first_run[:1]
    assert _shape(model.calls[1].input) == first_run[:3]
    # The second run's model input is the first run's items, then the new message.
    assert _shape(model.calls[2].input) == [*first_run, ("user", "Which city did I ask about?")]
    assert _shape(await s.get_items()) == [
        *first_run,
        ("user", "Which city did I ask about?"),
        ("assistant", "You asked about Paris."),
    ]


@pytest.mark.anyio
async def test_turnq_stores_exactly_what_sqlite_stores(engine: AsyncEngine, uid: str) -> None:
    reference = SQLiteSession(f"ref-{uid}")
    ours = TurnqSession(f"ref-{uid}", f"u{uid}", engine=engine)
    try:
        await _two_runs(reference, f"call-{uid}")
        await _two_runs(ours, f"call-{uid}")
        assert await ours.get_items() == await reference.get_items()
        assert await ours.get_items(limit=3) == await reference.get_items(limit=3)
    finally:
        reference.close()


# ====================================================================== TurnqSession only
async def _row(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).first()


async def _session_row(engine: AsyncEngine, user: str, key: str) -> Any:
    return await _row(
        engine, "SELECT * FROM sessions WHERE user_id = :u AND key = :k", u=user, k=key
    )


@pytest.mark.anyio
async def test_same_key_for_two_users_is_two_sessions(engine: AsyncEngine, uid: str) -> None:
    alice = TurnqSession(f"s{uid}", f"alice{uid}", engine=engine)
    bob = TurnqSession(f"s{uid}", f"bob{uid}", engine=engine)
    await alice.add_items([_msg("alice's secret")])
    assert await bob.get_items() == []
    assert await bob.pop_item() is None
    await bob.clear_session()
    await bob.add_items([_msg("bob's note")])
    assert await alice.get_items() == [_msg("alice's secret")]
    assert await bob.get_items() == [_msg("bob's note")]
    a = await _session_row(engine, f"alice{uid}", f"s{uid}")
    b = await _session_row(engine, f"bob{uid}", f"s{uid}")
    assert a.id != b.id


@pytest.mark.anyio
async def test_two_instances_on_one_key_share_history(engine: AsyncEngine, uid: str) -> None:
    """Unlike an in-memory SQLiteSession, the history lives in Postgres, not the instance."""
    first = TurnqSession(f"s{uid}", f"u{uid}", engine=engine)
    second = TurnqSession(f"s{uid}", f"u{uid}", engine=engine)
    await first.add_items([_msg("one")])
    await second.add_items([_msg("two")])
    assert await first.get_items() == [_msg("one"), _msg("two")]
    assert await second.pop_item() == _msg("two")
    assert await first.get_items() == [_msg("one")]


@pytest.mark.anyio
async def test_row_is_created_on_first_write_only(engine: AsyncEngine, uid: str) -> None:
    s = TurnqSession(f"s{uid}", f"u{uid}", engine=engine)
    await s.get_items()
    await s.pop_item()
    await s.clear_session()
    assert await _session_row(engine, f"u{uid}", f"s{uid}") is None
    await s.add_items([_msg("hi")])
    row = await _session_row(engine, f"u{uid}", f"s{uid}")
    assert row is not None and row.item_count == 1 and row.turn_count == 0


@pytest.mark.anyio
async def test_items_are_visible_to_the_producer_client(
    stack_env: dict[str, str], engine: AsyncEngine, uid: str
) -> None:
    s = TurnqSession(f"s{uid}", f"u{uid}", engine=engine)
    items = [_msg("from a notebook"), _msg("hello", "assistant")]
    await s.add_items(items)
    async with AsyncClient.from_settings() as client:
        assert await client.history(f"s{uid}", f"u{uid}") == items
        record = await client.session(f"s{uid}", f"u{uid}")
        assert record.item_count == 2
        assert record.transcript_tokens == sum(estimate_tokens(i) for i in items)
        turn = await client.enqueue(f"s{uid}", f"u{uid}", "and now a queued turn")
        assert turn.seq == 1
        assert await client.history(f"s{uid}", f"u{uid}") == items


@pytest.mark.anyio
async def test_writes_and_token_counts(engine: AsyncEngine, uid: str) -> None:
    s = TurnqSession(f"s{uid}", f"u{uid}", engine=engine)
    items = [_msg("x" * 400), _msg("short")]
    await s.add_items(items)
    row = await _session_row(engine, f"u{uid}", f"s{uid}")
    positions = await _row(
        engine,
        "SELECT array_agg(position ORDER BY position), bool_and(turn_id IS NULL), sum(tokens) "
        "FROM items WHERE session_id = :sid",
        sid=row.id,
    )
    expected = sum(estimate_tokens(i) for i in items)
    assert positions[0] == [0, 1] and positions[1] is True and positions[2] == expected
    assert row.transcript_tokens == expected and row.context_tokens == expected
    assert await s.pop_item() == items[1]
    row = await _session_row(engine, f"u{uid}", f"s{uid}")
    assert row.transcript_tokens == estimate_tokens(items[0])
    await s.clear_session()
    row = await _session_row(engine, f"u{uid}", f"s{uid}")
    assert (row.transcript_tokens, row.context_tokens, row.summary) == (0, 0, None)


@pytest.mark.anyio
async def test_positions_are_never_reused(engine: AsyncEngine, uid: str) -> None:
    """A reader paging with history(after=...) never misses an item after a pop or clear."""
    s = TurnqSession(f"s{uid}", f"u{uid}", engine=engine)
    store = ProducerStore(Database(engine, namespace=s.namespace))
    await s.add_items(_msgs("a", 3))
    await s.pop_item()
    await s.add_items([_msg("b")])
    row = await _session_row(engine, f"u{uid}", f"s{uid}")
    assert [p for p, _, _ in await store.history(row.id)] == [0, 1, 3]
    await s.clear_session()
    await s.add_items([_msg("c")])
    assert [(p, item) for p, _, item in await store.history(row.id)] == [(4, _msg("c"))]
    assert await s.get_items() == [_msg("c")]


@pytest.mark.anyio
async def test_concurrent_adds_never_collide(engine: AsyncEngine, uid: str) -> None:
    sessions = [TurnqSession(f"s{uid}", f"u{uid}", engine=engine) for _ in range(10)]
    await asyncio.gather(
        *(s.add_items([_msg(f"w{i}-0"), _msg(f"w{i}-1")]) for i, s in enumerate(sessions))
    )
    got = [cast(dict[str, Any], i)["content"] for i in await sessions[0].get_items()]
    assert sorted(got) == sorted(f"w{i}-{j}" for i in range(10) for j in range(2))
    for i in range(10):  # each add_items call landed as one contiguous block
        assert got.index(f"w{i}-1") == got.index(f"w{i}-0") + 1
    row = await _session_row(engine, f"u{uid}", f"s{uid}")
    assert row.item_count == 20


@pytest.mark.anyio
async def test_summary_and_compaction_mark_view(engine: AsyncEngine, uid: str) -> None:
    s = TurnqSession(f"s{uid}", f"u{uid}", engine=engine)
    items = _msgs("h", 5)
    await s.add_items(items)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE sessions SET summary = 'They talked about h-0 to h-2.', "
                "compaction_mark = 3 WHERE user_id = :u AND key = :k"
            ),
            {"u": f"u{uid}", "k": f"s{uid}"},
        )
    summary = {"role": "system", "content": SUMMARY_PREFIX + "They talked about h-0 to h-2."}
    assert summary_item("They talked about h-0 to h-2.") == summary
    assert await s.get_items() == [summary, items[3], items[4]]
    assert await s.get_items(limit=2) == items[3:]
    assert await s.get_items(limit=3) == [summary, *items[3:]]
    assert await s.get_items(limit=10) == [summary, *items[3:]]

    # pop_item pops only what the model sees; the summarized items stay (I9).
    assert await s.pop_item() == items[4]
    assert await s.pop_item() == items[3]
    assert await s.pop_item() is None
    assert await s.get_items() == [summary]
    row = await _session_row(engine, f"u{uid}", f"s{uid}")
    store = ProducerStore(Database(engine, namespace=s.namespace))
    assert [item for _, _, item in await store.history(row.id)] == items[:3]

    await s.add_items([_msg("new")])
    assert await s.get_items() == [summary, _msg("new")]
    await s.clear_session()  # drops the transcript and the summary
    assert await s.get_items() == []
    assert await store.history(row.id) == []
    await s.add_items([_msg("after clear")])
    assert await s.get_items() == [_msg("after clear")]


@pytest.mark.anyio
async def test_writes_beside_a_draining_worker_never_collide(engine: AsyncEngine, uid: str) -> None:
    """The documented decision: appends take no fence, so the worker's commit still lands."""
    s = TurnqSession(f"s{uid}", f"u{uid}", engine=engine)
    db = Database(engine, namespace=s.namespace)
    store = ProducerStore(db)
    turn, _, _ = await store.enqueue(f"u{uid}", f"s{uid}", "queued turn", None)
    claim = await WorkerStore(db).claim(turn.session_id, None, 3)
    assert claim is not None and claim.turn is not None
    claimed, fence = claim.turn, claim.fence

    await s.add_items([_msg("notebook 1")])  # while the worker runs its model call
    turn_items: list[dict[str, Any]] = [
        {"role": "user", "content": "queued turn"},
        {"role": "assistant", "content": "worker answer"},
    ]
    await WorkerStore(db).complete(claimed, fence, turn_items, "worker answer", None, None, None)
    await s.add_items([_msg("notebook 2")])

    history = await store.history(turn.session_id)
    assert [p for p, _, _ in history] == [0, 1, 2, 3]
    assert [tid for _, tid, _ in history] == [None, claimed.id, claimed.id, None]
    assert await s.get_items() == [_msg("notebook 1"), *turn_items, _msg("notebook 2")]
    done = await store.get_turn(turn.id)
    assert done is not None and done.status.value == "succeeded"


@pytest.mark.anyio
async def test_unstorable_items_are_refused_whole(engine: AsyncEngine, uid: str) -> None:
    s = TurnqSession(f"s{uid}", f"u{uid}", engine=engine)
    await s.add_items([_msg("kept")])
    for bad in ("nul \x00 byte", "lone \ud800 surrogate"):
        with pytest.raises(InvalidInput):
            await s.add_items([_msg("ok"), _msg(bad)])
    with pytest.raises(InvalidInput):
        await s.add_items([cast(TResponseInputItem, {"role": "user", "content": object()})])
    assert await s.get_items() == [_msg("kept")]
    row = await _session_row(engine, f"u{uid}", f"s{uid}")
    assert row.item_count == 1


@pytest.mark.parametrize(
    ("key", "user"),
    [("has space", "alice"), ("a/b", "alice"), ("ok", "x'; DROP TABLE sessions;--"), ("", "a")],
)
def test_invalid_ids_are_refused(key: str, user: str) -> None:
    with pytest.raises(InvalidInput):
        TurnqSession(key, user, database_url="postgresql://nowhere/db")


def test_engine_and_url_are_exclusive(database_url: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    e = create_async_engine(_pg(database_url))
    with pytest.raises(ValueError, match="not both"):
        TurnqSession("s", "alice", engine=e, database_url=database_url)


def test_own_engine_survives_several_event_loops(database_url: str, uid: str) -> None:
    """A script may call asyncio.run more than once with one session (NullPool engine)."""
    s = TurnqSession(f"s{uid}", f"u{uid}", database_url=database_url)
    asyncio.run(s.add_items([_msg("first loop")]))
    asyncio.run(s.add_items([_msg("second loop")]))
    assert asyncio.run(s.get_items()) == [_msg("first loop"), _msg("second loop")]

    async def close() -> None:
        async with s:
            pass

    asyncio.run(close())


@pytest.mark.anyio
async def test_database_url_defaults_to_settings(stack_env: dict[str, str], uid: str) -> None:
    async with TurnqSession(f"s{uid}", f"u{uid}") as s:
        await s.add_items([_msg("via TURNQ_DATABASE_URL")])
        assert await s.get_items() == [_msg("via TURNQ_DATABASE_URL")]
