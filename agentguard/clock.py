"""Time, injected: tests advance a fake clock instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

# How often a wakeable wait looks at its condition (one SQLite read when it asks the store).
WAKE_POLL_S = 0.05
# With a change feed (a PostgreSQL store's LISTEN/NOTIFY), the condition is asked only when a
# change was announced — and at least this often, in case an announcement was lost.
CHANGES_RECHECK_S = 5.0


class Changes(Protocol):
    """Announcements that the shared state a wait depends on may have changed."""

    def mark(self) -> int:
        """A counter that moves on every announcement (cheap: no I/O)."""
        ...


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch (what the store records)."""
        ...

    def monotonic(self) -> float:
        """Seconds for measuring durations and deadlines."""
        ...

    def sleep(self, seconds: float) -> None: ...

    async def asleep(self, seconds: float) -> None: ...

    def wait(
        self, seconds: float, wake: Callable[[], bool], changes: Changes | None = None
    ) -> float:
        """Sleep up to `seconds`, returning early once `wake()` is true; the seconds waited.
        With `changes`, `wake()` is asked when they announce something, not every poll."""
        ...

    async def await_(
        self, seconds: float, wake: Callable[[], bool], changes: Changes | None = None
    ) -> float: ...


class _Asking:
    """When a wait should ask its condition: every poll, or — with a change feed — after an
    announcement (or CHANGES_RECHECK_S without one)."""

    def __init__(self, changes: Changes | None) -> None:
        self.changes = changes
        self.mark = changes.mark() if changes is not None else 0
        self.asked = time.perf_counter()

    def due(self) -> bool:
        if self.changes is None:
            return True
        mark, now = self.changes.mark(), time.perf_counter()
        if mark == self.mark and now - self.asked < CHANGES_RECHECK_S:
            return False
        self.mark, self.asked = mark, now
        return True


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

    def wait(
        self, seconds: float, wake: Callable[[], bool], changes: Changes | None = None
    ) -> float:
        began, asking = time.perf_counter(), _Asking(changes)
        while (left := seconds - (time.perf_counter() - began)) > 0:
            time.sleep(min(left, WAKE_POLL_S))
            if asking.due() and wake():
                break
        return time.perf_counter() - began

    async def await_(
        self, seconds: float, wake: Callable[[], bool], changes: Changes | None = None
    ) -> float:
        began, asking = time.perf_counter(), _Asking(changes)
        while (left := seconds - (time.perf_counter() - began)) > 0:
            await asyncio.sleep(min(left, WAKE_POLL_S))
            if asking.due() and wake():
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

    def wait(
        self, seconds: float, wake: Callable[[], bool], changes: Changes | None = None
    ) -> float:
        waited = 0.0
        while waited < seconds:
            tick = min(WAKE_POLL_S, seconds - waited)
            self.advance(tick)
            waited += tick
            if wake():
                break
        self.sleeps.append(waited)
        return waited

    async def await_(
        self, seconds: float, wake: Callable[[], bool], changes: Changes | None = None
    ) -> float:
        return self.wait(seconds, wake)
