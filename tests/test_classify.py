"""The decision table of DESIGN.md, as a pure function (the HTTP rows live in test_step.py)."""

from __future__ import annotations

import random

import pytest

from agentguard.classify import Action, Failure, Kind, decide, retry_after_seconds
from agentguard.policy import Policy

POLICY = Policy(max_attempts=4, base_delay=0.5, max_delay=8.0, step_deadline=60, max_retry_after=30)


def failure(kind: Kind, status: int | None, **kw) -> Failure:
    return Failure(kind, status, kw.pop("error_type", None), None, "req_1", "msg", **kw)


def decision(f: Failure, attempt: int = 1, time_left: float = 60.0):
    return decide(f, POLICY, attempt=attempt, time_left=time_left, rng=random.Random(1))


@pytest.mark.parametrize("kind", [Kind.OVERLOADED, Kind.SERVER, Kind.NETWORK])
def test_transient_failures_retry_then_move_on(kind: Kind) -> None:
    first = decision(failure(kind, 529))
    assert first.action is Action.RETRY and 0 <= first.delay <= 0.5
    assert decision(failure(kind, 529), attempt=4).action is Action.NEXT_ROUTE


def test_a_delay_past_the_deadline_moves_on_instead_of_sleeping() -> None:
    assert decision(failure(Kind.OVERLOADED, 529, retry_after=10), time_left=5).action is (
        Action.NEXT_ROUTE
    )


def test_rate_limit_waits_what_the_server_says_when_it_fits() -> None:
    d = decision(failure(Kind.RATE_LIMITED, 429, retry_after=2.5))
    assert (d.action, d.delay) == (Action.RETRY, 2.5)
    too_long = decision(failure(Kind.RATE_LIMITED, 429, retry_after=45))
    assert too_long.action is Action.NEXT_ROUTE and "retry-after 45s" in too_long.reason


@pytest.mark.parametrize(
    ("kind", "action"),
    [
        (Kind.INVALID_REQUEST, Action.FATAL),
        (Kind.AUTH, Action.ROUTE_UNUSABLE),
        (Kind.BILLING, Action.ROUTE_UNUSABLE),
        (Kind.NOT_FOUND, Action.SKIP_ROUTE),
        (Kind.OTHER, Action.FATAL),
    ],
)
def test_never_retried(kind: Kind, action: Action) -> None:
    assert decision(failure(kind, 400)).action is action


def test_x_should_retry_overrides_for_transient_and_unknown_statuses() -> None:
    assert decision(failure(Kind.OVERLOADED, 529, should_retry=False)).action is Action.NEXT_ROUTE
    assert decision(failure(Kind.OTHER, 418, should_retry=True)).action is Action.RETRY
    # but never turns a rejected request into a retry of the same body
    assert decision(failure(Kind.INVALID_REQUEST, 400, should_retry=True)).action is Action.FATAL


def test_retry_after_headers() -> None:
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    date = "Wed, 21 Oct 2026 07:28:10 GMT"
    from email.utils import parsedate_to_datetime

    now = parsedate_to_datetime(date).timestamp() - 12
    assert retry_after_seconds({"retry-after": date}, now) == pytest.approx(12)
    assert retry_after_seconds({}) is None
    assert retry_after_seconds({"retry-after": "soon"}) is None
