"""A clearly coloured strip that cannot be missed: substitutions and queued runs."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from agentguard.tui.widgets.clipped import Clipped


class Banner(Static):
    """Hidden while empty; `show(text, kind)` paints it in the colour of its kind, in at most
    `max_lines` lines (a banner cut short ends in "…"; `text` keeps all of it)."""

    DEFAULT_CSS = """
    Banner {
        width: 100%;
        height: auto;
        padding: 0 1;
        display: none;
        text-style: bold;
    }
    Banner.-substituted {
        background: $error;
        color: $text;
    }
    Banner.-waiting {
        background: $warning;
        color: $background;
    }
    Banner.-info {
        background: $primary-muted;
        color: $text;
    }
    """

    KINDS = ("substituted", "waiting", "info")

    def __init__(self, *, id: str | None = None, max_lines: int = 3) -> None:
        super().__init__("", id=id, markup=False)
        self._shown: tuple[str, str] | None = None
        self.max_lines = max_lines

    @property
    def text(self) -> str:
        return self._shown[0] if self._shown else ""

    def show(self, text: str | Text | None, kind: str = "info") -> None:
        """Show `text` (None or empty: hide); does nothing when it is already shown."""
        plain = text.plain if isinstance(text, Text) else (text or "")
        key = (plain, kind)
        if key == self._shown or (not plain and self._shown is None):
            return
        self._shown = key if plain else None
        for name in self.KINDS:
            self.set_class(name == kind and bool(plain), f"-{name}")
        self.display = bool(plain)
        self.update(Clipped(text or "", self.max_lines))
