"""An OpenAI-compatible HTTP stub answered by the brain, with latency and fault injection.

    python -m shared.models.stub_server --port 8100 --latency 0.5
    TURNQ_OPENAI_BASE_URL=http://127.0.0.1:8100/v1 TURNQ_MODEL_PROVIDER=openai turnq ...

    with StubServer(StubConfig(script=["429", "ok"])) as stub:    # tests: a thread
        client = AsyncOpenAI(base_url=stub.base_url, api_key="test")

It exists so the *real* client path (AsyncOpenAI, retries, timeouts, SSE parsing, the SDK's
Chat Completions and Responses adapters) runs without a real model.  Each call may be
delayed (``latency_s``; hundreds can be in flight) or fail as scripted ("429", "500",
"timeout", "malformed", any status code).  ``GET /_stub/stats`` reports concurrency per
conversation -- keyed by a hash of the request's first user message -- so tests can prove
that turnq never runs two turns of one session at once, and calls per requested model name,
so tests can prove which agent's model a call went to.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import socket
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from shared.models.offline import brain_response, response_stream_events, response_text
from shared.models.profile import PROFILES, ModelProfile, Pace, tokens
from shared.models.stub_protocol import (
    chat_chunks,
    chat_completion,
    chat_to_brain,
    chat_tools,
    conversation_key,
    responses_to_brain,
)

__all__ = ["StubConfig", "StubServer", "StubState", "create_app", "main", "serve"]

OK = "ok"
MALFORMED_JSON = '{"id": "malformed", "object": '


@dataclass
class StubConfig:
    """Behaviour of the stub; every field can be changed at runtime via ``POST /_stub/config``."""

    latency_s: float = 0.0
    fail_rate: float = 0.0
    fail_outcome: str = "500"
    script: list[str] = field(default_factory=list)
    timeout_s: float = 30.0
    retry_after_s: float = 1.0
    seed: int = 0
    model: str = "turnq-stub"
    # the answer's shape (shared.models.profile): instant and short by default
    answer_tokens: int = 0
    tokens_per_s: str = "0"
    tool_first: bool = False
    jitter_s: float = 0.0
    stamp: bool = False

    def update(self, changes: Mapping[str, Any]) -> None:
        """Set fields; ``profile`` (a name) first sets the answer fields to that profile's."""
        changes = dict(changes)
        named = changes.pop("profile", None)
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown stub config fields: {sorted(unknown)}")
        if named is not None:
            self.set_profile(ModelProfile.build(str(named)))
        casts: dict[str, Callable[[Any], Any]] = {
            "float": float,
            "int": int,
            "str": str,
            "bool": _bool,
        }
        for f in fields(self):
            if f.name not in changes:
                continue
            value = changes[f.name]
            if f.name == "script":
                value = value.split(",") if isinstance(value, str) else [str(v) for v in value]
            else:
                value = casts[str(f.type)](value)
            setattr(self, f.name, value)
        self.profile()  # refuse what the profile would refuse (a bad rate)

    def set_profile(self, profile: ModelProfile) -> None:
        low, high = profile.tokens_per_s
        self.answer_tokens = profile.answer_tokens
        self.tokens_per_s = f"{low:g}-{high:g}"
        self.tool_first = profile.tool_first
        self.jitter_s = profile.jitter_s
        self.stamp = profile.stamp

    def profile(self) -> ModelProfile:
        return ModelProfile.build(
            answer_tokens=self.answer_tokens,
            tokens_per_s=self.tokens_per_s,
            tool_first=self.tool_first,
            jitter_s=self.jitter_s,
            stamp=self.stamp,
        )


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


@dataclass
class _Conversation:
    calls: int = 0
    in_flight: int = 0
    max_in_flight: int = 0


@dataclass
class StubState:
    """Config plus counters; only touched from the server's event loop."""

    config: StubConfig = field(default_factory=StubConfig)
    total_calls: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)  # calls per requested model name
    conversations: dict[str, _Conversation] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.rng.seed(self.config.seed)

    def reset(self) -> None:
        """Zero the counters; calls still in flight stay counted so ``leave`` stays balanced."""
        self.total_calls = 0
        self.max_in_flight = self.in_flight
        self.outcomes.clear()
        self.models.clear()
        self.conversations = {
            key: _Conversation(in_flight=c.in_flight, max_in_flight=c.in_flight)
            for key, c in self.conversations.items()
            if c.in_flight
        }
        self.rng.seed(self.config.seed)

    def next_outcome(self) -> str:
        """The scripted outcome if any is left, else ``fail_outcome`` at ``fail_rate``."""
        if self.config.script:
            return str(self.config.script.pop(0)).lower()
        if self.config.fail_rate > 0 and self.rng.random() < self.config.fail_rate:
            return self.config.fail_outcome
        return OK

    def enter(self, key: str) -> None:
        self.total_calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        conv = self.conversations.setdefault(key, _Conversation())
        conv.calls += 1
        conv.in_flight += 1
        conv.max_in_flight = max(conv.max_in_flight, conv.in_flight)

    def leave(self, key: str) -> None:
        self.in_flight -= 1
        self.conversations[key].in_flight -= 1

    def stats(self) -> dict[str, Any]:
        convs = self.conversations.values()
        return {
            "total_calls": self.total_calls,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "conversations": len(self.conversations),
            "overlapping_conversations": sum(c.max_in_flight > 1 for c in convs),
            "max_conversation_concurrency": max((c.max_in_flight for c in convs), default=0),
            "outcomes": dict(self.outcomes),
            "models": dict(self.models),
            "per_conversation": {k: asdict(c) for k, c in self.conversations.items()},
        }


# --- the app ------------------------------------------------------------------------


class _TrackedStream(StreamingResponse):
    """A streaming response that releases its in-flight slot however the stream ends."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream")
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def _frame(event: str | None, data: str) -> str:
    return (f"event: {event}\n" if event else "") + f"data: {data}\n\n"


async def _sse(payloads: Sequence[tuple[str | None, str]]) -> AsyncIterator[str]:
    for event, data in payloads:
        yield _frame(event, data)


async def _until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _pause(request: Request, seconds: float) -> None:
    """Sleep, but stop early when the client hangs up (its timeout fired), freeing the slot."""
    if seconds <= 0:
        return
    watcher = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({watcher}, timeout=seconds)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


def _error(status: int, state: StubState) -> Response:
    kind = {429: "rate_limit_error", 500: "server_error"}.get(status, "stub_error")
    body = {"error": {"message": f"stub injected HTTP {status}", "type": kind, "code": kind}}
    headers = {}
    if status == 429:
        wait = max(state.config.retry_after_s, 0.0)
        headers = {"retry-after": str(max(1, round(wait))), "retry-after-ms": str(int(wait * 1000))}
    return JSONResponse(body, status_code=status, headers=headers)


def _is_token_chunk(chunk: Mapping[str, Any]) -> bool:
    choices = chunk.get("choices") or []
    return bool(choices and choices[0].get("delta", {}).get("content"))


async def _answer(
    request: Request, kind: str, body: Mapping[str, Any], release: Callable[[], None], pace: Pace
) -> Response:
    """The brain's answer as a Chat Completions or Responses payload, streamed or not,
    in the configured profile: streamed tokens are paced, a plain answer waits for them."""
    state: StubState = request.app.state.stub
    model = str(body.get("model") or state.config.model)
    profile = state.config.profile()
    stream = bool(body.get("stream"))
    if kind == "chat":
        instructions, items = chat_to_brain(body)
        reply, payload, usage = chat_completion(
            model, instructions, items, chat_tools(body), profile
        )
        if not stream:
            await _pause(request, pace.generation_s(len(tokens(reply.text or ""))))
            return JSONResponse(payload)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks = chat_chunks(reply, payload, usage, include_usage)
        frames = [(_is_token_chunk(c), _frame(None, json.dumps(c))) for c in chunks]
        frames.append((False, _frame(None, "[DONE]")))
        return _TrackedStream(pace.stream(frames), release)
    instructions, items, tools = responses_to_brain(body)
    response = brain_response(instructions, items, tools, model, profile)
    if not stream:
        await _pause(request, pace.generation_s(len(tokens(response_text(response)))))
        return JSONResponse(response.model_dump(mode="json", warnings=False))
    events = [
        (e.type == "response.output_text.delta", _frame(e.type, e.model_dump_json(warnings=False)))
        for e in response_stream_events(response)
    ]
    return _TrackedStream(pace.stream(events), release)


async def _model_call(request: Request, kind: str) -> Response:
    state: StubState = request.app.state.stub
    try:
        body = await request.json()
    except ValueError:
        return JSONResponse({"error": {"message": "invalid JSON body"}}, status_code=400)
    items = chat_to_brain(body)[1] if kind == "chat" else responses_to_brain(body)[1]
    key = conversation_key(items)
    state.enter(key)
    state.models[str(body.get("model"))] += 1
    released = handed_off = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            state.leave(key)

    try:
        outcome = state.next_outcome()
        state.outcomes[outcome] += 1
        pace = state.config.profile().pace(state.rng)
        await _pause(request, state.config.latency_s + pace.first_byte_s)
        if outcome == "timeout":
            await _pause(request, state.config.timeout_s)
        elif outcome == "malformed":
            if body.get("stream"):
                return StreamingResponse(
                    _sse([(None, MALFORMED_JSON)]), media_type="text/event-stream"
                )
            return Response(MALFORMED_JSON, media_type="application/json")
        elif outcome.isdigit():
            return _error(int(outcome), state)
        response = await _answer(request, kind, body, release, pace)
        handed_off = isinstance(response, _TrackedStream)  # it releases when the stream ends
        return response
    finally:
        if not handed_off:
            release()


async def _chat(request: Request) -> Response:
    return await _model_call(request, "chat")


async def _responses(request: Request) -> Response:
    return await _model_call(request, "responses")


async def _models(request: Request) -> Response:
    model = request.app.state.stub.config.model
    return JSONResponse(
        {
            "object": "list",
            "data": [{"id": model, "object": "model", "created": 0, "owned_by": "turnq"}],
        }
    )


async def _stats(request: Request) -> Response:
    return JSONResponse(request.app.state.stub.stats())


async def _config(request: Request) -> Response:
    state: StubState = request.app.state.stub
    if request.method == "POST":
        try:
            state.config.update(await request.json())
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": {"message": str(exc)}}, status_code=400)
        state.rng.seed(state.config.seed)
    return JSONResponse(asdict(state.config))


async def _reset(request: Request) -> Response:
    request.app.state.stub.reset()
    return JSONResponse({"ok": True})


def create_app(config: StubConfig | None = None) -> Starlette:
    """The ASGI app; ``app.state.stub`` holds the live ``StubState``."""
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", _chat, methods=["POST"]),
            Route("/v1/responses", _responses, methods=["POST"]),
            Route("/v1/models", _models, methods=["GET"]),
            Route("/_stub/stats", _stats, methods=["GET"]),
            Route("/_stub/config", _config, methods=["GET", "POST"]),
            Route("/_stub/reset", _reset, methods=["POST"]),
        ]
    )
    app.state.stub = StubState(config=config or StubConfig())
    return app


# --- running it ---------------------------------------------------------------------------


def _listen(host: str, port: int) -> socket.socket:
    """Bind and listen before uvicorn starts, so the URL works the moment it is returned."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def _uvicorn(app: Starlette, log_level: str) -> uvicorn.Server:
    config = uvicorn.Config(
        app, log_level=log_level, access_log=False, lifespan="off", timeout_graceful_shutdown=2
    )
    return uvicorn.Server(config)


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


class StubServer:
    """The stub on a background thread (tests, demos); ``base_url`` ends in ``/v1``."""

    def __init__(
        self, config: StubConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.app = create_app(config)
        self._host, self._port = host, port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    @property
    def state(self) -> StubState:
        state: StubState = self.app.state.stub
        return state

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self) -> str:
        sock = _listen(self._host, self._port)
        self.url = _url(sock)
        self._server = _uvicorn(self.app, "warning")
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="stub-llm", daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)

    def __enter__(self) -> StubServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    latency_s: float = 0.0,
    fail_rate: float = 0.0,
    script: Sequence[str] = (),
    timeout_s: float = 30.0,
    log_level: str = "warning",
    profile: ModelProfile | None = None,
) -> None:
    """Run the stub in the foreground until interrupted; prints the URL first (``port=0``: any)."""
    config = StubConfig(
        latency_s=latency_s, fail_rate=fail_rate, script=list(script), timeout_s=timeout_s
    )
    if profile is not None:
        config.set_profile(profile)
    sock = _listen(host, port)
    sys.stdout.write(f"stub LLM listening on {_url(sock)}/v1\n")
    sys.stdout.flush()
    _uvicorn(create_app(config), log_level).run(sockets=[sock])


def main(argv: Sequence[str] | None = None, default_port: int = 0) -> None:
    parser = argparse.ArgumentParser(
        prog="turnq stub-llm", description="OpenAI-compatible stub LLM for turnq"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port, help="0: any free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per call")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="fraction answered 500")
    parser.add_argument("--script", default="", help='comma-separated outcomes, e.g. "429,ok"')
    parser.add_argument("--timeout", type=float, default=30.0, help='delay of a "timeout" outcome')
    parser.add_argument("--profile", choices=PROFILES, default="instant")
    parser.add_argument("--answer-tokens", type=int, help="pad answers to N tokens")
    parser.add_argument("--tokens-per-s", help='streaming rate: "80" or "60-100" (drawn per call)')
    parser.add_argument("--tool-first", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--jitter", type=float, help="extra time to first byte, up to N s")
    args = parser.parse_args(argv)
    serve(
        args.host,
        args.port,
        latency_s=args.latency,
        fail_rate=args.fail_rate,
        script=[s for s in args.script.split(",") if s],
        timeout_s=args.timeout,
        profile=ModelProfile.build(
            args.profile,
            answer_tokens=args.answer_tokens,
            tokens_per_s=args.tokens_per_s,
            tool_first=args.tool_first,
            jitter_s=args.jitter,
        ),
    )


if __name__ == "__main__":
    main()
