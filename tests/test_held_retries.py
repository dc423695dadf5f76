"""Backing off together: a step waiting to retry an overloaded route listens to the other
agents on the machine (through the shared store) — it retries at once when one of them gets an
answer, and holds its retry while their requests keep failing."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest

import agentguard
from agentguard.breaker import Breaker, BreakerSettings
from agentguard.clock import WAKE_POLL_S, FakeClock
from agentguard.store import Store
from agentguard.testing import error, ok, overloaded
from tests.conftest import user

OPUS, SONNET = "claude-opus-4-7", "claude-sonnet-4-6"
ROUTE = f"anthropic:{OPUS}"
CHAIN = [ROUTE, f"anthropic:{SONNET}"]
DELAY = 1.0  # every backoff of these tests' policy, so the timeline is exact


class Ceiling(random.Random):
    """Full jitter that always draws its ceiling: the backoff is exactly the policy's delay."""

    def uniform(self, a: float, b: float) -> float:
        return b


class OtherAgents(FakeClock):
    """A clock on which other agents act: `at(t, fn)` runs fn once t seconds have passed."""

    def __init__(self) -> None:
        super().__init__()
        self.start = self.now()
        self.plan: list[tuple[float, Callable[[float], None]]] = []

    def at(self, offset: float, fn: Callable[[float], None]) -> None:
        self.plan.append((offset, fn))
        self.plan.sort(key=lambda item: item[0])

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        while self.plan and self.now() - self.start >= self.plan[0][0] - 1e-9:
            _, fn = self.plan.pop(0)
            fn(self.now())


@pytest.fixture
def clock() -> OtherAgents:
    return OtherAgents()


@pytest.fixture
def other(home: Path, clock: OtherAgents) -> Breaker:
    """Another agent's view of the breaker: its own connection to the same store."""
    return Breaker(Store.open(home), clock)


def client_for(guarded, **options):
    policy = {"preset": "coding_agent", "base_delay": DELAY, "max_delay": DELAY}
    return guarded(chain=CHAIN, policy=policy, rng=Ceiling(), **options)


def ask(client):
    return client.messages.create(model=OPUS, max_tokens=64, messages=[user("fix the bug")])


def events(home: Path, kind: str) -> list[dict]:
    rows = Store.open(home).query("select * from events where kind = ? order by id", [kind])
    return [json.loads(r["detail"]) for r in rows]


def test_another_agents_answer_wakes_a_backing_off_step_at_once(fake, guarded, clock, other):
    fake.script(overloaded(), ok(), model=OPUS)
    client = client_for(guarded)
    clock.at(0.3, lambda now: other.record_success(ROUTE, sent_at=now - 0.2))
    info = agentguard.info(ask(client))
    assert info.served_model == OPUS and not info.substituted
    assert [a.outcome for a in info.attempts] == ["retry", "ok"]
    # it retried right after the other agent's answer, not after its own 1 s delay
    assert 0.3 <= info.attempts[1].slept_before <= 0.3 + WAKE_POLL_S
    assert clock.sleeps == [info.attempts[1].slept_before]


def test_an_answer_to_an_older_request_does_not_wake_it(fake, guarded, clock, other):
    fake.script(overloaded(), ok(), model=OPUS)
    client = client_for(guarded)
    # a straggler: sent before this step's failed request, answered during its backoff
    clock.at(0.3, lambda now: other.record_success(ROUTE, sent_at=clock.start - 1.0))
    info = agentguard.info(ask(client))
    assert info.attempts[1].slept_before == pytest.approx(DELAY)


def test_a_retry_is_held_while_other_agents_keep_failing(fake, guarded, clock, home, other):
    fake.script(overloaded(), ok(), model=OPUS)
    client = client_for(guarded)
    clock.at(0.5, lambda now: other.record_failure(ROUTE))  # still down as our delay runs
    clock.at(1.7, lambda now: other.record_success(ROUTE, sent_at=now - 0.2))  # back
    info = agentguard.info(ask(client))
    assert info.served_model == OPUS
    assert len(fake.requests) == 2  # no request at t = 1.0, when our own delay ran out
    assert 1.7 <= info.attempts[1].slept_before <= 1.7 + WAKE_POLL_S
    [held] = events(home, "retry_deferred")
    assert held["route"] == ROUTE


def test_a_held_retry_is_sent_when_it_decides_the_breaker(fake, guarded, clock, home):
    fake.script(overloaded(), overloaded(), model=OPUS)
    settings = BreakerSettings(open_after=1.8)
    client = client_for(guarded, breaker=settings)
    other = Breaker(Store.open(home), clock, settings)
    clock.at(0.5, lambda now: other.record_failure(ROUTE))
    clock.at(1.5, lambda now: other.record_failure(ROUTE))
    info = agentguard.info(ask(client))
    # held at t = 1.0; at t = 2.0 the streak is older than open_after, so the retry goes out,
    # its 529 opens the breaker, and the step moves on at once
    assert [r.model for r in fake.requests] == [OPUS, OPUS, SONNET]
    assert info.attempts[1].slept_before == pytest.approx(2 * DELAY)
    assert info.reason == f"{OPUS}: 529 overloaded_error: breaker opened"
    assert client.agentguard.breaker.health(ROUTE).state == "open"


def test_a_breaker_opened_by_others_moves_a_backing_off_step_on(fake, guarded, clock, home):
    fake.script(overloaded(), model=OPUS)
    settings = BreakerSettings(open_after=0.5)
    client = client_for(guarded, breaker=settings)
    other = Breaker(Store.open(home), clock, settings)
    for t in (0.2, 0.6):  # with ours, three failures over 0.6 s: the breaker opens at t = 0.6
        clock.at(t, lambda now: other.record_failure(ROUTE))
    info = agentguard.info(ask(client))
    assert [r.model for r in fake.requests] == [OPUS, SONNET]  # no second request to Opus
    assert info.reason == f"{OPUS}: 529 overloaded_error: breaker opened"


def test_a_server_retry_after_is_obeyed_even_if_others_succeed(fake, guarded, clock, other):
    fake.script(error(429, retry_after=2), ok(), model=OPUS)
    client = client_for(guarded)
    clock.at(0.3, lambda now: other.record_success(ROUTE, sent_at=now))
    info = agentguard.info(ask(client))
    assert info.served_model == OPUS and clock.sleeps == [2.0]


def test_a_due_streak_is_decided_by_one_retry_not_by_every_waiting_step(fake, guarded, clock, home):
    """Another agent's step already holds the deciding retry (`claim_decider`) when this
    step's backoff ends on a due streak: this step holds its retry instead of sending it
    too, and leaves when that answer opens the breaker."""
    fake.script(overloaded(), overloaded(), model=OPUS)
    settings = BreakerSettings(open_after=0.5)
    client = client_for(guarded, breaker=settings)
    other = Breaker(Store.open(home), clock, settings)
    clock.at(0.4, lambda now: other.record_failure(ROUTE))
    clock.at(0.9, lambda now: other.claim_decider(ROUTE, lease=10.0))  # its retry goes out
    clock.at(1.5, lambda now: other.record_failure(ROUTE))  # its 529: the breaker opens
    info = agentguard.info(ask(client))
    assert [r.model for r in fake.requests] == [OPUS, SONNET]  # no retry at t = 1.0
    assert info.reason == f"{OPUS}: 529 overloaded_error: breaker opened"
    [held] = events(home, "retry_deferred")
    assert held["route"] == ROUTE
