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
    """Wait `seconds`; with `wake`, stop early once it is true. The plan receives the seconds
    actually waited."""

    seconds: float
    wake: Callable[[], bool] | None = None


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
                if action.wake is None:
                    clock.sleep(action.seconds)
                    waited = action.seconds
                else:
                    waited = clock.wait(action.seconds, action.wake)
                action = plan.send(waited)
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
                if action.wake is None:
                    await clock.asleep(action.seconds)
                    waited = action.seconds
                else:
                    waited = await clock.await_(action.seconds, action.wake)
                action = plan.send(waited)
            else:
                try:
                    value = await asyncio.wrap_future(action.future)
                except Exception as exc:
                    action = plan.throw(exc)
                else:
                    action = plan.send(value)
    except StopIteration as stop:
        return stop.value
