"""The runs list: every recent run, newest at the bottom, updated in place as runs change."""

from __future__ import annotations

from datetime import tzinfo
from typing import TYPE_CHECKING

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from agentguard.tui import formatting as fmt
from agentguard.tui.data import RunsPage, RunSummary
from agentguard.tui.widgets import Cell, Clipped, Column, KeyedTable

if TYPE_CHECKING:
    from agentguard.tui.app import WatchApp

STATUS_STYLE = {
    "running": "bold green",
    "completed": "dim",
    "failed": "bold red",
    "waiting": "bold black on yellow",
    "interrupted": "bold magenta",
}

# Flexible columns (flex > 0) share what the fixed ones leave: all on screen at 80 columns.
COLUMNS = (
    Column("status", "status", 11),
    Column("project", "project", 16, flex=1, min=8),
    Column("age", "age", 4),
    Column("steps", "steps", 5),
    Column("primary", "primary", 12, flex=1, min=8),
    Column("served", "served by", 20, flex=1, min=8),
    Column("subs", "subs", 4),
    Column("error", "last error", 80, flex=3, min=6),
)
# Fleet mode (a PostgreSQL store): every machine's runs, so each says which machine ran it.
FLEET_COLUMNS = (COLUMNS[0], Column("host", "host", 16, flex=1, min=7), *COLUMNS[1:])


def run_cells(
    run: RunSummary, now: float, tz: tzinfo | None, *, host: bool = False
) -> tuple[Cell, ...]:
    """One run as table cells (plain data, so a refresh compares them cheaply); with `host`,
    the FLEET_COLUMNS' host cell after the status."""
    served: Cell = ", ".join(fmt.short_model(m) for m in run.served_models) or fmt.DASH
    if any(m != run.primary_model for m in run.served_models):
        served = (str(served), "bold red")
    subs: Cell = (f"⚠ {run.substitutions}", "bold white on red") if run.substitutions else "0"
    error = fmt.one_line(run.last_error, 200)
    if run.status == "waiting":
        error = fmt.one_line(f"{fmt.waiting_banner(run, now, tz)} · {error}", 200)
    machine: tuple[Cell, ...] = (run.hostname or fmt.DASH,) if host else ()
    return (
        (run.status, STATUS_STYLE.get(run.status, "")),
        *machine,
        run.project_name,
        fmt.age(now - run.created_at) if run.created_at else fmt.DASH,
        str(run.steps),
        fmt.short_model(run.primary_model),
        served,
        subs,
        (error, "red") if error else "",
    )


class RunsTable(KeyedTable):
    BINDINGS = [Binding("enter", "select_cursor", "Open")]


class RunsScreen(Screen[None]):
    """Runs as a table; enter opens one; the line below tells the highlighted run's story."""

    DEFAULT_CSS = """
    RunsScreen #summary { height: 1; padding: 0 1; background: $panel; }
    RunsScreen #runs { height: 1fr; }
    RunsScreen #preview {
        height: 4;  /* the border and 3 lines */
        padding: 0 1;
        border-top: solid $panel-lighten-2;
    }
    """

    def __init__(self) -> None:
        super().__init__()
        self._page: RunsPage | None = None
        self._first = True
        # run id → (summary, age, cells): a refresh formats only the runs that changed
        self._cells: dict[str, tuple[RunSummary, str, tuple[Cell, ...]]] = {}

    @property
    def watch_app(self) -> WatchApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Static("loading runs…", id="summary")
        fleet = self.watch_app.reader.fleet
        yield RunsTable(FLEET_COLUMNS if fleet else COLUMNS, id="runs")
        yield Static("", id="preview")
        yield Footer()

    @property
    def table(self) -> RunsTable:
        return self.query_one("#runs", RunsTable)

    def on_mount(self) -> None:
        self.table.focus()
        if self.watch_app.runs_page is not None:
            self.show_page(self.watch_app.runs_page)

    def show_page(self, page: RunsPage) -> None:
        """Apply a freshly loaded page: keyed update, then the summary and the preview."""
        self._page = page
        result = self.table.sync([(r.id, self._cells_of(r)) for r in page.runs])
        if page.runs and (self._first or (self.watch_app.follow and result.added)):
            self.table.select_key(result.added[-1] if result.added else page.runs[-1].id)
        if page.runs:
            self._first = False
        self.refresh_summary()
        self.refresh_preview()

    def _cells_of(self, run: RunSummary) -> tuple[Cell, ...]:
        now = self.watch_app.now()
        age = fmt.age(now - run.created_at) if run.created_at else fmt.DASH
        cached = self._cells.get(run.id)
        if cached is not None and cached[0] == run and cached[1] == age and run.status != "waiting":
            return cached[2]
        cells = run_cells(run, now, self.watch_app.tz, host=self.watch_app.reader.fleet)
        self._cells[run.id] = (run, age, cells)
        return cells

    def refresh_summary(self) -> None:
        page = self._page
        if page is None:
            return
        shown = len(page.runs)
        parts = [f"{page.total} run{'s' if page.total != 1 else ''}"]
        if shown < page.total:
            parts[0] += f" ({shown} newest shown)"
        text = Text("agentguard", style="bold")
        if self.watch_app.follow:
            text.append(" [follow]", style="bold cyan")
        text.append(" · " + parts[0])
        for status in ("running", "waiting", "failed", "interrupted"):
            n = sum(r.status == status for r in page.runs)
            if n:
                text.append(" · ")
                text.append(f"{n} {status}", style=STATUS_STYLE[status])
        subs = sum(r.substitutions for r in page.runs)
        if subs:
            text.append(" · ")
            text.append(f"⚠ {subs} substituted step{'s' if subs != 1 else ''}", style="bold red")
        self.query_one("#summary", Static).update(text)

    def refresh_preview(self) -> None:
        key = self.table.cursor_key
        run = next((r for r in self._page.runs if r.id == key), None) if self._page else None
        preview = self.query_one("#preview", Static)
        if run is None:
            preview.update("No runs yet: they appear here as soon as an agent starts one.")
            return
        app = self.watch_app
        text = Text()
        text.append(run.name, style="bold")
        where = f"{run.hostname or '?'}:{run.project}" if app.reader.fleet else run.project
        text.append(f" · {run.id} · {where}", style="dim")
        text.append("\n")
        if run.status == "waiting":
            text.append(fmt.waiting_banner(run, app.now(), app.tz), style="bold yellow")
            text.append("\n")
        if run.substitutions:
            served = ", ".join(m for m in run.served_models if m != run.primary_model)
            text.append(
                f"⚠ {run.substitutions} step(s) served by {served} instead of {run.primary_model}",
                style="bold red",
            )
            text.append("\n")
        if run.last_error:
            text.append(f"last error: {fmt.one_line(run.last_error)}", style="red")
        text.rstrip()
        preview.update(Clipped(text, 3, single=1))

    @on(DataTable.RowHighlighted, "#runs")
    def _highlighted(self) -> None:
        self.refresh_preview()

    @on(DataTable.RowSelected, "#runs")
    def _selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value:
            self.watch_app.open_run(event.row_key.value)

    def follow_changed(self) -> None:
        if self.watch_app.follow and self._page and self._page.runs:
            self.table.select_key(self._page.runs[-1].id)
        self.refresh_summary()
