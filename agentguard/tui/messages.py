"""What the workers tell the app: each step of the pipeline is its own message.

Workers run in threads and never touch a widget; they post one of these, and the `@on(...)`
handlers on the UI thread own every change of state and every widget update.
"""

from __future__ import annotations

from textual.message import Message

from agentguard.snapshots import RestoreResult
from agentguard.tui.data import MetricsView, RunDetail, RunsPage, StepView
from agentguard.tui.trees import TreeDiff


class RunsLoaded(Message):
    def __init__(self, page: RunsPage) -> None:
        super().__init__()
        self.page = page


class RunLoaded(Message):
    def __init__(self, run_id: str, detail: RunDetail | None) -> None:
        super().__init__()
        self.run_id = run_id
        self.detail = detail  # None: the run is gone from the store


class MetricsLoaded(Message):
    def __init__(self, view: MetricsView) -> None:
        super().__init__()
        self.view = view


class LoadFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class PollFinished(Message):
    """One poll is over: the next one may be armed (polls never overlap)."""

    def __init__(self, changed: bool) -> None:
        super().__init__()
        self.changed = changed


class DiffLoaded(Message):
    def __init__(self, diff: TreeDiff | None, error: str | None = None) -> None:
        super().__init__()
        self.diff = diff
        self.error = error


class FileDiffLoaded(Message):
    def __init__(self, path: str, text: str) -> None:
        super().__init__()
        self.path = path
        self.text = text


class AcceptFinished(Message):
    """A refused substitution was accepted (error None) or could not be."""

    def __init__(self, step: int, error: str | None = None) -> None:
        super().__init__()
        self.step = step
        self.error = error


class RestoreAsked(Message):
    """The restore question is ready: `moved` says how the project's branch/HEAD moved."""

    def __init__(self, detail: RunDetail, step: StepView, moved: str | None) -> None:
        super().__init__()
        self.detail = detail
        self.step = step
        self.moved = moved


class RestoreFinished(Message):
    def __init__(self, step: int, result: RestoreResult | None, error: str | None = None) -> None:
        super().__init__()
        self.step = step
        self.result = result
        self.error = error
