"""Wire formats of the stub server: OpenAI requests in, brain input out, and back.

    instructions, items = chat_to_brain(body)     # POST /v1/chat/completions body
    reply, payload, usage = chat_completion("stub", instructions, items, chat_tools(body))

Kept apart from the HTTP plumbing in ``stub_server`` so each stays small; the Responses
side needs no conversion back because ``offline.brain_response`` already builds it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from shared.models.brain import Reply, ToolSpec, item_text, think
from shared.models.offline import call_id_for, reply_usage
from shared.models.profile import ModelProfile, tokens

__all__ = [
    "chat_chunks",
    "chat_completion",
    "chat_to_brain",
    "chat_tools",
    "conversation_key",
    "responses_to_brain",
]


# --- request conversion ------------------------------------------------------------


def chat_to_brain(body: Mapping[str, Any]) -> tuple[str | None, list[dict[str, Any]]]:
    """Chat messages -> (instructions, Responses-style items): the SDK's mapping in reverse."""
    instructions: str | None = None
    items: list[dict[str, Any]] = []
    for index, msg in enumerate(body.get("messages") or []):
        role, text = msg.get("role"), item_text(msg.get("content") or "")
        if role in {"system", "developer"} and index == 0:
            instructions = text
        elif role in {"system", "developer", "user"}:
            items.append({"role": role, "content": msg.get("content") or ""})
        elif role == "assistant":
            if text:
                content = [{"type": "output_text", "text": text}]
                items.append({"type": "message", "role": "assistant", "content": content})
            for call in msg.get("tool_calls") or []:
                fn = call.get("function") or {}
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call.get("id"),
                        "name": fn.get("name"),
                        "arguments": fn.get("arguments") or "{}",
                    }
                )
        elif role == "tool":
            items.append(
                {"type": "function_call_output", "call_id": msg.get("tool_call_id"), "output": text}
            )
    return instructions, items


def chat_tools(body: Mapping[str, Any]) -> list[ToolSpec]:
    specs = []
    for tool in body.get("tools") or []:
        fn = tool.get("function") or {}
        if tool.get("type") == "function" and fn.get("name"):
            specs.append(
                ToolSpec(fn["name"], fn.get("description") or "", fn.get("parameters") or {})
            )
    return specs


def responses_to_brain(
    body: Mapping[str, Any],
) -> tuple[str | None, list[dict[str, Any]], list[ToolSpec]]:
    raw = body.get("input") or []
    items = [{"role": "user", "content": raw}] if isinstance(raw, str) else [dict(i) for i in raw]
    tools = [
        ToolSpec(t["name"], t.get("description") or "", t.get("parameters") or {})
        for t in body.get("tools") or []
        if t.get("type") == "function" and t.get("name")
    ]
    instructions = body.get("instructions")
    return (instructions if isinstance(instructions, str) else None), items, tools


def conversation_key(items: Sequence[Mapping[str, Any]]) -> str:
    """A hash of the first user message: stable across one conversation's calls."""
    for item in items:
        if item.get("role") == "user" and item.get("type", "message") == "message":
            return hashlib.sha256(item_text(item.get("content")).encode()).hexdigest()[:16]
    return "no-user-message"


# --- Chat Completions payloads --------------------------------------------------------------


def _chat_tool_calls(reply: Reply, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "id": call_id_for(items, index),
            "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
        }
        for index, call in enumerate(reply.tool_calls)
    ]


def _chat_usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def chat_completion(
    model: str,
    instructions: str | None,
    items: list[dict[str, Any]],
    tools: list[ToolSpec],
    profile: ModelProfile | None = None,
) -> tuple[Reply, dict[str, Any], dict[str, int]]:
    reply = think(instructions, items, tools)
    if profile is not None:
        reply = profile.shape(reply, items, tools)
    usage = _chat_usage(*reply_usage(instructions, items, tools, reply))
    message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None}
    if reply.tool_calls:
        message["tool_calls"] = _chat_tool_calls(reply, items)
    body = {
        "id": "chatcmpl-" + call_id_for(items, 0).removeprefix("call_"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if reply.tool_calls else "stop",
            }
        ],
        "usage": usage,
    }
    return reply, body, usage


def chat_chunks(
    reply: Reply, body: Mapping[str, Any], usage: Mapping[str, int], include_usage: bool
) -> list[dict[str, Any]]:
    """The completion as ``chat.completion.chunk`` deltas, usage last when asked for."""
    head = {k: body[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    message = body["choices"][0]["message"]
    for index, call in enumerate(message.get("tool_calls") or []):
        fn = call["function"]
        deltas.append(
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": fn["name"], "arguments": ""},
                    }
                ]
            }
        )
        deltas.append(
            {"tool_calls": [{"index": index, "function": {"arguments": fn["arguments"]}}]}
        )
    deltas += [{"content": piece} for piece in tokens(reply.text or "") if piece]
    chunks = [
        head | {"choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": None}]}
        for d in deltas
    ]
    finish = body["choices"][0]["finish_reason"]
    chunks.append(head | {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    if include_usage:
        chunks.append(head | {"choices": [], "usage": dict(usage)})
    return chunks
