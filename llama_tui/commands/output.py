"""Printing helpers shared by the command modules."""

from __future__ import annotations

import sys
from typing import Any

import orjson


def print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n")
    sys.stdout.flush()


def info(msg: str) -> None:
    """Progress for humans goes to stderr so stdout stays clean for JSON and paths."""
    print(msg, file=sys.stderr, flush=True)
