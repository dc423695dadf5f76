"""The question asked before a restore: nothing is restored without an explicit yes."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from agentguard.tui.data import RunDetail, StepView


def question(detail: RunDetail, step: StepView, moved: str | None = None) -> Text:
    text = Text()
    text.append("Restore the working tree?\n\n", style="bold")
    if moved:
        text.append(f"⚠ {moved[0].upper()}{moved[1:]}.\n\n", style="bold yellow")
    text.append(f"{detail.run.project}\n", style="bold")
    text.append(
        f"goes back to step {step.number}'s checkpoint {step.checkpoint or ''}: the tree just "
        f"before step {step.number}'s model call.\n\n"
    )
    text.append(
        "Only differing files are rewritten; files created since are deleted; ignored files "
        "are left alone. The current tree is snapshotted first, so this can be undone "
        f"(agentguard restore {detail.run.id} --undo).",
        style="dim",
    )
    if detail.run.status == "running":
        text.append(
            "\n\n⚠ This run is still running: while its agent process is alive the restore is "
            "refused (stop the agent first).",
            style="bold red",
        )
    return text


class ConfirmRestore(ModalScreen[bool]):
    """Dismisses with True only on y / the Restore button; n, escape and Cancel give False."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes, restore"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    DEFAULT_CSS = """
    ConfirmRestore { align: center middle; }
    ConfirmRestore > Vertical {
        width: 70;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        border: thick $warning;
        background: $surface;
        padding: 1 2;
    }
    ConfirmRestore #question { height: auto; }
    ConfirmRestore Horizontal { height: auto; margin-top: 1; align-horizontal: right; }
    ConfirmRestore Button { margin-left: 2; }
    """

    def __init__(self, detail: RunDetail, step: StepView, moved: str | None = None) -> None:
        super().__init__()
        self.detail = detail
        self.step = step
        self.moved = moved

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(question(self.detail, self.step, self.moved), id="question")
            with Horizontal():
                yield Button("Cancel (n)", id="cancel")
                yield Button("Restore (y)", id="restore", variant="warning")

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()  # the safe answer is the default

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "restore")
