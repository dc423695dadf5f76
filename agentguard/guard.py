"""The guarded step: checkpoint → routes → attempts → record.

The step is written once, as a generator that yields what it needs done (`Call`, `Sleep`,
`Join`) and receives the results; `drive` runs it with blocking calls and `adrive` with
awaits, so the sync and async clients share every decision.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import socket
import uuid
from collections.abc import Awaitable, Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from agentguard.classify import Action, Decision, Failure, decide, describe
from agentguard.clock import Clock, SystemClock
from agentguard.conversation import Head, delta, request_blob
from agentguard.errors import ProjectError, RetriesExhausted, RunQueued
from agentguard.home import project_key
from agentguard.policy import Policy, resolve_policy
from agentguard.records import AttemptRecord, StepInfo, attach
from agentguard.routes import Route
from agentguard.snapshots import DEFAULT_MAX_FILE_BYTES, ShadowRepo, Snapshot
from agentguard.store import Store, dumps

log = logging.getLogger("agentguard")
T = TypeVar("T")


@dataclass
class Served:
    """One successful attempt, as the provider adapter reports it."""

    value: Any  # what the caller receives (Message, stream, MessageStream …)
    request_id: str | None
    model: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    stop_reason: str | None = None
    response_json: str | None = None


@dataclass(frozen=True)
class StepRequest:
    """One model call as the caller made it."""

    route: Route
    messages: Sequence[Any]
    params: dict[str, Any]
    stream: bool = False


@dataclass(frozen=True)
class Call:
    route: Route
    attempt: int


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Join:
    future: Future[Any]


Action_ = Call | Sleep | Join
StepPlan = Generator[Action_, Any, Any]


@dataclass
class _StepState:
    number: int
    step_id: int
    request: StepRequest
    started_mono: float
    attempts: list[AttemptRecord] = field(default_factory=list)
    snapshot: Future[Snapshot] | None = None
    checkpoint: str | None = None


class Guard:
    """One run: its store rows, its conversation head and its working-tree checkpoints."""

    def __init__(
        self,
        project: str | os.PathLike[str] = ".",
        *,
        run: str | None = None,
        policy: str | Policy | dict[str, Any] | None = None,
        home: str | os.PathLike[str] | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        snapshots: bool = True,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        store: Store | None = None,
    ) -> None:
        self.project = _project_folder(project)
        self.policy = resolve_policy(policy)
        self.clock: Clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.store = store or Store.open(home)
        self.shadow = (
            ShadowRepo(
                self.project,
                self.store.home / "shadow" / project_key(self.project),
                max_file_bytes=max_file_bytes,
            )
            if snapshots
            else None
        )
        self.run_id = uuid.uuid4().hex[:12]
        self.name = run or self.project.name
        self._head = Head()
        self._steps = 0
        self._last_status = "running"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentguard-snapshot")
        now = self.clock.now()
        self.store.insert_run(
            {
                "id": self.run_id,
                "name": self.name,
                "project": str(self.project),
                "status": "running",
                "policy": self.policy.model_dump_json(),
                "created_at": now,
                "updated_at": now,
                "pid": os.getpid(),
                "hostname": socket.gethostname(),
            }
        )
        self._closed = False
        atexit.register(self._at_exit)

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self, status: str | None = None) -> None:
        """End the run: `completed` unless its last step failed (or `status` says otherwise)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._at_exit)
        self._executor.shutdown(wait=True)
        final = status or ("completed" if self._last_status == "running" else self._last_status)
        now = self.clock.now()
        self.store.update_run(self.run_id, status=final, updated_at=now, ended_at=now)

    def _at_exit(self) -> None:
        try:
            self.close()
        except Exception:  # the interpreter is going away; never mask its own exit
            log.debug("agentguard: closing run %s at exit failed", self.run_id, exc_info=True)

    # -- the step ----------------------------------------------------------------------------

    def step(self, request: StepRequest) -> StepPlan:
        """The guarded step as a plan of actions; see `drive` / `adrive`."""
        state = self._checkpoint(request)
        try:
            served, route = yield from self._attempts(state, [request.route])
        except BaseException as exc:
            yield from self._join_snapshot(state)
            self._fail_step(state, exc)
            raise
        yield from self._join_snapshot(state)
        return self._finish_step(state, served, route)

    def _checkpoint(self, request: StepRequest) -> _StepState:
        """Store the conversation's new messages and start the working-tree snapshot."""
        started = self.clock.now()
        started_mono = self.clock.monotonic()
        self._steps += 1
        number = self._steps
        conv = delta(self._head, request.messages)
        blob = request_blob(request.params)
        step_id = self.store.begin_step(
            {
                "run_id": self.run_id,
                "number": number,
                "parent_id": self._head.step_id,
                "base_len": conv.base_len,
                "total_len": len(conv.objects),
                "request": blob[0],
                "stream": int(request.stream),
                "status": "pending",
                "requested_provider": request.route.provider,
                "requested_model": request.route.model,
                "started_at": started,
            },
            conv.new,
            blob,
        )
        self._head = Head(step_id=step_id, objects=conv.objects, shas=conv.shas)
        state = _StepState(number, step_id, request, started_mono)
        if self.shadow is not None:
            ref = f"refs/agentguard/runs/{self.run_id}/steps/{number}"
            state.snapshot = self._executor.submit(
                self.shadow.snapshot, f"agentguard run {self.run_id} step {number}", ref=ref
            )
        return state

    def _attempts(
        self, state: _StepState, routes: Sequence[Route]
    ) -> Generator[Action_, Any, tuple[Served, Route]]:
        """Try each route in turn, each with its own bounded, jittered retries."""
        policy = self.policy
        last: tuple[Failure, Decision, BaseException] | None = None
        slept = 0.0
        for route in routes:
            tries = 0
            while True:
                tries += 1
                number = len(state.attempts) + 1
                began_at = self.clock.now()
                began = self.clock.monotonic()
                ok, result = yield Call(route, number)
                latency = self.clock.monotonic() - began
                if ok:
                    self._record_attempt(state, route, number, began_at, slept, latency, result)
                    return result, route
                failure = describe(result, now=self.clock.now())
                if failure is None:  # not a provider error: a bug or an interrupt; surface as is
                    self._record_foreign(state, route, number, began_at, slept, latency, result)
                    raise result
                time_left = policy.step_deadline - (self.clock.monotonic() - state.started_mono)
                decision = decide(failure, policy, attempt=tries, time_left=time_left, rng=self.rng)
                self._record_attempt(
                    state, route, number, began_at, slept, latency, failure, decision
                )
                last = (failure, decision, result)
                if decision.action is Action.RETRY:
                    slept = decision.delay
                    yield Sleep(decision.delay)
                    continue
                slept = 0.0
                if decision.action is Action.FATAL:
                    self._reject(state, failure, result)
                self.event(
                    state.step_id,
                    f"route_{decision.action.value}",
                    route=route.key,
                    reason=decision.reason,
                )
                break
        assert last is not None
        self._give_up(state, *last)
        raise AssertionError("unreachable")  # _give_up always raises

    def _join_snapshot(self, state: _StepState) -> Generator[Action_, Any, None]:
        if state.snapshot is None or state.checkpoint is not None:
            return
        future, state.snapshot = state.snapshot, None
        try:
            snap: Snapshot = yield Join(future)
        except Exception as exc:  # a failed snapshot must not fail the model call, but is shown
            log.warning("agentguard: working-tree snapshot failed: %s", exc)
            self.event(state.step_id, "snapshot_failed", error=str(exc))
            return
        state.checkpoint = snap.commit
        self.store.insert_snapshot(
            {
                "commit_sha": snap.commit,
                "project": str(self.project),
                "run_id": self.run_id,
                "step_id": state.step_id,
                "kind": "checkpoint",
                "created_at": self.clock.now(),
                "tree": snap.tree,
                "changed": snap.changed,
                "skipped": dumps([s.__dict__ for s in snap.skipped]),
                "duration_ms": snap.duration_ms,
            }
        )
        if snap.skipped:
            self.event(
                state.step_id,
                "snapshot_skipped",
                paths=[{"path": s.path, "reason": s.reason, "size": s.size} for s in snap.skipped],
            )

    # -- recording ---------------------------------------------------------------------------

    def event(self, step_id: int | None, kind: str, **detail: Any) -> None:
        self.store.insert_event(self.run_id, kind, detail, at=self.clock.now(), step_id=step_id)

    def _record_attempt(
        self,
        state: _StepState,
        route: Route,
        number: int,
        began_at: float,
        slept: float,
        latency: float,
        result: Served | Failure,
        decision: Decision | None = None,
    ) -> None:
        if isinstance(result, Served):
            record = AttemptRecord(
                number=number,
                provider=route.provider,
                model=route.model,
                started_at=began_at,
                slept_before=slept,
                latency=latency,
                outcome="ok",
                status_code=200,
                request_id=result.request_id,
                input_tokens=result.input_tokens,
                output_tokens=result.output_tokens,
            )
        else:
            assert decision is not None
            record = AttemptRecord(
                number=number,
                provider=route.provider,
                model=route.model,
                started_at=began_at,
                slept_before=slept,
                latency=latency,
                outcome=decision.action.value,
                status_code=result.status_code,
                error_type=result.error_type,
                error_code=result.error_code,
                request_id=result.request_id,
                message=result.message,
            )
            log.warning(
                "agentguard: step %s attempt %s on %s failed: %s (request-id %s, %.0f ms) → %s",
                state.number,
                number,
                route.key,
                result.label,
                result.request_id,
                latency * 1000,
                decision.reason,
            )
        self._store_attempt(state, route, record)

    def _record_foreign(
        self,
        state: _StepState,
        route: Route,
        number: int,
        began_at: float,
        slept: float,
        latency: float,
        exc: BaseException,
    ) -> None:
        record = AttemptRecord(
            number=number,
            provider=route.provider,
            model=route.model,
            started_at=began_at,
            slept_before=slept,
            latency=latency,
            outcome="error",
            error_type=type(exc).__name__,
            message=str(exc)[:500],
        )
        self._store_attempt(state, route, record)

    def _store_attempt(self, state: _StepState, route: Route, record: AttemptRecord) -> None:
        state.attempts.append(record)
        self.store.insert_attempt(
            {
                "run_id": self.run_id,
                "step_id": state.step_id,
                "number": record.number,
                "provider": record.provider,
                "model": record.model,
                "base_url": route.base_url,
                "started_at": record.started_at,
                "slept_before_ms": record.slept_before * 1000,
                "latency_ms": record.latency * 1000,
                "status_code": record.status_code,
                "error_type": record.error_type,
                "error_code": record.error_code,
                "request_id": record.request_id,
                "outcome": record.outcome,
                "message": record.message,
                "input_tokens": record.input_tokens,
                "output_tokens": record.output_tokens,
            }
        )

    def _finish_step(self, state: _StepState, served: Served, route: Route) -> Any:
        requested = state.request.route
        substituted = route.key != requested.key
        reason = None
        info = StepInfo(
            run_id=self.run_id,
            step_id=state.step_id,
            step=state.number,
            requested_provider=requested.provider,
            requested_model=requested.model,
            served_provider=route.provider,
            served_model=served.model or route.model,
            substituted=substituted,
            reason=reason,
            attempts=tuple(state.attempts),
            checkpoint=state.checkpoint,
        )
        now = self.clock.now()
        self.store.update_step(
            state.step_id,
            status="ok",
            served_provider=info.served_provider,
            served_model=info.served_model,
            substituted=int(substituted),
            reason=reason,
            checkpoint=state.checkpoint,
            ended_at=now,
            latency_ms=(self.clock.monotonic() - state.started_mono) * 1000,
            input_tokens=served.input_tokens,
            output_tokens=served.output_tokens,
            stop_reason=served.stop_reason,
            response=served.response_json,
        )
        self._last_status = "running"
        self.store.update_run(
            self.run_id,
            status="running",
            updated_at=now,
            primary_provider=requested.provider,
            primary_model=requested.model,
        )
        attach(served.value, info)
        return served.value

    def _fail_step(self, state: _StepState, exc: BaseException) -> None:
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
        if isinstance(exc, GeneratorExit | KeyboardInterrupt):
            return
        self._last_status = status
        fields: dict[str, Any] = {"status": status, "updated_at": now, "last_error": message}
        if queued:
            fields["next_attempt_at"] = exc.next_attempt_at.timestamp()
        self.store.update_run(self.run_id, **fields)

    def _reject(self, state: _StepState, failure: Failure, exc: BaseException) -> None:
        """400/413: surface the SDK's own error at once, never hidden by a fallback."""
        self.event(
            state.step_id,
            "request_rejected",
            status=failure.status_code,
            error_type=failure.error_type,
            request_id=failure.request_id,
        )
        exc.add_note(
            f"agentguard: not retried and not sent to a fallback — the request itself was "
            f"rejected ({failure.label}, request-id {failure.request_id}, run {self.run_id} "
            f"step {state.number})."
        )
        raise exc

    def _give_up(
        self, state: _StepState, failure: Failure, decision: Decision, exc: BaseException
    ) -> None:
        tried = len(state.attempts)
        where = f"run {self.run_id} step {state.number}"
        if decision.action in (Action.ROUTE_UNUSABLE, Action.SKIP_ROUTE):
            what = (
                "check the API key, permissions or billing for this route"
                if decision.action is Action.ROUTE_UNUSABLE
                else "check the model name for this route"
            )
            exc.add_note(
                f"agentguard: {decision.reason} — the route cannot serve; {what} "
                f"(request-id {failure.request_id}, {where})."
            )
            raise exc
        if self.policy.substitution == "forbid":
            when = datetime.fromtimestamp(self.clock.now() + self.policy.queue_delay, UTC)
            self.event(
                state.step_id, "queued", next_attempt_at=when.timestamp(), reason=decision.reason
            )
            raise RunQueued(
                f"{where} is queued until {when:%Y-%m-%d %H:%M:%S} UTC: {decision.reason} after "
                f"{tried} attempt(s) (last request-id {failure.request_id}) and policy "
                f"{self.policy.name!r} forbids substitution; resume it with "
                f"`agentguard resume {self.run_id}`.",
                next_attempt_at=when,
                run_id=self.run_id,
                step_id=str(state.step_id),
                attempts=state.attempts,
            ) from exc
        raise RetriesExhausted(
            f"{where} failed after {tried} attempt(s): {decision.reason} "
            f"(last request-id {failure.request_id}); no other route could serve it.",
            run_id=self.run_id,
            step_id=str(state.step_id),
            attempts=state.attempts,
        ) from exc


# -- drivers -----------------------------------------------------------------------------------


def drive(plan: StepPlan, call: Callable[[Call], Any], clock: Clock) -> Any:
    """Run a step plan with blocking I/O."""
    try:
        action = next(plan)
        while True:
            if isinstance(action, Call):
                try:
                    reply: Any = (True, call(action))
                except Exception as exc:
                    reply = (False, exc)
                action = plan.send(reply)
            elif isinstance(action, Sleep):
                clock.sleep(action.seconds)
                action = plan.send(None)
            else:
                try:
                    value = action.future.result()
                except Exception as exc:
                    action = plan.throw(exc)
                else:
                    action = plan.send(value)
    except StopIteration as stop:
        return stop.value


async def adrive(plan: StepPlan, call: Callable[[Call], Awaitable[Any]], clock: Clock) -> Any:
    """Run a step plan on an event loop; a snapshot still runs in its thread."""
    import asyncio

    try:
        action = next(plan)
        while True:
            if isinstance(action, Call):
                try:
                    reply: Any = (True, await call(action))
                except Exception as exc:
                    reply = (False, exc)
                action = plan.send(reply)
            elif isinstance(action, Sleep):
                await clock.asleep(action.seconds)
                action = plan.send(None)
            else:
                try:
                    value = await asyncio.wrap_future(action.future)
                except Exception as exc:
                    action = plan.throw(exc)
                else:
                    action = plan.send(value)
    except StopIteration as stop:
        return stop.value


def _project_folder(project: str | os.PathLike[str]) -> Path:
    path = Path(project).expanduser()
    if not path.exists():
        raise ProjectError(
            f"Project folder {path} does not exist; pass the folder your agent edits (project=...)."
        )
    if not path.is_dir():
        raise ProjectError(
            f"Project {path} is a file, not a folder; pass the folder your agent edits "
            "(project=...)."
        )
    return path.resolve()


__all__ = ["Call", "Guard", "Join", "Served", "Sleep", "StepRequest", "adrive", "drive"]
