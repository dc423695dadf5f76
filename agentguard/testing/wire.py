"""What both wire formats share: the per-request context, ids, token counts, stream pieces.

The fake must be deterministic (tests compare a streamed answer with a JSON one, and the
store records token counts), so usage is computed from the request and the scripted turn,
never from a clock or a random source: input ≈ len(canonical JSON body) // 4, output ≈ the
words of the answer. Answers are cut into word-sized deltas and tool arguments into at least
two JSON fragments, so clients really have to reassemble them.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from agentguard.testing.script import Turn

_counter = itertools.count(1)
_counter_lock = threading.Lock()


def next_sequence() -> int:
    """Process-wide request sequence: request ids stay unique across several fake providers."""
    with _counter_lock:
        return next(_counter)


@dataclass(frozen=True)
class Context:
    """What rendering an answer needs to know about the request it answers."""

    seq: int
    request_id: str
    model: str
    input_tokens: int
    include_usage: bool = False
    created: int = 0

    @classmethod
    def for_request(cls, seq: int, request_id: str, body: dict) -> Context:
        model = body.get("model")
        options = body.get("stream_options")
        return cls(
            seq=seq,
            request_id=request_id,
            model=model if isinstance(model, str) and model else "fake-model",
            input_tokens=input_tokens(body),
            include_usage=isinstance(options, dict) and options.get("include_usage") is True,
            created=int(time.time()),
        )


class Wire(Protocol):
    """One provider's wire format, as its SDK parses it."""

    api: str
    request_id_header: str
    paths: frozenset[str]

    def message(self, turn: Turn, ctx: Context) -> dict[str, Any]: ...

    def events(self, turn: Turn, ctx: Context) -> list[bytes]: ...

    def error_body(
        self, error_type: str, message: str, error_code: str | None, ctx: Context
    ) -> dict[str, Any]: ...

    def error_event(self, error_type: str, message: str, ctx: Context) -> bytes: ...


def input_tokens(body: dict) -> int:
    """Deterministic, and the same for the streaming and the JSON form of one request."""
    payload = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return max(1, len(text) // 4)


def output_tokens(turn: Turn, *, with_thinking: bool = True) -> int:
    words = len(turn.text.split())
    if with_thinking and turn.thinking:
        words += len(turn.thinking.split())
    for call in turn.tool_calls:
        words += 1 + len(json.dumps(call.input).split())
    return max(1, words)


def words(text: str) -> list[str]:
    """`text` cut into word-sized pieces that join back to exactly `text`."""
    return re.findall(r"\S+\s*|\s+", text)


def fragments(text: str, parts: int = 3) -> list[str]:
    """`text` cut into `parts` pieces (at least two whenever it has two characters)."""
    if len(text) < 2:
        return [text]
    parts = min(parts, len(text))
    size = -(-len(text) // parts)
    return [text[i : i + size] for i in range(0, len(text), size)]


def signature(thinking: str) -> str:
    """A fake but stable signature for a thinking block."""
    return base64.b64encode(hashlib.sha256(thinking.encode()).digest()).decode()


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
