"""No request reaches a route whose breaker opened while the request was on its way out.

Between a step's last look at the breaker and its send, it writes the budget's row (and on a
fleet's store that write waits behind whichever transaction is opening the breaker). Here
another agent opens the breaker exactly then — in that write — and the request must not go.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

import agentguard
from agentguard.breaker import Breaker, BreakerSettings
from agentguard.budget import RetryBudget
from agentguard.store import STORE_ENV, open_store
from agentguard.testing import overloaded
from tests.conftest import user

OPUS, SONNET = "claude-opus-4-7", "claude-sonnet-4-6"
ROUTE = f"anthropic:{OPUS}"
CHAIN = [ROUTE, f"anthropic:{SONNET}"]
SETTINGS = BreakerSettings(open_after=0.5)


class Ceiling(random.Random):
    """Full jitter that always draws its ceiling: the backoff is exactly the policy's delay."""

    def uniform(self, a: float, b: float) -> float:
        return b


class OpensWhileNoting(RetryBudget):
    """The guard's budget, whose `note` of the chosen try lets another agent act first."""

    def __init__(self, budget: RetryBudget, on_try: int, act: Callable[[], None]) -> None:
        super().__init__(budget.store, budget.clock, budget.settings)
        self.on_try, self.act, self.noted = on_try, act, 0

    def note(self, route: str, *, retry: bool) -> None:
        self.noted += 1
        if self.noted == self.on_try:
            self.act()
        super().note(route, retry=retry)


def _client(guarded: Any) -> Any:
    policy = {"preset": "coding_agent", "base_delay": 1.0, "max_delay": 1.0}
    return guarded(chain=CHAIN, policy=policy, rng=Ceiling(), breaker=SETTINGS)


def _open_by_another_agent(client: Any, failures: int) -> Callable[[], None]:
    other = Breaker(open_store(client.agentguard.store.home), client.agentguard.clock, SETTINGS)

    def act() -> None:
        other.record_failure(ROUTE)
        client.agentguard.clock.advance(0.6)  # past open_after since the streak began
        for _ in range(failures - 1):
            other.record_failure(ROUTE)
        assert other.health(ROUTE).state == "open"

    return act


def _ask(client: Any) -> Any:
    return client.messages.create(model=OPUS, max_tokens=64, messages=[user("fix the bug")])


@pytest.fixture(params=["sqlite", "postgresql"])
def store_env(request: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """The store every agentguard face opens here: the local file, or a fleet's schema
    (asked for before `guarded`, so the schema outlives the clients' closing)."""
    if request.param == "postgresql":
        monkeypatch.setenv(STORE_ENV, request.getfixturevalue("postgres_schema_url"))
    return str(request.param)


def test_a_retry_is_not_sent_once_the_breaker_opened_behind_its_budget_write(
    store_env: str, fake: Any, guarded: Any
) -> None:
    fake.script(overloaded(), overloaded(), model=OPUS)
    client = _client(guarded)
    guard = client.agentguard
    guard.budget = OpensWhileNoting(guard.budget, 2, _open_by_another_agent(client, 2))
    info = agentguard.info(_ask(client))
    assert [r.model for r in fake.requests] == [OPUS, SONNET]  # no retry to the dead route
    assert info.served_model == SONNET and info.substituted
    assert info.reason == f"{OPUS}: 529 overloaded_error: breaker opened"


def test_on_a_fleet_store_a_first_try_is_not_sent_once_the_breaker_opened(
    postgres_schema_url: str, monkeypatch: pytest.MonkeyPatch, fake: Any, guarded: Any
) -> None:
    """On the shared store every machine's just-admitted steps would otherwise reach the
    dead route together; a first try looks once more after its budget write."""
    monkeypatch.setenv(STORE_ENV, postgres_schema_url)
    client = _client(guarded)
    guard = client.agentguard
    guard.budget = OpensWhileNoting(guard.budget, 1, _open_by_another_agent(client, 3))
    info = agentguard.info(_ask(client))
    assert [r.model for r in fake.requests] == [SONNET]
    assert info.served_model == SONNET
    skipped = [e for e in guard.store.events(guard.run_id) if e["kind"] == "route_skipped"]
    assert skipped and ROUTE in skipped[0]["detail"]
