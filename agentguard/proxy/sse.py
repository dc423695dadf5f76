"""Server-sent events, byte for byte: split a stream into events without changing a byte, and
assemble the final answer from them (for the store, never for the client)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


@dataclass(frozen=True)
class Event:
    raw: bytes  # the event exactly as received, its blank-line terminator included
    name: str | None
    data: str

    def json(self) -> Any:
        try:
            return json.loads(self.data)
        except json.JSONDecodeError:
            return None


def parse(raw: bytes) -> Event:
    name: str | None = None
    data: list[str] = []
    for line in raw.decode("utf-8", "replace").splitlines():
        field_name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field_name == "event":
            name = value
        elif field_name == "data":
            data.append(value)
    return Event(raw, name, "\n".join(data))


async def events(chunks: AsyncIterator[bytes]) -> AsyncIterator[Event]:
    """Each complete event as soon as its terminator arrives; a trailing partial event (a
    stream cut mid-event) is passed on as it is when the stream ends."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        while match := _END.search(buffer):
            raw, buffer = buffer[: match.end()], buffer[match.end() :]
            yield parse(raw)
    if buffer.strip():
        yield parse(buffer)


# -- what counts as content ---------------------------------------------------------------------

_ANTHROPIC_PREAMBLE = frozenset({"message_start", "ping"})


def is_error(kind: str, event: Event) -> bool:
    if kind == "anthropic":
        return event.name == "error"
    data = event.json()
    return isinstance(data, dict) and "error" in data


def is_preamble(kind: str, event: Event) -> bool:
    """Held back until the first content: nothing the client would have to undo."""
    if kind == "anthropic":
        return event.name in _ANTHROPIC_PREAMBLE or (event.name is None and not event.data)
    if event.data == "[DONE]":
        return False
    data = event.json()
    if not isinstance(data, dict):
        return not event.data  # a comment or keep-alive line
    for choice in data.get("choices") or []:
        delta = choice.get("delta") or {}
        if choice.get("finish_reason") or any(
            delta.get(k) for k in ("content", "tool_calls", "refusal", "function_call")
        ):
            return False
    return True


def carries_output(kind: str, event: Event) -> bool:
    """The model's output itself (a token, a tool call's input, the end), not the frame
    around it: Anthropic's `content_block_start` and `ping` are not, OpenAI's content is."""
    if kind == "anthropic":
        return event.name not in _ANTHROPIC_PREAMBLE and event.name != "content_block_start"
    return not is_preamble(kind, event)


_ANTHROPIC_NOT_ACTIONABLE = frozenset(
    {"message_start", "ping", "content_block_start", "content_block_delta"}
)


def lets_client_act(kind: str, event: Event) -> bool:
    """With this event the client holds something complete it may act on — a finished tool
    call, the whole answer, an error — so the step's tree checkpoint must be taken first."""
    if kind == "anthropic":
        return event.name not in _ANTHROPIC_NOT_ACTIONABLE
    if event.data == "[DONE]":
        return True
    data = event.json()
    if not isinstance(data, dict):
        return False
    return "error" in data or any(c.get("finish_reason") for c in data.get("choices") or [])


# -- the final answer ---------------------------------------------------------------------------


@dataclass
class Final:
    """The answer a stream added up to, in its provider's own JSON shape."""

    message: dict[str, Any] | None = None
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    stop_reason: str | None = None
    complete: bool = False  # the stream's own end marker arrived


@dataclass
class AnthropicAssembler:
    """message_start + content blocks + deltas + message_delta → a Message as JSON."""

    message: dict[str, Any] | None = None
    _partial_json: dict[int, str] = field(default_factory=dict)
    complete: bool = False

    def feed(self, event: Event) -> None:
        data = event.json()
        if not isinstance(data, dict):
            return
        kind = data.get("type")
        if kind == "message_start" and isinstance(data.get("message"), dict):
            self.message = {**data["message"], "content": list(data["message"].get("content", []))}
            return
        if self.message is None:
            return
        content = self.message["content"]
        index = data.get("index")
        if kind == "content_block_start" and isinstance(data.get("content_block"), dict):
            content.append(dict(data["content_block"]))
        elif kind == "content_block_delta" and isinstance(index, int) and index < len(content):
            _apply_delta(content[index], data.get("delta") or {}, self._partial_json, index)
        elif kind == "content_block_stop" and index in self._partial_json:
            text = self._partial_json.pop(index)
            try:
                content[index]["input"] = json.loads(text) if text else {}
            except json.JSONDecodeError:
                content[index]["input"] = text
        elif kind == "message_delta":
            self.message.update(data.get("delta") or {})
            usage = {**(self.message.get("usage") or {})}
            usage.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})
            self.message["usage"] = usage
        elif kind == "message_stop":
            self.complete = True

    def final(self) -> Final:
        message = self.message
        if message is None:
            return Final()
        usage = message.get("usage") or {}
        return Final(
            message=message,
            model=message.get("model"),
            input_tokens=usage.get("input_tokens"),
            output_tokens=usage.get("output_tokens"),
            stop_reason=message.get("stop_reason"),
            complete=self.complete,
        )


def _apply_delta(block: dict[str, Any], delta: dict[str, Any], partial: dict[int, str], i: int):
    kind = delta.get("type")
    if kind == "text_delta":
        block["text"] = block.get("text", "") + delta.get("text", "")
    elif kind == "thinking_delta":
        block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
    elif kind == "signature_delta":
        block["signature"] = block.get("signature", "") + delta.get("signature", "")
    elif kind == "input_json_delta":
        partial[i] = partial.get(i, "") + delta.get("partial_json", "")
    elif kind == "citations_delta":
        block.setdefault("citations", []).append(delta.get("citation"))


@dataclass
class OpenAIAssembler:
    """chat.completion.chunk events → a chat.completion as JSON."""

    message: dict[str, Any] | None = None
    _choices: dict[int, dict[str, Any]] = field(default_factory=dict)
    _usage: dict[str, Any] | None = None
    complete: bool = False

    def feed(self, event: Event) -> None:
        if event.data == "[DONE]":
            self.complete = True
            return
        data = event.json()
        if not isinstance(data, dict) or "error" in data:
            return
        if self.message is None:
            self.message = {k: data.get(k) for k in ("id", "created", "model")}
            self.message["object"] = "chat.completion"
        if data.get("usage"):
            self._usage = data["usage"]
        for choice in data.get("choices") or []:
            index = choice.get("index", 0)
            out = self._choices.setdefault(
                index, {"index": index, "message": {"role": "assistant", "content": None}}
            )
            delta, message = choice.get("delta") or {}, out["message"]
            if delta.get("content"):
                message["content"] = (message["content"] or "") + delta["content"]
            for call in delta.get("tool_calls") or []:
                calls = message.setdefault("tool_calls", [])
                while len(calls) <= call.get("index", 0):
                    calls.append(
                        {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
                    )
                slot = calls[call.get("index", 0)]
                slot["id"] = call.get("id") or slot["id"]
                function = call.get("function") or {}
                slot["function"]["name"] += function.get("name") or ""
                slot["function"]["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                out["finish_reason"] = choice["finish_reason"]

    def final(self) -> Final:
        if self.message is None:
            return Final()
        message = {**self.message, "choices": [self._choices[i] for i in sorted(self._choices)]}
        if self._usage is not None:
            message["usage"] = self._usage
        usage = self._usage or {}
        first = message["choices"][0] if message["choices"] else {}
        return Final(
            message=message,
            model=message.get("model"),
            input_tokens=usage.get("prompt_tokens"),
            output_tokens=usage.get("completion_tokens"),
            stop_reason=first.get("finish_reason"),
            complete=self.complete,
        )


def assembler(kind: str) -> AnthropicAssembler | OpenAIAssembler:
    return AnthropicAssembler() if kind == "anthropic" else OpenAIAssembler()
