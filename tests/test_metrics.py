"""Every monitoring figure, checked exactly on a store with known steps and attempts, on
SQLite and on PostgreSQL (the queries are the same on both)."""

from __future__ import annotations

import pytest

from agentguard.metrics import compute, percentile
from agentguard.pricing import Price, price_for
from agentguard.store import Store
from tests.conftest import Engine

NOW = 1_800_000_000.0
OPUS, SONNET, GPT = "claude-opus-4-7", "claude-sonnet-4-6", "gpt-5.5"


class Builder:
    """Writes runs, steps and attempts the way the guard does, with chosen values."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.store.insert_run({"id": "r1", "name": "r", "project": "/p", "status": "running"})
        self.at = NOW - 200

    def step(self, status: str, latency_ms: float, attempts: list[tuple], **fields) -> int:
        """attempts: (model, status_code, error_type, outcome, request_id, tokens_in, tokens_out)"""
        self.at += 10
        step_id, _ = self.store.begin_step(
            {
                "run_id": "r1",
                "status": status,
                "requested_provider": "anthropic",
                "requested_model": OPUS,
                "started_at": self.at,
                "latency_ms": latency_ms,
                "substituted": 0,
                **fields,
            },
            [],
            None,
        )
        for n, (model, code, etype, outcome, rid, tin, tout) in enumerate(attempts, 1):
            self.store.insert_attempt(
                {
                    "run_id": "r1",
                    "step_id": step_id,
                    "number": n,
                    "model": model,
                    "started_at": self.at + n,
                    "status_code": code,
                    "error_type": etype,
                    "outcome": outcome,
                    "request_id": rid,
                    "input_tokens": tin,
                    "output_tokens": tout,
                }
            )
        return step_id


@pytest.fixture
def store(engine: Engine) -> Store:
    """The known steps and attempts, on each engine (SQLite, PostgreSQL)."""
    store = engine.open()
    b = Builder(store)
    ok = (OPUS, 200, None, "ok", "req_ok", 1000, 100)
    # 1. clean step
    b.step("ok", 100, [ok])
    # 2. two 529s then the primary serves: a retry that recovered
    b.step(
        "ok",
        900,
        [
            (OPUS, 529, "overloaded_error", "retry", "req_a", None, None),
            (OPUS, 200, "overloaded_error", "retry", "req_b", None, None),  # mid-stream 529
            ok,
        ],
    )
    # 3. four 529s, Sonnet serves: a fallback activation
    b.step(
        "ok",
        2000,
        [(OPUS, 529, "overloaded_error", "retry", f"req_c{i}", None, None) for i in range(3)]
        + [
            (OPUS, 529, "overloaded_error", "next_route", "req_c3", None, None),
            (SONNET, 200, None, "ok", "req_d", 2000, 500),
        ],
        substituted=1,
        served_model=SONNET,
    )
    # 4. a 429 then the primary serves
    b.step(
        "ok",
        1500,
        [(OPUS, 429, "rate_limit_error", "retry", "req_e", None, None), ok],
    )
    # 5. everything overloaded, GPT overloaded too: a final failure (page)
    b.step(
        "failed",
        5000,
        [
            (OPUS, 529, "overloaded_error", "next_route", "req_f", None, None),
            (GPT, 503, "api_error", "next_route", "req_g", None, None),
        ],
    )
    # 6. a 400: the request was wrong, not an outage
    b.step("failed", 50, [(OPUS, 400, "invalid_request_error", "fatal", "req_h", None, None)])
    # 7. served by GPT after a 529 on Opus
    b.step(
        "ok",
        700,
        [
            (OPUS, 529, "overloaded_error", "next_route", "req_i", None, None),
            (GPT, 200, None, "ok", "req_j", 4000, 1000),
        ],
        substituted=1,
        served_model=GPT,
    )
    return store


def test_every_figure(store: Store) -> None:
    m = compute(store, until=NOW)
    assert (m.steps, m.steps_ok, m.final_failures, m.fallback_activations) == (7, 5, 1, 2)
    by_model = {f.model: f for f in m.by_model}
    assert (by_model[OPUS].attempts, by_model[OPUS].overloaded) == (13, 8)
    assert by_model[OPUS].overload_rate == pytest.approx(8 / 13)
    assert (by_model[GPT].attempts, by_model[GPT].overloaded, by_model[GPT].served) == (2, 0, 1)
    assert (by_model[SONNET].attempts, by_model[SONNET].served) == (1, 1)
    assert (m.overloaded, m.rate_limited) == (8, 1)  # the 429 vs 529 split
    # steps 2, 3 and 4 retried; 2 and 4 were still served by their own route
    assert (m.steps_with_retries, m.retries_recovered) == (3, 2)
    assert m.retry_success_rate == pytest.approx(2 / 3)
    # step latencies including retries: 50 100 700 900 1500 2000 5000
    assert (m.latency_p50_ms, m.latency_p95_ms, m.latency_p99_ms) == (900, 5000, 5000)
    failed_ids = [a.request_id for a in m.failed_attempts]
    assert len(failed_ids) == 11 and failed_ids[0] == "req_i" and "req_h" in failed_ids
    # cost: Opus 3 × (1000 in, 100 out) at $5/$25; Sonnet 2000/500 at $3/$15; GPT 4000/1000
    opus = 3 * (1000 * 5 + 100 * 25) / 1e6
    sonnet = (2000 * 3 + 500 * 15) / 1e6
    gpt = (4000 * 1.25 + 1000 * 10) / 1e6
    assert m.cost_usd == pytest.approx(opus + sonnet + gpt)
    on_opus = (3 * (1000 * 5 + 100 * 25) + (2000 * 5 + 500 * 25) + (4000 * 5 + 1000 * 25)) / 1e6
    assert m.cost_if_primary_usd == pytest.approx(on_opus)
    assert m.unpriced_models == []


def test_alerts_warn_on_sustained_overload_and_page_on_final_failures(store: Store) -> None:
    m = compute(store, until=NOW)
    assert [a.level for a in m.alerts] == ["warn", "page"]
    assert "1 step(s) failed after retries and fallback" in m.alerts[1].message
    quiet = compute(store, until=NOW + 3600, since=NOW + 1)
    assert quiet.alerts == [] and quiet.steps == 0 and quiet.latency_p95_ms is None


def test_the_window_limits_what_counts(store: Store) -> None:
    m = compute(store, since=NOW - 200 + 35, until=NOW)  # from step 4 on
    assert m.steps == 4 and m.fallback_activations == 1


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    values = list(range(1, 101))
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 99)) == (50, 95, 99)


def test_prices_match_by_prefix_and_can_be_overridden() -> None:
    assert price_for("claude-opus-4-7-20261001") == Price(input=5.0, output=25.0)
    assert price_for("mystery-model") is None
    custom = {"claude-opus-4-7": Price(input=1, output=2)}
    assert price_for("claude-opus-4-7", custom) == Price(input=1, output=2)
    assert price_for("claude-opus-4-6", custom) == Price(input=5.0, output=25.0)
