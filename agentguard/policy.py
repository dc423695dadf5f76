"""Policies: how hard to retry, how long a step may take, and whether a substitute may serve.

Presets follow the app-type table of the retry guide agentguard grew from: a coding agent retries
a few times and tells the user when the model changes; a high-stakes workflow never substitutes.
"""

from __future__ import annotations

import json
import random
import types
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from agentguard.errors import ConfigError

Substitution = Literal["allow", "announce", "forbid"]


class Policy(BaseModel):
    """A plain value: every retry decision is a pure function of (policy, history, clock)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Strict: a count is a whole number and seconds are a number, never "3" or true.
    name: StrictStr = "custom"
    max_attempts: StrictInt = Field(
        4, ge=1, le=100, description="HTTP tries per route within one step"
    )
    base_delay: StrictFloat = Field(0.5, ge=0, description="seconds; backoff starts here")
    max_delay: StrictFloat = Field(8.0, ge=0, description="seconds; cap on one backoff delay")
    step_deadline: StrictFloat = Field(120.0, gt=0, description="seconds per step, sleeps included")
    max_retry_after: StrictFloat = Field(
        60.0, ge=0, description="longest retry-after (seconds) honoured on the same route"
    )
    substitution: Substitution = "announce"
    queue_delay: StrictFloat = Field(
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


def policy_problems(value: Any, field: str = "policy") -> list[str]:
    """What is wrong with a policy as a config file gives it (a preset name or a table with an
    optional `preset`), each problem naming its field; [] when it is fine."""
    names = _choices(list(PRESETS))
    if value is None:
        return []
    if isinstance(value, str):
        return [] if value in PRESETS else [f"{field} must be one of {names} (got {_shown(value)})"]
    if not isinstance(value, Mapping):
        return [
            f"{field} must be a preset name ({names}) or a table such as "
            f'{{ preset = "{DEFAULT_PRESET}", max_attempts = 3 }} (got {_shown(value)})'
        ]
    data = dict(value)
    preset = data.pop("preset", DEFAULT_PRESET)
    if not isinstance(preset, str) or preset not in PRESETS:
        return [f"{field}.preset must be one of {names} (got {_shown(preset)})"]
    merged = {**PRESETS[preset].model_dump(), **data}
    try:
        Policy.model_validate(merged)
    except ValidationError as exc:
        extra = ["preset"]
        return problems(exc.errors(include_url=False), Policy, prefix=field, also_allowed=extra)
    return []


def validate_model(model: type[BaseModel], data: dict[str, Any], where: str) -> Any:
    """Validate with pydantic, turning its report into one sentence that names every field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, where, model)) from None


def describe_validation_error(
    exc: ValidationError, where: str, model: type[BaseModel] | None = None
) -> str:
    return describe_problems(where, problems(exc.errors(include_url=False), model))


def describe_problems(where: str, found: Sequence[str]) -> str:
    """`Invalid WHERE: a problem.` or `Invalid WHERE: 2 problems: one; two.`"""
    if len(found) == 1:
        return f"Invalid {where}: {found[0]}."
    return f"Invalid {where}: {len(found)} problems: {'; '.join(found)}."


# Pydantic's error types, said the way a user writing TOML (or Python) thinks of the value.
_ALLOWED = {
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "missing": "is required",
}


def problems(
    errors: Sequence[Mapping[str, Any]],
    model: type[BaseModel] | None = None,
    *,
    prefix: str = "",
    also_allowed: Sequence[str] = (),
) -> list[str]:
    """Each of pydantic's errors as `FIELD must be … (got …)`, without pydantic's internals
    (no union branch names, no URLs)."""
    found: list[str] = []
    for error in errors:
        loc = [part for part in error["loc"] if not _is_branch(part)]
        field = _field_name([prefix, *loc] if prefix else loc)
        kind = error["type"]
        if kind == "extra_forbidden":
            owner = _model_at(model, loc[:-1]) if model else None
            allowed = sorted({*owner.model_fields, *also_allowed}) if owner else []
            found.append(
                f"unknown field {field!r}"
                + (f" (allowed fields are {', '.join(allowed)})" if allowed else "")
            )
            continue
        if kind == "literal_error":
            message = f"must be one of {error['ctx']['expected']}"
        elif kind in _ALLOWED:
            message = _ALLOWED[kind]
        else:
            message = error["msg"].replace("Input should be", "must be")
            message = message.replace("Value error, ", "").replace("Assertion failed, ", "")
        got = "" if kind == "missing" else f" (got {_shown(error.get('input'))})"
        if isinstance(error.get("input"), Mapping) and kind not in _ALLOWED:
            got = ""  # a check across fields: the message names them
        if loc:
            found.append(f"{field} {message}{got}")
        else:  # a check across fields: its message names them
            found.append(f"{field}: {message}{got}" if field else f"{message}{got}")
    return list(dict.fromkeys(found))


def _is_branch(part: Any) -> bool:
    """Pydantic names the member of a union it tried (`str`, `function-after[...]`)."""
    return isinstance(part, str) and (
        part in ("str", "int", "float", "bool", "list", "dict") or "[" in part
    )


def _field_name(loc: Sequence[Any]) -> str:
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif part:
            name += f".{part}" if name else str(part)
    return name


def _model_at(model: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The model that holds the field at `loc` (for an unknown field: which fields it allows)."""
    current: Any = model
    parts = list(loc)
    while True:
        current = _unwrap(current)
        if not parts:
            return current if isinstance(current, type) and issubclass(current, BaseModel) else None
        part = parts.pop(0)
        if isinstance(current, type) and issubclass(current, BaseModel):
            if part not in current.model_fields:
                return None
            current = current.model_fields[part].annotation
        elif get_origin(current) in (dict, Mapping) and get_args(current):
            current = get_args(current)[1]
        elif get_origin(current) in (list, Sequence) and get_args(current):
            current = get_args(current)[0]
        else:
            return None


def _unwrap(annotation: Any) -> Any:
    """`X | None` → X."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _shown(value: Any) -> str:
    """A value as the user wrote it in TOML: "yes", true, 5, [ … ]."""
    if isinstance(value, str | bool) or value is None:
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _choices(names: Sequence[str]) -> str:
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
