"""A streamed answer once its first content has arrived: passed on live, event by event.

The events held back before the content (`message_start`, `ping`) go first, then the rest as
each arrives, byte for byte. A failure from here on belongs to the client, as the provider's
own `error` event (forwarded as it came, or — for a dropped connection — one in the
provider's shape). What the stream added up to is assembled on the side for the store.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx2

from agentguard.proxy import answers, sse
from agentguard.proxy.http_client import Response


class LiveStream:
    def __init__(
        self,
        kind: str,
        status: int,
        headers: list[tuple[str, str]],
        held: list[sse.Event],
        rest: AsyncIterator[sse.Event],
        response: Response,
    ) -> None:
        self.kind = kind
        self.status = status
        self.headers = headers
        self._held = held
        self._rest = rest
        self._response = response
        self.assembler = sse.assembler(kind)
        for event in held:
            self.assembler.feed(event)
        self.error: str | None = None  # why the stream failed after its first content
        self.done = False  # the stream was read to its end (complete or failed)
        # awaited once, before the first event the client could act on (see sse.lets_client_act)
        self.gate: Callable[[], Awaitable[Any]] | None = None
        # the chunk last yielded, or one before it, carried the model's output (sse.carries_output)
        self.output_started = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._bytes()

    async def _bytes(self) -> AsyncIterator[bytes]:
        if self._held:  # one write: the prelude and the first content reach the client at once
            self.output_started = any(sse.carries_output(self.kind, e) for e in self._held)
            yield b"".join(event.raw for event in self._held)
        self._held = []
        try:
            async for event in self._rest:
                self.assembler.feed(event)
                if sse.is_error(self.kind, event):
                    self.error = _error_text(event.json()) or "an error event"
                if self.gate is not None and sse.lets_client_act(self.kind, event):
                    await self._open_gate()
                if not self.output_started:
                    self.output_started = sse.carries_output(self.kind, event)
                yield event.raw
        except httpx2.TransportError as exc:
            self.error = f"the provider's stream broke: {type(exc).__name__}: {exc}"
            await self._open_gate()
            yield answers.error_event(self.kind, self.error)
            self.done = True
            return
        if self.error is None and not self.assembler.complete:
            self.error = "the provider's stream ended before its end marker"
            await self._open_gate()
            yield answers.error_event(self.kind, self.error)
        self.done = True

    async def _open_gate(self) -> None:
        gate, self.gate = self.gate, None
        if gate is not None:
            await gate()

    def final(self) -> sse.Final:
        return self.assembler.final()

    async def aclose(self) -> None:
        await close_quietly(self._response)


async def close_quietly(response: Response) -> None:
    """Close an upstream response even while our own task is being cancelled (the client went
    away): the close runs shielded, so the connection is released either way."""
    closing = asyncio.ensure_future(response.aclose())
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.shield(closing)


def _error_text(data: Any) -> str | None:
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None
    return f"{error.get('type') or 'error'}: {error.get('message') or ''}".strip(": ")
