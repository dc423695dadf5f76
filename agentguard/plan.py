"""A step written once, run two ways.

The guarded step is a generator that yields what it needs done — `Call` a route, `Sleep`,
`Join` a background snapshot — and receives the results. `drive` runs it with blocking calls,
`adrive` with awaits, so the sync and async clients share every decision.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator
from concurrent.futures import Future
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NoReturn

from agentguard.clock import Changes, Clock
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
    changes: Changes | None = None  # announces when `wake` may have become true


@dataclass(frozen=True)
class Join:
    future: Future[Any]


Action = Call | Sleep | Join
StepPlan = Generator[Action, Any, Any]

# True while `adrive` runs a plan: its actions are awaited on an event loop, so work the plan
# starts beside an action may wait for the loop's next turn (a blocking `drive` in a thread
# that happens to have a running loop, a notebook's, must not defer it).
ON_LOOP: ContextVar[bool] = ContextVar("agentguard_plan_on_loop", default=False)


def drive(plan: StepPlan, call: Callable[[Call], Any], clock: Clock) -> Any:
    """Run a step plan with blocking I/O.

    An interrupt (KeyboardInterrupt, or any BaseException that is not an Exception) is thrown
    into the plan, which records the step as cancelled and lets it propagate unchanged; the
    plan is never abandoned mid-step (its rows would stay `pending` forever)."""
    try:
        action = next(plan)
        while True:
            try:
                reply = _perform(action, call, clock)
            except _Failed as failed:
                action = plan.throw(failed.error)
                continue
            except BaseException as exc:
                action = plan.throw(exc)
                continue
            action = plan.send(reply)
    except StopIteration as stop:
        return stop.value


def _perform(action: Action, call: Callable[[Call], Any], clock: Clock) -> Any:
    if isinstance(action, Call):
        try:
            return (True, call(action))
        except Exception as exc:
            return (False, exc)
    if isinstance(action, Sleep):
        if action.wake is None:
            clock.sleep(action.seconds)
            return action.seconds
        if action.changes is not None:
            return clock.wait(action.seconds, action.wake, action.changes)
        return clock.wait(action.seconds, action.wake)
    try:
        return action.future.result()
    except Exception as exc:
        raise _Failed(exc) from None


def first_on_loop(plan: StepPlan) -> Action:
    """The plan's first stretch, taken before `adrive` goes on with it (the proxy's step, which
    needs the step's id before its call), marked as on the loop as adrive marks the rest."""
    on_loop = ON_LOOP.set(True)
    try:
        return next(plan)
    finally:
        ON_LOOP.reset(on_loop)


async def adrive(plan: StepPlan, call: Callable[[Call], Awaitable[Any]], clock: Clock) -> Any:
    """Run a step plan on an event loop; a snapshot still runs in its own thread.

    Cancellation (`task.cancel()`, `asyncio.wait_for` timing out) is thrown into the plan like
    an interrupt in `drive`, and the caller gets its own CancelledError."""
    on_loop = ON_LOOP.set(True)
    try:
        action = next(plan)
        while True:
            try:
                reply = await _aperform(action, call, clock)
            except _Failed as failed:
                action = plan.throw(failed.error)
                continue
            except BaseException as exc:
                action = plan.throw(exc)
                continue
            action = plan.send(reply)
    except StopIteration as stop:
        return stop.value
    finally:
        ON_LOOP.reset(on_loop)


async def _aperform(action: Action, call: Callable[[Call], Awaitable[Any]], clock: Clock) -> Any:
    if isinstance(action, Call):
        try:
            return (True, await call(action))
        except Exception as exc:
            return (False, exc)
    if isinstance(action, Sleep):
        if action.wake is None:
            await clock.asleep(action.seconds)
            return action.seconds
        if action.changes is not None:
            return await clock.await_(action.seconds, action.wake, action.changes)
        return await clock.await_(action.seconds, action.wake)
    try:
        return await asyncio.wrap_future(action.future)
    except Exception as exc:
        raise _Failed(exc) from None


def no_calls(call: Call) -> NoReturn:
    """The `call` for a plan that only joins background work (`Guard.join_checkpoint`), with
    `drive` or `adrive` alike: such a plan never yields a Call."""
    raise AssertionError(f"this plan calls no route, yet asked for {call.route.key}")


class _Failed(Exception):
    """A background job (a snapshot) failed: its error goes into the plan as is."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error
