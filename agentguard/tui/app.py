"""The watch app: a live view over a store that other processes write.

One read-only view of the store; one poll worker at a time. Each poll reads the store's
version (it changes only when something was committed: SQLite's data_version, or on PostgreSQL
the count of change announcements heard over LISTEN, so an idle poll asks the server nothing)
and, when it changed — or when the view asked for fresh data, or every `tick_interval` so ages
and dead processes show — loads what the open screens need and posts it. The next poll is
armed only when the last one finished, so polls never overlap. Handlers on the UI thread own
every widget update.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import App
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.reactive import reactive
from textual.screen import Screen
from textual.timer import Timer

from agentguard.tui.data import MetricsView, Reader, RunDetail, RunsPage, open_reader
from agentguard.tui.messages import (
    LoadFailed,
    MetricsLoaded,
    PollFinished,
    RunLoaded,
    RunsLoaded,
)
from agentguard.tui.screens.metrics import WINDOWS, MetricsScreen
from agentguard.tui.screens.run import RunScreen
from agentguard.tui.screens.runs import RunsScreen

POLL_INTERVAL_S = 0.5
TICK_INTERVAL_S = 5.0
METRICS_INTERVAL_S = 5.0
RUNS_LIMIT = 500


@dataclass(frozen=True)
class Wanted:
    """What the open screens need from one poll (decided on the UI thread)."""

    run_ids: tuple[str, ...]
    metrics_window: str | None
    runs_since: float | None
    runs_limit: int
    force: bool


class WatchApp(App[int]):
    """`agentguard watch`: runs, steps, attempts, substitutions, diffs, restore, metrics."""

    TITLE = "agentguard watch"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("m", "metrics", "Metrics"),
        Binding("f", "toggle_follow", "Follow"),
    ]

    follow: reactive[bool] = reactive(False, init=False)

    def __init__(
        self,
        db: str | Path,
        *,
        home: str | Path | None = None,
        clock: Callable[[], float] = time.time,
        tz: tzinfo | None = None,
        poll_interval: float = POLL_INTERVAL_S,
        tick_interval: float = TICK_INTERVAL_S,
        metrics_interval: float = METRICS_INTERVAL_S,
        runs_limit: int = RUNS_LIMIT,
        follow: bool = False,
        open_run: str | None = None,
    ) -> None:
        super().__init__()
        self._open_first = open_run
        # a SQLite file, or a postgresql:// URL (`home`: where this machine's checkpoints are)
        self.reader: Reader = open_reader(db, home=home)
        self.clock = clock
        self.tz = tz
        self.poll_interval = poll_interval
        self.tick_interval = tick_interval
        self.metrics_interval = metrics_interval
        self.runs_limit = runs_limit
        self.set_reactive(WatchApp.follow, follow)
        # State owned by the UI thread.
        self.runs_page: RunsPage | None = None
        self.details: dict[str, RunDetail] = {}
        self.metrics_view: MetricsView | None = None
        self.metrics_window = "24h"
        self.loads = 0  # pages applied (tests wait on it)
        self.last_error: str | None = None
        self._runs_since: float | None = None
        self._polling = False
        self._force = False
        self._timer: Timer | None = None
        # State owned by the poll worker (polls never overlap).
        self._version: int | None = None
        self._loaded_at = float("-inf")
        self._metrics_at = float("-inf")

    def now(self) -> float:
        return self.clock()

    def get_default_screen(self) -> Screen[None]:
        return RunsScreen()

    def on_mount(self) -> None:
        self._launch_poll()
        if self._open_first is not None:  # e.g. the demo's run
            self.open_run(self._open_first)

    def on_unmount(self) -> None:
        self.reader.close()

    # -- polling ------------------------------------------------------------------------------

    def request_load(self) -> None:
        """Load now (a screen opened or changed what it shows) without overlapping a poll."""
        self._force = True
        if not self._polling:
            if self._timer is not None:
                self._timer.stop()
            self._launch_poll()

    def _wanted(self) -> Wanted:
        force, self._force = self._force, False
        run_ids = tuple(
            dict.fromkeys(s.run_id for s in self.screen_stack if isinstance(s, RunScreen))
        )
        metrics = any(isinstance(s, MetricsScreen) for s in self.screen_stack)
        return Wanted(
            run_ids=run_ids,
            metrics_window=self.metrics_window if metrics else None,
            runs_since=self._runs_since,
            runs_limit=self.runs_limit,
            force=force,
        )

    def _launch_poll(self) -> None:
        self._timer = None
        self._polling = True
        self._poll(self._wanted())

    @work(thread=True, exclusive=True, group="poll", exit_on_error=False)
    def _poll(self, wanted: Wanted) -> None:
        """Runs in a thread: reads the store, posts what it found, never touches a widget."""
        changed = False
        try:
            version = self.reader.data_version()
            mono = time.monotonic()
            due = mono - self._loaded_at >= self.tick_interval
            if wanted.force or version != self._version or due:
                changed = True
                self._version, self._loaded_at = version, mono
                page = self.reader.runs_page(limit=wanted.runs_limit, since=wanted.runs_since)
                self.post_message(RunsLoaded(page))
                for run_id in wanted.run_ids:
                    self.post_message(RunLoaded(run_id, self.reader.run_detail(run_id)))
                if wanted.metrics_window is not None and (
                    wanted.force or mono - self._metrics_at >= self.metrics_interval
                ):
                    self._metrics_at = mono
                    span = WINDOWS[wanted.metrics_window]
                    until = self.clock()
                    since = None if span is None else until - span
                    view = self.reader.metrics(
                        since=since, until=until, window=wanted.metrics_window
                    )
                    self.post_message(MetricsLoaded(view))
        except Exception as exc:  # a damaged or vanished store: say so, keep polling
            self.post_message(LoadFailed(f"{type(exc).__name__}: {exc}"))
        finally:
            self.post_message(PollFinished(changed))

    @on(PollFinished)
    def _poll_finished(self) -> None:
        self._polling = False
        if self._force:  # a screen asked for data while this poll ran
            self.call_next(self._launch_poll)
        else:
            self._timer = self.set_timer(self.poll_interval, self._launch_poll, name="poll")

    # -- applying loaded data -----------------------------------------------------------------

    @on(RunsLoaded)
    def _runs_loaded(self, message: RunsLoaded) -> None:
        self.runs_page = message.page
        if self._runs_since is None and message.page.runs:
            self._runs_since = message.page.since
        self.last_error = None
        with self.batch_update():
            for screen in self.screen_stack:
                if isinstance(screen, RunsScreen):
                    _apply(screen.show_page, message.page)
        self.loads += 1

    @on(RunLoaded)
    def _run_loaded(self, message: RunLoaded) -> None:
        if message.detail is None:
            self.details.pop(message.run_id, None)
        else:
            self.details[message.run_id] = message.detail
        with self.batch_update():
            for screen in self.screen_stack:
                if isinstance(screen, RunScreen) and screen.run_id == message.run_id:
                    _apply(screen.show_detail, message.detail)

    @on(MetricsLoaded)
    def _metrics_loaded(self, message: MetricsLoaded) -> None:
        self.metrics_view = message.view
        for screen in self.screen_stack:
            if isinstance(screen, MetricsScreen):
                _apply(screen.show_metrics, message.view)

    @on(LoadFailed)
    def _load_failed(self, message: LoadFailed) -> None:
        if message.error != self.last_error:
            self.last_error = message.error
            self.notify(f"Reading the store failed: {message.error}", severity="error")

    # -- navigation ---------------------------------------------------------------------------

    def open_run(self, run_id: str) -> None:
        self.push_screen(RunScreen(run_id))
        self.request_load()

    def action_metrics(self) -> None:
        if not isinstance(self.screen, MetricsScreen):
            self.push_screen(MetricsScreen())
        self.request_load()

    def cycle_metrics_window(self) -> None:
        names = list(WINDOWS)
        self.metrics_window = names[(names.index(self.metrics_window) + 1) % len(names)]
        self.notify(f"metrics window: {self.metrics_window}", timeout=2)
        self.request_load()

    def action_toggle_follow(self) -> None:
        self.follow = not self.follow

    def watch_follow(self) -> None:
        for screen in self.screen_stack:
            if isinstance(screen, RunsScreen | RunScreen):
                screen.follow_changed()


def _apply(show: Callable[[Any], None], data: Any) -> None:
    """Show loaded data on a screen; one still composing or already closing skips it (a
    screen shows the app's latest data when it mounts)."""
    with contextlib.suppress(NoMatches):
        show(data)
