"""Time, injected: tests advance a fake clock instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

# How often a wakeable wait looks at its condition (one SQLite read when it asks the store).
WAKE_POLL_S = 0.05


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch (what the store records)."""
        ...

    def monotonic(self) -> float:
        """Seconds for measuring durations and deadlines."""
        ...

    def sleep(self, seconds: float) -> None: ...

    async def asleep(self, seconds: float) -> None: ...

    def wait(self, seconds: float, wake: Callable[[], bool]) -> float:
        """Sleep up to `seconds`, returning early once `wake()` is true; the seconds waited."""
        ...

    async def await_(self, seconds: float, wake: Callable[[], bool]) -> float: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.perf_counter()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)

    def wait(self, seconds: float, wake: Callable[[], bool]) -> float:
        began = time.perf_counter()
        while (left := seconds - (time.perf_counter() - began)) > 0:
            time.sleep(min(left, WAKE_POLL_S))
            if wake():
                break
        return time.perf_counter() - began

    async def await_(self, seconds: float, wake: Callable[[], bool]) -> float:
        began = time.perf_counter()
        while (left := seconds - (time.perf_counter() - began)) > 0:
            await asyncio.sleep(min(left, WAKE_POLL_S))
            if wake():
                break
        return time.perf_counter() - began


class FakeClock:
    """A clock that only moves when slept on; records every sleep (a woken wait as one entry,
    the time it actually waited)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._wall = start
        self._mono = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(max(seconds, 0.0))

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)

    def wait(self, seconds: float, wake: Callable[[], bool]) -> float:
        waited = 0.0
        while waited < seconds:
            tick = min(WAKE_POLL_S, seconds - waited)
            self.advance(tick)
            waited += tick
            if wake():
                break
        self.sleeps.append(waited)
        return waited

    async def await_(self, seconds: float, wake: Callable[[], bool]) -> float:
        return self.wait(seconds, wake)
