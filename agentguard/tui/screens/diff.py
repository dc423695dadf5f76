"""A step's tree diff: the paths that changed, and the highlighted path's unified diff."""

from __future__ import annotations

from rich.syntax import Syntax
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from agentguard.errors import AgentGuardError
from agentguard.tui.data import RunDetail, StepView
from agentguard.tui.messages import DiffLoaded, FileDiffLoaded
from agentguard.tui.trees import TreeDiff, file_diff, step_diff
from agentguard.tui.widgets import Column, KeyedTable

CHANGE_STYLE = {"A": "green", "D": "red", "M": "yellow", "T": "magenta"}
COLUMNS = (Column("status", "", 1), Column("path", "path", 200))


class DiffScreen(Screen[None]):
    """What a step changed in the working tree."""

    BINDINGS = [Binding("escape", "back", "Back")]

    DEFAULT_CSS = """
    DiffScreen #diff-head { height: auto; max-height: 2; padding: 0 1; background: $panel; }
    DiffScreen #changes { height: 7; }
    DiffScreen #body-scroll { height: 1fr; border-top: solid $panel-lighten-2; }
    DiffScreen #body { width: auto; }
    """

    def __init__(self, detail: RunDetail, step: StepView) -> None:
        super().__init__()
        self.detail = detail
        self.step = step
        self.diff: TreeDiff | None = None
        self.body_text = ""

    def compose(self) -> ComposeResult:
        yield Static(f"step {self.step.number}: computing the diff…", id="diff-head")
        yield KeyedTable(COLUMNS, id="changes")
        with VerticalScroll(id="body-scroll"):
            yield Static("", id="body")
        yield Footer()

    @property
    def changes(self) -> KeyedTable:
        return self.query_one("#changes", KeyedTable)

    def on_mount(self) -> None:
        self.changes.focus()
        self._load(self.detail, self.step)

    @work(thread=True, exclusive=True, group="diff", exit_on_error=False)
    def _load(self, detail: RunDetail, step: StepView) -> None:
        try:
            self.post_message(DiffLoaded(step_diff(detail, step)))
        except AgentGuardError as exc:
            self.post_message(DiffLoaded(None, str(exc)))
        except Exception as exc:  # never leave the screen saying "computing…"
            self.post_message(DiffLoaded(None, f"{type(exc).__name__}: {exc}"))

    @on(DiffLoaded)
    def _loaded(self, message: DiffLoaded) -> None:
        head = self.query_one("#diff-head", Static)
        if message.diff is None:
            head.update(Text(f"step {self.step.number}: {message.error}", style="bold red"))
            return
        diff = self.diff = message.diff
        n = len(diff.changes)
        head.update(
            f"step {diff.step} checkpoint {diff.base[:12]} → {diff.target_label} "
            f"({diff.target[:12]}): {n} path{'s' if n != 1 else ''} changed"
        )
        self.changes.sync(
            [(c.path, ((c.status, CHANGE_STYLE.get(c.status, "")), c.path)) for c in diff.changes]
        )
        if not diff.changes:
            self.query_one("#body", Static).update("no changes")
        else:
            self._show_file()

    def _show_file(self) -> None:
        path = self.changes.cursor_key
        if path is not None and self.diff is not None:
            self._load_file(self.detail, self.diff, path)

    @work(thread=True, exclusive=True, group="file-diff", exit_on_error=False)
    def _load_file(self, detail: RunDetail, diff: TreeDiff, path: str) -> None:
        try:
            text = file_diff(detail, diff, path)
        except Exception as exc:
            text = f"{path}: {exc}"
        self.post_message(FileDiffLoaded(path, text))

    @on(FileDiffLoaded)
    def _file_loaded(self, message: FileDiffLoaded) -> None:
        if message.path != self.changes.cursor_key:
            return  # the cursor moved on while git was reading
        body = self.query_one("#body", Static)
        body.update(Syntax(message.text, "diff", theme="ansi_dark", word_wrap=False))
        self.query_one("#body-scroll", VerticalScroll).scroll_home(animate=False)
        self.body_text = message.text

    @on(DataTable.RowHighlighted, "#changes")
    def _highlighted(self) -> None:
        self._show_file()

    def action_back(self) -> None:
        self.app.pop_screen()
