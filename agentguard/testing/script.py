"""What the fake provider answers: scripted turns, scripted faults, and the queue they wait in.

Tests say *what* should happen to the next request (`ok`, `error`, `overloaded`,
`midstream_error`, `drop`, `stall`) and, for normal answers, *what the model says* (`Turn`).
The wire modules decide how that looks in each provider's format; the server decides when.
Everything here is plain data so a script reads like the scenario it stages.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from agentguard.testing.recording import RecordedRequest

ReplyKind = Literal["ok", "error", "midstream_error", "drop", "stall"]


@dataclass
class ToolCall:
    """One tool call the scripted model makes; `id` is generated (toolu_…/call_…) when None."""

    name: str
    input: dict
    id: str | None = None


@dataclass
class Turn:
    """What the scripted model answers: text, tool calls, an optional thinking block."""

    text: str = "ok"
    tool_calls: list[ToolCall] = field(default_factory=list)
    thinking: str | None = None  # an Anthropic thinking block (fake signature); not sent to OpenAI
    stop_reason: str | None = None  # default: tool_use / end_turn (OpenAI: tool_calls / stop)


ScriptedModel = Callable[[RecordedRequest], Turn]


def default_model(request: RecordedRequest) -> Turn:
    """The model a FakeProvider uses unless told otherwise: it always says "ok"."""
    return Turn()


# Anthropic's error types by status; the OpenAI wire uses the same names so a test can script
# one fault for both providers (agentguard classifies by status first, then by this type).
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_MESSAGES: dict[str, str] = {
    "invalid_request_error": "Invalid request (scripted by agentguard.testing).",
    "authentication_error": "invalid x-api-key",
    "billing_error": "Your credit balance is too low to access the API.",
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "not_found_error": "Not found: the requested resource (or model) does not exist.",
    "request_too_large": "Request exceeds the maximum allowed number of bytes.",
    "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit.",
    "api_error": "Internal server error",
    "timeout_error": "Request timed out",
    "overloaded_error": "Overloaded",
}

# The status a non-streaming request gets for a mid-stream error type (which has no status).
_STATUS_OF_TYPE: dict[str, int] = {
    "overloaded_error": 529,
    "api_error": 500,
    "timeout_error": 504,
    "rate_limit_error": 429,
}


def default_error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def default_message(error_type: str) -> str:
    return _MESSAGES.get(error_type, f"{error_type} (scripted by agentguard.testing)")


@dataclass(frozen=True)
class Reply:
    """One scripted response to one request. Build it with the factories below."""

    kind: ReplyKind
    turn: Turn | None = None  # None: ask the provider's scripted model
    status: int = 200
    error_type: str | None = None
    message: str | None = None
    error_code: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    latency: float = 0.0
    after_events: int = 0
    before_headers: bool = False
    served_model: str | None = None  # answer as this model, not the one asked for
    interval: float = 0.0  # a streamed answer: seconds between two of its events

    def sent_as(self, stream: bool) -> Reply:
        """The reply as it applies to this request: a mid-stream error without a stream is an
        ordinary error response (529 for an overload)."""
        if self.kind != "midstream_error" or stream:
            return self
        error_type = self.error_type or "overloaded_error"
        return error(_STATUS_OF_TYPE.get(error_type, 529), error_type, self.message)

    @property
    def label(self) -> str:
        """What RecordedRequest.reply says: ok, error:529, midstream_error, drop, stall."""
        return f"error:{self.status}" if self.kind == "error" else self.kind

    @property
    def needs_turn(self) -> bool:
        return self.kind != "error"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _check_non_negative(**values: float) -> None:
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")


def ok(
    turn: Turn | None = None,
    *,
    latency: float = 0.0,
    served_model: str | None = None,
    interval: float = 0.0,
) -> Reply:
    """A normal answer: `turn`, or whatever the provider's scripted model says when None.
    `served_model`: the answer names another model than the request did, as a gateway that
    falls back on its side does. `interval`: a streamed answer's events come this many seconds
    apart, as a model's tokens do (0: all at once)."""
    _check_non_negative(latency=latency, interval=interval)
    return Reply("ok", turn=turn, latency=latency, served_model=served_model, interval=interval)


def error(
    status: int,
    error_type: str | None = None,
    message: str | None = None,
    *,
    retry_after: float | None = None,
    retry_after_ms: float | None = None,
    should_retry: bool | None = None,
    error_code: str | None = None,
    headers: dict[str, str] | None = None,
    latency: float = 0.0,
) -> Reply:
    """An HTTP error response in the provider's own body shape, with the headers asked for."""
    if not 400 <= status <= 599:
        raise ValueError(f"error() takes a 4xx or 5xx status, got {status}")
    _check_non_negative(latency=latency)
    error_type = error_type or default_error_type(status)
    extra: list[tuple[str, str]] = []
    if retry_after is not None:
        extra.append(("retry-after", _number(retry_after)))
    if retry_after_ms is not None:
        extra.append(("retry-after-ms", _number(retry_after_ms)))
    if should_retry is not None:
        extra.append(("x-should-retry", "true" if should_retry else "false"))
    extra.extend((name.lower(), value) for name, value in (headers or {}).items())
    return Reply(
        "error",
        status=status,
        error_type=error_type,
        message=message or default_message(error_type),
        error_code=error_code,
        headers=tuple(extra),
        latency=latency,
    )


def overloaded(**kw: Any) -> Reply:
    """529 overloaded_error; takes error()'s keyword arguments (retry_after, should_retry, …)."""
    error_type = kw.pop("error_type", None) or "overloaded_error"
    return error(529, error_type, **kw)


def midstream_error(
    after_events: int = 3, error_type: str = "overloaded_error", turn: Turn | None = None
) -> Reply:
    """Streaming: HTTP 200, `after_events` normal SSE events, then an SSE error event.

    Without `stream: true` the request gets a plain error response instead (529 for an
    overload, 500 for api_error, 504 for timeout_error)."""
    _check_non_negative(after_events=after_events)
    return Reply(
        "midstream_error",
        turn=turn,
        error_type=error_type,
        message=default_message(error_type),
        after_events=after_events,
    )


def drop(after_events: int = 2) -> Reply:
    """Close the connection mid-body: after N SSE events, or halfway through a JSON body."""
    _check_non_negative(after_events=after_events)
    return Reply("drop", after_events=after_events)


def stall(*, before_headers: bool = False, after_events: int = 1) -> Reply:
    """Hold the connection open, sending nothing more, until the client gives up, the server
    stops or FakeProvider.release_stalls(); then close it. JSON bodies stall halfway."""
    _check_non_negative(after_events=after_events)
    return Reply("stall", after_events=after_events, before_headers=before_headers)


class ReplyQueue:
    """Scripted replies waiting for requests: one queue per model, and one shared queue that
    serves any model whose own queue is empty. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shared: deque[Reply] = deque()
        self._by_model: dict[str, deque[Reply]] = {}

    def add(self, replies: Iterable[Reply], model: str | None = None) -> None:
        replies = list(replies)
        for reply in replies:
            if not isinstance(reply, Reply):
                raise TypeError(
                    f"script() takes Reply objects (ok(), error(), …), got {type(reply).__name__}"
                )
        with self._lock:
            queue = self._shared if model is None else self._by_model.setdefault(model, deque())
            queue.extend(replies)

    def next(self, model: str | None) -> Reply | None:
        with self._lock:
            own = self._by_model.get(model) if model is not None else None
            if own:
                return own.popleft()
            if self._shared:
                return self._shared.popleft()
            return None

    def pending(self) -> int:
        with self._lock:
            return len(self._shared) + sum(len(q) for q in self._by_model.values())

    def clear(self) -> None:
        with self._lock:
            self._shared.clear()
            self._by_model.clear()
