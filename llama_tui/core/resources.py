"""Files that ship with llama-tui: NGINX templates and presets.

In a wheel they sit inside the package (`llama_tui/nginx_templates`, `llama_tui/presets`); in a
checkout or an editable install they sit at the top of the repository.
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent.parent


def _shipped(name: str) -> Path:
    inside = _PKG / name
    if inside.is_dir():
        return inside
    return _PKG.parent / name


def templates_dir() -> Path:
    return _shipped("nginx_templates")


def presets_dir() -> Path:
    return _shipped("presets")
