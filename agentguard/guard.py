"""The guarded step: checkpoint → routes → attempts → record.

Reading top to bottom: `step` checkpoints the conversation and starts the tree snapshot, then
`_serve` walks the routes and their attempts (`retrying`: breaker-aware, budgeted, restoring
the checkpoint before a route change), and `_finish` records who served and hands back the
caller's own SDK object, annotated with the truth.

The rest of a run lives beside it: the run row's start and end (`run_lifecycle`), the routes
and attempts (`retrying`), the working tree around a step (`tree_keeping`), and every other
row a step writes (`step_recording`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import random
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agentguard import process_end
from agentguard.breaker import Breaker, BreakerSettings
from agentguard.budget import BudgetSettings, RetryBudget
from agentguard.clock import Clock, SystemClock
from agentguard.conversation import Head, delta, request_blob
from agentguard.errors import ProjectError, Refuse
from agentguard.home import project_key
from agentguard.model_ids import same_model
from agentguard.otel import StepTracer
from agentguard.plan import StepPlan
from agentguard.policy import Policy, resolve_policy
from agentguard.records import StepInfo, attach
from agentguard.retrying import Retrying
from agentguard.routes import Route
from agentguard.run_lifecycle import RunLifecycle
from agentguard.snapshots import DEFAULT_MAX_FILE_BYTES, ShadowRepo
from agentguard.step_recording import StepRecording
from agentguard.step_types import RouteFailure, Served, StepRequest, StepState, summarize
from agentguard.store import Store, open_store
from agentguard.tree_keeping import TreeKeeping
from agentguard.user_repo import StateReader

log = logging.getLogger("agentguard")


class Guard(RunLifecycle, Retrying, TreeKeeping, StepRecording):
    """One run: its store rows, its conversation head, its checkpoints and its routes."""

    def __init__(
        self,
        project: str | os.PathLike[str] = ".",
        *,
        run: str | None = None,
        policy: str | Policy | dict[str, Any] | None = None,
        chain: Sequence[Route] = (),
        on_substitution: Callable[[StepInfo], Refuse | None] | None = None,
        tracer_provider: Any = None,
        home: str | os.PathLike[str] | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        snapshots: bool = True,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        secret_files: Sequence[str] | None = None,
        breaker: BreakerSettings | None = None,
        budget: BudgetSettings | None = None,
        store: Store | None = None,
        resume: str | None = None,
        snapshot_remote: str | None = None,
        store_url: str | None = None,  # a postgresql:// URL or "sqlite"; None: $AGENTGUARD_STORE
    ) -> None:
        self.project = project_folder(project)
        self.store = store or open_store(home, url=store_url)
        self._opened_store = store is None  # closed with the run if it holds server connections
        try:
            previous = self._previous_run(resume) if resume else None
            if policy is None and previous is not None and previous["policy"]:
                policy = json.loads(previous["policy"])
            self.policy = resolve_policy(policy)
            if store is None and hasattr(self.store, "reconnect_within"):
                # a PostgreSQL store this guard opened waits for a restarting server as long as
                # one of its steps may take, not longer
                self.store.reconnect_within = self.policy.step_deadline
            self.chain = list(chain)
            self.on_substitution = on_substitution
            self.clock: Clock = clock or SystemClock()
            self.rng = rng or random.Random()
            self.breaker = Breaker(self.store, self.clock, breaker)
            self.budget = RetryBudget(self.store, self.clock, budget)
            self.shadow = (
                ShadowRepo(
                    self.project,
                    self.store.home / "shadow" / project_key(self.project),
                    max_file_bytes=max_file_bytes,
                    secret_files=secret_files,
                )
                if snapshots
                else None
            )
            self._git_reader = StateReader(self.project)
            self._head = Head()
            self._last_status = "running"
            self._held: set[int] = set()  # steps waiting in hold mode (the run shows `waiting`)
            self._starting: list[StepState] = []
            self._when_sent: list[Callable[[], Any]] = []  # see TreeKeeping._after_stretch
            self._deferred: dict[int, StepState] = {}  # served, their snapshot still running
            self._unwritten: dict[int, StepState] = {}  # served, their rows wait (defer_record)
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="agentguard-git", initializer=background_thread
            )
            now = self.clock.now()
            alive = {
                "status": "running",
                "updated_at": now,
                "pid": os.getpid(),
                "hostname": socket.gethostname(),
            }
            if previous is not None:
                self.run_id, self.name = previous["id"], previous["name"]
                self._head = self._head_of(previous["id"])
                self.store.update_run(
                    self.run_id,
                    **alive,
                    project=str(self.project),
                    policy=self.policy.model_dump_json(),
                    ended_at=None,
                    next_attempt_at=None,
                )
                self.event(None, "resumed", previous_status=previous["status"], pid=os.getpid())
            else:
                self.run_id = uuid.uuid4().hex[:12]
                self.name = run or self.project.name
                self.store.insert_run(
                    {
                        "id": self.run_id,
                        "name": self.name,
                        "project": str(self.project),
                        "policy": self.policy.model_dump_json(),
                        "created_at": now,
                        **alive,
                    }
                )
            self._pusher = self._start_pushing(snapshot_remote)
            self._closed = False
            self.tracing = StepTracer(self.run_id, self.clock, tracer_provider)  # OpenTelemetry
        except BaseException:
            # a run that could not start (busy elsewhere, a bad policy, ...) leaves no open
            # store behind: a PostgreSQL pool would otherwise hold its connections until the
            # collector found it
            if self._opened_store:
                self.store.close()
            raise
        process_end.install()
        atexit.register(self._at_exit)

    def routes_for(self, requested: Route, chain: Sequence[Route] | None = None) -> list[Route]:
        """The routes a step may use, primary first; `forbid` never changes route. `chain`:
        this step's fallbacks instead of the run's (a proxy request may use only some)."""
        if self.policy.substitution == "forbid":
            return [requested]
        chain = self.chain if chain is None else list(chain)
        keys = [route.key for route in chain]
        rest = chain[keys.index(requested.key) + 1 :] if requested.key in keys else chain
        return [requested, *(route for route in rest if route.key != requested.key)]

    # -- the step --------------------------------------------------------------------------------

    def step(
        self,
        request: StepRequest,
        *,
        hold: float = 0.0,
        head: Head | None = None,
        chain: Sequence[Route] | None = None,
        defer_checkpoint: bool = False,
        defer_record: bool = False,
    ) -> StepPlan:
        """The guarded step as a plan of actions; run it with `plan.drive` / `plan.adrive`.

        `head`: the conversation this step continues, updated in place (default: the run's
        own; a proxy keeps one per conversation it interleaves). `chain`: this step's
        fallbacks (default: the run's). `defer_checkpoint`: hand a served answer over before
        the tree snapshot is complete — for a stream passed on live, whose caller must then
        run `join_checkpoint(step_id)` before letting its client act on the answer.
        `defer_record`: hand a served answer over before the rows saying it was served (the
        attempt's outcome, the step's `ok`, the breaker's success) are written — for a stream
        whose first content should not wait for them; the caller runs
        `record_handed_over(step_id)` once that content is on its way (`complete_stream`,
        `join_checkpoint` and `close` write them first if it did not). A substitution is
        never held back: it is written, and announced, before the hand-over.

        `hold` (seconds from the step's start; 0: off) is hold mode: when the step would give
        up because its routes are down (their breakers open) — or, under `forbid`, because its
        route's retries ran out on an overload, server, network or rate-limit error — it waits
        instead (`Hold` actions) for the breaker's next probe, or one breaker cooldown, and tries
        again, until `hold` seconds after it started. While it waits the run is `waiting` with
        `next_attempt_at` and a `step_held` event says why; every try is one attempt of the
        same step, and a down route gets one probe per cooldown, shared with every agent."""
        return self._batched(self._plan(request, hold, head, chain, defer_checkpoint, defer_record))

    def _batched(self, plan: StepPlan) -> StepPlan:
        """`plan` run stretch by stretch, each stretch's writes in one store transaction
        (`Store.batch`): what a step writes before an action — a call, a wait, a join — is
        committed, in one commit, before the action is performed."""
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                with self.store.batch():
                    try:
                        action = plan.send(reply) if error is None else plan.throw(error)
                    except StopIteration as stop:
                        return stop.value
            finally:
                self._after_stretch()
            error = None
            try:
                reply = yield action
            except GeneratorExit:
                with self.store.batch():
                    plan.close()
                raise
            except BaseException as exc:
                reply, error = None, exc

    def _plan(
        self,
        request: StepRequest,
        hold: float,
        head: Head | None,
        chain: Sequence[Route] | None,
        defer_checkpoint: bool,
        defer_record: bool,
    ) -> StepPlan:
        state = self._checkpoint(request, head)
        if defer_record:
            state.unwritten = []
        try:
            served, route, failed = yield from self._serve(
                state, self.routes_for(request.route, chain), hold
            )
        except Exception as exc:
            self._held.discard(state.step_id)
            self._write_held_back(state)  # a refused substitution: what it served, then why not
            self._fail_step(state, exc)
            yield from self._join_snapshot(state)
            raise
        except BaseException as exc:  # cancelled or interrupted: record it, never yield again
            self._write_held_back(state)
            self._release_hold(state)  # first: a reader who sees the step cancelled sees the run
            self._cancel_step(state, exc)
            raise
        self._held.discard(state.step_id)
        if defer_checkpoint and state.snapshot is not None:
            self._deferred[state.step_id] = state  # joined by join_checkpoint, or at close
            return self._finish(state, served, route, failed)
        try:
            yield from self._join_snapshot(state)
        except BaseException:  # cancelled after the answer came: keep the paid-for response
            self._finish(state, served, route, failed, hand_over=False)
            raise
        return self._finish(state, served, route, failed)

    def record_handed_over(self, step_id: int) -> None:
        """Write the rows a `defer_record` step held back until its answer was handed over."""
        state = self._unwritten.get(step_id)
        if state is not None:
            self._write_held_back(state)

    def _write_held_back(self, state: StepState) -> None:
        writes, state.unwritten = state.unwritten, None
        self._unwritten.pop(state.step_id, None)
        with self.store.batch():
            for write in writes or ():
                write()

    def _write(self, state: StepState, write: Callable[[], Any]) -> None:
        """A served step's own rows: now, or once its answer is handed over (`defer_record`)."""
        if state.unwritten is None:
            write()
        else:
            state.unwritten.append(write)
            self._unwritten[state.step_id] = state  # until record_handed_over, or close

    def checkpoint_pending(self, step_id: int) -> bool:
        """A step handed over before its tree snapshot was done (see `join_checkpoint`)."""
        return step_id in self._deferred

    def join_checkpoint(self, step_id: int) -> StepPlan:
        """Wait for a deferred step's tree snapshot and record it (a plan: `Join` only)."""
        state = self._deferred.get(step_id)
        if state is None:
            return
        yield from self._batched(self._join_deferred(state))

    def _join_deferred(self, state: StepState) -> StepPlan:
        try:
            yield from self._join_snapshot(state)
        finally:
            if state.snapshot is None:
                self._deferred.pop(state.step_id, None)

    def _checkpoint(self, request: StepRequest, head: Head | None = None) -> StepState:
        """Store the conversation's new messages and start the working-tree snapshot; `head`
        (the conversation so far; the run's own by default) becomes this step's."""
        head = self._head if head is None else head
        started = self.clock.now()
        started_mono = self.clock.monotonic()
        conv = delta(head, request.messages)
        blob = request_blob(request.params)
        step_id, number = self.store.begin_step(
            {
                "run_id": self.run_id,
                "parent_id": head.step_id,
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
        head.step_id, head.objects, head.shas = step_id, conv.objects, conv.shas
        state = StepState(number, step_id, request, started_mono)
        if self.shadow is not None:
            # started once the step's first attempt is committed, just before it is sent
            # (`_snapshot_before_next_action`): the snapshot never competes with those writes
            ref = f"refs/agentguard/runs/{self.run_id}/steps/{number}"
            state.snapshot_job = (f"agentguard run {self.run_id} step {number}", ref)
        return state

    # -- the step's result -----------------------------------------------------------------------

    def _finish(
        self,
        state: StepState,
        served: Served,
        route: Route,
        failed: list[RouteFailure],
        *,
        hand_over: bool = True,
    ) -> Any:
        """Record who served the step; with `hand_over`, announce it and return the caller's
        object (a call cancelled after its answer came still keeps the response for resume)."""
        requested = state.request.route
        served_model = served.model or route.model
        swapped = not same_model(route.model, served_model)  # the provider's own substitution
        substituted = route.key != requested.key or swapped
        reason = substitution_reason(failed, route, requested, served_model, swapped)
        info = StepInfo(
            run_id=self.run_id,
            step_id=state.step_id,
            step=state.number,
            requested_provider=requested.provider,
            requested_model=requested.model,
            served_provider=route.provider,
            served_model=served_model,
            substituted=substituted,
            reason=reason,
            attempts=tuple(state.attempts),
            checkpoint=state.checkpoint,
        )
        now = self.clock.now()
        step_row = dict(
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
        run_row = dict(
            status="running",
            updated_at=now,
            primary_provider=requested.provider,
            primary_model=requested.model,
            next_attempt_at=None,
        )
        if substituted:
            self._write_held_back(state)  # never held back: written and announced before
        step_id, run_id, notes = state.step_id, self.run_id, served.notes
        self._write(state, lambda: self.store.finish_step(step_id, step_row, run_id, run_row))
        if notes:
            self._write(
                state,
                lambda: self.event(step_id, "translation_dropped", route=route.key, dropped=notes),
            )
        state.ended = True
        self._last_status = "running"
        attach(served.value, info)
        refusal = self._announce(info, notify=hand_over) if substituted else None
        if swapped and self.policy.substitution == "forbid":
            refusal = Refuse(f"policy {self.policy.name!r} forbids substitution")
        refused = refusal if hand_over else None
        self.tracing.served(state, info, served, refused=refused, handed_over=hand_over)
        if refused is not None:
            self._refuse(state, info, refused)
        return served.value


def substitution_reason(
    failed: Sequence[RouteFailure],
    route: Route,
    requested: Route,
    served_model: str,
    swapped: bool,
) -> str | None:
    """Why another model served, saying who substituted: agentguard (the route changed after
    the requested one failed) or the provider (it answered with another model)."""
    parts = []
    if route.key != requested.key:
        parts.append(summarize(failed))
    if swapped:
        parts.append(
            f"served by {served_model} instead of {route.model} — the provider answered with "
            "another model"
        )
    return "; ".join(parts) or None


# Signals a caller handles (Ctrl-C above all). The kernel gives a process-directed signal to any
# thread that does not block it; if that is the snapshot thread, the caller's thread stays
# blocked in its HTTP read and Ctrl-C does nothing until the provider answers.
_CALLER_SIGNALS = {
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM")
    if hasattr(signal, name)
}


SNAPSHOT_NICENESS = 10  # added to the process's own; 19 is the lowest priority


def leave_signals_to_caller() -> None:
    """Run at the start of agentguard's own threads: they never take the caller's signals."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, _CALLER_SIGNALS)


def background_thread() -> None:
    """Run at the start of the snapshot thread: no caller's signals, and a lower CPU priority
    (Linux gives each thread its own; the git processes it starts inherit it). A snapshot
    runs beside the model call it checkpoints; on a busy machine the agent, its provider's
    answer and a proxy's event loop go first."""
    leave_signals_to_caller()
    if hasattr(os, "setpriority") and hasattr(threading, "get_native_id"):
        with contextlib.suppress(OSError):
            thread = threading.get_native_id()
            niceness = os.getpriority(os.PRIO_PROCESS, thread) + SNAPSHOT_NICENESS
            os.setpriority(os.PRIO_PROCESS, thread, min(niceness, 19))


def project_folder(project: str | os.PathLike[str]) -> Path:
    """The project as an absolute folder, or one sentence saying what is wrong with it."""
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
