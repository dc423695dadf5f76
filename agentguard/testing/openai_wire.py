"""OpenAI Chat Completions on the wire, exactly as the openai SDK (3.54) parses it.

JSON: a `chat.completion`. SSE (`stream: true`): nameless `data: {chunk}` events — a first
chunk with the role, content pieces, per tool call a chunk with index/id/type/name and then
its arguments in two or more pieces, a chunk with `finish_reason`, a usage chunk with empty
`choices` when `stream_options.include_usage` is set, then `data: [DONE]`.
Errors: `{"error": {"message", "type", "param", "code"}}`. A mid-stream failure is a
`data: {"error": {...}}` chunk: the SDK raises a plain `openai.APIError` (no status code)
with that `error` object as its body. Thinking is Anthropic-only and is not sent here.
"""

from __future__ import annotations

from typing import Any

from agentguard.testing.script import Turn
from agentguard.testing.wire import Context, dumps, fragments, output_tokens, words

# A Turn may name its stop reason in either provider's words.
_FROM_ANTHROPIC = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "refusal": "content_filter",
}


def finish_reason(turn: Turn) -> str:
    if turn.stop_reason is None:
        return "tool_calls" if turn.tool_calls else "stop"
    return _FROM_ANTHROPIC.get(turn.stop_reason, turn.stop_reason)


def tool_id(ctx: Context, index: int, given: str | None) -> str:
    return given or f"call_fake_{ctx.seq:06d}_{index}"


def _data(value: Any) -> bytes:
    return f"data: {value if isinstance(value, str) else dumps(value)}\n\n".encode()


class OpenAIWire:
    api = "openai"
    request_id_header = "x-request-id"
    paths = frozenset({"/v1/chat/completions"})

    def _usage(self, turn: Turn, ctx: Context) -> dict[str, Any]:
        output = output_tokens(turn, with_thinking=False)
        return {
            "prompt_tokens": ctx.input_tokens,
            "completion_tokens": output,
            "total_tokens": ctx.input_tokens + output,
        }

    def _tool_calls(self, turn: Turn, ctx: Context) -> list[dict[str, Any]]:
        return [
            {
                "id": tool_id(ctx, index, call.id),
                "type": "function",
                "function": {"name": call.name, "arguments": dumps(call.input)},
            }
            for index, call in enumerate(turn.tool_calls)
        ]

    def message(self, turn: Turn, ctx: Context) -> dict[str, Any]:
        tool_calls = self._tool_calls(turn, ctx)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": turn.text if turn.text or not tool_calls else None,
            "refusal": None,
        }
        if tool_calls:
            message["tool_calls"] = tool_calls
        return {
            "id": f"chatcmpl-fake{ctx.seq:06d}",
            "object": "chat.completion",
            "created": ctx.created,
            "model": ctx.model,
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish_reason(turn),
                }
            ],
            "usage": self._usage(turn, ctx),
        }

    def events(self, turn: Turn, ctx: Context) -> list[bytes]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return _data({**base, "choices": [choice]})

        base: dict[str, Any] = {
            "id": f"chatcmpl-fake{ctx.seq:06d}",
            "object": "chat.completion.chunk",
            "created": ctx.created,
            "model": ctx.model,
            "system_fingerprint": "fp_fake",
        }
        if ctx.include_usage:
            base["usage"] = None
        has_text = bool(turn.text) or not turn.tool_calls
        out = [chunk({"role": "assistant", "content": "" if has_text else None, "refusal": None})]
        out.extend(chunk({"content": piece}) for piece in words(turn.text))
        for index, call in enumerate(self._tool_calls(turn, ctx)):
            function = call["function"]
            head = {**call, "index": index, "function": {"name": function["name"], "arguments": ""}}
            out.append(chunk({"tool_calls": [head]}))
            out.extend(
                chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
                for part in fragments(function["arguments"])
            )
        out.append(chunk({}, finish_reason(turn)))
        if ctx.include_usage:
            out.append(_data({**base, "choices": [], "usage": self._usage(turn, ctx)}))
        out.append(_data("[DONE]"))
        return out

    def error_body(
        self, error_type: str, message: str, error_code: str | None, ctx: Context
    ) -> dict[str, Any]:
        return {"error": _error(error_type, message, error_code)}

    def error_event(self, error_type: str, message: str, ctx: Context) -> bytes:
        return _data({"error": _error(error_type, message, None)})


def _error(error_type: str, message: str, code: str | None) -> dict[str, Any]:
    return {"message": message, "type": error_type, "param": None, "code": code}


WIRE = OpenAIWire()
