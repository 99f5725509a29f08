"""Redraw only what changed."""

from __future__ import annotations

from typing import Any

from rich.cells import cell_len
from rich.text import Text
from textual.widgets import Static


def _key(content: Any) -> Any:
    if isinstance(content, Text):
        return ("text", content.plain, str(content.style), tuple((s.start, s.end, str(s.style)) for s in content.spans))
    if isinstance(content, str):
        return content
    return ("other", id(content))  # anything else: always shown


def show_text(widget: Static, content: Any) -> None:
    """`Static.update` only when the content differs (an update repaints, even when equal), and without
    a layout pass when a one-line widget stays one line (a new layout costs more than the repaint)."""
    key = _key(content)
    if getattr(widget, "_shown_key", None) == key:
        return
    widget._shown_key = key  # type: ignore[attr-defined]
    text = content.plain if isinstance(content, Text) else content
    one_line = (isinstance(text, str) and "\n" not in text and widget.size.height == 1
                and cell_len(text) <= widget.content_size.width)  # markup only makes it shorter
    widget.update(content, layout=not one_line)
