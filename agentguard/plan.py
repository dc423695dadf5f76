"""A step written once, run two ways.

The guarded step is a generator that yields what it needs done — `Call` a route, `Sleep`,
`Join` a background snapshot — and receives the results. `drive` runs it with blocking calls,
`adrive` with awaits, so the sync and async clients share every decision.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from agentguard.clock import Clock
from agentguard.routes import Route


@dataclass(frozen=True)
class Call:
    route: Route
    attempt: int


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Join:
    future: Future[Any]


Action = Call | Sleep | Join
StepPlan = Generator[Action, Any, Any]


def drive(plan: StepPlan, call: Callable[[Call], Any], clock: Clock) -> Any:
    """Run a step plan with blocking I/O."""
    try:
        action = next(plan)
        while True:
            if isinstance(action, Call):
                try:
                    reply: Any = (True, call(action))
                except Exception as exc:
                    reply = (False, exc)
                action = plan.send(reply)
            elif isinstance(action, Sleep):
                clock.sleep(action.seconds)
                action = plan.send(None)
            else:
                try:
                    value = action.future.result()
                except Exception as exc:
                    action = plan.throw(exc)
                else:
                    action = plan.send(value)
    except StopIteration as stop:
        return stop.value


async def adrive(plan: StepPlan, call: Callable[[Call], Awaitable[Any]], clock: Clock) -> Any:
    """Run a step plan on an event loop; a snapshot still runs in its own thread."""
    try:
        action = next(plan)
        while True:
            if isinstance(action, Call):
                try:
                    reply: Any = (True, await call(action))
                except Exception as exc:
                    reply = (False, exc)
                action = plan.send(reply)
            elif isinstance(action, Sleep):
                await clock.asleep(action.seconds)
                action = plan.send(None)
            else:
                try:
                    value = await asyncio.wrap_future(action.future)
                except Exception as exc:
                    action = plan.throw(exc)
                else:
                    action = plan.send(value)
    except StopIteration as stop:
        return stop.value
