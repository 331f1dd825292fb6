"""Drain a session: run its queued turns one at a time, in order, under its lock.

    await drain(runtime, session_id)

1. ``SET NX`` the session lock; if someone holds it, return at once: the holder
   will run our turn (I5: no countdown retry, no slot held while waiting).
2. Bump the session's fence and claim the lowest pending turn with its context, in
   one statement; every write below checks the fence (I1).
3. Run the agent, then commit the turn's items + status and claim the next turn in
   one fenced statement (I2, I4).  Repeat until nothing is pending.
4. Release the lock, then look once more for a pending turn: a kick that arrived
   while we held the lock exited, so its turn is ours to run (closes the
   release/kick race).  Re-acquire if there is one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from agents.exceptions import MaxTurnsExceeded, UserError

from shared import keys, metrics
from shared.compaction.turns import repair
from shared.errors import Fenced
from shared.locks import SessionLock
from shared.sdk_session import summary_item
from shared.store import Claim, Context, TurnRecord
from workers.compact import request_compaction
from workers.context import CallBudget, updated_calibration
from workers.runtime import Runtime
from workers.streaming import Outbox, publish, stream_run

log = logging.getLogger(__name__)


class _LockLost(Exception):
    pass


async def drain(rt: Runtime, session_id: str) -> int:
    """Run every pending turn of the session; returns how many this call ran."""
    ran = 0
    while True:
        lock = SessionLock(
            rt.redis, session_id, rt.settings.lock_ttl_s, rt.settings.heartbeat_interval_s
        )
        if not await lock.acquire():
            metrics.LOCK_CONTENTION.inc()
            log.debug("session busy; the holder drains it", extra={"session_id": session_id})
            return ran
        try:
            ran += await _drain_locked(rt, session_id, lock)
        finally:
            await lock.release()
        if lock.lost or not await rt.store.has_pending(session_id):
            return ran
        if rt.stopping:  # shutting down: hand the rest of the session to another worker
            await rt.kick(keys.DRAIN_TASK, session_id)
            return ran


async def _drain_locked(rt: Runtime, session_id: str, lock: SessionLock) -> int:
    claimed = await rt.store.claim(session_id, None, rt.settings.max_attempts)
    if claimed is None:
        return 0  # session deleted since the kick
    fence = claimed.fence
    me = asyncio.current_task()
    assert me is not None
    ran = 0
    try:
        async with lock.heartbeat(on_lost=me.cancel):
            while claimed is not None:
                for dead in claimed.gave_up:
                    await publish(rt, dead, {"type": "status", "status": "failed"})
                if claimed.turn is None or claimed.context is None or lock.lost:
                    break
                t0 = metrics.turn_started(claimed.turn)
                claimed = await run_turn(rt, claimed.turn, claimed.context, fence)
                metrics.TURN_RUN.observe(time.perf_counter() - t0)
                ran += 1
    except asyncio.CancelledError:
        if not lock.lost:
            raise
        me.uncancel()
        log.warning("lock lost mid-turn; stopped", extra={"session_id": session_id})
    except Fenced:
        lock.lost = True
        log.warning("fenced out: another worker owns the session", extra={"session_id": session_id})
    return ran


async def run_turn(rt: Runtime, turn: TurnRecord, context: Context, fence: int) -> Claim | None:
    """Run one claimed turn and commit it; returns the session's next claim (I2: in order).

    The commit and the next claim are one statement; a stopping worker claims nothing
    more and hands the session on.
    """
    next_max = None if rt.stopping else rt.settings.max_attempts
    user_item: dict[str, Any] = {"role": "user", "content": turn.input}
    model_input = build_model_input(context, user_item)
    budget = CallBudget(rt.policy, rt.estimator, rt.overhead_tokens, rt.calibration)
    started = time.perf_counter()
    outbox = Outbox(rt, turn.id)  # sent while the model runs: the turn never waits for Redis
    outbox.add({"type": "status", "status": "running"})
    stop = rt.cancels.register(turn.id)
    try:
        result = await _run_with_retries(rt, model_input, turn, budget, stop, outbox)
    except Exception as exc:
        error = _describe(exc)
        await rt.store.fail_turn(turn, fence, error)
        outbox.add({"type": "status", "status": "failed", "error": error})
        await outbox.flushed()
        metrics.TURNS.labels(status="failed").inc()
        log.warning(
            "turn failed",
            extra={"turn_id": turn.id, "session_id": turn.session_id, "error": error},
        )
        return await rt.store.claim(turn.session_id, fence, next_max)
    finally:
        rt.cancels.unregister(turn.id)
        metrics.MODEL_SECONDS.observe(time.perf_counter() - started)
    new_items = repair([user_item, *(_jsonable(i.to_input_item()) for i in result.new_items)])
    usage = result.context_wrapper.usage
    calls = [r.usage for r in result.raw_responses]
    context_tokens = _context_after(rt, budget, model_input, new_items, calls)
    after, status, claimed = await rt.store.complete_and_claim(
        turn,
        fence,
        new_items,
        output=_output_text(result.final_output),
        usage={
            "requests": usage.requests,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens,
            "max_input_tokens": max((c.input_tokens for c in calls), default=0),
            "trimmed": budget.trimmed,
            "model_seconds": round(time.perf_counter() - started, 4),
        },
        context_tokens=context_tokens,
        max_attempts=next_max,
    )
    outbox.add({"type": "status", "status": status.value})
    await outbox.flushed()
    metrics.TURNS.labels(status=status.value).inc()
    metrics.turn_finished(turn, status.value, usage)
    metrics.CONTEXT_TOKENS.observe(after)
    if budget.trimmed:
        metrics.TRIMS.inc()
    if after > rt.policy.trigger_tokens or budget.trimmed:
        await request_compaction(rt, turn.session_id)
    return claimed


def _context_after(
    rt: Runtime, budget: CallBudget, model_input: list[Any], new_items: list[Any], calls: list[Any]
) -> int:
    """The session's context size for its next turn.

    The model's reported input tokens of the last call are the truth; only the answer
    after it is estimated.  If this turn was trimmed, the report undercounts the real
    view, so the whole view is estimated instead (calibrated by what the model measured).
    """
    last = calls[-1] if calls else None
    if last is not None and last.input_tokens and budget.largest_input_estimate:
        measured = max(c.input_tokens for c in calls)
        estimated = budget.largest_input_estimate + rt.overhead_tokens
        rt.calibration = updated_calibration(rt.calibration, measured, estimated)
    if last is not None and last.input_tokens and not budget.trimmed:
        return int(last.input_tokens + last.output_tokens)
    view = [*model_input[:-1], *new_items]
    return int((budget.count(view) + rt.overhead_tokens) * rt.calibration)


def build_model_input(context: Context, user_item: dict[str, Any]) -> list[Any]:
    prefix: list[Any] = [summary_item(context.summary)] if context.summary else []
    return [*prefix, *context.summary_items, *context.items, user_item]


_PERMANENT = (UserError, MaxTurnsExceeded)


async def _run_with_retries(
    rt: Runtime,
    model_input: list[Any],
    turn: TurnRecord,
    budget: CallBudget,
    stop: asyncio.Event,
    outbox: Outbox,
) -> Any:
    """Model calls are at-least-once: transient failures retry in place, with backoff.

    Retrying here (not with a Celery countdown) keeps the session's order and lock.
    """
    s = rt.settings
    attempt = 0
    while True:
        try:
            async with asyncio.timeout(s.turn_timeout_s):
                with budget.active():
                    return await stream_run(
                        rt, rt.agent, turn.id, model_input, rt.run_config, stop, outbox
                    )
        except _PERMANENT:
            raise
        except Exception as exc:
            if _is_permanent_http(exc) or attempt >= s.model_retries:
                raise
            attempt += 1
            delay = s.model_retry_backoff_s * 2 ** (attempt - 1)
            outbox.add({"type": "retry", "attempt": str(attempt)})
            log.info(
                "model call failed; retrying",
                extra={"turn_id": turn.id, "attempt": attempt, "error": type(exc).__name__},
            )
            await asyncio.sleep(delay)


def _is_permanent_http(exc: BaseException) -> bool:
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and 400 <= status < 500 and status not in (408, 409, 429)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "the turn did not finish within turn_timeout_s"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:2000]


def _output_text(output: object) -> str | None:
    if output is None or isinstance(output, str):
        return output
    dump = getattr(output, "model_dump", None)
    return json.dumps(dump() if callable(dump) else output, default=str)


def _jsonable(item: object) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(json.dumps(item, default=_default))
    return loaded


def _default(obj: object) -> object:
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump(exclude_unset=True)
    return str(obj)
