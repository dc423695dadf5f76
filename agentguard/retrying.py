"""A step's routes and their attempts: mixed into `Guard`.

`_serve` walks the routes the policy allows (breaker-aware; the tree verified against the
checkpoint before a route change; held while every route is down, in hold mode), `_try_route`
runs one route's attempts — bounded, jittered, budgeted, a probe's one try — and `_back_off`
waits between them while listening to the other agents on the machine (an answer to a later
request means the route is back; a newer failure means one more request would only add
load). When they run out, `_give_up` ends the step (`_reject` at once for a request the
provider refused as such).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from agentguard.breaker import Admission, Breaker, RouteHealth
from agentguard.budget import RetryBudget
from agentguard.classify import RETRYABLE, Action, Decision, Failure, Kind, decide, describe
from agentguard.clock import Clock
from agentguard.errors import RetriesExhausted, RunQueued
from agentguard.plan import ON_LOOP, Call, Sleep
from agentguard.plan import Action as PlanAction
from agentguard.policy import Policy
from agentguard.records import AttemptRecord, attempt_timing
from agentguard.routes import Route
from agentguard.step_types import RouteFailure, Served, StepState, summarize
from agentguard.store import Store

log = logging.getLogger("agentguard")
_PROBE_FAILED = "probe failed"
_BREAKER_OPENED = "breaker opened"
# How long the step holding a due streak's deciding retry (`Breaker.claim_decider`) has before
# another waiting step may take it: its request's answer, 529 or not, normally comes sooner.
_DECIDER_LEASE_S = 10.0


@dataclass(frozen=True)
class Hold(Sleep):
    """A Sleep of a held step: its retries are spent and it waits for a route to come back
    (see `Guard.step`'s `hold`). Driven like any Sleep; a driver may watch for it (the proxy
    starts keeping a streaming client alive)."""


class Retrying:
    """The routes and attempts of a step (see the module); its rows through StepRecording,
    the tree through TreeKeeping, the step's result through `Guard._finish`."""

    store: Store
    clock: Clock
    run_id: str
    policy: Policy
    breaker: Breaker
    budget: RetryBudget
    rng: random.Random
    _held: set[int]  # steps waiting in hold mode (the run shows `waiting`)
    _when_sent: list[Callable[[], Any]]  # TreeKeeping._after_stretch runs them
    event: Callable[..., None]  # StepRecording.event
    _record: Callable[..., None]  # StepRecording._record
    _open_attempt: Callable[[StepState, Route, int, float], int]  # StepRecording._open_attempt
    _write: Callable[[StepState, Callable[[], Any]], None]  # Guard._write
    _snapshot_before_next_action: Callable[[StepState], None]  # TreeKeeping
    _join_snapshot: Callable[[StepState], Generator[PlanAction, Any, None]]  # TreeKeeping
    _verify_tree: Callable[[StepState, Route], Generator[PlanAction, Any, None]]  # TreeKeeping

    def _serve(
        self, state: StepState, routes: Sequence[Route], hold: float = 0.0
    ) -> Generator[PlanAction, Any, tuple[Served, Route, list[RouteFailure]]]:
        """Walk the routes in order until one serves; while routes only wait for their breaker's
        next probe and the deadline allows, wait for it and try again (in hold mode, past the
        step deadline up to the hold's)."""
        failed: list[RouteFailure] = []
        quota_spent: set[tuple[str, str | None, str | None]] = set()
        first_tried: Route | None = None
        candidates = list(routes)
        deadline_hit = False
        held = False
        while True:
            cooling: list[Route] = []  # held back only by their breaker
            transient: list[RouteFailure] = []  # retries spent on a passing error (hold mode)
            if held:
                quota_spent.clear()  # a new round after a wait: each route may be tried again
            for route in candidates:
                if route.account in quota_spent:
                    self._skip(state, failed, route, "shares the rate-limited quota")
                    continue
                admission = self.breaker.admit(route.key)
                if admission is Admission.OPEN:
                    self._skip(state, failed, route, "breaker open: overloaded, cooling down")
                    cooling.append(route)
                    continue
                if first_tried is None:
                    first_tried = route
                elif route.key != first_tried.key:
                    yield from self._verify_tree(state, route)
                served, failure = yield from self._try_route(state, route, admission)
                if served is not None:
                    return served, route, failed
                assert failure is not None
                failed.append(failure)
                if failure.failure is not None and failure.failure.kind is Kind.RATE_LIMITED:
                    quota_spent.add(route.account)
                if failure.cooling or (hold and self.breaker.next_probe_at(route.key)):
                    cooling.append(route)  # held: a route down is waited for, whatever ended it
                elif hold and self._waits_out(failure):
                    transient.append(failure)
            wait = self._until_next_probe(cooling)
            if not held and wait is not None and wait <= state.time_left(self.policy, self.clock):
                self._snapshot_before_next_action(state)  # the tree as the step began
                yield Sleep(wait)
                state.slept = wait
                candidates = cooling
                continue
            if hold and (transient or wait is not None):
                wait = self._hold_wait(wait, transient)
                if wait <= hold - (self.clock.monotonic() - state.started_mono):
                    if not held:
                        held = True
                        self._begin_hold(state, failed, hold)
                    self._holding(state, wait)
                    self._snapshot_before_next_action(state)
                    yield Hold(wait)
                    state.slept = wait
                    candidates = [*cooling, *(f.route for f in transient)]
                    continue
            deadline_hit = wait is not None
            break
        self._give_up(state, failed, deadline_hit, held=held and deadline_hit)
        raise AssertionError("unreachable")  # _give_up always raises

    def _try_route(
        self, state: StepState, route: Route, admission: Admission
    ) -> Generator[PlanAction, Any, tuple[Served | None, RouteFailure | None]]:
        """One route's attempts: bounded, jittered, budgeted; a probe gets one try."""
        tries = 0
        last: tuple[Failure, BaseException] | None = None
        while True:
            tries += 1
            on_loop = ON_LOOP.get()
            if not on_loop:
                self.budget.note(route.key, retry=tries > 1)
            if self._opened_meanwhile(route, admission, tries):
                return None, self._leave_opened(state, route, last)
            number = len(state.attempts) + 1
            began_at, began = self.clock.now(), self.clock.monotonic()
            state.attempt_row = self._open_attempt(state, route, number, began_at)
            if on_loop:  # the budget's row once the request is on its way (`_when_sent`)
                self._when_sent.append(partial(self.budget.note, route.key, retry=tries > 1))
            state.in_flight = True
            self._snapshot_before_next_action(state)
            ok, result = yield Call(route, number)
            latency = self.clock.monotonic() - began
            when = attempt_timing(number, route, began_at, state.slept, latency)
            if ok:
                # the attempt's row first: its write begins the transaction the breaker's
                # read then runs in (a read on its own would begin and end one of its own)
                self._record(state, route, AttemptRecord.served(when, result), served=True)
                success = partial(self.breaker.record_success, route.key, sent_at=began_at)
                self._write(state, success)
                state.slept = 0.0
                return result, None
            failure = describe(result, now=self.clock.now())
            last = (failure, result) if failure is not None else None
            if failure is None:  # not a provider error: a bug or an interrupt; surface it as is
                self._record(
                    state,
                    route,
                    AttemptRecord.foreign(when, result),
                )
                raise result
            if failure.kind in RETRYABLE:
                self.breaker.record_failure(route.key, retry_after=failure.retry_after)
            decision = self._decide(state, route, failure, tries, admission)
            self._record(
                state,
                route,
                AttemptRecord.failed(when, failure, decision),
            )
            log.warning(
                "agentguard: step %s attempt %s on %s failed: %s (request-id %s, %.0f ms) → %s",
                state.number,
                number,
                route.key,
                failure.label,
                failure.request_id,
                latency * 1000,
                decision.reason,
            )
            state.slept = 0.0
            if decision.action is Action.RETRY:
                # the checkpoint is taken before anything can change during the backoff
                yield from self._join_snapshot(state)
                if failure.kind not in RETRYABLE or failure.retry_after is not None:
                    state.slept = yield Sleep(decision.delay)  # the server said when: obey it
                    continue
                stop = yield from self._back_off(
                    state, route, failure, decision.delay, tries, began_at
                )
                if stop is None:
                    continue
                decision = stop
            if decision.action is Action.FATAL:
                self._reject(state, failure, result)
            self.event(
                state.step_id,
                f"route_{decision.action.value}",
                route=route.key,
                reason=decision.reason,
                request_id=failure.request_id,
            )
            cooling = decision.reason.endswith((_PROBE_FAILED, _BREAKER_OPENED))
            return None, RouteFailure(
                route, decision.reason, decision.action, failure, result, cooling
            )

    def _opened_meanwhile(self, route: Route, admission: Admission, tries: int) -> bool:
        """Did the route's breaker open after this try was admitted? Then it is not sent.

        The budget's row was just written, and a write waits behind any transaction that was
        opening the breaker, so a read now sees it. Asked before every retry (the back-off's
        last look may be older than another agent's opening), and on a fleet's shared store
        before every first try too: there, all the machines' steps admitted just before the
        breaker opened would otherwise reach the dead route together. A probe is sent anyway:
        it was claimed for that. (A first try on a local store skips the read: the window is
        a local write's length, and it is the proxy's hot path.)"""
        if admission is Admission.PROBE or (tries == 1 and self.store.changes is None):
            return False
        return self.breaker.health(route.key).state == "open"

    def _leave_opened(
        self, state: StepState, route: Route, last: tuple[Failure, BaseException] | None
    ) -> RouteFailure:
        """The route's breaker opened while this try was on its way out: on to the next route,
        as if the breaker had been open when the step came (a first try) or had opened on the
        last failure (a retry). The budget has counted the request: an overcount of one."""
        if last is None:
            reason = "breaker open: overloaded, cooling down"
            self.event(state.step_id, "route_skipped", route=route.key, reason=reason)
            return RouteFailure(route, reason, Action.NEXT_ROUTE, cooling=True)
        failure, error = last
        reason = f"{failure.label}: {_BREAKER_OPENED}"
        self.event(state.step_id, "route_next_route", route=route.key, reason=reason)
        return RouteFailure(route, reason, Action.NEXT_ROUTE, failure, error, True)

    def _back_off(
        self,
        state: StepState,
        route: Route,
        failure: Failure,
        delay: float,
        tries: int,
        sent_at: float,
    ) -> Generator[PlanAction, Any, Decision | None]:
        """Wait before retrying an overloaded route, listening to the other agents on the machine.

        An answer to a request sent after ours means the route is back: retry at once instead of
        sleeping out the delay. A newer failure from someone else means it is still down: our
        request would only add load, so keep waiting (no attempt is spent) — until the breaker
        opens or the step's deadline comes. None: retry now; a Decision: leave the route.
        """
        waited, since, deferred = 0.0, self.clock.now(), 0

        def recovered() -> bool:
            return self.breaker.recovered_since(route.key, sent_at)

        while True:
            waited += yield Sleep(delay, wake=recovered, changes=self.store.changes)
            state.slept = waited
            if recovered():
                return None
            health = self.breaker.health(route.key)
            if health.state == "open":
                return Decision(Action.NEXT_ROUTE, reason=f"{failure.label}: {_BREAKER_OPENED}")
            failed_since = (health.last_failure_at or 0) > since  # someone else's, after ours
            if self._streak_is_due(health):
                # one retry decides for every waiting step, on every machine: the one that
                # takes the claim; the others hold theirs for its answer
                if self.breaker.claim_decider(route.key, lease=_DECIDER_LEASE_S):
                    return None
            elif not failed_since:
                return None
            deferred += 1
            delay = self.policy.backoff(tries, self.rng)
            if delay > state.time_left(self.policy, self.clock):
                return Decision(
                    Action.NEXT_ROUTE,
                    reason=f"{failure.label}: step deadline reached while the route was down",
                )
            since = self.clock.now()
            if deferred == 1:
                log.info(
                    "agentguard: step %s holds its retry on %s: another agent's request failed",
                    state.number,
                    route.key,
                )
                self.event(
                    state.step_id,
                    "retry_deferred",
                    route=route.key,
                    reason="another request on this route failed while this step backed off",
                )

    def _streak_is_due(self, health: RouteHealth) -> bool:
        """Has the route failed long enough that one more failure opens its breaker? Then the
        retry is sent: its answer decides between 'back' and 'open' for every waiting step."""
        first = health.first_failure_at
        return first is not None and self.clock.now() - first >= self.breaker.settings.open_after

    def _decide(
        self, state: StepState, route: Route, failure: Failure, tries: int, admission: Admission
    ) -> Decision:
        decision = decide(
            failure,
            self.policy,
            attempt=tries,
            time_left=state.time_left(self.policy, self.clock),
            rng=self.rng,
        )
        if decision.action is not Action.RETRY:
            return decision
        if admission is Admission.PROBE:
            return Decision(Action.NEXT_ROUTE, reason=f"{failure.label}: {_PROBE_FAILED}")
        if self.breaker.health(route.key).state == "open":
            return Decision(Action.NEXT_ROUTE, reason=f"{failure.label}: {_BREAKER_OPENED}")
        if not self.budget.allow_retry(route.key):
            return Decision(Action.NEXT_ROUTE, reason=f"{failure.label}: retry budget spent")
        return decision

    def _skip(
        self, state: StepState, failed: list[RouteFailure], route: Route, reason: str
    ) -> None:
        failed.append(RouteFailure(route, reason, Action.NEXT_ROUTE))
        self.event(state.step_id, "route_skipped", route=route.key, reason=reason)

    def _until_next_probe(self, routes: Sequence[Route]) -> float | None:
        times = [t for r in routes if (t := self.breaker.next_probe_at(r.key)) is not None]
        return max(min(times) - self.clock.now(), 0.0) if times else None

    # -- hold mode -------------------------------------------------------------------------------

    def _waits_out(self, failure: RouteFailure) -> bool:
        """Under `forbid` the step would be queued to try again later anyway: a route whose
        retries ran out on a passing error is waited for too, not only one that is down."""
        kind = failure.failure.kind if failure.failure is not None else None
        return (
            self.policy.substitution == "forbid"
            and failure.action is Action.NEXT_ROUTE
            and (kind in RETRYABLE or kind is Kind.RATE_LIMITED)
        )

    def _hold_wait(self, next_probe: float | None, transient: Sequence[RouteFailure]) -> float:
        """Until the breaker's next probe of a down route, or one cooldown (at least the
        server's retry-after) for a route whose retries ran out; the soonest of them."""
        waits = [] if next_probe is None else [next_probe]
        cooldown = self.breaker.settings.cooldown
        for f in transient:
            after = f.failure.retry_after if f.failure is not None else None
            waits.append(max(cooldown, after or 0.0))
        return min(waits)

    def _begin_hold(self, state: StepState, failed: Sequence[RouteFailure], hold: float) -> None:
        until = self.clock.now() + hold - (self.clock.monotonic() - state.started_mono)
        why = summarize(failed, full=True)
        self._held.add(state.step_id)
        self.event(state.step_id, "step_held", reason=why, hold=hold, until=until)
        log.info(
            "agentguard: step %s is held until its route comes back (up to %s): %s",
            state.number,
            datetime.fromtimestamp(until, UTC).strftime("%H:%M:%S UTC"),
            why,
        )

    def _holding(self, state: StepState, wait: float) -> None:
        """The run shows the wait: `waiting`, and when the step tries again."""
        now = self.clock.now()
        self.store.update_run(
            self.run_id, status="waiting", updated_at=now, next_attempt_at=now + wait
        )

    def _release_hold(self, state: StepState) -> None:
        """A held step cancelled: the run is no longer waiting on it."""
        if state.step_id not in self._held:
            return
        self._held.discard(state.step_id)
        if not self._held:
            now = self.clock.now()
            self.store.update_run(
                self.run_id, status="running", updated_at=now, next_attempt_at=None
            )

    # -- endings ---------------------------------------------------------------------------------

    def _reject(self, state: StepState, failure: Failure, exc: BaseException) -> None:
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
        self,
        state: StepState,
        failed: list[RouteFailure],
        deadline_hit: bool,
        *,
        held: bool = False,
    ) -> None:
        """No route served: say exactly why, queue the run if the policy forbids substitution."""
        where = f"run {self.run_id} step {state.number}"
        tried = len(state.attempts)
        errors = [f for f in failed if f.error is not None]
        last = errors[-1] if errors else None
        last_id = last.failure.request_id if last and last.failure else None
        cause = last.error if last else None
        unusable = (Action.ROUTE_UNUSABLE, Action.SKIP_ROUTE)
        if errors and all(f.action in unusable for f in errors) and cause is not None:
            first = errors[0]
            what = (
                "check the API key, permissions or billing for this route"
                if first.action is Action.ROUTE_UNUSABLE
                else "check the model name for this route"
            )
            request_id = first.failure.request_id if first.failure else None
            assert first.error is not None
            first.error.add_note(
                f"agentguard: {first.reason} — route {first.route.key} cannot serve; {what} "
                f"(request-id {request_id}, {where})."
            )
            raise first.error
        why = summarize(failed, full=True) or "no route could be tried"
        if held:
            why += "; the hold deadline passed while waiting for the route to come back"
        elif deadline_hit:
            why += "; the step deadline passed while waiting for a probe"
        if self.policy.substitution == "forbid":
            when = datetime.fromtimestamp(self.clock.now() + self.policy.queue_delay, UTC)
            self.event(state.step_id, "queued", next_attempt_at=when.timestamp(), reason=why)
            raise RunQueued(
                f"{where} is queued until {when:%Y-%m-%d %H:%M:%S} UTC: {why} after {tried} "
                f"attempt(s) (last request-id {last_id}), and policy {self.policy.name!r} "
                f"forbids substitution; resume it with `agentguard resume {self.run_id}`.",
                next_attempt_at=when,
                run_id=self.run_id,
                step_id=str(state.step_id),
                attempts=state.attempts,
            ) from cause
        raise RetriesExhausted(
            f"{where} failed after {tried} attempt(s): {why} (last request-id {last_id}); "
            "no route could serve it.",
            run_id=self.run_id,
            step_id=str(state.step_id),
            attempts=state.attempts,
        ) from cause
