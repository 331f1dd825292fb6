"""A second user's key against the first user's sessions and turns learns nothing (I10).

Every route, with every variant of its parameters, answers another user's existing
session or turn exactly as it answers an id that does not exist: the same status, the
same headers (but Date) and the same body, byte for byte.  Nothing the intruder sends
changes the owner's data.  And the two cannot be told apart by timing either:
requests alternate between the two kinds, and a Mann-Whitney U test over their
latencies must not separate them (a positive control shows the same measurement does
separate a real difference).  The Python client's user scoping is held to the same rule.

tests/system/test_gateway.py checks status and body on the main routes; this file adds
the headers, every route and variant, the owner's data afterwards, and timing.
"""

from __future__ import annotations

import math
import random
import secrets
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import pytest

from producer import Client
from shared.errors import NotFound
from shared.status import TurnStatus
from tests.support.chaos_stack import gateway_and_worker
from tests.system.test_beat_jobs import enqueue_without_kick
from tests.system.test_gateway_support import Api, GatewayProcess, new_key

pytestmark = [pytest.mark.chaos, pytest.mark.system]

PAIRS = 300  # timed requests of each kind per route
ALPHA = 0.001  # a route "leaks" when the U test separates the two kinds at this level
# ... and by this much: P(a > b) outside 0.5 +- EFFECT.  A found row costs Postgres a heap
# fetch a missing one does not (~20 us of a 1.5 ms request); at 300 pairs that alone
# reached p 1e-6 with AUC 0.615 in one run of three.  A leak an attacker can use moves
# the AUC well past that; the owner's control reads 0.98.
EFFECT = 0.15
VOLATILE_HEADERS = {"date"}


@dataclass
class World:
    gateway: GatewayProcess
    alice: Api
    bob: Api
    session: str  # alice's, with a finished turn
    big: str  # alice's, with many items (the positive timing control)
    done_turn: str
    queued_turn: str  # alice's, queued with no kick: must stay queued
    items: bytes  # alice's transcript before bob tries anything


def _ghost_like(existing: str) -> str:
    """A nonexistent id of exactly the same length and shape."""
    if len(existing) == 36 and existing.count("-") == 4:
        return str(uuid.uuid4())
    return existing[: -len("x" * 8)] + secrets.token_hex(4)


@pytest.fixture(scope="module")
def world(stack_env: dict[str, str], database_url: str) -> Iterator[World]:
    gateway, worker = gateway_and_worker(stack_env, "isolation")
    uid = secrets.token_hex(4)
    alice_user = f"alice-{uid}"
    alice = Api(gateway.url, new_key(database_url, alice_user))
    bob = Api(gateway.url, new_key(database_url, f"bob-{uid}"))
    try:
        session, big = f"private-{uid}", f"bigpriv-{uid}"
        done = alice.send(session, "my secret")
        assert alice.wait(done["turn_id"])["status"] == "succeeded"
        for turn in [alice.send(big, f"line {i} " + "x" * 2000) for i in range(30)]:
            assert alice.wait(turn["turn_id"])["status"] == "succeeded"
        queued = enqueue_without_kick(database_url, alice_user, f"queued-{uid}", "wait for me")
        items = alice.request("GET", f"/v1/sessions/{session}/items").content
        yield World(gateway, alice, bob, session, big, done["turn_id"], queued, items)
    finally:
        alice.close()
        bob.close()
        worker.stop()
        gateway.stop()


def snapshot(r: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = sorted((k, v) for k, v in r.headers.items() if k.lower() not in VOLATILE_HEADERS)
    return r.status_code, headers, r.content


# Every route that takes a session or turn id, with each variant of its other inputs.
ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/v1/turns/{t}", {}),
    ("GET", "/v1/turns/{t}?wait=0.2", {}),
    ("GET", "/v1/turns/{t}/events", {}),
    ("GET", "/v1/turns/{t}/events?after=0-0", {}),
    ("GET", "/v1/turns/{t}/events", {"headers": {"Last-Event-ID": "1-0"}}),
    ("POST", "/v1/turns/{t}/cancel", {}),
    ("POST", "/v1/turns/{t}/cancel", {"json": {"mode": "interrupt"}}),
    ("POST", "/v1/turns/{t}/cancel", {"json": {"mode": "rollback"}}),
    ("GET", "/v1/sessions/{s}", {}),
    ("GET", "/v1/sessions/{s}/items", {}),
    ("GET", "/v1/sessions/{s}/items?after=0&limit=1", {}),
    ("DELETE", "/v1/sessions/{s}", {}),
]


def test_every_route_answers_like_a_missing_id(world: World) -> None:
    compared = 0
    for turn in (world.done_turn, world.queued_turn):
        for method, template, kw in ROUTES:
            foreign = template.format(t=turn, s=world.session)
            ghost = template.format(t=_ghost_like(turn), s=_ghost_like(world.session))
            theirs = snapshot(world.bob.request(method, foreign, **kw))
            missing = snapshot(world.bob.request(method, ghost, **kw))
            assert theirs[0] == 404, (method, foreign, theirs)
            assert theirs == missing, (method, template, kw, theirs, missing)
            assert dict(theirs[1])["content-type"] == "application/problem+json"
            assert world.session.encode() not in theirs[2] and turn.encode() not in theirs[2]
            compared += 1
    # Writing to "the same" session id writes to bob's own: the answer is the one a
    # never-used id gets (a new session, seq 1), whoever else uses that name.
    same_name = world.bob.request(
        "POST", f"/v1/sessions/{world.session}/turns", json={"content": "hi"}
    )
    fresh_name = _ghost_like(world.session)
    fresh = world.bob.request("POST", f"/v1/sessions/{fresh_name}/turns", json={"content": "hi"})
    assert same_name.status_code == fresh.status_code == 202
    a, b = same_name.json(), fresh.json()
    assert (
        (a["seq"], a["created"], a["status"])
        == (b["seq"], b["created"], b["status"])
        == (1, True, "queued")
    )
    assert sorted(same_name.headers) == sorted(fresh.headers)
    listing = world.bob.expect(200, "GET", "/v1/sessions?limit=200")
    assert sorted(s["session_id"] for s in listing["sessions"]) == sorted(
        [world.session, fresh_name]
    )
    assert all(s["turn_count"] == 1 for s in listing["sessions"])
    # Alice's data is exactly as it was: nothing cancelled, deleted or added.
    assert world.alice.request("GET", f"/v1/sessions/{world.session}/items").content == world.items
    assert world.alice.expect(200, "GET", f"/v1/turns/{world.queued_turn}")["status"] == "queued"
    assert world.alice.expect(200, "GET", f"/v1/sessions/{world.session}")["turn_count"] == 1
    mine = world.alice.expect(200, "GET", "/v1/sessions?limit=200")["sessions"]
    assert len(mine) == 3
    print(f"isolation: {compared} route variants byte-identical to a missing id")


# ====================================================================== timing
def mann_whitney(a: list[float], b: list[float]) -> tuple[float, float]:
    """(AUC = P(a > b), two-sided p) by the normal approximation with a tie correction."""
    n1, n2 = len(a), len(b)
    pooled = sorted([(v, 0) for v in a] + [(v, 1) for v in b])
    ranks = [0.0] * len(pooled)
    ties = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        t = j - i + 1
        ties += t**3 - t
        i = j + 1
    r1 = sum(r for r, (_, group) in zip(ranks, pooled, strict=True) if group == 0)
    u1 = r1 - n1 * (n1 + 1) / 2
    n = n1 + n2
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))))
    z = (u1 - n1 * n2 / 2) / sigma if sigma else 0.0
    return u1 / (n1 * n2), math.erfc(abs(z) / math.sqrt(2))


def iqr(values: list[float]) -> float:
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


@dataclass
class Timing:
    route: str
    auc: float
    p: float
    median_a_ms: float
    median_b_ms: float
    iqr_ms: float

    @property
    def distinguishable(self) -> bool:
        return self.p < ALPHA and abs(self.auc - 0.5) >= EFFECT

    def __str__(self) -> str:
        return (
            f"{self.route}: medians {self.median_a_ms:.2f} vs {self.median_b_ms:.2f} ms, "
            f"IQR {self.iqr_ms:.2f} ms, AUC {self.auc:.3f}, p {self.p:.3g}"
        )


def race(route: str, a: Callable[[], httpx.Response], b: Callable[[], httpx.Response]) -> Timing:
    """PAIRS of each, interleaved in a random order per pair, so drift hits both alike."""
    times: dict[str, list[float]] = {"a": [], "b": []}
    rng = random.Random(route)
    for _ in range(10):  # warm both paths (connections, plans)
        a(), b()
    for _ in range(PAIRS):
        for kind in rng.sample(["a", "b"], 2):
            started = time.perf_counter()
            (a if kind == "a" else b)()
            times[kind].append(time.perf_counter() - started)
    auc, p = mann_whitney(times["a"], times["b"])
    ms = [t * 1000 for t in times["a"] + times["b"]]
    return Timing(
        route,
        auc,
        p,
        statistics.median(times["a"]) * 1000,
        statistics.median(times["b"]) * 1000,
        iqr(ms),
    )


def test_another_users_ids_take_as_long_as_missing_ones(world: World) -> None:
    bob = world.bob.http

    def get(path: str) -> httpx.Response:
        r = bob.get(path)
        assert r.status_code == 404, r.text
        return r

    def cancel(path: str) -> httpx.Response:
        r = bob.post(path)
        assert r.status_code == 404, r.text
        return r

    checks = [
        ("GET /v1/turns/{id}", get, "/v1/turns/{t}"),
        ("POST /v1/turns/{id}/cancel", cancel, "/v1/turns/{t}/cancel"),
        ("GET /v1/sessions/{id}", get, "/v1/sessions/{s}"),
        ("GET /v1/sessions/{id}/items", get, "/v1/sessions/{s}/items"),
    ]
    results = []
    for name, do, template in checks:
        # What a prober compares: one id that may exist, asked again and again, against
        # one it knows is missing (same length), asked as often; both built beforehand.
        foreign = template.format(t=world.done_turn, s=world.big)
        ghost = template.format(t=_ghost_like(world.done_turn), s=_ghost_like(world.big))
        results.append(race(name, partial(do, foreign), partial(do, ghost)))
    # Positive control: the owner reading 30 long items is measurably slower than a 404.
    control = race(
        "control: own items vs missing",
        partial(world.alice.http.get, f"/v1/sessions/{world.big}/items"),
        partial(world.alice.http.get, f"/v1/sessions/{_ghost_like(world.big)}/items"),
    )
    for r in [*results, control]:
        print("timing", r)
    assert control.distinguishable and control.auc > 0.5, f"the measurement is blind: {control}"
    leaks = [str(r) for r in results if r.distinguishable]
    assert not leaks, leaks


def test_mann_whitney_separates_a_shift_and_not_noise() -> None:
    rng = random.Random(7)
    noise = [rng.lognormvariate(0, 0.5) for _ in range(400)]
    a, b = noise[::2], noise[1::2]
    assert mann_whitney(a, b)[1] > ALPHA
    shifted = [v + 0.5 * iqr(b) for v in b]
    auc, p = mann_whitney(shifted, a)
    assert p < ALPHA and auc > 0.6
    assert mann_whitney([1.0] * 50, [1.0] * 50) == (0.5, 1.0)


# ====================================================================== the Python client
def test_python_client_scopes_every_read_and_write_to_the_user(
    world: World, stack_env: dict[str, str]
) -> None:
    owner = world.alice.expect(200, "GET", f"/v1/turns/{world.done_turn}")
    assert owner["status"] == "succeeded"
    intruder = f"mallory-{secrets.token_hex(4)}"
    session, ghost = world.session, _ghost_like(world.session)
    tid, ghost_tid = world.done_turn, str(uuid.uuid4())
    with Client.from_settings() as client:
        alice = client.get_turn(tid).session_id  # no user: internal use, not scoped
        assert alice == session
        by_session: list[Callable[[str], Any]] = [
            partial(client.session, user_id=intruder),
            partial(client.history, user_id=intruder),
            partial(client.items, user_id=intruder),
            partial(client.turns, user_id=intruder),
            partial(client.compactions, user_id=intruder),
            partial(client.delete_session, user_id=intruder),
        ]
        by_turn: list[Callable[[str], Any]] = [
            partial(client.get_turn, user_id=intruder),
            partial(client.wait, timeout=0.2, user_id=intruder),
            partial(client.cancel, user_id=intruder),
            partial(client.cancel, user_id=intruder, mode="rollback"),
        ]
        for calls, real, missing in ((by_session, session, ghost), (by_turn, tid, ghost_tid)):
            for do in calls:
                with pytest.raises(NotFound) as theirs:
                    do(real)
                with pytest.raises(NotFound) as absent:
                    do(missing)
                assert type(theirs.value) is type(absent.value)
                assert str(theirs.value) == str(absent.value).replace(missing, real)
        assert client.get_turn(world.queued_turn).status is TurnStatus.QUEUED
    assert world.alice.request("GET", f"/v1/sessions/{session}/items").content == world.items
