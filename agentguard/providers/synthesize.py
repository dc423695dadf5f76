"""SDK objects built from a final answer: a whole message, or the stream that would carry it.

A route of the other kind is called without streaming (see `dispatch`), but the caller may
have asked for a stream. Here the translated final answer becomes exactly what that caller's
SDK would have parsed off the wire:

- `anthropic_events(message)`: the SSE events of the Anthropic Messages API — `message_start`
  (no content, no stop reason, output tokens 0 or 1), then per block `content_block_start`
  (an empty text / thinking block, a `tool_use` with input `{}`), its deltas (`text_delta`,
  `input_json_delta`, `thinking_delta` + `signature_delta`, `citations_delta`) and
  `content_block_stop`, then `message_delta` (stop reason, cumulative usage) and
  `message_stop`. The SDK's own accumulator (`MessageStream.get_final_message()`) rebuilds the
  message from them.
- `openai_chunks(completion)`: the `chat.completion.chunk`s of a streamed Chat Completion — a
  role chunk, the content, per tool call a head (index, id, type, name) and its arguments, a
  chunk with the finish reason, and the usage-only chunk (`choices == []`) that
  `stream_options.include_usage` asks for. `ChatCompletionStreamState` rebuilds the message.

Every object is validated against the SDK's own models, so a malformed answer fails here,
loudly, instead of deep inside the caller's code.
"""

from __future__ import annotations

import json
from typing import Any

from anthropic.types import (
    Message,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
    RawMessageStreamEvent,
)
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from agentguard.conversation import to_jsonable

# The members of the RawMessageStreamEvent union by their `type`: validating against the one
# meant gives a readable error (the union would report a failure for every member).
_EVENTS: dict[str, type[RawMessageStreamEvent]] = {
    "message_start": RawMessageStartEvent,
    "content_block_start": RawContentBlockStartEvent,
    "content_block_delta": RawContentBlockDeltaEvent,
    "content_block_stop": RawContentBlockStopEvent,
    "message_delta": RawMessageDeltaEvent,
    "message_stop": RawMessageStopEvent,
}

# Usage counters a `message_delta` may carry (cumulative totals: the SDK overwrites with them).
_DELTA_USAGE = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "server_tool_use",
    "output_tokens_details",
)
# Message fields that arrive in `message_delta`, not in `message_start`.
_LATE = ("stop_reason", "stop_sequence", "stop_details", "container")


# -- Anthropic ------------------------------------------------------------------------------------


def anthropic_message(message: Any) -> Message:
    """The JSON of a Message (or an SDK object) as a validated `anthropic.types.Message`."""
    return Message.model_validate(to_jsonable(message))


def anthropic_events(message: Any) -> list[RawMessageStreamEvent]:
    """The event sequence the Messages API would have streamed for this message."""
    data: dict[str, Any] = to_jsonable(message)
    usage: dict[str, Any] = dict(data.get("usage") or {})
    output_tokens = int(usage.get("output_tokens") or 0)
    start_usage = {**usage, "input_tokens": usage.get("input_tokens") or 0}
    start_usage["output_tokens"] = min(output_tokens, 1)
    start = {k: v for k, v in data.items() if k not in _LATE}
    start.update(content=[], stop_reason=None, stop_sequence=None, usage=start_usage)

    raw: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    for index, block in enumerate(data.get("content") or []):
        raw.append({"type": "content_block_start", "index": index, "content_block": _empty(block)})
        raw.extend(
            {"type": "content_block_delta", "index": index, "delta": delta}
            for delta in _deltas(block)
        )
        raw.append({"type": "content_block_stop", "index": index})

    delta: dict[str, Any] = {
        "stop_reason": data.get("stop_reason"),
        "stop_sequence": data.get("stop_sequence"),
    }
    for name in ("stop_details", "container"):
        if data.get(name) is not None:
            delta[name] = data[name]
    delta_usage = {k: usage[k] for k in _DELTA_USAGE if usage.get(k) is not None}
    delta_usage["output_tokens"] = output_tokens
    raw.append({"type": "message_delta", "delta": delta, "usage": delta_usage})
    raw.append({"type": "message_stop"})
    return [_EVENTS[event["type"]].model_validate(event) for event in raw]


def _empty(block: dict[str, Any]) -> dict[str, Any]:
    """The block as `content_block_start` announces it, before any delta."""
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": ""}
    if kind == "thinking":
        return {"type": "thinking", "thinking": "", "signature": ""}
    if kind in ("tool_use", "server_tool_use"):
        return {**block, "input": {}}
    return block  # redacted thinking, server tool results …: complete in their start event


def _deltas(block: dict[str, Any]) -> list[dict[str, Any]]:
    kind = block.get("type")
    deltas: list[dict[str, Any]] = []
    if kind == "text":
        deltas.extend(
            {"type": "citations_delta", "citation": citation}
            for citation in block.get("citations") or []
        )
        if block.get("text"):
            deltas.append({"type": "text_delta", "text": block["text"]})
    elif kind == "thinking":
        if block.get("thinking"):
            deltas.append({"type": "thinking_delta", "thinking": block["thinking"]})
        deltas.append({"type": "signature_delta", "signature": block.get("signature") or ""})
    elif kind in ("tool_use", "server_tool_use"):
        arguments = block.get("input")
        # the API sends an empty partial_json for a tool called without arguments
        partial = json.dumps(arguments, ensure_ascii=False) if arguments else ""
        deltas.append({"type": "input_json_delta", "partial_json": partial})
    return deltas


# -- OpenAI ---------------------------------------------------------------------------------------


def openai_completion(completion: Any) -> ChatCompletion:
    """The JSON of a ChatCompletion (or an SDK object) as a validated `ChatCompletion`."""
    return ChatCompletion.model_validate(to_jsonable(completion))


def openai_chunks(completion: Any) -> list[ChatCompletionChunk]:
    """The chunks a streamed Chat Completion would carry, ending with the usage-only chunk."""
    data: dict[str, Any] = to_jsonable(completion)
    base: dict[str, Any] = {
        "id": data.get("id"),
        "object": "chat.completion.chunk",
        "created": data.get("created"),
        "model": data.get("model"),
    }
    for name in ("system_fingerprint", "service_tier"):
        if data.get(name) is not None:
            base[name] = data[name]
    usage = data.get("usage")
    if usage:
        base["usage"] = None  # as with include_usage: null on every chunk but the last

    raw: list[dict[str, Any]] = []

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> None:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        raw.append({**base, "choices": [choice]})

    choices = sorted(data.get("choices") or [], key=lambda c: c.get("index") or 0)
    for choice in choices:
        index = choice.get("index") or 0
        message = choice.get("message") or {}
        content = message.get("content")
        opening = {"role": "assistant", "content": None if content is None else "", "refusal": None}
        chunk(index, opening)
        if message.get("refusal"):
            chunk(index, {"refusal": message["refusal"]})
        if content:
            chunk(index, {"content": content})
        calls = [
            c for c in message.get("tool_calls") or [] if c.get("type", "function") == "function"
        ]
        for position, call in enumerate(calls):
            function = call.get("function") or {}
            head = {
                "index": position,
                "id": call.get("id"),
                "type": "function",
                "function": {"name": function.get("name"), "arguments": ""},
            }
            chunk(index, {"tool_calls": [head]})
            if function.get("arguments"):
                piece = {"index": position, "function": {"arguments": function["arguments"]}}
                chunk(index, {"tool_calls": [piece]})
        chunk(index, {}, choice.get("finish_reason") or "stop")
    if usage:
        raw.append({**base, "choices": [], "usage": usage})
    return [ChatCompletionChunk.model_validate(c) for c in raw]
