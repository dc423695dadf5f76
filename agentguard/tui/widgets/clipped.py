"""Text that keeps to a fixed number of lines and says when it was cut: the line cut ends in "…".

A Static with a height cap would drop its last lines silently; this renders at most `max_lines`
lines of the width it is given, and the last one shown ends in "…" when anything was left out.
"""

from __future__ import annotations

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.text import Text

ELLIPSIS = "…"


class Clipped:
    """`text` in at most `max_lines` lines. Its first `single` lines never wrap (they are cut
    with "…" instead); the rest wrap at the width given."""

    def __init__(self, text: Text | str, max_lines: int, *, single: int = 0) -> None:
        self.text = text if isinstance(text, Text) else Text(text)
        self.max_lines = max_lines
        self.single = single

    def __str__(self) -> str:
        return self.text.plain

    def lines(self, console: Console, width: int) -> list[Text]:
        width = max(width, 1)
        out: list[Text] = []
        for i, line in enumerate(self.text.split("\n", allow_blank=True)):
            if i < self.single or line.cell_len <= width:
                out.append(line)
            else:
                out.extend(line.wrap(console, width, overflow="fold"))
        cut = len(out) > self.max_lines
        out = [line.copy() for line in out[: self.max_lines]]
        for n, line in enumerate(out):
            if cut and n == len(out) - 1:
                line.rstrip()
                line.truncate(width - 1, overflow="crop")
                line.append(ELLIPSIS)
            elif line.cell_len > width:
                line.truncate(width, overflow="ellipsis")
        return out

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        lines = self.lines(console, options.max_width)
        result = Text("\n").join(lines)
        result.no_wrap = True
        result.overflow = "crop"
        yield result

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        longest = max((line.cell_len for line in self.text.split("\n")), default=0)
        return Measurement(1, min(longest, options.max_width))
