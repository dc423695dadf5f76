"""A DataTable updated by row key: the cursor and scroll position survive every refresh.

`sync(rows)` adds the rows it has not seen (at the end), updates only the cells that changed
and removes the keys that are gone — never `clear()` and refill, which would lose the cursor
and repaint everything. Column widths depend only on the table's width (never on the data), so
a refresh never shifts the layout: fixed columns keep theirs, flexible ones share what is left
and cut their text with "…" — every column stays on screen at 80 columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey

# A cell as plain data: its text, or (text, style). Compared as data, rendered as Text.
Cell = str | tuple[str, str]


@dataclass(frozen=True)
class Column:
    """`width` is what the column shows when there is room. `flex` 0: always that width;
    otherwise it shares the room the fixed columns leave (by weight), never below `min`."""

    key: str
    label: str
    width: int
    flex: int = 0
    min: int = 4


def fit_widths(columns: Sequence[Column], room: int) -> list[int]:
    """Each column's width in `room` cells (padding excluded): fixed columns keep theirs, the
    flexible ones get their minimum, then what is left by weight, up to their own width."""
    widths = [c.width if not c.flex else min(c.min, c.width) for c in columns]
    left = room - sum(widths)
    flexible = [i for i, c in enumerate(columns) if c.flex]
    while left > 0:
        hungry = [i for i in flexible if widths[i] < columns[i].width]
        if not hungry:
            break
        weight = sum(columns[i].flex for i in hungry)
        given = 0
        for i in hungry:
            share = max(1, left * columns[i].flex // weight)
            add = min(share, columns[i].width - widths[i], left - given)
            widths[i] += add
            given += add
        if not given:
            break
        left -= given
    return widths


@dataclass(frozen=True)
class SyncResult:
    added: tuple[str, ...] = ()
    changed: int = 0  # cells updated
    removed: tuple[str, ...] = ()

    @property
    def any(self) -> bool:
        return bool(self.added or self.changed or self.removed)


def render(cell: Cell) -> Text:
    if isinstance(cell, tuple):
        text, style = cell
        return Text(text, style=style, no_wrap=True, overflow="ellipsis")
    return Text(cell, no_wrap=True, overflow="ellipsis")


class KeyedTable(DataTable[Text]):
    """A row-cursor DataTable whose rows are kept in step with a keyed list of cells."""

    DEFAULT_CSS = """
    KeyedTable {
        overflow-x: hidden;
        scrollbar-size-vertical: 1;
        scrollbar-gutter: stable;
    }
    """

    def __init__(
        self, columns: Sequence[Column], *, id: str | None = None, cursor_on_focus: bool = False
    ) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False)
        self._cursor_on_focus = cursor_on_focus  # a detail table: no cursor until focused
        self.show_cursor = not cursor_on_focus
        self._spec = tuple(columns)
        self._rows: dict[str, tuple[Cell, ...]] = {}
        for column in self._spec:
            label = Text(column.label, no_wrap=True, overflow="ellipsis")
            self.add_column(label, width=column.width, key=column.key)

    def on_resize(self) -> None:
        self.fit(self.scrollable_content_region.width)
        if self._rows and self.show_cursor:  # shorter now (a banner came): keep the cursor seen
            self.call_after_refresh(self._cursor_into_view)

    def _cursor_into_view(self) -> None:
        """Scroll to wherever the cursor is by then (never move it back)."""
        if self._rows:
            self.move_cursor(row=self.cursor_row, animate=False, scroll=True)

    def fit(self, width: int) -> None:
        """Give the columns widths that add up to `width` cells (cell padding included)."""
        if width <= 0:
            return
        room = width - 2 * self.cell_padding * len(self._spec)
        changed = False
        for spec, w in zip(self._spec, fit_widths(self._spec, room), strict=True):
            column = self.columns[ColumnKey(spec.key)]
            if column.width != w:
                column.width = w
                changed = True
        if changed:  # DataTable has no public way to resize a column: redo its layout
            self._require_update_dimensions = True
            self._clear_caches()
            self.refresh()

    def on_focus(self) -> None:
        if self._cursor_on_focus:
            self.show_cursor = True

    def on_blur(self) -> None:
        if self._cursor_on_focus:
            self.show_cursor = False

    @property
    def keys(self) -> list[str]:
        return list(self._rows)

    @property
    def cursor_key(self) -> str | None:
        """The key of the row under the cursor."""
        if not self._rows or not self.is_valid_row_index(self.cursor_row):
            return None
        row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        return row_key.value

    def cells(self, key: str) -> tuple[Cell, ...] | None:
        return self._rows.get(key)

    def text_of(self, key: str) -> str:
        """A row's cells as one line of plain text (for tests and logs)."""
        cells = self._rows.get(key) or ()
        return " | ".join(c[0] if isinstance(c, tuple) else c for c in cells)

    def sync(self, rows: Sequence[tuple[str, Sequence[Cell]]]) -> SyncResult:
        """Make the table show `rows` (key, cells), touching only what differs."""
        wanted = {key: tuple(cells) for key, cells in rows}
        removed = tuple(k for k in self._rows if k not in wanted)
        added: list[str] = []
        changed = 0
        keep = self.cursor_key
        with self.app.batch_update():
            for key in removed:
                self.remove_row(key)
                del self._rows[key]
            for key, cells in wanted.items():
                before = self._rows.get(key)
                if before is None:
                    self.add_row(*(render(c) for c in cells), key=key)
                    added.append(key)
                elif before != cells:
                    for column, old, new in zip(self._spec, before, cells, strict=True):
                        if old != new:
                            self.update_cell(key, column.key, render(new))
                            changed += 1
                self._rows[key] = cells
            if keep is not None and keep in self._rows and self.cursor_key != keep:
                self.move_cursor(row=self.get_row_index(keep), scroll=False)
        return SyncResult(tuple(added), changed, removed)

    def select_key(self, key: str, *, scroll: bool = True) -> bool:
        """Put the cursor on the row with `key` (False if there is none)."""
        if key not in self._rows:
            return False
        self.move_cursor(row=self.get_row_index(key), scroll=scroll)
        return True
