"""The values a guarded step passes around: the request, who served it, why routes failed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from agentguard.classify import Action, Failure
from agentguard.clock import Clock
from agentguard.policy import Policy
from agentguard.records import AttemptRecord
from agentguard.routes import Route
from agentguard.snapshots import Snapshot


@dataclass
class Served:
    """One successful attempt, as the provider seam reports it."""

    value: Any  # what the caller receives (Message, stream, MessageStream, ChatCompletion …)
    request_id: str | None
    model: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    stop_reason: str | None = None
    response_json: str | None = None
    native: dict[str, Any] | None = None  # the final response as JSON, in the route's own format
    notes: list[str] = field(default_factory=list)  # what translation had to drop


@dataclass(frozen=True)
class StepRequest:
    """One model call as the caller made it."""

    route: Route
    messages: Sequence[Any]
    params: dict[str, Any]
    stream: bool = False


@dataclass(frozen=True)
class RouteFailure:
    """Why one route did not serve a step."""

    route: Route
    reason: str
    action: Action
    failure: Failure | None = None
    error: BaseException | None = None
    cooling: bool = False  # stopped by the breaker: a later probe may still serve


def summarize(failed: Sequence[RouteFailure], *, full: bool = False) -> str:
    """Each route's last reason, in order: 'claude-opus-4-7: 529 overloaded_error ×4'."""
    last = {f.route.key: f for f in failed}
    return "; ".join(f"{f.route.key if full else f.route.model}: {f.reason}" for f in last.values())


@dataclass
class StepState:
    number: int
    step_id: int
    request: StepRequest
    started_mono: float
    attempts: list[AttemptRecord] = field(default_factory=list)
    snapshot: Future[Snapshot] | None = None
    snapshot_job: tuple[str, str] | None = None  # (message, ref) of a snapshot not yet started
    unwritten: list[Callable[[], Any]] | None = None  # rows held back until the hand-over
    checkpoint: str | None = None
    slept: float = 0.0  # the delay slept before the next attempt
    attempt_row: int = 0  # the store row of the attempt in flight
    in_flight: bool = False  # that attempt has no outcome yet
    ended: bool = False  # the step's row has its final status

    def time_left(self, policy: Policy, clock: Clock) -> float:
        return policy.step_deadline - (clock.monotonic() - self.started_mono)
