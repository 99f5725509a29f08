"""JSON lines over the pipes between bench processes (parent and load workers, TUI and bench child):
one JSON object per line, written whole and flushed."""

from __future__ import annotations

from typing import IO, Any, Iterator

import orjson


def json_lines(stream: Any) -> Iterator[dict[str, Any]]:
    """The JSON objects of a line-per-object stream (the pipes between bench processes); other lines are skipped."""
    for line in stream:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            yield obj


def write_line(out: IO[bytes], obj: dict[str, Any], option: int = 0) -> None:
    """One object as one line, flushed so the reader sees it now."""
    out.write(orjson.dumps(obj, option=option) + b"\n")
    out.flush()
