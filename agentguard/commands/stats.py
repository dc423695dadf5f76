"""`agentguard stats`: the monitoring checklist for a window of time (agentguard.metrics)."""

from __future__ import annotations

import argparse
import re
import time
from typing import Any

from rich.table import Table

from agentguard.commands.common import OK, Context, Refused
from agentguard.metrics import Metrics, compute
from agentguard.pricing import PRICES_AS_OF, load_prices

NAME = "stats"
SUMMARY = "529 rate by model, retry success, p50/p95/p99 latency, fallbacks, failures, cost."
EPILOG = """\
examples:
  agentguard stats                 the last hour
  agentguard stats --since 24h
  agentguard stats --since all --json
Alerts follow the retry guide's rule: warn on a sustained 529 increase, page only when
retries and fallback both failed.
"""
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str) -> float | None:
    """'90s', '15m', '1h', '7d' → seconds; 'all' → None (no lower bound)."""
    if text == "all":
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", text.strip())
    if not match:
        raise Refused(
            f"--since {text!r} is not a duration; use a number and a unit (s, m, h, d, w), "
            "e.g. 15m, 1h, 7d, or all."
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", default="1h", help="how far back: 15m, 1h, 7d … or all")
    parser.add_argument("--json", action="store_true", help="one JSON document for scripts")


def run(ctx: Context, args: argparse.Namespace) -> int:
    span = parse_since(args.since)
    now = time.time()
    store = ctx.store()
    metrics = compute(
        store,
        since=None if span is None else now - span,
        until=now,
        prices=load_prices(store.home),
    )
    if ctx.as_json:
        # since/until: the window's bounds (ISO 8601 UTC, like every time in --json output)
        ctx.print_json({"window": args.since, "prices_as_of": PRICES_AS_OF, **metrics.to_dict()})
        return OK
    for line in render(metrics, args.since):
        ctx.out.print(line)
    return OK


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value / 1000:.2f} s"


def render(m: Metrics, since: str) -> list[Any]:
    """The figures as rich renderables: a summary table, per-model rows, alerts."""
    summary = Table(title=f"agentguard stats — {since}", show_header=False, box=None)
    summary.add_column(style="bold")
    summary.add_column()
    rows = [
        ("steps", f"{m.steps} ({m.steps_ok} ok, {m.waiting} waiting)"),
        ("final failures", str(m.final_failures)),
        ("fallback activations", str(m.fallback_activations)),
        ("retry success rate", f"{_pct(m.retry_success_rate)} of {m.steps_with_retries} steps"),
        ("429 vs 529", f"{m.rate_limited} vs {m.overloaded} (of {m.attempts} attempts)"),
        (
            "step latency p50/p95/p99",
            f"{_ms(m.latency_p50_ms)} / {_ms(m.latency_p95_ms)} / {_ms(m.latency_p99_ms)}",
        ),
        (
            "cost after fallback",
            f"${m.cost_usd:.4f} (on the requested models: ${m.cost_if_primary_usd:.4f}; "
            f"prices as of {PRICES_AS_OF})",
        ),
    ]
    if m.unpriced_models:
        rows.append(("no price for", ", ".join(m.unpriced_models)))
    for name, value in rows:
        summary.add_row(name, value)
    models = Table(title="by model")
    for column in ("model", "attempts", "529", "529 rate", "429", "served"):
        models.add_column(column, justify="left" if column == "model" else "right")
    for f in m.by_model:
        models.add_row(
            f.model,
            str(f.attempts),
            str(f.overloaded),
            _pct(f.overload_rate),
            str(f.rate_limited),
            str(f.served),
        )
    out: list[Any] = [summary, models]
    if m.failed_attempts:
        failed = Table(title="request-ids of failed attempts (newest first)")
        for column in ("model", "status", "error", "request-id"):
            failed.add_column(column)
        for a in m.failed_attempts:
            failed.add_row(
                a.model, str(a.status_code or "—"), a.error_type or "—", a.request_id or "—"
            )
        out.append(failed)
    for alert in m.alerts:
        style = "bold red" if alert.level == "page" else "yellow"
        out.append(f"[{style}]{alert.level.upper()}[/]: {alert.message}")
    if not m.alerts:
        out.append("no alerts")
    return out
