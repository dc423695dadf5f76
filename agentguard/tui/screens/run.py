"""One run: its steps as a timeline, the highlighted step's attempts, and its banners.

A substituted step is impossible to miss: the run carries a red banner naming every step
another model served, the step's row says so in red, and the highlighted step's own banner
reads "served by X instead of Y — why". A queued run carries a yellow banner with its next
attempt time, counting down.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from agentguard.errors import AgentGuardError
from agentguard.restoring import restore_step
from agentguard.resuming import accept_refused
from agentguard.store import Store
from agentguard.tui import formatting as fmt
from agentguard.tui.data import AttemptView, RunDetail, StepView
from agentguard.tui.messages import AcceptFinished, RestoreAsked, RestoreFinished
from agentguard.tui.screens.confirm import ConfirmRestore
from agentguard.tui.screens.diff import DiffScreen
from agentguard.tui.screens.runs import STATUS_STYLE
from agentguard.tui.trees import checkpoint_problem
from agentguard.tui.widgets import Banner, Cell, Clipped, Column, KeyedTable
from agentguard.user_repo import moved_since

if TYPE_CHECKING:
    from agentguard.store_pg import PostgresStore
    from agentguard.tui.app import WatchApp

# Flexible columns (flex > 0) share what the fixed ones leave, so every column is on screen
# at 80 columns and a cut cell ends in "…"; the attempts' outcome is fixed, always shown whole.
STEP_COLUMNS = (
    Column("n", "#", 3),
    Column("status", "status", 11, flex=1, min=7),
    Column("checkpoint", "checkpoint", 10),
    Column("attempts", "attempts", 13, flex=1, min=9),
    Column("served", "served by", 14, flex=1, min=10),
    Column("latency", "latency", 7),
    Column("why", "reason / error", 120, flex=3, min=8),
)

ATTEMPT_COLUMNS = (
    Column("n", "#", 2),
    Column("model", "model", 12, flex=1, min=8),
    Column("status", "code", 6),
    Column("error", "error type", 12, flex=1, min=8),
    Column("latency", "latency", 7),
    Column("slept", "slept", 6),
    Column("request", "request-id", 30, flex=2, min=8),
    Column("outcome", "outcome", 11),
)

STEP_STYLE = {
    "ok": "green",
    "failed": "bold red",
    "waiting": "bold yellow",
    "pending": "cyan",
    "interrupted": "bold magenta",
    "cancelled": "magenta",
    "refused": "bold yellow",
}
OUTCOME_STYLE = {
    "ok": "green",
    "retry": "yellow",
    "wait": "yellow",
    "pending": "cyan",
    "interrupted": "magenta",
    "cancelled": "magenta",
}
MAX_LISTED = 8  # step numbers named in the run's substitution banner


def step_cells(step: StepView) -> tuple[Cell, ...]:
    served: Cell = fmt.short_model(step.served_model) if step.served_model else fmt.DASH
    if step.substituted:
        served = (f"⚠ {served}", "bold white on red")
    if step.substituted:
        why: Cell = (fmt.substitution_banner(step), "bold red")
    elif step.error:
        why = (fmt.one_line(step.error, 200), "red")
    else:
        why = fmt.one_line(step.reason, 200)
    checkpoint: Cell = fmt.short_sha(step.checkpoint)
    if step.checkpoint_pruned_at is not None:
        checkpoint = (f"{fmt.short_sha(step.checkpoint)}✗", "dim strike")
    return (
        str(step.number),
        (step.status, STEP_STYLE.get(step.status, "")),
        checkpoint,
        fmt.attempts_summary(step.attempts),
        served,
        fmt.ms(step.latency_ms),
        why,
    )


def attempt_cells(attempt: AttemptView) -> tuple[Cell, ...]:
    outcome = attempt.outcome or ""
    style = OUTCOME_STYLE.get(outcome, "bold red")
    return (
        str(attempt.number),
        fmt.short_model(attempt.model),
        (fmt.attempt_status(attempt), style),
        fmt.short_error(attempt.error_type) or fmt.DASH,
        fmt.ms(attempt.latency_ms),
        fmt.ms(attempt.slept_before_ms) if attempt.slept_before_ms else "0",
        attempt.request_id or fmt.DASH,
        (outcome, style),
    )


def step_line(step: StepView) -> tuple[str, str]:
    """The highlighted step's banner: (text, kind)."""
    where = f"checkpoint {fmt.short_sha(step.checkpoint, 12)}"
    if step.checkpoint_pruned_at is not None:
        where += " (pruned)"
    tries = len(step.attempts)
    if step.status == "refused":  # the answer is kept; `a` hands it over
        return (
            f"⛔ step {step.number} refused: {fmt.substitution_banner(step)} "
            f"({fmt.one_line(step.error)}) · press a to accept the kept answer · {where}",
            "waiting",
        )
    if step.substituted:  # names the requested model: "… instead of claude-opus-4-7"
        return f"⚠ step {step.number} {fmt.substitution_banner(step)} · {where}", "substituted"
    # The requested model comes first, so a banner cut short still names it.
    step_of = f"step {step.number} ({step.requested_model or 'model unknown'})"
    if step.status == "failed":
        return f"✗ {step_of} failed: {fmt.one_line(step.error)} · {where}", "substituted"
    if step.status == "waiting":
        return f"⏸ {step_of} queued: {fmt.one_line(step.error)} · {where}", "waiting"
    if step.status == "pending":
        return f"… {step_of} in flight · attempt {tries} · {where}", "info"
    if step.status == "interrupted":
        return (
            f"✗ {step_of} interrupted: the agent process ended during attempt {tries} · {where}",
            "waiting",
        )
    if step.status == "cancelled":
        return f"✗ {step_of} {fmt.one_line(step.error)} · {where}", "waiting"
    served = f"{step.served_model} ({step.served_provider})" if step.served_model else fmt.DASH
    slept = f" · slept {fmt.ms(step.slept_ms)}" if step.slept_ms else ""
    return (
        f"{step_of} served by {served} · {tries} attempt{'s' if tries != 1 else ''}"
        f" · {fmt.ms(step.latency_ms)}{slept} · {where}",
        "info",
    )


class RunScreen(Screen[None]):
    """A run's timeline. Keys: d diff, r restore, a accept a refused step, escape back."""

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("d", "diff", "Diff"),
        Binding("r", "restore", "Restore"),
        Binding("a", "accept", "Accept"),
    ]

    # At 80×24 the worst case (queued and substituted, after a restore) is 2 + 3 + 2 + 4 + 2 + 7
    # + 3 + 1 = 24 rows; banners hold to their line counts and end in "…" when cut.
    DEFAULT_CSS = """
    RunScreen #run-head { height: 2; padding: 0 1; background: $panel; }
    RunScreen #steps { height: 1fr; min-height: 4; }
    RunScreen #attempts { height: 7; border-top: solid $panel-lighten-2; }
    """

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id
        self.detail: RunDetail | None = None
        self._first = True
        self._step_key: str | None = None

    @property
    def watch_app(self) -> WatchApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Static(f"run {self.run_id} · loading…", id="run-head")
        yield Banner(id="waiting-banner", max_lines=3)
        yield Banner(id="subs-banner", max_lines=2)
        yield KeyedTable(STEP_COLUMNS, id="steps")
        yield Banner(id="step-banner", max_lines=2)
        yield KeyedTable(ATTEMPT_COLUMNS, id="attempts", cursor_on_focus=True)
        yield Banner(id="restore-note", max_lines=3)  # room for its undo command
        yield Footer()

    @property
    def steps_table(self) -> KeyedTable:
        return self.query_one("#steps", KeyedTable)

    @property
    def attempts_table(self) -> KeyedTable:
        return self.query_one("#attempts", KeyedTable)

    def on_mount(self) -> None:
        self.steps_table.focus()
        self.set_interval(1.0, self._tick)
        detail = self.watch_app.details.get(self.run_id)
        if detail is not None:
            self.show_detail(detail)

    # -- showing ------------------------------------------------------------------------------

    def show_detail(self, detail: RunDetail | None) -> None:
        if detail is None:
            self.query_one("#run-head", Static).update(
                f"No run {self.run_id} in this store; esc goes back to the list of runs."
            )
            return
        self.detail = detail
        result = self.steps_table.sync([(str(s.id), step_cells(s)) for s in detail.steps])
        if detail.steps and (self._first or (self.watch_app.follow and result.added)):
            self.steps_table.select_key(str(detail.steps[-1].id))
        if detail.steps:
            self._first = False
        self._show_head(detail)
        self._show_banners(detail)
        self._show_step()

    def _show_head(self, detail: RunDetail) -> None:
        run = detail.run
        app = self.watch_app
        text = Text()
        text.append(f"{run.name}", style="bold")
        text.append(" · ")
        text.append(run.status, style=STATUS_STYLE.get(run.status, ""))
        where = f"{run.hostname or '?'}:{run.project}" if app.reader.fleet else run.project
        text.append(f" · {run.id} · {where}\n", style="")
        subs = len(detail.substituted)
        text.append(f"primary {run.primary_model or fmt.DASH} · {len(detail.steps)} steps")
        if detail.git is not None:  # the user's repository at the latest checkpoint
            dirty = "uncommitted changes" if detail.git.dirty else "clean"
            text.append(f" · {detail.git.describe(branch_word=False)}, {dirty}")
        if subs:
            text.append(f" · ⚠ {subs} substituted", style="bold red")
        if run.created_at is not None:
            elapsed = app.now() - run.created_at
            started = fmt.clock_time(run.created_at, app.tz, date=elapsed >= 86400)
            text.append(f" · started {started} ({fmt.age(elapsed)} ago)", style="dim")
        if app.follow:
            text.append(" · follow", style="dim")
        self.query_one("#run-head", Static).update(Clipped(text, 2, single=2))

    def _show_banners(self, detail: RunDetail) -> None:
        run = detail.run
        waiting = self.query_one("#waiting-banner", Banner)
        if run.status == "waiting":
            lines = [f"⏸ {fmt.waiting_banner(run, self.watch_app.now(), self.watch_app.tz)}"]
            if run.last_error:
                lines.append(fmt.one_line(run.last_error, 300))
            waiting.show("\n".join(lines), "waiting")
        else:
            waiting.show(None)
        subs = detail.substituted
        if len(subs) > 1:
            numbers = ", ".join(str(s.number) for s in subs[:MAX_LISTED])
            more = f" and {len(subs) - MAX_LISTED} more" if len(subs) > MAX_LISTED else ""
            latest = subs[-1]
            text = (
                f"⚠ {len(subs)} of {len(detail.steps)} steps served by another model than "
                f"requested (steps {numbers}{more}; ⚠ below)\n"
                f"latest: step {latest.number} {fmt.substitution_banner(latest)}"
            )
        else:
            text = "\n".join(f"⚠ step {s.number} {fmt.substitution_banner(s)}" for s in subs)
        self.query_one("#subs-banner", Banner).show(text, "substituted")

    def current_step(self) -> StepView | None:
        key = self.steps_table.cursor_key
        if self.detail is None or key is None:
            return None
        return self.detail.step(int(key))

    def _show_step(self) -> None:
        step = self.current_step()
        banner = self.query_one("#step-banner", Banner)
        if step is None:
            banner.show("no steps yet" if self.detail else "loading…", "info")
            self.attempts_table.sync([])
            return
        text, kind = step_line(step)
        banner.show(text, kind)
        key = str(step.id)
        if key != self._step_key:
            self._step_key = key
            self.attempts_table.sync([])  # another step: its own attempts, cursor at the top
        self.attempts_table.sync([(str(a.id), attempt_cells(a)) for a in step.attempts])

    def _tick(self) -> None:
        """The queued banner counts down from the clock alone (no store read)."""
        if self.detail is not None and self.detail.run.status == "waiting":
            self._show_banners(self.detail)

    def follow_changed(self) -> None:
        if self.detail is not None:
            if self.watch_app.follow and self.detail.steps:
                self.steps_table.select_key(str(self.detail.steps[-1].id))
            self._show_head(self.detail)

    @on(DataTable.RowHighlighted, "#steps")
    def _step_highlighted(self) -> None:
        self._show_step()

    @on(DataTable.RowSelected, "#steps")
    def _step_selected(self) -> None:
        self.action_diff()

    # -- actions ------------------------------------------------------------------------------

    def action_back(self) -> None:
        self.app.pop_screen()

    def _usable_step(self) -> StepView | None:
        step = self.current_step()
        if self.detail is None or step is None:
            self.notify("No step selected.", severity="warning")
            return None
        problem = checkpoint_problem(self.detail, step)
        if problem:
            self.notify(problem, severity="error", timeout=8)
            return None
        return step

    def action_diff(self) -> None:
        step = self._usable_step()
        if step is not None and self.detail is not None:
            self.app.push_screen(DiffScreen(self.detail, step))

    def action_restore(self) -> None:
        """Ask first; restore only on an explicit yes."""
        step = self._usable_step()
        if step is None or self.detail is None:
            return
        self._ask_restore(self.detail, step)

    @contextmanager
    def _writable_store(self) -> Iterator[Store | PostgresStore]:
        """A handle on the app's store for one action in a worker (the app itself only reads):
        on SQLite it shares the process's one connection; on PostgreSQL it is a store of its
        own, whose shadow git store is this machine's (see `checkpoint_problem`)."""
        store = self.watch_app.reader.open_store()
        try:
            yield store
        finally:
            store.close()

    @work(thread=True, exclusive=True, group="ask-restore", exit_on_error=False)
    def _ask_restore(self, detail: RunDetail, step: StepView) -> None:
        """Read the user's repository off the UI thread: has its branch or HEAD moved since
        the checkpoint? The question says so before anything is rewritten."""
        moved = None
        if step.checkpoint:
            try:
                with self._writable_store() as store:
                    moved = moved_since(store, detail.run.project, step.checkpoint)
            except Exception:  # the question is still asked, without the note
                moved = None
        self.post_message(RestoreAsked(detail, step, moved))

    @on(RestoreAsked)
    def _asked(self, message: RestoreAsked) -> None:
        detail, step = message.detail, message.step
        self.app.push_screen(
            ConfirmRestore(detail, step, moved=message.moved),
            callback=partial(self._confirmed, detail, step),
        )

    def _confirmed(self, detail: RunDetail, step: StepView, yes: bool | None) -> None:
        if not yes:
            self.notify("Restore cancelled: the working tree was not touched.", timeout=4)
            return
        self.query_one("#restore-note", Banner).show(
            f"restoring {detail.run.project} to step {step.number}…", "info"
        )
        self._restore(detail, step)

    @work(thread=True, exclusive=True, group="restore", exit_on_error=False)
    def _restore(self, detail: RunDetail, step: StepView) -> None:
        """The CLI's restore (agentguard.restoring): refused while another live process drives
        the run; the tree is saved first as the run's backup, with a `restored` event, so
        `agentguard restore RUN --undo` undoes it. The app's own connection is read-only, so
        this opens a writable handle on the store for the restore alone."""
        try:
            with self._writable_store() as store:
                done = restore_step(store, detail.run.id, step.number)
        except AgentGuardError as exc:
            self.post_message(RestoreFinished(step.number, None, str(exc)))
            return
        except Exception as exc:  # say so rather than leave "restoring…" on screen
            self.post_message(RestoreFinished(step.number, None, f"{type(exc).__name__}: {exc}"))
            return
        self.post_message(RestoreFinished(step.number, done.result))

    def action_accept(self) -> None:
        """Accept the highlighted refused substitution: its kept answer becomes the step's
        response, handed over by the next `agentguard resume` instead of asking again."""
        step = self.current_step()
        if self.detail is None or step is None:
            self.notify("No step selected.", severity="warning")
            return
        if step.status != "refused":
            self.notify(
                f"Step {step.number} has no refused substitution to accept.", severity="warning"
            )
            return
        self._accept(self.detail, step)

    @work(thread=True, exclusive=True, group="accept", exit_on_error=False)
    def _accept(self, detail: RunDetail, step: StepView) -> None:
        """The CLI's `resume --accept` decision (agentguard.resuming.accept_refused), on a
        writable handle of the store opened for this action alone."""
        try:
            with self._writable_store() as store:
                accept_refused(store, detail.run.id, store.get_step(step.id))
        except AgentGuardError as exc:
            self.post_message(AcceptFinished(step.number, str(exc)))
            return
        except Exception as exc:  # say so rather than fail silently
            self.post_message(AcceptFinished(step.number, f"{type(exc).__name__}: {exc}"))
            return
        self.post_message(AcceptFinished(step.number))

    @on(AcceptFinished)
    def _accepted(self, message: AcceptFinished) -> None:
        if message.error is not None:
            self.notify(f"Accept failed: {message.error}", severity="error", timeout=10)
            return
        self.notify(
            f"Accepted step {message.step}'s kept answer; `agentguard resume {self.run_id}` "
            "hands it over.",
            timeout=10,
        )
        self.watch_app.request_load()

    @on(RestoreFinished)
    def _restored(self, message: RestoreFinished) -> None:
        note = self.query_one("#restore-note", Banner)
        if message.result is None:
            note.show(f"restore failed: {message.error}", "substituted")
            self.notify(f"Restore failed: {message.error}", severity="error", timeout=10)
            return
        result = message.result
        n = len(result.changes)
        undo = f"agentguard restore {self.run_id} --undo"
        text = (
            f"restored step {message.step}'s checkpoint {result.target[:12]} "
            f"({n} path{'s' if n != 1 else ''} changed) · backup {result.backup.commit[:12]}: "
            f"the tree as it was; undo with `{undo}`"
        )
        if result.preserved:
            text += f" · {len(result.preserved)} file(s) copied aside first"
        note.show(text, "info")
        self.notify(
            f"Restored step {message.step}; the previous tree is saved as "
            f"{result.backup.commit[:12]}. Undo with `{undo}`.",
            timeout=10,
        )
