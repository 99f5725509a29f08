"""Keys: the user's keymap file (binding id = key) and every key as currently bound, for the help screen."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Iterable, Mapping

from textual.binding import Binding, BindingType

from llama_tui.core.errors import UserError

KEYMAP_FILE = "keymap.toml"


def load_keymap(path: Path) -> dict[str, str]:
    """keymap.toml: binding id = key, e.g. `fleet.start = "S"` (dotted keys nest; both forms work)."""
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}", f"fix or remove {path}") from None
    out: dict[str, str] = {}

    def walk(prefix: str, table: dict) -> None:
        for k, v in table.items():
            name = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                walk(name, v)
            elif isinstance(v, str):
                out[name] = v
            else:
                raise UserError(f"{path}: {name} must be a key name string, got {v!r}",
                                f'write e.g. {name} = "ctrl+r" in {path}')
    walk("", data)
    return out


def bound_keys(groups: Iterable[tuple[str, Iterable[BindingType]]], keymap: Mapping[str, str]) -> list[tuple[str, str]]:
    """(key as bound now, what it does) for every declared key; a ("", heading) row starts a named group."""
    out: list[tuple[str, str]] = []
    for heading, bindings in groups:
        if heading:
            out.append(("", heading))
        for binding in bindings:
            assert isinstance(binding, Binding)
            key = keymap.get(binding.id, binding.key) if binding.id else binding.key
            shown = binding.key_display if key == binding.key and binding.key_display else key
            out.append((shown, f"{binding.description}: {binding.tooltip or binding.description}  "
                               f"[dim]({binding.id})[/dim]"))
    return out
