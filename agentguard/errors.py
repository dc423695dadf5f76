"""agentguard's own errors.

Every message is one sentence a person can act on: what went wrong and what to do.

    AgentGuardError
    ├── ConfigError            invalid policy, preset, route or config file
    ├── ProjectError           the project folder is missing or unusable
    ├── StoreError             AGENTGUARD_HOME unwritable, database corrupt or from a newer version
    │   ├── RunNotFound        no run with that id in the store
    │   └── RunBusy            the run is still running in another live process
    ├── SnapshotError          the shadow git store failed or lacks a commit
    └── StepFailed             a guarded step could not be served
        ├── RetriesExhausted   every allowed attempt failed with a retryable error
        └── RunQueued          policy forbids substitution: the run waits until next_attempt_at
    Refuse                     returned or raised by on_substitution: a person's veto

Errors about the request itself (400, 413) or the account (401, 402, 403) are not wrapped:
the SDK's own exception is raised unchanged, with a note naming the attempts and request-id,
so code that already catches `anthropic.BadRequestError` keeps working.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datetime import datetime


class AgentGuardError(Exception):
    """Base of every error agentguard raises itself."""


class ConfigError(AgentGuardError, ValueError):
    """Invalid configuration; the message names the field and what is allowed."""


class ProjectError(AgentGuardError):
    """The project folder cannot be used."""


class StoreError(AgentGuardError):
    """The SQLite store cannot be opened or written."""


class RunNotFound(StoreError, LookupError):
    """No run with that id in the store."""


class RunBusy(StoreError):
    """The run is still running in another live process."""


class SnapshotError(AgentGuardError):
    """The shadow git store could not take or restore a snapshot."""


class Refuse(AgentGuardError):
    """A person's veto of a substitution: return it (or raise it) from `on_substitution`.

    The caller then does not get the other model's answer: the step is recorded `refused`
    with the response kept (it was paid for), the run waits as under `forbid`, and the call
    raises RunQueued. `agentguard resume RUN --accept` hands the kept response over later;
    a plain resume asks the primary again."""

    def __init__(self, reason: str = "refused by on_substitution") -> None:
        super().__init__(reason)
        self.reason = reason


class StepFailed(AgentGuardError):
    """A guarded step ended without a response."""

    def __init__(
        self,
        message: str,
        *,
        run_id: str | None = None,
        step_id: str | None = None,
        attempts: Sequence[Any] = (),
    ) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.step_id = step_id
        self.attempts = list(attempts)

    @property
    def last_request_id(self) -> str | None:
        for attempt in reversed(self.attempts):
            if getattr(attempt, "request_id", None):
                return attempt.request_id
        return None


class RetriesExhausted(StepFailed):
    """Every attempt the policy allowed failed with a retryable error."""


class RunQueued(StepFailed):
    """The policy forbids substitution, so the run is queued as `waiting`."""

    def __init__(self, message: str, *, next_attempt_at: datetime, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.next_attempt_at = next_attempt_at
