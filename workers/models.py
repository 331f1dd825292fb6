"""Every model call of a turn goes through ``TurnqModel``: one retry layer, and streaming
for models that only answer whole.

    provider = TurnqProvider(build_model_provider(settings))   # RunConfig.model_provider
    wrap_models(agent_graph)                                    # agents given a Model object
    with turn_scope(TurnScope(policy, notify=outbox.add)):
        Runner.run_streamed(agent, ..., run_config=RunConfig(model_provider=provider))

* **Retries.** A transient failure (``workers.retry``) retries the call in place, with
  backoff: the run keeps its earlier steps and tool results.  A stream that already
  sent text says so with a ``retry`` event (clients drop the partial message).  A
  final failure is raised as ``ModelCallFailed`` carrying its error code, so the turn
  can tell the model's failures from the agent's own.
* **Whole answers.** A model whose ``stream_response`` is not implemented (common for
  users' own models) is detected on first use; from then on its ``get_response`` answer
  is replayed as the Responses stream events the runner and the clients expect.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, cast

from agents import Model, ModelProvider, ModelResponse
from agents.items import TResponseStreamEvent
from agents.usage import Usage
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseCreatedEvent,
    ResponseOutputItem,
    ResponseUsage,
)
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails
from pydantic import TypeAdapter

from shared.models.offline import response_stream_events
from workers.journal import Journal
from workers.retry import BrokenResponse, ModelCallFailed, RetryPolicy

log = logging.getLogger(__name__)


@dataclass
class TurnScope:
    """What the model calls of the running turn share (a context variable, set per turn)."""

    policy: RetryPolicy
    notify: Callable[[dict[str, Any]], None] | None = None  # the turn's event outbox
    journal: Journal | None = None  # the turn's step journal (workers/journal.py)


_SCOPE: ContextVar[TurnScope] = ContextVar("turnq_turn_scope")
_NO_RETRIES = TurnScope(RetryPolicy(0, 0.0, 0.0, 0.0))


@contextmanager
def turn_scope(scope: TurnScope) -> Iterator[TurnScope]:
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)


def current_scope() -> TurnScope:
    return _SCOPE.get(_NO_RETRIES)


class TurnqModel(Model):
    def __init__(self, inner: Model) -> None:
        self.inner = inner
        self.streams: bool | None = None  # None: not known yet

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        journal = current_scope().journal
        key = journal.next_model_key() if journal is not None else ""
        if journal is not None and (saved := journal.model(key)) is not None:
            return replayed(journal, saved)
        answer = await _with_retries(lambda: self.inner.get_response(*args, **kwargs))
        if journal is not None:  # before its tools run
            await journal.record("model", key, "done", journaled(answer))
        return answer

    async def stream_response(
        self, *args: Any, **kwargs: Any
    ) -> AsyncIterator[TResponseStreamEvent]:
        scope = current_scope()
        journal = scope.journal
        key = journal.next_model_key() if journal is not None else ""
        if journal is not None and (saved := journal.model(key)) is not None:
            for event in replay_events(replayed(journal, saved)):
                yield event  # no text: a client saw it live before the crash
            return
        async for event in self._live_stream(args, kwargs):
            if journal is not None and isinstance(event, ResponseCompletedEvent):
                # Journaled before the runner sees the completed response (its tools run
                # only after it): a crash from here on replays this answer.
                await journal.record("model", key, "done", journaled(_answer_of(event)))
            yield event

    async def _live_stream(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncIterator[TResponseStreamEvent]:
        scope = current_scope()
        attempt, waited, started = 0, 0.0, time.monotonic()
        while True:
            sent = False
            try:
                if self.streams is False:
                    answer = await _with_retries(lambda: self.inner.get_response(*args, **kwargs))
                    for event in events_of(answer):
                        yield event
                    return
                completed = False
                async for event in self._inner_stream(args, kwargs):
                    completed = completed or isinstance(event, ResponseCompletedEvent)
                    sent = sent or getattr(event, "type", "") == "response.output_text.delta"
                    yield event
                if not self._can_stream():
                    continue  # found out it cannot stream: answer whole instead
                if not completed:
                    raise BrokenResponse("the model's stream ended before the response completed")
                return
            except Exception as exc:
                attempt += 1
                delay = scope.policy.delay(attempt, exc, waited)
                if delay is None:
                    if isinstance(exc, ModelCallFailed):
                        raise
                    raise scope.policy.failure(exc, attempt) from exc
                _retrying(scope, attempt, exc, delay, sent, time.monotonic() - started)
                await asyncio.sleep(delay)
                waited += delay

    def _can_stream(self) -> bool:
        return self.streams is not False

    async def _inner_stream(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncIterator[TResponseStreamEvent]:
        """The inner model's stream; marks the model non-streaming if it says so up front."""
        try:
            stream = self.inner.stream_response(*args, **kwargs)
            if inspect.isawaitable(stream):  # ``async def`` with no yield: a coroutine
                stream = await stream  # (raises NotImplementedError for a whole-answer model)
            first = await anext(aiter(stream))
        except NotImplementedError:
            if self.streams is None:
                self.streams = False
                log.info("model %s answers whole; its answers are replayed as a stream", self.inner)
                return
            raise
        except StopAsyncIteration:
            self.streams = True
            return
        self.streams = True
        yield first
        async for event in stream:
            yield event

    async def close(self) -> None:
        await self.inner.close()


async def _with_retries(call: Callable[[], Awaitable[ModelResponse]]) -> ModelResponse:
    scope = current_scope()
    attempt, waited, started = 0, 0.0, time.monotonic()
    while True:
        try:
            return await call()
        except Exception as exc:
            attempt += 1
            delay = scope.policy.delay(attempt, exc, waited)
            if delay is None:
                if isinstance(exc, ModelCallFailed):
                    raise
                raise scope.policy.failure(exc, attempt) from exc
            _retrying(scope, attempt, exc, delay, False, time.monotonic() - started)
            await asyncio.sleep(delay)
            waited += delay


def _retrying(
    scope: TurnScope, attempt: int, exc: Exception, delay: float, sent: bool, elapsed: float
) -> None:
    log.info(
        "model call failed; retrying",
        extra={"attempt": attempt, "error": type(exc).__name__, "delay_s": round(delay, 3),
               "elapsed_s": round(elapsed, 3)},
    )  # fmt: skip
    if scope.notify is not None:
        scope.notify({"type": "retry", "attempt": str(attempt), "discard": str(sent).lower()})


def events_of(answer: ModelResponse) -> Iterator[TResponseStreamEvent]:
    """A whole answer as the Responses stream a streaming model would have sent."""
    yield from response_stream_events(_response_of(answer))


def replay_events(answer: ModelResponse) -> Iterator[TResponseStreamEvent]:
    """A journaled answer as the runner needs it: created, then completed (no deltas)."""
    response = _response_of(answer)
    pending = response.model_copy(update={"output": [], "status": "in_progress", "usage": None})
    yield ResponseCreatedEvent(type="response.created", response=pending, sequence_number=0)
    yield ResponseCompletedEvent(type="response.completed", response=response, sequence_number=1)


_OUTPUT_ITEM: TypeAdapter[Any] = TypeAdapter(cast(Any, ResponseOutputItem))  # a Union alias


def journaled(answer: ModelResponse) -> dict[str, Any]:
    """What the journal keeps of a model response: its items, usage and id."""
    u = answer.usage
    return {
        "output": [item.model_dump(mode="json", exclude_none=True) for item in answer.output],
        "usage": {
            "requests": u.requests,
            "input_tokens": u.input_tokens,
            "output_tokens": u.output_tokens,
            "total_tokens": u.total_tokens,
            "cached_tokens": u.input_tokens_details.cached_tokens or 0,
            "reasoning_tokens": u.output_tokens_details.reasoning_tokens or 0,
        },
        "response_id": answer.response_id,
    }


def replayed(journal: Journal, saved: dict[str, Any]) -> ModelResponse:
    """A journaled response, exactly as the model gave it (same items and call ids)."""
    output = [_OUTPUT_ITEM.validate_python(item) for item in saved["output"]]
    journal.replayed_models += 1
    journal.replayed_calls.update(
        str(getattr(item, "call_id", "")) for item in output if getattr(item, "call_id", None)
    )
    u = saved.get("usage") or {}
    usage = Usage(
        requests=int(u.get("requests", 1)),
        input_tokens=int(u.get("input_tokens", 0)),
        output_tokens=int(u.get("output_tokens", 0)),
        total_tokens=int(u.get("total_tokens", 0)),
        input_tokens_details=InputTokensDetails(
            cached_tokens=int(u.get("cached_tokens", 0)), cache_write_tokens=0
        ),
        output_tokens_details=OutputTokensDetails(
            reasoning_tokens=int(u.get("reasoning_tokens", 0))
        ),
    )
    return ModelResponse(output=output, usage=usage, response_id=saved.get("response_id"))


def _answer_of(event: ResponseCompletedEvent) -> ModelResponse:
    r = event.response
    u = r.usage
    usage = Usage(
        requests=1,
        input_tokens=u.input_tokens if u else 0,
        output_tokens=u.output_tokens if u else 0,
        total_tokens=u.total_tokens if u else 0,
        input_tokens_details=InputTokensDetails(
            cached_tokens=(u.input_tokens_details.cached_tokens or 0) if u else 0,
            cache_write_tokens=0,
        ),
        output_tokens_details=OutputTokensDetails(
            reasoning_tokens=(u.output_tokens_details.reasoning_tokens or 0) if u else 0
        ),
    )
    return ModelResponse(output=list(r.output), usage=usage, response_id=r.id)


def _response_of(answer: ModelResponse) -> Response:
    u = answer.usage
    return Response(
        id=answer.response_id or "resp_whole",
        created_at=0,
        model="whole",
        object="response",
        output=list(answer.output),
        tool_choice="auto",
        tools=[],
        parallel_tool_calls=False,
        status="completed",
        usage=ResponseUsage(
            input_tokens=u.input_tokens,
            input_tokens_details=InputTokensDetails(
                cached_tokens=u.input_tokens_details.cached_tokens or 0,
                cache_write_tokens=getattr(u.input_tokens_details, "cache_write_tokens", 0) or 0,
            ),
            output_tokens=u.output_tokens,
            output_tokens_details=OutputTokensDetails(
                reasoning_tokens=u.output_tokens_details.reasoning_tokens or 0
            ),
            total_tokens=u.total_tokens,
        ),
    )


class TurnqProvider(ModelProvider):
    """The deployment's provider (offline, an OpenAI-compatible URL, OpenAI) with every model
    it hands out wrapped, so handoff targets and agents naming a model by string get
    turnq's retries and timeouts like the entry agent."""

    def __init__(self, inner: ModelProvider) -> None:
        self.inner = inner
        self._models: dict[str | None, TurnqModel] = {}

    def get_model(self, model_name: str | None) -> Model:
        model = self._models.get(model_name)
        if model is None:
            model = self._models[model_name] = TurnqModel(self.inner.get_model(model_name))
        return model

    async def aclose(self) -> None:
        await self.inner.aclose()


def wrapped(model: Model) -> TurnqModel:
    return model if isinstance(model, TurnqModel) else TurnqModel(model)
