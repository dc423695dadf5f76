"""The monitoring checklist, computed from the store.

529 rate by model, the 429 vs 529 split, retry success rate, p50/p95/p99 step latency
including retries, fallback activations, final failures, request-ids of failed attempts and
cost after fallback — with the alerting rule of the retry guide agentguard grew from: warn on
a sustained 529 increase, page only when retries and fallback both failed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from agentguard.pricing import Price, price_for
from agentguard.store import Store

OVERLOAD = "(status_code = 529 or error_type = 'overloaded_error')"
# Rows with no known outcome: still in flight, cut short by a process that died, or cancelled
# by the caller before an answer came.
NO_OUTCOME = "('pending', 'interrupted', 'cancelled')"


def count_where(condition: str) -> str:
    """SQL counting the rows where `condition` holds, on SQLite and PostgreSQL alike (which
    does not sum booleans)."""
    return f"sum(case when {condition} then 1 else 0 end)"


WARN_RATE = 0.02  # a 529 rate above 2 % is more than background noise
ALERT_WINDOW_S = 300.0


@dataclass(frozen=True)
class ModelFigures:
    model: str
    attempts: int
    overloaded: int  # 529s, mid-stream overloads included
    rate_limited: int  # 429s
    served: int  # attempts that returned an answer

    @property
    def overload_rate(self) -> float:
        return self.overloaded / self.attempts if self.attempts else 0.0


@dataclass(frozen=True)
class FailedAttempt:
    at: float
    run_id: str
    model: str
    status_code: int | None
    error_type: str | None
    request_id: str | None


@dataclass(frozen=True)
class Alert:
    level: str  # "warn" | "page"
    message: str


@dataclass
class Metrics:
    since: float | None
    until: float
    steps: int = 0
    steps_ok: int = 0
    final_failures: int = 0
    waiting: int = 0
    attempts: int = 0
    overloaded: int = 0
    rate_limited: int = 0
    by_model: list[ModelFigures] = field(default_factory=list)
    steps_with_retries: int = 0
    retries_recovered: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    fallback_activations: int = 0
    failed_attempts: list[FailedAttempt] = field(default_factory=list)
    cost_usd: float = 0.0
    cost_if_primary_usd: float = 0.0
    unpriced_models: list[str] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)

    @property
    def retry_success_rate(self) -> float | None:
        """Of the steps that had to retry, the share their own route still served."""
        if not self.steps_with_retries:
            return None
        return self.retries_recovered / self.steps_with_retries

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["retry_success_rate"] = self.retry_success_rate
        data["by_model"] = [{**asdict(m), "overload_rate": m.overload_rate} for m in self.by_model]
        return data


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile: an observed value, never an interpolation."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(math.ceil(p / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def compute(
    store: Store,
    *,
    since: float | None = None,
    until: float,
    prices: Mapping[str, Price] | None = None,
    failed_limit: int = 20,
) -> Metrics:
    """Every figure for the attempts and steps started in [since, until]."""
    lo = since if since is not None else float("-inf")
    window = [lo, until]
    m = Metrics(since=since, until=until)

    for row in store.query(
        f"""select model, count(*) as attempts,
                   {count_where(OVERLOAD)} as overloaded,
                   {count_where("status_code = 429")} as rate_limited,
                   {count_where("outcome = 'ok'")} as served
            from attempts where started_at between ? and ? and outcome not in {NO_OUTCOME}
            group by model order by attempts desc""",
        window,
    ):
        m.by_model.append(
            ModelFigures(
                row["model"],
                row["attempts"],
                row["overloaded"] or 0,
                row["rate_limited"] or 0,
                row["served"] or 0,
            )
        )
    m.attempts = sum(f.attempts for f in m.by_model)
    m.overloaded = sum(f.overloaded for f in m.by_model)
    m.rate_limited = sum(f.rate_limited for f in m.by_model)

    steps = store.query(
        f"""select id, status, substituted, latency_ms from steps
           where started_at between ? and ? and status not in {NO_OUTCOME}""",
        window,
    )
    m.steps = len(steps)
    m.steps_ok = sum(s["status"] == "ok" for s in steps)
    m.waiting = sum(s["status"] == "waiting" for s in steps)
    m.fallback_activations = sum(bool(s["substituted"]) for s in steps)
    latencies = [s["latency_ms"] for s in steps if s["latency_ms"] is not None]
    m.latency_p50_ms = percentile(latencies, 50)
    m.latency_p95_ms = percentile(latencies, 95)
    m.latency_p99_ms = percentile(latencies, 99)

    retried = store.query(
        f"""select s.status, s.substituted from steps s
           where s.started_at between ? and ? and s.status not in {NO_OUTCOME}
             and exists (select 1 from attempts a
                         where a.step_id = s.id and a.outcome = 'retry')""",
        window,
    )
    m.steps_with_retries = len(retried)
    m.retries_recovered = sum(r["status"] == "ok" and not r["substituted"] for r in retried)

    m.final_failures = _outage_failures(store, window)

    m.failed_attempts = [
        FailedAttempt(
            r["started_at"],
            r["run_id"],
            r["model"],
            r["status_code"],
            r["error_type"],
            r["request_id"],
        )
        for r in store.query(
            f"""select started_at, run_id, model, status_code, error_type, request_id
               from attempts where started_at between ? and ?
                 and outcome != 'ok' and outcome not in {NO_OUTCOME}
               order by started_at desc limit ?""",
            [*window, failed_limit],
        )
    ]

    _costs(store, window, m, prices)
    m.alerts = alerts(store, until=until, final_failures=m.final_failures)
    return m


def _outage_failures(store: Store, window: list[float]) -> int:
    """Steps that failed although retries (and any fallback) were tried: user-visible outages.

    A step that failed because its request was rejected (400/413) is a bug, not an outage."""
    return store.query(
        """select count(*) as n from steps s
           where s.started_at between ? and ? and s.status in ('failed', 'waiting')
             and not exists (select 1 from attempts a
                             where a.step_id = s.id and a.outcome = 'fatal')
             and exists (select 1 from attempts a where a.step_id = s.id)""",
        window,
    )[0]["n"]


def _costs(
    store: Store, window: list[float], m: Metrics, prices: Mapping[str, Price] | None
) -> None:
    """What the served attempts cost, and what they would have cost on the requested model."""
    unpriced: set[str] = set()
    for row in store.query(
        """select a.model, s.requested_model, a.input_tokens, a.output_tokens
           from attempts a join steps s on s.id = a.step_id
           where a.started_at between ? and ? and a.outcome = 'ok'""",
        window,
    ):
        tokens_in, tokens_out = row["input_tokens"] or 0, row["output_tokens"] or 0
        served = price_for(row["model"], prices)
        requested = price_for(row["requested_model"], prices)
        if served is None:
            unpriced.add(row["model"])
        else:
            m.cost_usd += served.cost(tokens_in, tokens_out)
        if requested is not None:
            m.cost_if_primary_usd += requested.cost(tokens_in, tokens_out)
        elif row["requested_model"]:
            unpriced.add(row["requested_model"])
    m.unpriced_models = sorted(unpriced)


def alerts(store: Store, *, until: float, final_failures: int) -> list[Alert]:
    """Warn on a sustained 529 increase; page only when retries and fallback both failed."""
    found: list[Alert] = []
    recent = _overload_rate(store, until - ALERT_WINDOW_S, until)
    before = _overload_rate(store, until - 2 * ALERT_WINDOW_S, until - ALERT_WINDOW_S)
    rate, count = recent
    if rate > WARN_RATE and count >= 3 and rate >= before[0]:
        found.append(
            Alert(
                "warn",
                f"529 rate {rate:.1%} over the last {ALERT_WINDOW_S / 60:.0f} min "
                f"(was {before[0]:.1%}): sustained provider overload",
            )
        )
    if final_failures:
        found.append(Alert("page", f"{final_failures} step(s) failed after retries and fallback"))
    return found


def _overload_rate(store: Store, lo: float, hi: float) -> tuple[float, int]:
    row = store.query(
        f"""select count(*) as n, {count_where(OVERLOAD)} as o from attempts
            where started_at > ? and started_at <= ? and outcome not in {NO_OUTCOME}""",
        [lo, hi],
    )[0]
    n, o = row["n"] or 0, row["o"] or 0
    return (o / n if n else 0.0), o
