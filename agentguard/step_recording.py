"""What a step writes about itself: events, attempts as they are sent and answered, and how
a step ended when it did not end served (failed, queued, cancelled), plus telling a person
about a substitution."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

from agentguard.clock import Clock
from agentguard.errors import Refuse, RunQueued
from agentguard.otel import StepTracer
from agentguard.policy import Policy
from agentguard.process_end import describe as describe_exception
from agentguard.records import AttemptRecord, StepInfo
from agentguard.routes import Route
from agentguard.snapshots import Snapshot
from agentguard.step_types import Served, StepState
from agentguard.store import Store

log = logging.getLogger("agentguard")


class StepRecording:
    """Mixed into `Guard`: every row and event a step writes besides its final success."""

    store: Store
    clock: Clock
    run_id: str
    policy: Policy
    on_substitution: Callable[[StepInfo], Refuse | None] | None
    _last_status: str
    _took_checkpoint: Callable[[StepState, Snapshot], None]  # TreeKeeping._took_checkpoint
    _write: Callable[[StepState, Callable[[], Any]], None]  # Guard._write
    _start_snapshot: Callable[[StepState], None]  # TreeKeeping._start_snapshot
    record_handed_over: Callable[[int], None]  # Guard.record_handed_over
    tracing: StepTracer  # the step's spans, once its outcome is final

    def event(self, step_id: int | None, kind: str, **detail: Any) -> None:
        self.store.insert_event(self.run_id, kind, detail, at=self.clock.now(), step_id=step_id)

    def complete_stream(
        self, step_id: int, final: Served | None, *, status: str = "ok", reason: str | None = None
    ) -> None:
        """A step whose answer was passed on live (the proxy) ends after the step returned:
        record the response the stream added up to, and — when it did not end well — that the
        client went away (`cancelled`) or the stream broke after its first content (`failed`)."""
        with self.store.batch():
            self._complete_stream(step_id, final, status, reason)
        self.tracing.stream_ended(step_id, final, status, reason)

    def _complete_stream(
        self, step_id: int, final: Served | None, status: str, reason: str | None
    ) -> None:
        self.record_handed_over(step_id)  # the rows saying it was served come first
        fields: dict[str, Any] = {}
        if final is not None:
            tokens = {"input_tokens": final.input_tokens, "output_tokens": final.output_tokens}
            fields.update(tokens, response=final.response_json, stop_reason=final.stop_reason)
            served = [a for a in self.store.attempts(step_id) if a["outcome"] == "ok"]
            if served:  # cost is counted from the attempt that served
                self.store.update_attempt(served[-1]["id"], tokens)
        if status != "ok":
            fields.update(status=status, error=reason)
            self.event(step_id, f"stream_{status}", reason=reason)
        if fields:
            self.store.update_step(step_id, **fields)

    def _open_attempt(self, state: StepState, route: Route, number: int, began_at: float) -> int:
        """Write the attempt before it is sent: a crash mid-call still leaves its trace."""
        return self.store.insert_attempt(
            {
                "run_id": self.run_id,
                "step_id": state.step_id,
                "number": number,
                "provider": route.provider,
                "model": route.model,
                "base_url": route.base_url,
                "started_at": began_at,
                "slept_before_ms": state.slept * 1000,
                "outcome": "pending",
            }
        )

    def _record(
        self, state: StepState, route: Route, record: AttemptRecord, *, served: bool = False
    ) -> None:
        """An attempt's outcome; a `served` one may wait for the hand-over (`Guard._write`)."""
        state.attempts.append(record)
        row, values = state.attempt_row, record.ended_row()  # the rest was written by _open_attempt
        if served:
            self._write(state, lambda: self.store.update_attempt(row, values))
        else:
            self.store.update_attempt(row, values)
        state.in_flight = False

    def _announce(self, info: StepInfo, *, notify: bool = True) -> Refuse | None:
        """A substitution is never silent: always recorded, announced when the policy says so.

        The callback is told after the step is stored, and may veto it by returning or raising
        `Refuse`. Any other exception it raises is recorded as a `callback_failed` event and
        logged, and the response is still returned: it was paid for, and a notification
        failing must not lose it."""
        self.event(
            info.step_id,
            "substitution",
            requested=f"{info.requested_provider}:{info.requested_model}",
            served=f"{info.served_provider}:{info.served_model}",
            reason=info.reason,
            policy=self.policy.substitution,
        )
        message = (
            f"agentguard: step {info.step} served by {info.served_model} "
            f"({info.served_provider}) instead of {info.requested_model}: {info.reason}"
        )
        if self.policy.substitution == "announce" and self.on_substitution is not None:
            return self._notify(info) if notify else None
        if self.policy.substitution == "announce":
            log.warning(message)
        else:
            log.info(message)
        return None

    def _notify(self, info: StepInfo) -> Refuse | None:
        assert self.on_substitution is not None
        try:
            with self.store.outside_batch():  # the caller's code may take its time
                answer = self.on_substitution(info)
        except Refuse as refusal:
            return refusal
        except Exception as exc:
            self.event(
                info.step_id,
                "callback_failed",
                callback="on_substitution",
                error_type=type(exc).__name__,
                error=describe_exception(exc),
            )
            log.warning(
                "agentguard: on_substitution raised %s: %s; the response of step %s is "
                "returned all the same",
                type(exc).__name__,
                describe_exception(exc),
                info.step,
            )
            return None
        return answer if isinstance(answer, Refuse) else None

    def _refuse(self, state: StepState, info: StepInfo, refusal: Refuse) -> None:
        """A refused substitution: the step is `refused` with its response kept (it was paid
        for), the run waits as under `forbid`, and the caller gets RunQueued, not the answer."""
        now = self.clock.now()
        when = datetime.fromtimestamp(now + self.policy.queue_delay, UTC)
        why = f"{info.reason}; {refusal.reason}"
        self.store.update_step(state.step_id, status="refused", error=refusal.reason)
        self._last_status = "waiting"
        self.store.update_run(
            self.run_id,
            status="waiting",
            updated_at=now,
            next_attempt_at=when.timestamp(),
            last_error=why,
        )
        self.event(
            state.step_id,
            "substitution_refused",
            served=f"{info.served_provider}:{info.served_model}",
            reason=refusal.reason,
            next_attempt_at=when.timestamp(),
        )
        raise RunQueued(
            f"run {self.run_id} step {state.number} is queued until {when:%Y-%m-%d %H:%M:%S} "
            f"UTC: {info.served_model} answered instead of {info.requested_model} "
            f"({info.reason}) and it was refused ({refusal.reason}); the answer is kept: "
            f"`agentguard resume {self.run_id} --accept` hands it over, a plain "
            f"`agentguard resume {self.run_id}` asks {info.requested_model} again.",
            next_attempt_at=when,
            run_id=self.run_id,
            step_id=str(state.step_id),
            attempts=info.attempts,
        )

    def _cancel_step(self, state: StepState, exc: BaseException) -> None:
        """The caller cancelled or interrupted the call: the step and its attempt in flight
        become `cancelled` at once; a snapshot still running is recorded when it finishes."""
        reason = _cancel_reason(exc)
        now = self.clock.now()
        if state.in_flight:
            state.in_flight = False
            self.store.update_attempt(
                state.attempt_row,
                {"outcome": "cancelled", "message": reason, "error_type": type(exc).__name__},
            )
        self.store.update_step(
            state.step_id,
            status="cancelled",
            error=reason,
            ended_at=now,
            checkpoint=state.checkpoint,
            latency_ms=(self.clock.monotonic() - state.started_mono) * 1000,
        )
        state.ended = True
        self.event(state.step_id, "step_cancelled", reason=reason, error_type=type(exc).__name__)
        self._start_snapshot(state)  # a step cancelled before its first call keeps its tree too
        future, state.snapshot = state.snapshot, None
        if future is not None:
            future.add_done_callback(lambda done: self._late_checkpoint(state, done))
        self.tracing.cancelled(state, exc)

    def _late_checkpoint(self, state: StepState, done: Future[Snapshot]) -> None:
        """A cancelled step's snapshot, finished in the background: record it like any other."""
        if done.cancelled() or done.exception() is not None:
            return
        try:
            self._took_checkpoint(state, done.result())
        except Exception:  # the run may be closing; the ref in the shadow store still has it
            log.debug("agentguard: recording a cancelled step's snapshot failed", exc_info=True)

    def _fail_step(self, state: StepState, exc: BaseException) -> None:
        queued = isinstance(exc, RunQueued)
        status = "waiting" if queued else "failed"
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        now = self.clock.now()
        self.store.update_step(
            state.step_id,
            status=status,
            error=message,
            ended_at=now,
            checkpoint=state.checkpoint,
            latency_ms=(self.clock.monotonic() - state.started_mono) * 1000,
        )
        state.ended = True
        self._last_status = status
        fields: dict[str, Any] = {"status": status, "updated_at": now, "last_error": message}
        if isinstance(exc, RunQueued):
            fields["next_attempt_at"] = exc.next_attempt_at.timestamp()
        self.store.update_run(self.run_id, **fields)
        self.tracing.failed(state, exc)


def _cancel_reason(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted by the user (KeyboardInterrupt) during the step"
    if isinstance(exc, GeneratorExit):
        return "the caller abandoned the step"
    return f"cancelled by the caller ({type(exc).__name__}) during the step"
