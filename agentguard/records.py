"""What a guarded step tells its caller: the truth about who served it and how."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def attempt_timing(
    number: int, route: Any, began_at: float, slept: float, latency: float
) -> dict[str, Any]:
    """What every attempt record has, whatever its outcome."""
    return {
        "number": number,
        "provider": route.provider,
        "model": route.model,
        "started_at": began_at,
        "slept_before": slept,
        "latency": latency,
    }


@dataclass(frozen=True)
class AttemptRecord:
    """One HTTP try of a step on a route (the fields an operator needs for support tickets)."""

    number: int
    provider: str
    model: str
    started_at: float
    slept_before: float
    latency: float
    outcome: str
    status_code: int | None = None
    error_type: str | None = None
    error_code: str | None = None
    request_id: str | None = None
    message: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None

    @classmethod
    def served(cls, when: dict[str, Any], served: Any) -> AttemptRecord:
        return cls(
            **when,
            outcome="ok",
            status_code=200,
            request_id=served.request_id,
            input_tokens=served.input_tokens,
            output_tokens=served.output_tokens,
        )

    @classmethod
    def failed(cls, when: dict[str, Any], failure: Any, decision: Any) -> AttemptRecord:
        return cls(
            **when,
            outcome=decision.action.value,
            status_code=failure.status_code,
            error_type=failure.error_type,
            error_code=failure.error_code,
            request_id=failure.request_id,
            message=failure.message,
        )

    @classmethod
    def foreign(cls, when: dict[str, Any], exc: BaseException) -> AttemptRecord:
        """An exception that is not the provider's: recorded, then re-raised unchanged."""
        return cls(**when, outcome="error", error_type=type(exc).__name__, message=str(exc)[:500])

    def ended_row(self) -> dict[str, Any]:
        """The columns an attempt's row gets when it ends: `row` without what was written when
        it was opened (number, route, start, the wait before it), so its indexes are left
        alone."""
        row = self.row()
        for opened in _OPENED:
            del row[opened]
        return row

    def row(self) -> dict[str, Any]:
        """The attempt as a store row (times in milliseconds)."""
        return {
            "number": self.number,
            "provider": self.provider,
            "model": self.model,
            "started_at": self.started_at,
            "slept_before_ms": self.slept_before * 1000,
            "latency_ms": self.latency * 1000,
            "status_code": self.status_code,
            "error_type": self.error_type,
            "error_code": self.error_code,
            "request_id": self.request_id,
            "outcome": self.outcome,
            "message": self.message,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }


_OPENED = ("number", "provider", "model", "started_at", "slept_before_ms")


@dataclass(frozen=True)
class StepInfo:
    """Attached to every response a guarded client returns; read it with `agentguard.info()`."""

    run_id: str
    step_id: int
    step: int
    requested_provider: str
    requested_model: str
    served_provider: str
    served_model: str
    substituted: bool
    reason: str | None
    attempts: tuple[AttemptRecord, ...]
    checkpoint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def request_id(self) -> str | None:
        """The request-id of the attempt that served the step."""
        return self.attempts[-1].request_id if self.attempts else None


_ATTR = "_agentguard_info"


def attach(value: Any, info: StepInfo) -> None:
    """Hang the step's info on a response without changing its type or its serialisation."""
    object.__setattr__(value, _ATTR, info)


def info(value: Any) -> StepInfo:
    """The StepInfo of a response (Message, stream or MessageStream) a guarded client returned."""
    found = getattr(value, _ATTR, None)
    if found is None:
        raise LookupError(
            f"{type(value).__name__} did not come from an agentguard-wrapped client, "
            "so it carries no step info."
        )
    return found
