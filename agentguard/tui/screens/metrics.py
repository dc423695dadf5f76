"""The metrics panel: agentguard.metrics.compute over a window, with its alerts on top."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from agentguard.metrics import Metrics
from agentguard.tui import formatting as fmt
from agentguard.tui.data import MetricsView
from agentguard.tui.widgets import Banner, Clipped

if TYPE_CHECKING:
    from agentguard.tui.app import WatchApp

WINDOWS = {"15m": 900.0, "1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0, "all": None}


def pct(value: float | None) -> str:
    return fmt.DASH if value is None else f"{value:.1%}"


def figures(m: Metrics) -> Text:
    t = Text()
    t.append("steps ", style="dim")
    t.append(f"{m.steps}", style="bold")
    t.append(f" · ok {m.steps_ok} · waiting {m.waiting} · final failures ")
    t.append(str(m.final_failures), style="bold red" if m.final_failures else "")
    t.append(" · fallbacks ")
    t.append(str(m.fallback_activations), style="bold red" if m.fallback_activations else "")
    t.append("\nattempts ", style="dim")
    rate = m.overloaded / m.attempts if m.attempts else 0.0
    t.append(f"{m.attempts}", style="bold")
    t.append(f" · 529 {m.overloaded} ({rate:.1%}) · 429 {m.rate_limited}")
    t.append(f" · 429 vs 529 {m.rate_limited}:{m.overloaded}")
    t.append("\nretry success ", style="dim")
    t.append(pct(m.retry_success_rate), style="bold")
    t.append(f" ({m.retries_recovered} of {m.steps_with_retries} steps that retried)")
    t.append("\nlatency ", style="dim")
    t.append(
        f"p50 {fmt.ms(m.latency_p50_ms)} · p95 {fmt.ms(m.latency_p95_ms)} · "
        f"p99 {fmt.ms(m.latency_p99_ms)} (whole steps, retries included)"
    )
    t.append("\ncost ", style="dim")
    t.append(f"${m.cost_usd:.4f}", style="bold")
    t.append(f" · on the requested models ${m.cost_if_primary_usd:.4f}")
    if m.unpriced_models:
        t.append(f" · unpriced: {', '.join(m.unpriced_models)}", style="dim")
    return t


def by_model(m: Metrics) -> Table:
    table = Table(title="by model", title_justify="left", box=None, padding=(0, 2, 0, 0))
    for name, justify in (
        ("model", "left"),
        ("attempts", "right"),
        ("529", "right"),
        ("429", "right"),
        ("served", "right"),
        ("529 rate", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for f in m.by_model:
        table.add_row(
            f.model or "?",
            str(f.attempts),
            str(f.overloaded),
            str(f.rate_limited),
            str(f.served),
            Text(f"{f.overload_rate:.1%}", style="bold red" if f.overload_rate > 0.02 else ""),
        )
    if not m.by_model:
        table.add_row("no attempts in this window", "", "", "", "", "")
    return table


def failed(m: Metrics, view: WatchApp) -> Table:
    table = Table(
        title="failed attempts (newest first)",
        title_justify="left",
        box=None,
        padding=(0, 2, 0, 0),
    )
    for name, width in (
        ("time", 8),
        ("run", 12),
        ("model", 10),
        ("code", 4),
        ("error", 10),
        ("request-id", 28),
    ):
        table.add_column(name, no_wrap=True, min_width=width, overflow="ellipsis")
    for a in m.failed_attempts:
        table.add_row(
            fmt.clock_time(a.at, view.tz, date=False).split(" ")[0],
            a.run_id,
            fmt.short_model(a.model),
            str(a.status_code or fmt.DASH),
            fmt.short_error(a.error_type) or fmt.DASH,
            a.request_id or fmt.DASH,
        )
    if not m.failed_attempts:
        table.add_row("none", "", "", "", "", "")
    return table


class MetricsScreen(Screen[None]):
    """The monitoring checklist. Keys: w window, escape back."""

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("w", "window", "Window"),
    ]

    DEFAULT_CSS = """
    MetricsScreen #metrics-head { height: 1; padding: 0 1; background: $panel; }
    MetricsScreen #metrics-body { height: 1fr; padding: 0 1; }
    MetricsScreen #figures { height: auto; margin-bottom: 1; }
    MetricsScreen #tables { height: auto; }
    """

    @property
    def watch_app(self) -> WatchApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Static("metrics · loading…", id="metrics-head")
        yield Banner(id="alerts", max_lines=4)
        with VerticalScroll(id="metrics-body"):
            yield Static("", id="figures")
            yield Static("", id="tables")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#metrics-body").focus()
        if self.watch_app.metrics_view is not None:
            self.show_metrics(self.watch_app.metrics_view)

    def show_metrics(self, view: MetricsView) -> None:
        m = view.metrics
        app = self.watch_app
        label = "all time" if view.window == "all" else f"last {view.window}"
        head = Text.assemble(
            ("metrics", "bold"),
            f" · {label} · until {fmt.clock_time(m.until, app.tz)}",
            (" · w: change window", "dim"),
        )
        self.query_one("#metrics-head", Static).update(Clipped(head, 1, single=1))
        ordered = sorted(m.alerts, key=lambda a: a.level != "page")  # pages first
        paged = any(a.level == "page" for a in ordered)
        self.query_one("#alerts", Banner).show(
            "\n".join(f"{a.level.upper()}: {a.message}" for a in ordered),
            "substituted" if paged else "waiting",
        )
        self.query_one("#figures", Static).update(figures(m))
        self.query_one("#tables", Static).update(Group(by_model(m), Text(""), failed(m, app)))

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_window(self) -> None:
        self.watch_app.cycle_metrics_window()
