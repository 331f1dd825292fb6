"""Hypothesis drives the real store through enqueue, claim, complete, fail, cancel, takeover
and left, from two connection pools, some of them at the same moment; after every step no
turn may have made a transition ``shared.status`` forbids (I12).

Each example is one session.  "Holders" are workers' views of it: the fence they claimed
under and the turn they run.  A holder whose fence went stale (another claim bumped it)
still tries to write, as a paused worker would; the store must refuse it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from shared.errors import Fenced, TurnNotCancellable
from shared.multitask import CancelMode, Multitask
from shared.status import OPEN, TERMINAL, ErrorCode, TurnStatus, can_transition
from shared.store import Database, TurnRecord
from tests.support.stores import Stores, sqlalchemy_url

pytestmark = pytest.mark.service

MAX_LOST = 2
PICK = st.integers(0, 1_000)


@dataclass
class Holder:
    fence: int
    turn: TurnRecord | None


class TurnMachine(RuleBasedStateMachine):
    database_url: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.pools = [
            Stores.of(Database.connect(sqlalchemy_url(self.database_url), 4)) for _ in range(2)
        ]
        self.user, self.key = f"u{secrets.token_hex(4)}", f"s{secrets.token_hex(4)}"
        self.session_id: str | None = None
        self.holders: list[Holder] = []
        self.seen: dict[str, TurnStatus] = {}
        self.moves: list[str] = []

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        for s in self.pools:
            self.run(s.db.close())
        self.loop.close()

    # ------------------------------------------------------------------ rules
    @rule(pool=st.integers(0, 1), strategy=st.sampled_from(list(Multitask)))
    def enqueue(self, pool: int, strategy: Multitask) -> None:
        try:
            turn, _, _ = self.run(
                self.pools[pool].producer.enqueue(self.user, self.key, "hi", None, strategy)
            )
        except Exception as exc:  # reject: the session is busy
            assert type(exc).__name__ == "SessionBusy"
            return
        self.session_id = turn.session_id
        self.moves.append(f"enqueue {turn.seq} ({strategy.value})")

    @rule(pool=st.integers(0, 1))
    def new_holder_claims(self, pool: int) -> None:
        """A worker takes the lock: bump the fence, claim (or take over) the lowest turn."""
        if self.session_id is None:
            return
        claim = self.run(self.pools[pool].worker.claim(self.session_id, None, MAX_LOST))
        assert claim is not None
        self.holders.append(Holder(claim.fence, claim.turn))
        self.moves.append(f"claim -> {claim.turn.seq if claim.turn else None}")

    def _holder(self, pick: int) -> Holder | None:
        """One of the holders running a turn (draws never depend on the database's answers,
        so Hypothesis can replay an example)."""
        busy = [h for h in self.holders if h.turn is not None]
        return busy[pick % len(busy)] if busy else None

    @rule(pick=PICK, pool=st.integers(0, 1), fail=st.booleans())
    def holder_finishes(self, pick: int, pool: int, fail: bool) -> None:
        """A holder (maybe a stale one) commits its turn as succeeded or failed."""
        holder = self._holder(pick)
        if holder is None or holder.turn is None:
            return
        worker = self.pools[pool].worker
        items = [{"role": "user", "content": "hi"}]
        try:
            if fail:
                _, claim = self.run(
                    worker.fail(holder.turn, holder.fence, ErrorCode.AGENT_ERROR, "boom",
                                max_lost=MAX_LOST)
                )  # fmt: skip
            else:
                _, _, claim = self.run(
                    worker.complete(holder.turn, holder.fence, items, "ok", None, 1, MAX_LOST)
                )
        except Fenced:
            self.moves.append(f"stale finish {holder.turn.seq} refused")
            holder.turn = None
            return
        self.moves.append(f"{'fail' if fail else 'complete'} {holder.turn.seq}")
        holder.turn = claim.turn

    @rule(pick=PICK)
    def holder_leaves_alive(self, pick: int) -> None:
        holder = self._holder(pick)
        if holder is None or holder.turn is None or self.session_id is None:
            return
        self.run(self.pools[0].worker.left(self.session_id, holder.turn.id, holder.fence))
        self.moves.append(f"left {holder.turn.seq}")
        holder.turn = None

    def _turn_id(self, pick: int) -> str | None:
        ids = sorted(self.seen)
        return ids[pick % len(ids)] if ids else None

    @rule(pick=PICK, pool=st.integers(0, 1), mode=st.sampled_from(list(CancelMode)))
    def user_cancels(self, pick: int, pool: int, mode: CancelMode) -> None:
        turn_id = self._turn_id(pick)
        if turn_id is None:
            return
        try:
            self.run(self.pools[pool].producer.cancel_turn(turn_id, self.user, mode))
        except TurnNotCancellable:
            pass
        self.moves.append(f"cancel ({mode.value})")

    @rule(pick=PICK, mode=st.sampled_from(list(CancelMode)))
    def cancel_races_a_claim(self, pick: int, mode: CancelMode) -> None:
        """A cancel on one connection and a new holder's claim on the other, at once."""
        turn_id, sid = self._turn_id(pick), self.session_id
        if turn_id is None or sid is None:
            return

        async def both() -> Any:
            return await asyncio.gather(
                self.pools[0].producer.cancel_turn(turn_id, self.user, mode),
                self.pools[1].worker.claim(sid, None, MAX_LOST),
                return_exceptions=True,
            )

        cancelled, claim = self.run(both())
        assert not isinstance(cancelled, Exception) or isinstance(cancelled, TurnNotCancellable)
        assert not isinstance(claim, Exception), claim
        self.holders.append(Holder(claim.fence, claim.turn))
        self.moves.append("cancel || claim")

    # ------------------------------------------------------------------ invariants
    @invariant()
    def only_allowed_transitions(self) -> None:
        if self.session_id is None:
            return
        turns = self.run(self.pools[1].producer.turns_of(self.session_id))
        running = [t for t in turns if t.status is TurnStatus.RUNNING]
        assert len(running) <= 1, self.moves
        for t in turns:
            old = self.seen.get(t.id, TurnStatus.QUEUED)
            assert old == t.status or can_transition(old, t.status), (
                f"turn {t.seq}: {old} -> {t.status} after {self.moves}"
            )
            if t.status is TurnStatus.FAILED:
                assert t.error_code is not None and t.error
            if t.status in TERMINAL:
                assert t.finished_at is not None
            self.seen[t.id] = t.status
        # FIFO: nothing runs or ran while an earlier turn is still open and not running.
        for t in running:
            earlier = [e for e in turns if e.seq < t.seq and e.status in OPEN]
            assert earlier == [], self.moves


@pytest.mark.timeout(300)
def test_no_turn_ever_makes_a_forbidden_transition(database_url: str) -> None:
    TurnMachine.database_url = database_url
    examples = int(os.environ.get("TURNQ_STATE_MACHINE_EXAMPLES", "80"))
    TurnMachine.TestCase.settings = settings(
        max_examples=examples,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    TurnMachine.TestCase().runTest()
