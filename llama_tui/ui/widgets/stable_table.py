"""Redraw only what changed: a DataTable that re-renders only changed cells, and `show_text`.

Textual's DataTable keys its cell render cache on a table-wide update counter, so changing one cell
re-renders every cell (each through Rich's padding and line splitting). A fleet table refreshed once a
second would redraw ~200 cells a second for a handful of changed numbers. Here the cache key is the
cell's own value (plus everything that styles it), so unchanged cells come from the cache.

This overrides `DataTable._render_cell` (a private method; its signature is checked below). When a
future Textual changes it, the override switches itself off and the table works as a plain DataTable.
"""

from __future__ import annotations

import inspect
from typing import Any

from rich.text import Text
from textual.cache import LRUCache
from textual.widgets import DataTable, Static

_EXPECTED = ["self", "row_index", "column_index", "base_style", "width", "cursor", "hover"]
ENABLED = list(inspect.signature(DataTable._render_cell).parameters) == _EXPECTED


def _value_key(value: Any) -> Any:
    if isinstance(value, Text):
        return ("text", value.plain, str(value.style), tuple((s.start, s.end, str(s.style)) for s in value.spans))
    if isinstance(value, str):
        return value
    return ("other", id(value))  # anything else: never shared


class StableTable(DataTable):
    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._value_cache: LRUCache[tuple, Any] = LRUCache(4096)

    def _render_cell(self, row_index: int, column_index: int, base_style: Any, width: int,
                     cursor: bool = False, hover: bool = False) -> Any:
        if not ENABLED:
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        column_key = self._column_locations.get_key(column_index)
        if row_index == -1:
            value: Any = self.columns[column_key].label
            row_key: Any = None
        elif column_index == -1:
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        else:
            row_key = self._row_locations.get_key(row_index)
            value = self._data[row_key][column_key]
        key = (row_index, row_key, column_key, _value_key(value), base_style, width, cursor, hover,
               self._show_hover_cursor, self._pseudo_class_state, self.show_cursor)
        lines = self._value_cache.get(key)
        if lines is None:
            lines = super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
            self._value_cache[key] = lines
        return lines


def show_text(widget: Static, content: Any) -> None:
    """`Static.update` only when the content differs: an update always re-lays-out and repaints."""
    key = _value_key(content) if isinstance(content, (str, Text)) else ("other", id(content))
    if getattr(widget, "_shown_key", None) != key:
        widget._shown_key = key  # type: ignore[attr-defined]
        widget.update(content)
