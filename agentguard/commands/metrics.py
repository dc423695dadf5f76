"""`agentguard metrics --port N`: the same figures for Prometheus to scrape."""

from __future__ import annotations

import argparse
import errno
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from agentguard.commands.common import OK, Context, Refused
from agentguard.metrics import compute
from agentguard.pricing import load_prices
from agentguard.store import Store

NAME = "metrics"
SUMMARY = "Serve the monitoring figures for Prometheus (computed from the store at each scrape)."
EPILOG = """\
examples:
  agentguard metrics --port 9464
  agentguard metrics --port 9464 --window 15m --host 0.0.0.0
Metrics are prefixed agentguard_; counters cover the --window before each scrape.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, required=True, help="the port to listen on")
    parser.add_argument("--host", default="127.0.0.1", help="the address (default loopback)")
    parser.add_argument("--window", default="1h", help="what each scrape covers (default 1h)")


class StoreCollector:
    """A prometheus_client collector that computes every figure from the store per scrape."""

    def __init__(self, store: Store, window: float | None, clock: Callable[[], float]) -> None:
        self.store = store
        self.window = window
        self.clock = clock
        self.lock = threading.Lock()  # scrapes may overlap; the store connection is shared
        self.prices = load_prices(store.home)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        now = self.clock()
        with self.lock:
            m = compute(
                self.store,
                since=None if self.window is None else now - self.window,
                until=now,
                prices=self.prices,
            )

        def gauge(name: str, doc: str, value: float | None, labels: dict[str, str] | None = None):
            family = GaugeMetricFamily(f"agentguard_{name}", doc, labels=list(labels or {}))
            if value is not None:
                family.add_metric(list((labels or {}).values()), value)
            return family

        attempts = GaugeMetricFamily(
            "agentguard_attempts", "attempts in the window", labels=["model"]
        )
        overloads = GaugeMetricFamily(
            "agentguard_overloaded_attempts",
            "529s in the window (mid-stream included)",
            labels=["model"],
        )
        rate = GaugeMetricFamily("agentguard_overload_rate", "529 rate by model", labels=["model"])
        limited = GaugeMetricFamily(
            "agentguard_rate_limited_attempts", "429s in the window", labels=["model"]
        )
        for f in m.by_model:
            attempts.add_metric([f.model], f.attempts)
            overloads.add_metric([f.model], f.overloaded)
            rate.add_metric([f.model], f.overload_rate)
            limited.add_metric([f.model], f.rate_limited)
        yield from (attempts, overloads, rate, limited)
        yield gauge("steps", "steps in the window", m.steps)
        yield gauge(
            "final_failures", "steps that failed after retries and fallback", m.final_failures
        )
        yield gauge("fallback_activations", "steps served by another route", m.fallback_activations)
        yield gauge(
            "retry_success_rate",
            "share of retried steps their own route served",
            m.retry_success_rate,
        )
        for q, value in (
            ("0.5", m.latency_p50_ms),
            ("0.95", m.latency_p95_ms),
            ("0.99", m.latency_p99_ms),
        ):
            yield gauge(
                "step_latency_seconds",
                "step latency including retries",
                None if value is None else value / 1000,
                {"quantile": q},
            )
        yield gauge("cost_usd", "cost of served attempts", m.cost_usd)
        yield gauge(
            "cost_if_primary_usd", "the same tokens on the requested models", m.cost_if_primary_usd
        )
        yield gauge(
            "alerts_page",
            "1 when retries and fallback both failed",
            float(any(a.level == "page" for a in m.alerts)),
        )
        yield gauge(
            "alerts_warn",
            "1 on a sustained 529 increase",
            float(any(a.level == "warn" for a in m.alerts)),
        )


def serve(
    store: Store, host: str, port: int, window: float | None, clock: Callable[[], float] = time.time
) -> tuple[Any, Any]:
    """Start the HTTP exporter in a thread; returns (server, thread) so callers can stop it."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, window, clock))
    return start_http_server(port, addr=host, registry=registry)


def run(ctx: Context, args: argparse.Namespace) -> int:
    from agentguard.commands.stats import parse_since

    window = parse_since(args.window)
    check_port(args.port)
    store = ctx.store()
    try:
        server, thread = serve(store, args.host, args.port, window)
    except OSError as exc:
        raise Refused(listen_failure(args.host, args.port, exc)) from None
    port = server.server_address[1]  # --port 0: the one the system picked
    ctx.err.print(
        f"serving agentguard metrics on http://{args.host}:{port}/metrics (Ctrl-C to stop)",
        soft_wrap=True,
    )
    try:
        thread.join()
    finally:
        server.shutdown()
    return OK


def check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise Refused(f"--port {port} is not a TCP port; give one from 1 to 65535, e.g. 9464.")


def listen_failure(host: str, port: int, exc: OSError) -> str:
    """Why the exporter could not listen, and what to do about it, in one sentence."""
    if isinstance(exc, socket.gaierror):
        return (
            f"--host {host!r} is not an address of this machine ({exc.strerror}); "
            "give an IP address such as 127.0.0.1 or 0.0.0.0."
        )
    if exc.errno == errno.EADDRINUSE:
        return (
            f"Port {port} on {host} is already in use; stop what listens there "
            "or pick another port with --port."
        )
    if exc.errno == errno.EACCES:
        return (
            f"Not allowed to listen on port {port} on {host} ({exc.strerror}); "
            "pick a port above 1023 with --port."
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"--host {host} is not an address of this machine ({exc.strerror}); "
            "give one it has, such as 127.0.0.1 or 0.0.0.0."
        )
    return f"Cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port or --host."
