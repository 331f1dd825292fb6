"""Drain a session: run its queued turns one at a time, in order, under its lock.

    await drain(runtime, session_id)

1. ``SET NX`` the session lock; if someone holds it, return at once: the holder
   will run our turn (I5: no countdown retry, no slot held while waiting).
2. Bump the session's fence and claim the lowest open turn with its context, in
   one statement; every write below checks the fence (I1).
3. Run the agent (``workers/execute.py``), then commit how it ended -- succeeded,
   failed with its error code, or cancelled -- and claim the next turn, in one
   fenced statement (I2, I4, I12).  Repeat until nothing can run.
4. Release the lock.  A kick that arrived while we held it exited, so its turn is ours
   to run: if its acquire marked the session (``SessionLock.quiet`` is False), or the
   drain did not end on a claim that found nothing, look once more for a runnable turn
   and re-acquire if there is one (closes the release/kick race; docs/decisions/0012).

A holder that stops while alive -- it lost its lock, was fenced out, lost Postgres --
says so (``WorkerStore.left``), so only executions whose worker really vanished count
towards ``worker_lost`` (docs/decisions/0006).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from shared import keys, metrics
from shared.errors import Fenced
from shared.locks import SessionLock
from shared.status import ErrorCode, TurnStatus
from shared.store import Claim, Context, TurnRecord
from workers.compact import request_compaction
from workers.execute import Failed, Finished, Paused, execute
from workers.journal import JournalUnavailable
from workers.runtime import Runtime
from workers.streaming import Outbox, publish

log = logging.getLogger(__name__)

# Failures of the database itself (not of the turn): the turn stays running and the drain
# fails, so Celery retries it and a new claim takes the turn over without counting it.
_INFRASTRUCTURE = (
    OperationalError, InterfaceError, PoolTimeout, ConnectionError, OSError, JournalUnavailable,
)  # fmt: skip


async def drain(rt: Runtime, session_id: str) -> int:
    """Run every runnable turn of the session; returns how many this call ran."""
    ran = 0
    while True:
        lock = SessionLock(
            rt.redis, session_id, rt.settings.lock_ttl_s, rt.settings.heartbeat_interval_s
        )
        if not await lock.acquire():
            metrics.LOCK_CONTENTION.inc()
            log.debug("session busy; the holder drains it", extra={"session_id": session_id})
            return ran
        dry = False  # the drain ended on a claim, under the lock, that found nothing to run
        try:
            if await lock.still_held():  # else stalled since acquiring: it may be another's
                done, dry = await _drain_locked(rt, session_id, lock)
                ran += done
        finally:
            await lock.release()
        if lock.lost or (dry and lock.quiet) or not await rt.turns.claimable(session_id):
            return ran
        if rt.stopping:  # shutting down: hand the rest of the session to another worker
            await rt.kick(keys.DRAIN_TASK, session_id)
            return ran


async def _drain_locked(rt: Runtime, session_id: str, lock: SessionLock) -> tuple[int, bool]:
    """Returns how many turns ran, and whether the last claim found nothing to run (then
    only a kick since -- marked on the lock -- can have brought a turn)."""
    claimed = await rt.turns.claim(session_id, None, rt.settings.max_attempts)
    if claimed is None:
        return 0, True  # session deleted since the kick
    fence = claimed.fence
    me = asyncio.current_task()
    assert me is not None
    ran = 0
    current: TurnRecord | None = None

    async def still_ours() -> bool:
        return await rt.turns.fence_is(session_id, fence)

    try:
        async with lock.heartbeat(on_lost=me.cancel, still_ours=still_ours):
            while claimed is not None:
                for dead in claimed.gave_up:
                    await _announce_lost(rt, dead)
                if claimed.turn is None or claimed.context is None or lock.lost:
                    break
                current = claimed.turn
                claimed = await run_turn(rt, claimed.turn, claimed.context, fence, lock)
                current = None
                ran += 1
    except asyncio.CancelledError:
        if not lock.lost:
            raise
        me.uncancel()
        log.warning("lock lost mid-turn; stopped", extra={"session_id": session_id})
    except Fenced:
        lock.lost = True
        log.warning("fenced out: another worker owns the session", extra={"session_id": session_id})
    except BaseException:
        if current is not None:
            await _left(rt, current, fence)
        raise
    if current is not None:
        await _left(rt, current, fence)
    dry = claimed is not None and claimed.turn is None and not lock.lost
    return ran, dry


async def run_turn(
    rt: Runtime, turn: TurnRecord, context: Context, fence: int, lock: SessionLock
) -> Claim | None:
    """Run one claimed turn and commit how it ended; returns the session's next claim,
    or None when it claimed nothing on purpose.

    The commit and the next claim are one statement.  A stopping worker claims nothing
    more and hands the session on; so does a holder whose lock Redis no longer confirms
    (it woke from a pause past the TTL: the commit is still fenced, but the next turn may
    already be another holder's).  The drain then releases and tries to lock again.
    """
    t0 = metrics.turn_started(turn)
    outbox = Outbox(rt, turn.id)  # sent while the model runs: the turn never waits for Redis
    try:
        outbox.add({"type": "status", "status": "running"})
        outcome = await execute(rt, turn, context, outbox, fence)
        metrics.TURN_RUN.observe(time.perf_counter() - t0)
        held = await lock.still_held()
        next_max = None if rt.stopping or not held else rt.settings.max_attempts
        claimed = await _commit(rt, turn, fence, outcome, outbox, next_max)
    finally:
        outbox.close()
    return claimed if next_max is not None else None


async def _commit(
    rt: Runtime,
    turn: TurnRecord,
    fence: int,
    outcome: Finished | Failed | Paused,
    outbox: Outbox,
    next_max: int | None,
) -> Claim:
    """Commit how the turn ended and claim the next (none if ``next_max`` is None)."""
    if isinstance(outcome, Finished):
        try:
            after, status, claimed = await rt.turns.complete(
                turn, fence, outcome.items, outcome.output, outcome.usage,
                outcome.context_tokens, next_max,
                output_json=outcome.output_json, agent=outcome.agent,
                entry=turn.entry_agent or rt.registry.default,
            )  # fmt: skip
        except (Fenced, *_INFRASTRUCTURE):
            raise
        except Exception as exc:  # the result itself cannot be stored (e.g. invalid JSON)
            outcome = Failed(ErrorCode.AGENT_ERROR, f"the turn's result could not be stored: {exc}")
        else:
            await _finished(rt, turn, outcome, status, after, outbox)
            return claimed
    if isinstance(outcome, Paused):
        return await _pause(rt, turn, fence, outcome, outbox, next_max)
    status, claimed = await rt.turns.fail(
        turn, fence, outcome.code, outcome.error, items=outcome.items, usage=outcome.usage,
        agent=outcome.agent, entry=turn.entry_agent or rt.registry.default, max_lost=next_max,
    )  # fmt: skip
    event = {"type": "status", "status": status.value}
    if status is TurnStatus.FAILED:
        event |= {"error_code": outcome.code.value, "error": outcome.error}
        metrics.TURN_FAILURES.labels(code=outcome.code.value).inc()
        log.warning(
            "turn failed",
            extra={"turn_id": turn.id, "session_id": turn.session_id,
                   "error_code": outcome.code.value, "error": outcome.error},
        )  # fmt: skip
    outbox.add(event)
    await outbox.flushed()
    metrics.TURNS.labels(status=status.value).inc()
    return claimed


async def _finished(
    rt: Runtime, turn: TurnRecord, done: Finished, status: TurnStatus, after: int, outbox: Outbox
) -> None:
    event = {"type": "status", "status": status.value, "agent": done.agent}
    if done.output_json is not None:
        event["output_json"] = json.dumps(done.output_json, ensure_ascii=False)
    outbox.add(event)
    await outbox.flushed()
    metrics.TURNS.labels(status=status.value).inc()
    metrics.turn_finished(
        turn, status.value, done.usage["input_tokens"], done.usage["output_tokens"]
    )
    metrics.CONTEXT_TOKENS.observe(after)
    if done.trimmed:
        metrics.TRIMS.inc()
    if after > rt.policy.trigger_tokens or done.trimmed:
        await request_compaction(rt, turn.session_id)


async def _pause(
    rt: Runtime, turn: TurnRecord, fence: int, paused: Paused, outbox: Outbox, next_max: int | None
) -> Claim:
    """Commit the pause (the turn waits, holding no lock and no slot) and tell watchers what
    needs a decision; the claim that comes back finds the line held by this turn."""
    status, claimed = await rt.turns.pause(
        turn, fence, state=paused.state, approvals=paused.approvals,
        pending_items=paused.pending_items, finished_items=paused.finished_items,
        usage=paused.usage, agent=paused.agent,
        entry=turn.entry_agent or rt.registry.default, max_lost=next_max,
    )  # fmt: skip
    if status is TurnStatus.WAITING:
        metrics.APPROVALS_REQUESTED.inc(len(paused.approvals))
        for asked in paused.approvals:
            outbox.add({"type": "approval_required", **asked})
        log.info(
            "turn waits for approvals",
            extra={"turn_id": turn.id, "session_id": turn.session_id,
                   "tools": [a["tool"] for a in paused.approvals]},
        )  # fmt: skip
    outbox.add({"type": "status", "status": status.value, "agent": paused.agent})
    await outbox.flushed()
    metrics.TURNS.labels(status=status.value).inc()
    return claimed


async def _announce_lost(rt: Runtime, turn_id: str) -> None:
    metrics.TURN_FAILURES.labels(code=ErrorCode.WORKER_LOST.value).inc()
    metrics.TURNS.labels(status=TurnStatus.FAILED.value).inc()
    event = {"type": "status", "status": "failed", "error_code": ErrorCode.WORKER_LOST.value}
    with contextlib.suppress(Exception):  # the reason is Postgres's; the event goes out anyway
        event["error"] = await rt.turns.error_of(turn_id) or ""
    await publish(rt, turn_id, event)


async def _left(rt: Runtime, turn: TurnRecord, fence: int) -> None:
    """Best effort: if Postgres is away too, the takeover counts us as vanished."""
    with contextlib.suppress(Exception):
        await asyncio.shield(rt.turns.left(turn.session_id, turn.id, fence))
