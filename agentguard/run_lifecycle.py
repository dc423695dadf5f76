"""A run's beginning and end in the store: taking over a previous run, and closing it with
the truth about how it ended (see `process_end`)."""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agentguard import process_end
from agentguard.clock import Clock
from agentguard.conversation import Head
from agentguard.otel import StepTracer
from agentguard.plan import StepPlan, drive, no_calls
from agentguard.process_end import describe as describe_exception
from agentguard.resuming import claim_run
from agentguard.store import Store

log = logging.getLogger("agentguard")


class RunLifecycle:
    """Mixed into `Guard`: the run row's life from start (or resume) to its final status."""

    store: Store
    clock: Clock
    run_id: str
    _closed: bool
    _opened_store: bool
    _last_status: str
    _executor: ThreadPoolExecutor
    _deferred: dict[int, Any]
    _unwritten: dict[int, Any]
    record_handed_over: Callable[[int], None]  # Guard.record_handed_over
    _git_reader: Any  # user_repo.StateReader
    _pusher: Any  # shadow.remote.Pusher | None
    join_checkpoint: Callable[[int], StepPlan]  # Guard.join_checkpoint
    event: Callable[..., None]  # StepRecording.event
    tracing: StepTracer  # OpenTelemetry: spans of streams still being passed on end at close

    def _previous_run(self, run_id: str) -> dict[str, Any]:
        """The run to continue, taken over once no other live process drives it (else
        RunBusy; two taking it at once: one wins)."""
        return claim_run(self.store, run_id, "resuming the run")

    def _head_of(self, run_id: str) -> Head:
        """The conversation of a run's last step: new steps store only what they add to it."""
        steps = self.store.query(
            "select id from steps where run_id = ? order by number desc limit 1", [run_id]
        )
        if not steps:
            return Head()
        rows = self.store.conversation_rows(steps[0]["id"])
        return Head(
            step_id=steps[0]["id"], objects=[None] * len(rows), shas=[row["sha"] for row in rows]
        )

    def close(self, status: str | None = None) -> None:
        """End the run: `completed` unless its last step failed or was queued (or `status`
        says otherwise)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._at_exit)
        for step_id in list(self._unwritten):  # served, its rows held back: write them
            self.record_handed_over(step_id)
        for step_id in list(self._deferred):  # a stream's snapshot still running: record it
            drive(self.join_checkpoint(step_id), no_calls, self.clock)
        self.tracing.close()  # a stream still being passed on: its span ends, saying so
        self._executor.shutdown(wait=True)
        if self._pusher is not None:  # the last checkpoints reach the remote before the end
            self._pusher.close()
        self._git_reader.close()
        final = status or ("completed" if self._last_status == "running" else self._last_status)
        now = self.clock.now()
        self.store.update_run(self.run_id, status=final, updated_at=now, ended_at=now)
        if self._opened_store and getattr(self.store, "holds_connections", False):
            self.store.close()  # a PostgreSQL store's pool and listener end with the run

    def end(self, exc: BaseException | None) -> None:
        """End the run as a `with` block ends: normally → `close()`; by an exception → the run
        is `failed` (or `interrupted` for Ctrl-C and cancellation), with the exception as an
        event. A run already `waiting` (queued) or `failed` keeps that status."""
        if exc is None:
            self.close()
        elif isinstance(exc, Exception):
            self._end_abnormally("failed", type(exc).__name__, describe_exception(exc))
        else:
            self._end_abnormally("interrupted", type(exc).__name__, describe_exception(exc))

    def _end_abnormally(self, status: str, error_type: str | None, message: str | None) -> None:
        if self._closed:
            return
        kind = "crashed" if status == "failed" else "interrupted"
        self.event(None, kind, error_type=error_type, error=message, pid=os.getpid())
        keep = self._last_status in ("waiting", "failed")
        self.close(None if keep else status)
        if not keep and message:
            self.store.update_run(self.run_id, last_error=f"{error_type}: {message}")

    def _at_exit(self) -> None:
        """The process is ending with the run still open: close it with how it ended."""
        try:
            ending = process_end.ending()
            if ending.status == "completed":
                self.close()
            else:
                self._end_abnormally(ending.status, ending.error_type, ending.message)
        except Exception:  # the interpreter is going away; never mask its own exit
            log.debug("agentguard: closing run %s at exit failed", self.run_id, exc_info=True)
