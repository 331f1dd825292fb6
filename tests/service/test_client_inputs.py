"""The producer's bad-input contract: every bad input is refused by name, and writes nothing.

Runs ``producer.AsyncClient.from_settings()`` on the run's Redis and Postgres.  No
worker runs, so kicks just wait in the run's (namespaced) Redis queue.  Reads of
another user's session or turn must fail exactly like reads of one that does not
exist (I10): same exception type, same message shape.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from producer import AsyncClient, Client
from shared.errors import (
    ContentTooLarge,
    InvalidInput,
    NotFound,
    SessionNotFound,
    TurnNotFound,
)
from shared.status import TurnStatus

pytestmark = pytest.mark.service

SQLI = "a'; DROP TABLE sessions;--"
BAD_IDS: list[Any] = [
    "",
    "has space",
    " leading-space",
    "trailing-space ",
    "tab\there",
    "new\nline",
    "a/b",
    "a\\b",
    'dq"uote',
    "sq'uote",
    SQLI,
    "x;y",
    "100%",
    "-starts-with-dash",
    ".starts-with-dot",
    "nul\x00byte",
    "lone\ud800",
    "ünïcode",
    "x" * 129,  # over max_id_length (default 128)
    None,
    123,
    b"bytes",
    ["list"],
]
BAD_CONTENT: list[Any] = [
    "",
    " ",
    "\n\t  \r\n",
    "\u3000",  # ideographic space: whitespace only
    "\x00",
    "hello\x00world",
    "\ud800",
    "lone \udfff low surrogate",
    None,
    42,
    b"bytes are not text",
    ["a", "list"],
    {"role": "user", "content": "a dict"},
]


@pytest.fixture(scope="module")
async def client(stack_env: dict[str, str]) -> AsyncIterator[AsyncClient]:
    c = AsyncClient.from_settings()
    yield c
    await c.close()


async def _counts(client: AsyncClient) -> tuple[int, int, int]:
    async with client.db.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM turns), "
                    "(SELECT count(*) FROM items)"
                )
            )
        ).one()
    return int(row[0]), int(row[1]), int(row[2])


async def _refused(
    client: AsyncClient, call: Callable[[], Awaitable[Any]], exc: type[Exception] = InvalidInput
) -> Exception:
    """Run ``call``, expect ``exc``, and prove nothing was written."""
    before = await _counts(client)
    with pytest.raises(exc) as err:
        await call()
    assert await _counts(client) == before
    return err.value


# ====================================================================== content
@pytest.mark.anyio
@pytest.mark.parametrize("content", BAD_CONTENT, ids=repr)
async def test_bad_content_is_refused(client: AsyncClient, uid: str, content: Any) -> None:
    err = await _refused(client, lambda: client.enqueue(f"s{uid}", f"u{uid}", content))
    # a list is content parts: the error names the part ("content[0]")
    assert isinstance(err, InvalidInput) and err.field.split("[")[0] == "content"
    assert not isinstance(err, ContentTooLarge)


@pytest.mark.anyio
async def test_content_size_limit_is_in_utf8_bytes(client: AsyncClient, uid: str) -> None:
    limit = client.settings.max_content_bytes
    err = await _refused(
        client, lambda: client.enqueue(f"s{uid}", f"u{uid}", "a" * (limit + 1)), ContentTooLarge
    )
    assert isinstance(err, InvalidInput) and str(limit) in str(err)
    # two bytes a character: half as many characters reach the limit
    await _refused(
        client,
        lambda: client.enqueue(f"s{uid}", f"u{uid}", "é" * (limit // 2) + "é"),
        ContentTooLarge,
    )

    at_limit = "a" * limit
    turn = await client.enqueue(f"s{uid}", f"u{uid}", at_limit)
    assert (await client.get_turn(turn.id)).input == at_limit
    wide = "é" * (limit // 2) + "a" * (limit % 2)
    assert len(wide.encode()) == limit
    turn = await client.enqueue(f"s{uid}", f"u{uid}", wide)
    assert (await client.get_turn(turn.id)).input == wide


# ====================================================================== ids
@pytest.mark.anyio
@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
async def test_bad_session_id_is_refused(client: AsyncClient, uid: str, bad: Any) -> None:
    err = await _refused(client, lambda: client.enqueue(bad, f"u{uid}", "hello"))
    assert isinstance(err, InvalidInput) and err.field == "session_id"
    for read in (client.history, client.session, client.turns):
        await _refused(client, partial(read, bad, f"u{uid}"))


@pytest.mark.anyio
@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
async def test_bad_user_id_is_refused(client: AsyncClient, uid: str, bad: Any) -> None:
    err = await _refused(client, lambda: client.enqueue(f"s{uid}", bad, "hello"))
    assert isinstance(err, InvalidInput) and err.field == "user_id"
    for read in (client.history, client.session, client.turns):
        await _refused(client, partial(read, f"s{uid}", bad))


@pytest.mark.anyio
@pytest.mark.parametrize("bad", [b for b in BAD_IDS if b is not None], ids=repr)
async def test_bad_idempotency_key_is_refused(client: AsyncClient, uid: str, bad: Any) -> None:
    err = await _refused(
        client, lambda: client.enqueue(f"s{uid}", f"u{uid}", "hello", idempotency_key=bad)
    )
    assert isinstance(err, InvalidInput) and err.field == "idempotency_key"


@pytest.mark.anyio
async def test_ids_at_the_length_limit_are_accepted(client: AsyncClient, uid: str) -> None:
    n = client.settings.max_id_length
    key, user, idem = ("s" + uid).ljust(n, "k"), ("u" + uid).ljust(n, "u"), "i".ljust(n, "i")
    turn = await client.enqueue(key, user, "hello", idempotency_key=idem)
    assert turn.created and turn.session_id == key
    again = await client.enqueue(key, user, "hello", idempotency_key=idem)
    assert again.id == turn.id and not again.created
    assert [t.id for t in await client.turns(key, user)] == [turn.id]


@pytest.mark.anyio
async def test_sql_metacharacters_in_content_are_just_text(client: AsyncClient, uid: str) -> None:
    content = SQLI + " $1 :param %s \\x00 ' \" `"
    turn = await client.enqueue(f"s{uid}", f"u{uid}", content)
    assert (await client.get_turn(turn.id, f"u{uid}")).input == content
    assert (await _counts(client))[0] > 0  # sessions table still there


# ====================================================================== turn ids
@pytest.mark.anyio
@pytest.mark.parametrize(
    "bad",
    ["", "not-a-uuid", "1234", SQLI, "00000000-0000-0000-0000-00000000000g", None, 7, b"x"],
    ids=repr,
)
async def test_malformed_turn_id_is_invalid_input(client: AsyncClient, bad: Any) -> None:
    err = await _refused(client, lambda: client.get_turn(bad))
    assert isinstance(err, InvalidInput) and err.field == "turn_id"
    await _refused(client, lambda: client.wait(bad, timeout=0.1))


@pytest.mark.anyio
async def test_unknown_turn_id_is_turn_not_found(client: AsyncClient) -> None:
    unknown = str(uuid.uuid4())
    err = await _refused(client, lambda: client.get_turn(unknown), TurnNotFound)
    assert not isinstance(err, InvalidInput)
    assert str(err) == f"turn {unknown!r} not found"
    await _refused(client, lambda: client.wait(unknown, timeout=0.1), TurnNotFound)


# ====================================================================== owner only (I10)
@pytest.mark.anyio
async def test_other_users_session_looks_like_a_missing_one(client: AsyncClient, uid: str) -> None:
    key = f"s{uid}"
    await client.enqueue(key, f"alice{uid}", "alice's private message")
    missing = f"m{uid}"
    for read in (client.history, client.session, client.turns):
        foreign = await _refused(client, partial(read, key, f"bob{uid}"), SessionNotFound)
        absent = await _refused(client, partial(read, missing, f"bob{uid}"), SessionNotFound)
        assert type(foreign) is type(absent) is SessionNotFound
        assert str(foreign) == str(absent).replace(missing, key) == f"session {key!r} not found"
        assert foreign.args == (f"session {key!r} not found",)
        assert isinstance(foreign, NotFound) and foreign.code == absent.code


@pytest.mark.anyio
async def test_other_users_turn_looks_like_a_missing_one(client: AsyncClient, uid: str) -> None:
    turn = await client.enqueue(f"s{uid}", f"alice{uid}", "alice's private message")
    assert (await client.get_turn(turn.id, f"alice{uid}")).input == "alice's private message"
    unknown = str(uuid.uuid4())
    foreign = await _refused(client, lambda: client.get_turn(turn.id, f"bob{uid}"), TurnNotFound)
    absent = await _refused(client, lambda: client.get_turn(unknown, f"bob{uid}"), TurnNotFound)
    assert type(foreign) is type(absent) is TurnNotFound
    assert str(foreign) == str(absent).replace(unknown, turn.id) == f"turn {turn.id!r} not found"
    await _refused(client, lambda: client.wait(turn.id, 0.1, f"bob{uid}"), TurnNotFound)
    err = await _refused(client, lambda: client.get_turn(turn.id, "bad user"))
    assert isinstance(err, InvalidInput) and err.field == "user_id"


# ====================================================================== any text at all
_ids = st.one_of(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@\-]{0,30}", fullmatch=True),
    st.text(st.characters(exclude_categories=()), max_size=40),
)
_contents = st.one_of(
    st.text(),
    st.text(st.characters(exclude_categories=())),  # surrogates and control characters too
    st.text(st.characters(codec="utf-8"), min_size=1).map(lambda s: s * 3),
)


@pytest.mark.anyio
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(session_id=_ids, user_id=_ids, content=_contents)
async def test_any_text_is_refused_or_read_back_identical(
    client: AsyncClient, session_id: str, user_id: str, content: str
) -> None:
    before = await _counts(client)
    try:
        turn = await client.enqueue(session_id, user_id, content)
    except InvalidInput as err:
        event(f"refused: {err.field}")
        assert await _counts(client) == before
        return
    event("accepted")
    got = await client.get_turn(turn.id, user_id)
    assert got.input.encode("utf-8") == content.encode("utf-8")
    assert got.session_id == session_id and got.status is TurnStatus.QUEUED
    assert turn.session_id == session_id


# ====================================================================== the sync client
def test_sync_client_round_trip(stack_env: dict[str, str], uid: str) -> None:
    with Client.from_settings() as client:
        turn = client.enqueue(f"s{uid}", f"u{uid}", "hello from sync code")
        assert turn.created and turn.seq == 1 and turn.status is TurnStatus.QUEUED
        got = client.get_turn(turn.id, f"u{uid}")
        assert got.input == "hello from sync code" and got.status is TurnStatus.QUEUED
        assert got.session_id == f"s{uid}" and not got.terminal
        assert client.history(f"s{uid}", f"u{uid}") == []
        assert [t.id for t in client.turns(f"s{uid}", f"u{uid}")] == [turn.id]
        with pytest.raises(SessionNotFound):
            client.history(f"s{uid}", f"other{uid}")
    assert not [t for t in threading.enumerate() if t.name == "turnq-client"]
