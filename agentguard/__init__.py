"""agentguard: keeps coding agents alive through LLM provider overload, never silently.

The headless library: importing it never imports Textual, and the SDK-facing parts (`wrap`,
`Guard`, `resume` …) load on first use, so `agentguard --help` starts quickly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from agentguard.errors import (
    AgentGuardError,
    ConfigError,
    ProjectError,
    Refuse,
    RetriesExhausted,
    RunBusy,
    RunNotFound,
    RunQueued,
    SnapshotError,
    StepFailed,
    StoreError,
)

__version__ = "0.1.0"

_LAZY = {
    "wrap": "agentguard.wrapping",
    "Guard": "agentguard.guard",
    "resume": "agentguard.resuming",
    "ResumedRun": "agentguard.resuming",
    "BranchMoved": "agentguard.user_repo",
    "info": "agentguard.records",
    "StepInfo": "agentguard.records",
    "AttemptRecord": "agentguard.records",
    "Policy": "agentguard.policy",
    "PRESETS": "agentguard.policy",
    "resolve_policy": "agentguard.policy",
    "Route": "agentguard.routes",
    "Store": "agentguard.store",
    "Clock": "agentguard.clock",
    "FakeClock": "agentguard.clock",
    "SystemClock": "agentguard.clock",
}

if TYPE_CHECKING:
    from agentguard.clock import Clock, FakeClock, SystemClock
    from agentguard.guard import Guard
    from agentguard.policy import PRESETS, Policy, resolve_policy
    from agentguard.records import AttemptRecord, StepInfo, info
    from agentguard.resuming import ResumedRun, resume
    from agentguard.routes import Route
    from agentguard.store import Store
    from agentguard.user_repo import BranchMoved
    from agentguard.wrapping import wrap


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agentguard' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "PRESETS",
    "AgentGuardError",
    "AttemptRecord",
    "BranchMoved",
    "Clock",
    "ConfigError",
    "FakeClock",
    "Guard",
    "Policy",
    "ProjectError",
    "Refuse",
    "ResumedRun",
    "RetriesExhausted",
    "Route",
    "RunBusy",
    "RunNotFound",
    "RunQueued",
    "SnapshotError",
    "StepFailed",
    "StepInfo",
    "Store",
    "StoreError",
    "SystemClock",
    "__version__",
    "info",
    "resolve_policy",
    "resume",
    "wrap",
]
