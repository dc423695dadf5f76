"""Anthropic Messages on the wire, exactly as the anthropic SDK (2.12) parses it.

JSON: a `message` object. SSE (`stream: true`): `message_start`, per content block
`content_block_start` / `content_block_delta` / `content_block_stop` (with one `ping` after
the first block starts, as the real API sends it), `message_delta` (stop_reason, usage),
`message_stop`. Every event carries its `event:` name: the SDK skips nameless events.
Errors: `{"type": "error", "error": {"type", "message", "details"?}, "request_id"}`; the
SDK picks its exception class from the status and `error.details.error_code`. A mid-stream
failure is `event: error` with the same `error` object; the SDK raises it as an
APIStatusError carrying the HTTP status of the stream, 200.
"""

from __future__ import annotations

from typing import Any

from agentguard.testing.script import Turn
from agentguard.testing.wire import Context, dumps, fragments, output_tokens, signature, words

# A Turn may name its stop reason in either provider's words.
_FROM_OPENAI = {
    "stop": "end_turn",
    "tool_calls": "tool_use",
    "length": "max_tokens",
    "content_filter": "refusal",
}


def stop_reason(turn: Turn) -> str:
    if turn.stop_reason is None:
        return "tool_use" if turn.tool_calls else "end_turn"
    return _FROM_OPENAI.get(turn.stop_reason, turn.stop_reason)


def tool_id(ctx: Context, index: int, given: str | None) -> str:
    return given or f"toolu_fake_{ctx.seq:06d}_{index}"


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {dumps(data)}\n\n".encode()


class AnthropicWire:
    api = "anthropic"
    request_id_header = "request-id"
    paths = frozenset({"/v1/messages"})

    def _usage(self, ctx: Context, output: int) -> dict[str, Any]:
        return {
            "input_tokens": ctx.input_tokens,
            "output_tokens": output,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }

    def _content(self, turn: Turn, ctx: Context) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = []
        if turn.thinking is not None:
            sig = signature(turn.thinking)
            content.append({"type": "thinking", "thinking": turn.thinking, "signature": sig})
        if turn.text or not turn.tool_calls:
            content.append({"type": "text", "text": turn.text})
        for index, call in enumerate(turn.tool_calls):
            content.append(
                {
                    "type": "tool_use",
                    "id": tool_id(ctx, index, call.id),
                    "name": call.name,
                    "input": call.input,
                }
            )
        return content

    def message(self, turn: Turn, ctx: Context) -> dict[str, Any]:
        return {
            "id": f"msg_fake_{ctx.seq:06d}",
            "type": "message",
            "role": "assistant",
            "model": ctx.model,
            "content": self._content(turn, ctx),
            "stop_reason": stop_reason(turn),
            "stop_sequence": None,
            "usage": self._usage(ctx, output_tokens(turn)),
        }

    def events(self, turn: Turn, ctx: Context) -> list[bytes]:
        message = self.message(turn, ctx)
        start = {**message, "content": [], "stop_reason": None, "usage": self._usage(ctx, 1)}
        out = [_sse("message_start", {"type": "message_start", "message": start})]
        ping = _sse("ping", {"type": "ping"})
        for index, block in enumerate(message["content"]):
            out.append(_block_start(index, block))
            if index == 0:
                out.append(ping)
            out.extend(_block_deltas(index, block))
            out.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
        if not message["content"]:
            out.append(ping)
        delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
        usage = {"output_tokens": message["usage"]["output_tokens"]}
        out.append(_sse("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
        out.append(_sse("message_stop", {"type": "message_stop"}))
        return out

    def error_body(
        self, error_type: str, message: str, error_code: str | None, ctx: Context
    ) -> dict[str, Any]:
        error: dict[str, Any] = {"type": error_type, "message": message}
        if error_code is not None:
            error["details"] = {"error_code": error_code}
        return {"type": "error", "error": error, "request_id": ctx.request_id}

    def error_event(self, error_type: str, message: str, ctx: Context) -> bytes:
        return _sse("error", {"type": "error", "error": {"type": error_type, "message": message}})


def _block_start(index: int, block: dict[str, Any]) -> bytes:
    kind = block["type"]
    if kind == "thinking":
        empty: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
    elif kind == "text":
        empty = {"type": "text", "text": ""}
    else:
        empty = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
    start = {"type": "content_block_start", "index": index, "content_block": empty}
    return _sse("content_block_start", start)


def _block_deltas(index: int, block: dict[str, Any]) -> list[bytes]:
    kind = block["type"]
    if kind == "thinking":
        deltas = [{"type": "thinking_delta", "thinking": w} for w in words(block["thinking"])]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
    elif kind == "text":
        deltas = [{"type": "text_delta", "text": w} for w in words(block["text"])]
    else:
        deltas = [
            {"type": "input_json_delta", "partial_json": part}
            for part in fragments(dumps(block["input"]))
        ]
    return [
        _sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
        for d in deltas
    ]


WIRE = AnthropicWire()
