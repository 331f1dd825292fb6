"""An in-process ``agents.Model`` driven by the deterministic brain: no network, no key.

    from agents import RunConfig, Runner
    from shared.models.offline import OfflineModel
    result = await Runner.run(agent, "Weather in Austin?",
                              run_config=RunConfig(model=OfflineModel(), tracing_disabled=True))

It speaks the same Responses objects a real model returns (tool calls, text deltas, a
terminal ``response.completed`` with usage), so the worker, sessions, compaction and
streaming code paths run unchanged.  The builders here (``brain_response``,
``response_stream_events``) are reused by the stub HTTP server's ``/v1/responses``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, cast

from agents import FunctionTool, Model, ModelProvider, ModelResponse, ModelSettings, ModelTracing
from agents.agent_output import AgentOutputSchemaBase
from agents.handoffs import Handoff
from agents.items import TResponseInputItem, TResponseOutputItem, TResponseStreamEvent
from agents.tool import Tool
from agents.usage import Usage
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseFunctionToolCall,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
    ResponseUsage,
)
from openai.types.responses.response_prompt_param import ResponsePromptParam
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

from shared.models.brain import Reply, ToolSpec, estimate_tokens, think
from shared.models.profile import ModelProfile, Pace, tokens

__all__ = [
    "OfflineModel",
    "OfflineModelProvider",
    "brain_response",
    "call_id_for",
    "output_items",
    "plain_items",
    "reply_usage",
    "response_stream_events",
    "response_text",
    "tool_specs",
]

OFFLINE_MODEL_NAME = "turnq-offline"


def plain_items(input: str | Sequence[Any]) -> list[dict[str, Any]]:
    """Input items as plain dicts (the runner may hand over pydantic items)."""
    if isinstance(input, str):
        return [{"role": "user", "content": input}]
    items: list[dict[str, Any]] = []
    for item in input:
        if hasattr(item, "model_dump"):
            items.append(item.model_dump(exclude_none=True))
        else:
            items.append(dict(cast(Mapping[str, Any], item)))
    return items


def tool_specs(tools: Sequence[Tool]) -> list[ToolSpec]:
    """Function tools as brain specs; hosted tools are skipped (the brain cannot call them)."""
    return [
        ToolSpec(tool.name, tool.description, tool.params_json_schema)
        for tool in tools
        if isinstance(tool, FunctionTool)
    ]


def _digest(items: Sequence[Mapping[str, Any]], salt: str = "") -> str:
    blob = json.dumps(list(items), sort_keys=True, default=str, ensure_ascii=False) + salt
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def call_id_for(items: Sequence[Mapping[str, Any]], index: int) -> str:
    """Deterministic yet unique per conversation: the input so far only ever grows.

    A constant such as ``call_0`` would collide across turns and make the SDK's dedupe
    drop a call/output pair (research §5.4).
    """
    return f"call_{_digest(items)}_{index}"


def reply_usage(
    instructions: str | None,
    items: Sequence[Mapping[str, Any]],
    tools: Sequence[ToolSpec],
    reply: Reply,
) -> tuple[int, int]:
    """(prompt, completion) token estimates, so usage and compaction triggers move."""
    prompt = estimate_tokens(list(items)) + estimate_tokens(instructions or "")
    if tools:
        prompt += estimate_tokens([[t.name, t.description, dict(t.parameters)] for t in tools])
    completion = estimate_tokens(
        reply.text if reply.text is not None else [[c.name, c.arguments] for c in reply.tool_calls]
    )
    return prompt, completion


def output_items(reply: Reply, items: Sequence[Mapping[str, Any]]) -> list[TResponseOutputItem]:
    """The brain's reply as Responses output items with deterministic ids."""
    if reply.tool_calls:
        calls: list[TResponseOutputItem] = []
        for index, call in enumerate(reply.tool_calls):
            call_id = call_id_for(items, index)
            calls.append(
                ResponseFunctionToolCall(
                    id=f"fc_{call_id.removeprefix('call_')}",
                    call_id=call_id,
                    type="function_call",
                    name=call.name,
                    arguments=json.dumps(call.arguments, ensure_ascii=False),
                    status="completed",
                )
            )
        return calls
    message = ResponseOutputMessage(
        id=f"msg_{_digest(items, 'msg')}",
        type="message",
        role="assistant",
        status="completed",
        content=[
            ResponseOutputText(
                type="output_text", text=reply.text or "", annotations=[], logprobs=[]
            )
        ],
    )
    return [message]


def brain_response(
    instructions: str | None,
    items: Sequence[Mapping[str, Any]],
    tools: Sequence[ToolSpec],
    model: str = OFFLINE_MODEL_NAME,
    profile: ModelProfile | None = None,
) -> Response:
    """Ask the brain (shaped by ``profile``) and wrap its reply as a completed Responses
    ``Response`` with usage."""
    reply = think(instructions, items, tools)
    if profile is not None:
        reply = profile.shape(reply, items, tools)
    prompt, completion = reply_usage(instructions, items, tools, reply)
    return Response(
        id=f"resp_{_digest(items, 'resp')}",
        created_at=time.time(),
        model=model,
        object="response",
        output=output_items(reply, items),
        tool_choice="auto",
        tools=[],
        top_p=None,
        parallel_tool_calls=True,
        status="completed",
        usage=ResponseUsage(
            input_tokens=prompt,
            input_tokens_details=InputTokensDetails(cached_tokens=0, cache_write_tokens=0),
            output_tokens=completion,
            output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
            total_tokens=prompt + completion,
        ),
    )


def response_text(response: Response) -> str:
    """The text of a response's output messages (empty for a tool call)."""
    return "".join(
        part.text
        for item in response.output
        if isinstance(item, ResponseOutputMessage)
        for part in item.content
        if isinstance(part, ResponseOutputText)
    )


def _item_events(item: TResponseOutputItem, index: int, seq: int) -> Iterator[Any]:
    if isinstance(item, ResponseFunctionToolCall):
        yield ResponseOutputItemAddedEvent(
            type="response.output_item.added",
            item=item.model_copy(update={"arguments": "", "status": "in_progress"}),
            output_index=index,
            sequence_number=seq,
        )
        yield ResponseFunctionCallArgumentsDeltaEvent(
            type="response.function_call_arguments.delta",
            item_id=item.id or item.call_id,
            output_index=index,
            delta=item.arguments,
            sequence_number=seq + 1,
        )
        yield ResponseFunctionCallArgumentsDoneEvent.model_validate(
            {
                "type": "response.function_call_arguments.done",
                "item_id": item.id or item.call_id,
                "output_index": index,
                "arguments": item.arguments,
                "name": item.name,
                "sequence_number": seq + 2,
            }
        )
    elif isinstance(item, ResponseOutputMessage):
        yield ResponseOutputItemAddedEvent(
            type="response.output_item.added",
            item=item.model_copy(update={"content": [], "status": "in_progress"}),
            output_index=index,
            sequence_number=seq,
        )
        part = cast(ResponseOutputText, item.content[0])
        yield ResponseContentPartAddedEvent(
            type="response.content_part.added",
            item_id=item.id,
            output_index=index,
            content_index=0,
            part=part.model_copy(update={"text": ""}),
            sequence_number=seq + 1,
        )
        for delta in tokens(part.text):
            yield ResponseTextDeltaEvent(
                type="response.output_text.delta",
                item_id=item.id,
                output_index=index,
                content_index=0,
                delta=delta,
                logprobs=[],
                sequence_number=seq + 2,
            )
        yield ResponseTextDoneEvent(
            type="response.output_text.done",
            item_id=item.id,
            output_index=index,
            content_index=0,
            text=part.text,
            logprobs=[],
            sequence_number=seq + 3,
        )
        yield ResponseContentPartDoneEvent(
            type="response.content_part.done",
            item_id=item.id,
            output_index=index,
            content_index=0,
            part=part,
            sequence_number=seq + 4,
        )
    yield ResponseOutputItemDoneEvent(
        type="response.output_item.done", item=item, output_index=index, sequence_number=seq + 5
    )


def response_stream_events(response: Response) -> Iterator[TResponseStreamEvent]:
    """The Responses stream for a finished response, ending with ``response.completed``.

    Sequence numbers are renumbered at the end so they are strictly increasing.
    """
    pending = response.model_copy(update={"output": [], "status": "in_progress", "usage": None})
    events: list[Any] = [
        ResponseCreatedEvent(type="response.created", response=pending, sequence_number=0),
        ResponseInProgressEvent(type="response.in_progress", response=pending, sequence_number=0),
    ]
    for index, item in enumerate(response.output):
        events.extend(_item_events(item, index, 0))
    events.append(
        ResponseCompletedEvent(type="response.completed", response=response, sequence_number=0)
    )
    for seq, event in enumerate(events):
        event.sequence_number = seq
        yield cast(TResponseStreamEvent, event)


class OfflineModel(Model):
    """The brain behind the ``agents.Model`` interface; ``latency_s`` simulates a slow model
    and ``profile`` a production one (long answers streamed at a rate, a tool call first)."""

    def __init__(
        self,
        latency_s: float = 0.0,
        name: str = OFFLINE_MODEL_NAME,
        profile: ModelProfile | None = None,
    ) -> None:
        self.latency_s = latency_s
        self.name = name
        self.profile = profile or ModelProfile()
        self._rng = random.Random()

    async def _respond(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        tools: list[Tool],
        handoffs: list[Handoff],
    ) -> tuple[Response, Pace]:
        pace = self.profile.pace(self._rng)
        delay = self.latency_s + pace.first_byte_s
        if delay > 0:
            await asyncio.sleep(delay)
        items = plain_items(input)
        specs = tool_specs(tools) + [
            ToolSpec(h.tool_name, h.tool_description, h.input_json_schema) for h in handoffs
        ]
        response = brain_response(system_instructions, items, specs, self.name, self.profile)
        return response, pace

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: ResponsePromptParam | None,
    ) -> ModelResponse:
        response, pace = await self._respond(system_instructions, input, tools, handoffs)
        text = response_text(response)
        if text and pace.token_interval_s > 0:
            await asyncio.sleep(pace.generation_s(len(tokens(text))))
        usage = cast(ResponseUsage, response.usage)
        return ModelResponse(
            output=list(response.output),
            usage=Usage(
                requests=1,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                total_tokens=usage.total_tokens,
            ),
            response_id=response.id,
        )

    async def stream_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: ResponsePromptParam | None,
    ) -> AsyncIterator[TResponseStreamEvent]:
        response, pace = await self._respond(system_instructions, input, tools, handoffs)
        events = response_stream_events(response)
        frames = ((isinstance(e, ResponseTextDeltaEvent), e) for e in events)
        async for _, event in pace.paced(frames):
            yield event


class OfflineModelProvider(ModelProvider):
    """Serves an ``OfflineModel`` for any model name, so agent model strings need no key."""

    def __init__(self, latency_s: float = 0.0, profile: ModelProfile | None = None) -> None:
        self.latency_s = latency_s
        self.profile = profile

    def get_model(self, model_name: str | None) -> Model:
        name = model_name or OFFLINE_MODEL_NAME
        return OfflineModel(latency_s=self.latency_s, name=name, profile=self.profile)
