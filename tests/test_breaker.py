"""The shared breaker and retry budget on real SQLite files, with a fake clock (no sleeping).

Two `Store`s opened on the same file stand for two agent processes; one test runs real
processes against the real clock to prove probes stay bounded under true concurrency.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentguard.breaker import Admission, Breaker, BreakerSettings
from agentguard.budget import BudgetSettings, RetryBudget
from agentguard.clock import FakeClock
from agentguard.store import DB_NAME, Store

ROUTE = "anthropic:claude-sonnet-4-5"
OTHER = "deepseek:deepseek-v4-pro"


@pytest.fixture
def db_home(tmp_path: Path) -> Path:
    return tmp_path / "shared-home"


@pytest.fixture
def store(db_home: Path) -> Iterator[Store]:
    s = Store.open(db_home)
    yield s
    s.close()


@pytest.fixture
def second_store(db_home: Path, store: Store) -> Iterator[Store]:
    """A second connection to the same file: another process, as far as SQLite can tell."""
    s = Store.open(db_home)
    yield s
    s.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def fail_over(breaker: Breaker, clock: FakeClock, times: list[float]) -> list[Admission]:
    """Record a failure at each offset (seconds from now); return admit() after each."""
    start = clock.now()
    seen = []
    for offset in times:
        clock.advance(start + offset - clock.now())
        breaker.record_failure(ROUTE)
        seen.append(breaker.admit(ROUTE))
    return seen


def open_breaker(breaker: Breaker, clock: FakeClock) -> None:
    fail_over(breaker, clock, [0.0, 1.0, 2.0])
    assert breaker.admit(ROUTE) is Admission.OPEN


# -- breaker ----------------------------------------------------------------------------------


def test_the_migration_creates_the_shared_tables(store: Store) -> None:
    assert {"route_health", "route_traffic"} <= set(store.db.table_names())


def test_an_unknown_route_is_closed_and_healthy(store: Store, clock: FakeClock) -> None:
    breaker = Breaker(store, clock)
    assert breaker.admit(ROUTE) is Admission.CLOSED
    health = breaker.health(ROUTE)
    assert (health.state, health.failures, health.open_since) == ("closed", 0, None)
    assert breaker.next_probe_at(ROUTE) is None
    assert breaker.all_health() == []


def test_a_blip_of_one_and_a_half_seconds_never_opens(store: Store, clock: FakeClock) -> None:
    breaker = Breaker(store, clock)
    seen = fail_over(breaker, clock, [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5])
    assert set(seen) == {Admission.CLOSED}
    assert breaker.health(ROUTE).failures == 7
    clock.advance(0.1)
    breaker.record_success(ROUTE)
    health = breaker.health(ROUTE)
    assert (health.state, health.failures, health.first_failure_at) == ("closed", 0, None)
    # Another blip right after: the success ended the first streak, so still no opening.
    seen = fail_over(breaker, clock, [0.0, 0.5, 1.0, 1.5])
    assert set(seen) == {Admission.CLOSED}


def test_a_sustained_outage_opens_after_open_after(store: Store, clock: FakeClock) -> None:
    breaker = Breaker(store, clock)
    start = clock.now()
    seen = fail_over(breaker, clock, [0.0, 0.5, 1.0, 1.5, 1.9, 2.0])
    assert seen == [Admission.CLOSED] * 5 + [Admission.OPEN]
    health = breaker.health(ROUTE)
    assert health.state == "open"
    assert health.failures == 6
    assert health.first_failure_at == start
    assert health.open_since == start + 2.0
    assert health.next_probe_at == start + 2.0 + breaker.settings.cooldown
    assert [h.route for h in breaker.all_health()] == [ROUTE]


def test_a_long_streak_needs_min_failures_too(store: Store, clock: FakeClock) -> None:
    breaker = Breaker(store, clock)
    assert fail_over(breaker, clock, [0.0, 5.0]) == [Admission.CLOSED] * 2
    assert fail_over(breaker, clock, [1.0]) == [Admission.OPEN]


def test_one_probe_per_cooldown_slot_across_two_processes(
    store: Store, second_store: Store, clock: FakeClock
) -> None:
    a, b = Breaker(store, clock), Breaker(second_store, clock)
    open_breaker(a, clock)
    cooldown = a.settings.cooldown
    for _ in range(3):
        clock.advance(cooldown / 2)
        assert (a.admit(ROUTE), b.admit(ROUTE)) == (Admission.OPEN, Admission.OPEN)
        clock.advance(cooldown / 2)  # the slot is due: both ask at the same instant
        asked = [a.admit(ROUTE), b.admit(ROUTE), b.admit(ROUTE), a.admit(ROUTE)]
        assert asked.count(Admission.PROBE) == 1
        assert asked.count(Admission.OPEN) == 3
        assert a.next_probe_at(ROUTE) == clock.now() + cooldown


def test_the_probe_claim_is_a_compare_and_set(
    store: Store, second_store: Store, clock: FakeClock
) -> None:
    """Both processes read the due slot before either writes: only one claim succeeds."""
    a, b = Breaker(store, clock), Breaker(second_store, clock)
    open_breaker(a, clock)
    clock.advance(a.settings.cooldown)
    seen_a, seen_b = a._row(ROUTE), b._row(ROUTE)
    assert seen_a is not None and seen_b is not None
    assert seen_a["next_probe_at"] == seen_b["next_probe_at"] <= clock.now()
    assert a._claim(ROUTE, seen_a["next_probe_at"], clock.now()) is True
    assert b._claim(ROUTE, seen_b["next_probe_at"], clock.now()) is False
    clock.advance(0.001)  # even a slightly later clock cannot take the slot just claimed
    assert b._claim(ROUTE, seen_b["next_probe_at"], clock.now()) is False


def test_a_failed_probe_keeps_it_open_and_schedules_the_next(
    store: Store, clock: FakeClock
) -> None:
    breaker = Breaker(store, clock)
    open_breaker(breaker, clock)
    cooldown = breaker.settings.cooldown
    clock.advance(cooldown)
    assert breaker.admit(ROUTE) is Admission.PROBE
    clock.advance(0.3)  # the probe's latency
    breaker.record_failure(ROUTE)
    assert breaker.health(ROUTE).state == "open"
    assert breaker.next_probe_at(ROUTE) == clock.now() + cooldown
    clock.advance(cooldown - 0.01)
    assert breaker.admit(ROUTE) is Admission.OPEN
    clock.advance(0.01)
    assert breaker.admit(ROUTE) is Admission.PROBE


def test_retry_after_longer_than_cooldown_delays_the_next_probe(
    store: Store, clock: FakeClock
) -> None:
    breaker = Breaker(store, clock)
    open_breaker(breaker, clock)
    clock.advance(breaker.settings.cooldown)
    assert breaker.admit(ROUTE) is Admission.PROBE
    breaker.record_failure(ROUTE, retry_after=7.0)
    assert breaker.next_probe_at(ROUTE) == clock.now() + 7.0
    clock.advance(breaker.settings.cooldown)
    assert breaker.admit(ROUTE) is Admission.OPEN
    clock.advance(7.0 - breaker.settings.cooldown)
    assert breaker.admit(ROUTE) is Admission.PROBE
    # A shorter retry-after never lets a probe through before the cooldown ...
    breaker.record_failure(ROUTE, retry_after=0.5)
    assert breaker.next_probe_at(ROUTE) == clock.now() + breaker.settings.cooldown
    # ... and an absurd one is capped.
    breaker.record_failure(ROUTE, retry_after=86_400.0)
    assert breaker.next_probe_at(ROUTE) == clock.now() + breaker.settings.max_retry_after


def test_a_successful_probe_closes_it_at_once(
    store: Store, second_store: Store, clock: FakeClock
) -> None:
    a, b = Breaker(store, clock), Breaker(second_store, clock)
    open_breaker(a, clock)
    clock.advance(a.settings.cooldown)
    assert a.admit(ROUTE) is Admission.PROBE
    clock.advance(0.2)
    a.record_success(ROUTE)
    assert (a.admit(ROUTE), b.admit(ROUTE)) == (Admission.CLOSED, Admission.CLOSED)
    health = b.health(ROUTE)
    assert (health.state, health.failures, health.open_since, health.next_probe_at) == (
        "closed",
        0,
        None,
        None,
    )
    assert health.last_success_at == clock.now()
    assert health.last_failure_at is not None  # kept, for the TUI


def test_a_straggler_sent_before_the_opening_does_not_close_it(
    store: Store, clock: FakeClock
) -> None:
    breaker = Breaker(store, clock)
    sent = clock.now() - 1.0  # sent before the outage, answered late
    open_breaker(breaker, clock)
    breaker.record_success(ROUTE, sent_at=sent)
    assert breaker.admit(ROUTE) is Admission.OPEN
    assert breaker.health(ROUTE).last_success_at == clock.now()
    breaker.record_success(ROUTE, sent_at=clock.now())  # sent after: a real recovery
    assert breaker.admit(ROUTE) is Admission.CLOSED


def test_an_old_streak_is_forgotten(store: Store, clock: FakeClock) -> None:
    breaker = Breaker(store, clock)
    start = clock.now()
    fail_over(breaker, clock, [0.0, 1.0])
    clock.advance(breaker.settings.forget_after + 0.5)
    assert breaker.health(ROUTE).failures == 0
    # Without forgetting, this would be a 31.5 s streak of 3 failures: open.
    breaker.record_failure(ROUTE)
    health = breaker.health(ROUTE)
    assert breaker.admit(ROUTE) is Admission.CLOSED
    assert (health.failures, health.first_failure_at) == (1, clock.now())
    assert health.first_failure_at != start


def test_routes_are_independent(store: Store, clock: FakeClock) -> None:
    breaker = Breaker(store, clock)
    open_breaker(breaker, clock)
    assert breaker.admit(OTHER) is Admission.CLOSED
    breaker.record_success(OTHER)
    assert breaker.admit(ROUTE) is Admission.OPEN
    assert [h.state for h in breaker.all_health()] == ["open", "closed"]  # by route name


def test_real_processes_share_at_most_one_probe_per_cooldown(db_home: Path) -> None:
    """Four processes hammer an open breaker for 1.5 s of real time."""
    cooldown, duration, workers = 0.5, 1.5, 4
    store = Store.open(db_home)
    setup = Breaker(store, FakeClock(time.time()), BreakerSettings(open_after=0, min_failures=1))
    setup.record_failure(ROUTE)
    assert setup.admit(ROUTE) is Admission.OPEN
    child = textwrap.dedent(
        f"""
        import sys, time, types
        # Import only the store and the breaker: `import agentguard` loads the SDKs (slow).
        pkg = types.ModuleType("agentguard")
        pkg.__path__ = [{str(Path(__file__).parents[1] / "agentguard")!r}]
        sys.modules["agentguard"] = pkg
        from agentguard.breaker import Admission, Breaker, BreakerSettings
        from agentguard.clock import SystemClock
        from agentguard.store import Store

        store = Store({str(db_home / DB_NAME)!r})
        breaker = Breaker(store, SystemClock(), BreakerSettings(cooldown={cooldown}))
        print("ready", flush=True)
        start, end = map(float, sys.stdin.readline().split())
        time.sleep(max(0.0, start - time.time()))
        counts = dict.fromkeys(Admission, 0)
        while time.time() < end:
            admission = breaker.admit({ROUTE!r})
            counts[admission] += 1
            if admission is Admission.PROBE:
                breaker.record_failure({ROUTE!r})  # the route is still down
        print(*(counts[a] for a in Admission), flush=True)
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", child],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n", proc.communicate(timeout=5)[1]
        start = time.time() + 0.05
        with store.write() as db:  # the first probe slot opens as the hammering starts
            db.conn.execute("update route_health set next_probe_at = ?", [start])
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{start} {start + duration}\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=10)
            assert proc.returncode == 0, err
            results.append([int(n) for n in out.split()])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    closed, probes, opened = (sum(r[i] for r in results) for i in range(3))
    assert closed == 0
    assert 2 <= probes <= math.ceil(duration / cooldown) + 1
    assert opened > 100 * workers  # they really did hammer it
    assert setup.health(ROUTE).state == "open"
    store.close()


# -- retry budget -----------------------------------------------------------------------------


def retries_allowed(budget: RetryBudget, route: str = ROUTE) -> int:
    allowed = 0
    while budget.allow_retry(route):
        budget.note(route, retry=True)
        allowed += 1
        assert allowed < 10_000
    return allowed


def test_a_quiet_route_gets_min_retries(store: Store, clock: FakeClock) -> None:
    budget = RetryBudget(store, clock)
    assert budget.usage(ROUTE) == (0, 0)
    assert retries_allowed(budget) == budget.settings.min_retries
    assert budget.allow_retry(ROUTE) is False
    assert budget.usage(ROUTE) == (0, budget.settings.min_retries)
    assert budget.allow_retry(OTHER) is True  # budgets are per route


def test_retries_are_a_fraction_of_first_tries(store: Store, clock: FakeClock) -> None:
    budget = RetryBudget(store, clock)
    for _ in range(100):
        budget.note(ROUTE, retry=False)
        clock.advance(0.01)
    allowed = int(0.2 * 100) + budget.settings.min_retries
    assert retries_allowed(budget) == allowed
    assert budget.usage(ROUTE) == (100, allowed)


def test_old_traffic_leaves_the_window(store: Store, clock: FakeClock) -> None:
    budget = RetryBudget(store, clock)
    quiet = budget.settings.min_retries
    assert retries_allowed(budget) == quiet
    clock.advance(budget.settings.window / 2)
    assert budget.allow_retry(ROUTE) is False
    clock.advance(budget.settings.window / 2 + 0.001)
    assert budget.usage(ROUTE) == (0, 0)
    assert retries_allowed(budget) == quiet


def test_pruning_keeps_the_table_small(store: Store, clock: FakeClock) -> None:
    settings = BudgetSettings(window=10.0, prune_every=100)
    budget = RetryBudget(store, clock, settings)
    for i in range(2_000):  # 250 s of traffic at 8 requests/s: 80 requests per window
        budget.note(ROUTE if i % 2 else OTHER, retry=i % 5 == 0)
        clock.advance(0.125)
        rows = store.query("select count(*) as n from route_traffic")[0]["n"]
        assert rows <= 80 + settings.prune_every
    assert sum(budget.usage(ROUTE)) + sum(budget.usage(OTHER)) == 79  # the oldest just left


def test_the_budget_is_shared_across_processes(
    store: Store, second_store: Store, clock: FakeClock
) -> None:
    a, b = RetryBudget(store, clock), RetryBudget(second_store, clock)
    for _ in range(50):
        a.note(ROUTE, retry=False)
    assert b.usage(ROUTE) == (50, 0)
    for _ in range(15):
        b.note(ROUTE, retry=True)
    assert a.usage(ROUTE) == (50, 15)
    assert retries_allowed(a) == int(0.2 * 50) + a.settings.min_retries - 15
    assert b.allow_retry(ROUTE) is False


def test_acquire_retry_checks_and_notes_in_one_step(
    store: Store, second_store: Store, clock: FakeClock
) -> None:
    a, b = RetryBudget(store, clock), RetryBudget(second_store, clock)
    quiet = a.settings.min_retries
    granted = [budget.acquire_retry(ROUTE) for _ in range(quiet) for budget in (a, b)]
    assert granted.count(True) == quiet
    assert a.usage(ROUTE) == (0, quiet)
