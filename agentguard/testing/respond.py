"""Playing one Reply out on one HTTP exchange, in one provider's wire format.

This is where a scripted fault becomes bytes: an error status with the provider's body and
headers, an SSE stream cut short by an error event, a connection closed mid-body, or a
response that goes silent. Faults that come "after N events" never send the stream's final
event (`message_stop` / `[DONE]`), so the fault always lands mid-stream.
"""

from __future__ import annotations

from agentguard.testing.script import Reply, Turn
from agentguard.testing.transport import Exchange
from agentguard.testing.wire import Context, Wire, dumps

JSON = "application/json"
SSE = "text/event-stream; charset=utf-8"


def play(
    ex: Exchange, wire: Wire, reply: Reply, turn: Turn | None, ctx: Context, *, stream: bool
) -> None:
    headers = {wire.request_id_header: ctx.request_id}
    if reply.kind == "error" or turn is None:
        _error(ex, wire, reply, ctx, headers)
    elif reply.kind == "stall" and reply.before_headers:
        ex.hold()
    elif stream:
        _stream(ex, wire, reply, turn, ctx, headers)
    else:
        _json(ex, wire, reply, turn, ctx, headers)


def _error(ex: Exchange, wire: Wire, reply: Reply, ctx: Context, headers: dict[str, str]) -> None:
    error_type = reply.error_type or "api_error"
    body = wire.error_body(error_type, reply.message or error_type, reply.error_code, ctx)
    data = dumps(body).encode()
    ex.start(
        reply.status,
        {**headers, "content-type": JSON, **dict(reply.headers)},
        length=len(data),
    )
    ex.write(data)


def _json(
    ex: Exchange, wire: Wire, reply: Reply, turn: Turn, ctx: Context, headers: dict[str, str]
) -> None:
    data = dumps(wire.message(turn, ctx)).encode()
    ex.start(200, {**headers, "content-type": JSON}, length=len(data))
    if reply.kind == "ok":
        ex.write(data)
        return
    ex.write(data[: len(data) // 2])  # drop / stall: the body stops halfway
    if reply.kind == "drop":
        ex.drop()
    else:
        ex.hold()


def _stream(
    ex: Exchange, wire: Wire, reply: Reply, turn: Turn, ctx: Context, headers: dict[str, str]
) -> None:
    events = wire.events(turn, ctx)
    ex.start(200, {**headers, "content-type": SSE, "cache-control": "no-cache"}, length=None)
    if reply.kind == "ok":
        for n, event in enumerate(events):
            if n and reply.interval:
                ex.sleep(reply.interval)
            ex.write_chunk(event)
        ex.end_chunks()
        return
    for event in events[: min(reply.after_events, len(events) - 1)]:
        ex.write_chunk(event)
    if reply.kind == "midstream_error":
        error_type = reply.error_type or "overloaded_error"
        ex.write_chunk(wire.error_event(error_type, reply.message or error_type, ctx))
        ex.end_chunks()
    elif reply.kind == "drop":
        ex.drop()
    else:
        ex.hold()
