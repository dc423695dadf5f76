"""agentguard: keeps coding agents alive through LLM provider overload, never silently.

The headless library: importing it never imports Textual.
"""

from agentguard.clock import Clock, FakeClock, SystemClock
from agentguard.errors import (
    AgentGuardError,
    ConfigError,
    ProjectError,
    RetriesExhausted,
    RunBusy,
    RunNotFound,
    RunQueued,
    SnapshotError,
    StepFailed,
    StoreError,
)
from agentguard.guard import Guard
from agentguard.policy import PRESETS, Policy, resolve_policy
from agentguard.records import AttemptRecord, StepInfo, info
from agentguard.resume import ResumedRun, resume
from agentguard.routes import Route
from agentguard.store import Store
from agentguard.wrap import wrap

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "AgentGuardError",
    "AttemptRecord",
    "Clock",
    "ConfigError",
    "FakeClock",
    "Guard",
    "Policy",
    "ProjectError",
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
