"""Policies: how hard to retry, how long a step may take, and whether a substitute may serve.

Presets follow the app-type table of the retry guide agentguard grew from: a coding agent retries
a few times and tells the user when the model changes; a high-stakes workflow never substitutes.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agentguard.errors import ConfigError

Substitution = Literal["allow", "announce", "forbid"]


class Policy(BaseModel):
    """A plain value: every retry decision is a pure function of (policy, history, clock)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "custom"
    max_attempts: int = Field(4, ge=1, le=100, description="HTTP tries per route within one step")
    base_delay: float = Field(0.5, ge=0, description="seconds; backoff starts here")
    max_delay: float = Field(8.0, ge=0, description="seconds; cap on one backoff delay")
    step_deadline: float = Field(120.0, gt=0, description="seconds per step, sleeps included")
    max_retry_after: float = Field(
        60.0, ge=0, description="longest retry-after (seconds) honoured on the same route"
    )
    substitution: Substitution = "announce"
    queue_delay: float = Field(
        300.0, ge=0, description="seconds a queued (waiting) run waits before its next try"
    )

    @model_validator(mode="after")
    def _delays_ordered(self) -> Policy:
        if self.max_delay < self.base_delay:
            raise ValueError("max_delay must be at least base_delay")
        return self

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Full-jitter exponential delay before retry number `retry` (1 = first retry)."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (retry - 1))
        return rng.uniform(0.0, ceiling)


PRESETS: dict[str, Policy] = {
    p.name: p
    for p in (
        # Background work: retry the same model patiently, then queue rather than substitute.
        Policy(
            name="internal_script",
            max_attempts=8,
            base_delay=1.0,
            max_delay=30.0,
            step_deadline=600.0,
            max_retry_after=300.0,
            substitution="forbid",
        ),
        # A person is watching: few retries, then a backup provider, shown briefly.
        Policy(
            name="public_chat",
            max_attempts=3,
            base_delay=0.5,
            max_delay=4.0,
            step_deadline=30.0,
            max_retry_after=10.0,
            substitution="announce",
        ),
        # Preserve repo state, tell the user when the model changes. Short, capped delays: the
        # step notices a blip's end quickly, while the machine-wide breaker, retry budget and
        # held retries (one agent's failure holds the others') keep the load on the provider down.
        Policy(
            name="coding_agent",
            max_attempts=5,
            base_delay=0.25,
            max_delay=0.5,
            step_deadline=120.0,
            max_retry_after=60.0,
            substitution="announce",
        ),
        # Queue first: no real-time user, so wait instead of substituting.
        Policy(
            name="batch",
            max_attempts=2,
            base_delay=2.0,
            max_delay=60.0,
            step_deadline=900.0,
            max_retry_after=600.0,
            substitution="forbid",
            queue_delay=900.0,
        ),
        # Short retry window, then a lower-latency backup; a partial answer beats none.
        Policy(
            name="support_bot",
            max_attempts=2,
            base_delay=0.25,
            max_delay=2.0,
            step_deadline=15.0,
            max_retry_after=5.0,
            substitution="allow",
        ),
        # Short retry window, never a silent downgrade: queue or human review instead.
        Policy(
            name="high_stakes",
            max_attempts=3,
            base_delay=0.5,
            max_delay=4.0,
            step_deadline=30.0,
            max_retry_after=10.0,
            substitution="forbid",
            queue_delay=600.0,
        ),
    )
}
DEFAULT_PRESET = "coding_agent"


def resolve_policy(policy: str | Policy | dict[str, Any] | None = None, **overrides: Any) -> Policy:
    """A preset name, a Policy or a dict (optionally with `preset`) → a validated Policy."""
    if policy is None:
        policy = DEFAULT_PRESET
    if isinstance(policy, str):
        base = _preset(policy)
        data: dict[str, Any] = {}
    elif isinstance(policy, Policy):
        base, data = policy, {}
    elif isinstance(policy, dict):
        data = dict(policy)
        base = _preset(data.pop("preset", DEFAULT_PRESET))
    else:
        raise ConfigError(
            f"policy must be a preset name, a Policy or a dict, not {type(policy).__name__}."
        )
    data.update(overrides)
    if not data:
        return base
    merged = {**base.model_dump(), **data}
    if "name" not in data:
        merged["name"] = base.name
    return validate_model(Policy, merged, "policy")


def _preset(name: str) -> Policy:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"Unknown policy preset {name!r}; choose one of: {', '.join(PRESETS)}."
        ) from None


def validate_model(model: type[BaseModel], data: dict[str, Any], where: str) -> Any:
    """Validate with pydantic, turning its report into one sentence that names the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, where, model)) from None


def describe_validation_error(
    exc: ValidationError, where: str, model: type[BaseModel] | None = None
) -> str:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or where
    got = first.get("input")
    message = first["msg"].replace("Input should be", "must be").replace("Value error, ", "")
    if first["type"] == "literal_error":
        message = f"must be one of {first['ctx']['expected']}"
    elif first["type"] == "extra_forbidden":
        allowed = ", ".join(sorted(model.model_fields)) if model else "listed in the README"
        return f"Invalid {where}: unknown field {field!r}; allowed fields are {allowed}."
    suffix = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
    more = f"; {len(exc.errors()) - 1} more problem(s)" if len(exc.errors()) > 1 else ""
    if field == where:  # a check across fields names them itself
        return f"Invalid {where}: {message}{suffix}{more}."
    return f"Invalid {where}: {field} {message}{suffix}{more}."
