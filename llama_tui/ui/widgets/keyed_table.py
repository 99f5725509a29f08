"""A light table for numbers that change every second: rows keyed, updated in place, one line each.

The fleet and backend tables redraw a few cells of many rows once a second. Textual's DataTable
re-renders every cell (through Rich) after any update and repaints the whole widget; here a row is one
line of pre-padded segments, rebuilt only when one of its values changes, and only that line is
repainted (less CPU, and fewer bytes over an SSH link). The cursor stays on its row's key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from rich.cells import set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget


@dataclass(frozen=True)
class Col:
    key: str
    label: str
    width: int
    right: bool = False  # numbers align right


Cell = tuple[str, str | None]  # the text, and the component class that colours it (None: plain)


class KeyedTable(Widget, can_focus=True):
    COMPONENT_CLASSES: ClassVar[set[str]] = {"keyed-table--header", "keyed-table--cursor"}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "cursor(-10)", "Page up", show=False),
        Binding("pagedown", "cursor(10)", "Page down", show=False),
        Binding("home", "cursor(-1000000)", "First", show=False),
        Binding("end", "cursor(1000000)", "Last", show=False),
    ]
    DEFAULT_CSS = """
    KeyedTable { height: auto; }
    KeyedTable > .keyed-table--header { text-style: bold; color: $text-muted; }
    KeyedTable > .keyed-table--cursor { background: $block-cursor-blurred-background; }
    KeyedTable:focus > .keyed-table--cursor {
        background: $block-cursor-background; color: $block-cursor-foreground; text-style: bold;
    }
    """

    cursor_row: reactive[int] = reactive(0, layout=False, repaint=False)
    show_cursor = True

    class RowHighlighted(Message):
        def __init__(self, table: "KeyedTable", key: str | None) -> None:
            super().__init__()
            self.table = table
            self.key = key

    def __init__(self, columns: Sequence[Col] = (), show_cursor: bool = True, pin_last: bool = False,
                 **kw: Any) -> None:
        """`pin_last`: when the rows do not fit, the last one (a totals row) stays on the bottom line."""
        super().__init__(**kw)
        self.columns: tuple[Col, ...] = tuple(columns)
        self.show_cursor = show_cursor
        self.pin_last = pin_last
        self.keys: list[str] = []
        self.cells: dict[str, tuple[Cell, ...]] = {}
        self.top = 0  # first row shown (rows scroll under the fixed header)
        self._strips: dict[Any, Strip] = {}

    # ------------------------------------------------------------------------------------------ content

    def set_columns(self, columns: Sequence[Col]) -> None:
        self.columns = tuple(columns)
        self.keys, self.cells = [], {}
        self._strips.clear()
        self.refresh(layout=True)

    def set_rows(self, rows: Sequence[tuple[str, Sequence[Cell]]]) -> None:
        """The table's rows, in order. Unchanged rows are not redrawn; the cursor keeps its row's key."""
        keys = [k for k, _ in rows]
        if keys != self.keys:
            current = self.cursor_key()
            self.keys = keys
            self.cells = {k: tuple(c) for k, c in rows}
            self._strips.clear()
            self.cursor_row = keys.index(current) if current in keys else min(self.cursor_row, max(0, len(keys) - 1))
            self._scroll_to_cursor()
            self.refresh(layout=True)
            return
        for y, (key, cells) in enumerate(rows):
            cells = tuple(cells)
            if self.cells.get(key) != cells:
                self.cells[key] = cells
                self._refresh_row(y)

    @property
    def row_count(self) -> int:
        return len(self.keys)

    def get_row_at(self, index: int) -> list[str]:
        return [text for text, _ in self.cells[self.keys[index]]]

    def cursor_key(self) -> str | None:
        return self.keys[self.cursor_row] if self.keys and 0 <= self.cursor_row < len(self.keys) else None

    # ------------------------------------------------------------------------------------------ cursor

    def action_cursor(self, delta: int) -> None:
        self.move_cursor(self.cursor_row + delta)

    def move_cursor(self, row: int) -> None:
        if not self.keys:
            return
        old = self.cursor_row
        self.cursor_row = max(0, min(len(self.keys) - 1, row))
        if self.cursor_row != old:
            if self._scroll_to_cursor():
                self.refresh()
            else:
                self._refresh_row(old)
                self._refresh_row(self.cursor_row)
            self.post_message(self.RowHighlighted(self, self.cursor_key()))

    def _pinned(self) -> bool:
        return self.pin_last and len(self.keys) > self.size.height - 1 and self.size.height >= 3

    def _visible_rows(self) -> int:
        """Rows that scroll (under the header, above a pinned last row)."""
        return max(1, self.size.height - 1 - (1 if self._pinned() else 0))

    def _scroll_to_cursor(self) -> bool:
        """Keep the cursor's row on screen; True when the rows shown moved."""
        old = self.top
        if self._pinned() and self.cursor_row == len(self.keys) - 1:
            return False
        if self.cursor_row < self.top:
            self.top = self.cursor_row
        elif self.cursor_row >= self.top + self._visible_rows():
            self.top = self.cursor_row - self._visible_rows() + 1
        scrolling = len(self.keys) - (1 if self._pinned() else 0)
        self.top = max(0, min(self.top, max(0, scrolling - self._visible_rows())))
        return self.top != old

    def on_click(self, event: events.Click) -> None:
        if self._pinned() and event.y == self.size.height - 1:
            self.move_cursor(len(self.keys) - 1)
        elif event.y >= 1:
            self.move_cursor(self.top + event.y - 1)

    def on_resize(self, event: events.Resize) -> None:
        self._strips.clear()
        self._scroll_to_cursor()

    def on_focus(self) -> None:
        self._refresh_row(self.cursor_row)

    def on_blur(self) -> None:
        self._refresh_row(self.cursor_row)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()

    # ------------------------------------------------------------------------------------------ drawing

    def get_content_width(self, container: Size, viewport: Size) -> int:
        return sum(c.width + 2 for c in self.columns)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return 1 + len(self.keys)

    def _refresh_row(self, index: int) -> None:
        y = index - self.top + 1
        if self._pinned() and index == len(self.keys) - 1:
            y = self.size.height - 1
        if 1 <= y < self.size.height:
            self.refresh(Region(0, y, self.size.width, 1))

    def _line(self, texts: Sequence[Cell], style: Style, cursor: bool) -> list[Segment]:
        segments = []
        for col, (text, cls) in zip(self.columns, texts):
            cell_style = style
            if cls:
                cell_style = style + self.get_component_rich_style(cls, partial=True)
            if cursor:
                cell_style = cell_style + self.get_component_rich_style("keyed-table--cursor", partial=True)
            body = text.rjust(col.width) if col.right else text
            segments.append(Segment(" " + set_cell_size(body, col.width) + " ", cell_style))
        return segments

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        base = self.rich_style
        if y == 0:
            key: Any = ("header", width, self.columns)
            if key not in self._strips:
                header = base + self.get_component_rich_style("keyed-table--header", partial=True)
                labels = [(c.label, None) for c in self.columns]
                self._strips[key] = Strip(self._line(labels, header, False)).adjust_cell_length(width, base)
            return self._strips[key]
        index = self.top + y - 1
        if self._pinned():
            if y == self.size.height - 1:
                index = len(self.keys) - 1
            elif index >= len(self.keys) - 1:
                index = len(self.keys)  # the pinned row is not drawn twice
        if index >= len(self.keys):
            return Strip.blank(width, base)
        row_key = self.keys[index]
        cells = self.cells[row_key]
        cursor = self.show_cursor and index == self.cursor_row
        focused = self.has_focus
        key = (row_key, cells, cursor, focused, width)
        strip = self._strips.get(key)
        if strip is None:
            strip = Strip(self._line(cells, base, cursor)).adjust_cell_length(width, base)
            if len(self._strips) > 4 * len(self.keys) + 16:
                self._strips.clear()
            self._strips[key] = strip
        return strip
