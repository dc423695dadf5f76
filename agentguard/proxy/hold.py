"""Holding a request through a storm: a streaming client kept alive with pings.

When a step's routes are down (or, under `forbid`, its retries are spent) the step is held
(`Guard.step(..., hold=…)`): it waits for the breaker's next probe and tries again, until the
hold deadline, instead of failing the client's request. A streaming client is kept alive
meanwhile: once the step has been held `interval` seconds the response starts (200,
`text/event-stream`, the run and step headers) with a `ping` event — `event: ping` /
`data: {"type": "ping"}` for Anthropic clients (Claude Code and the SDKs skip pings before
`message_start`), an SSE comment for OpenAI ones — and another every `interval` seconds while
the step waits. When a route answers, its stream follows on the same response exactly as a
normal one (`message_start` after the pings). Until the first ping nothing is sent: a hold
shorter than `interval` ends in the provider's own response, its headers and status, and a
failure is still answered with the provider's status and `x-should-retry: false`. Once pings
have gone, the provider's headers cannot follow (the run and step headers say where the
answer is recorded, its request-id included), and a failure can only be an SSE `error` event.

Pings during the step's waits follow the step's clock (the one injected into the proxy, so a
test's fake clock drives them); during an attempt in flight (a probe the provider is slow to
answer) they follow the event loop's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from agentguard.clock import Changes, Clock
from agentguard.plan import Call
from agentguard.proxy import answers
from agentguard.proxy.stream import LiveStream
from agentguard.retrying import Hold

PING = {
    "anthropic": b'event: ping\ndata: {"type": "ping"}\n\n',
    "openai": b": ping\n\n",
}
_EPSILON = 1e-6
SSE_HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
}


class KeepAlive:
    """A streaming client's response while its step is held: started at the hold's first wait,
    pinged every `interval` seconds after."""

    def __init__(
        self,
        request: web.BaseRequest,
        kind: str,
        clock: Clock,
        interval: float,
        headers: Callable[[], list[tuple[str, str]]],
    ) -> None:
        self.request = request
        self.kind = kind
        self.clock = clock
        self.interval = interval
        self._headers = headers  # the run and step marks, asked for when the response starts
        self.response: web.StreamResponse | None = None
        self.pings = 0
        self.held = False  # the step yielded its first Hold
        self.gone = False  # the client went away while held
        self._last = 0.0  # the clock's monotonic time of the last byte sent

    @property
    def started(self) -> bool:
        return self.response is not None

    def saw(self, action: Any) -> None:
        """Every action of the step's plan passes here: a Hold starts the keep-alive clock."""
        if isinstance(action, Hold) and not self.held:
            self.held = True
            self._last = self.clock.monotonic()  # the first ping is due `interval` from here

    async def keep_alive(self) -> None:
        """The ping that is due: the first one starts the response."""
        if self.started:
            await self.ping()
        else:
            await self.start()

    async def start(self) -> None:
        response = web.StreamResponse(status=200, headers=SSE_HEADERS)
        for name, value in self._headers():
            response.headers[name] = value
        self.response = response
        try:
            await response.prepare(self.request)
        except ConnectionError:
            self._went_away()
        await self.ping()

    async def ping(self) -> None:
        assert self.response is not None
        try:
            await self.response.write(PING[self.kind])
        except ConnectionError:
            self._went_away()
        self.pings += 1
        self._last = self.clock.monotonic()

    def _went_away(self) -> None:
        """The client hung up: the step is cancelled like any request whose client left."""
        self.gone = True
        raise asyncio.CancelledError("the client went away while its request was held")

    async def fail(self, body: bytes) -> web.StreamResponse:
        """The step failed after the response started: the error as the provider would send
        it in a stream (its body byte for byte), then the end of the stream."""
        assert self.response is not None
        lines = body.splitlines() or [b""]
        data = b"".join(b"data: " + line + b"\n" for line in lines)
        frame = (b"event: error\n" if self.kind == "anthropic" else b"") + data + b"\n"
        with contextlib.suppress(ConnectionError):
            await self.response.write(frame)
            await self.response.write_eof()
        return self.response

    async def unexpected(self, message: str) -> web.StreamResponse:
        return await self.fail(answers.error_body(self.kind, 502, "api_error", message))

    # -- what the step is driven with ----------------------------------------------------------

    def clock_for(self, inner: Clock) -> Clock:
        return _PingingClock(inner, self)

    def call_for(self, call: Callable[[Call], Awaitable[Any]]) -> Callable[[Call], Awaitable[Any]]:
        async def pinging(action: Call) -> Any:
            if not self.held:
                return await call(action)
            task = asyncio.ensure_future(call(action))
            try:
                while True:
                    due = self._last + self.interval - self.clock.monotonic()
                    done, _ = await asyncio.wait({task}, timeout=max(due, 0.0))
                    if done:
                        return task.result()
                    await self.keep_alive()
            except BaseException:
                task.cancel()
                await asyncio.wait({task})  # the attempt closes its upstream response
                if not task.cancelled() and task.exception() is None:
                    # answered just as its client left: never passed on, so closed here (a
                    # stream left open would hold its upstream connection until it ended)
                    unsent = task.result().value
                    if isinstance(unsent, LiveStream):
                        await unsent.aclose()
                raise

        return pinging

    async def sleep(self, seconds: float, wake: Callable[[], bool] | None) -> float:
        """Sleep on the step's clock, a ping whenever `interval` has passed since the last
        (or since the hold began: a hold shorter than that sends the client nothing)."""
        waited = 0.0
        while (left := seconds - waited) > _EPSILON:
            due = self._last + self.interval - self.clock.monotonic()
            if due <= _EPSILON:  # (a float's rounding never leaves a sliver to sleep)
                await self.keep_alive()
                continue
            chunk = min(left, due)
            if wake is None:
                await self.clock.asleep(chunk)
                waited += chunk
            else:
                waited += await self.clock.await_(chunk, wake)
                if wake():
                    break
        return waited


class _PingingClock:
    """The step's clock, whose sleeps ping the client once its step is held."""

    def __init__(self, inner: Clock, keeper: KeepAlive) -> None:
        self.inner = inner
        self.keeper = keeper

    def now(self) -> float:
        return self.inner.now()

    def monotonic(self) -> float:
        return self.inner.monotonic()

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)

    def wait(
        self, seconds: float, wake: Callable[[], bool], changes: Changes | None = None
    ) -> float:
        if changes is not None:
            return self.inner.wait(seconds, wake, changes)
        return self.inner.wait(seconds, wake)

    async def asleep(self, seconds: float) -> None:
        if self.keeper.held:
            await self.keeper.sleep(seconds, None)
        else:
            await self.inner.asleep(seconds)

    async def await_(
        self, seconds: float, wake: Callable[[], bool], changes: Changes | None = None
    ) -> float:
        if self.keeper.held:
            return await self.keeper.sleep(seconds, wake)
        if changes is not None:
            return await self.inner.await_(seconds, wake, changes)
        return await self.inner.await_(seconds, wake)
