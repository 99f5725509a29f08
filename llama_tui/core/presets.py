"""Saving user presets: the TUI's fleet form ("Save preset") writes resolved settings as a preset file.

Reading and choosing presets is `core.config`'s job; this module names and writes them. Files are
written with `tomli_w`, so any value (quotes, backslashes, newlines in a model path or description)
comes back equal when `config.load_settings(preset=name)` reads it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import tomli_w

from llama_tui.core import config, paths
from llama_tui.core.errors import UserError

PRESET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SECTIONS = ("fleet", "bench", "sweep")
SECRET_KEYS = {"fleet": ("api_key", "api_key_file")}  # never written into a preset file


def check_preset_name(name: str) -> str:
    """The name, stripped, when it makes a safe file name; else a UserError saying what is allowed."""
    name = name.strip()
    if not PRESET_NAME.match(name):
        raise UserError(f"bad preset name {name!r}",
                        "use letters, digits, '-', '_' or '.', starting with a letter or digit")
    return name


def preset_toml(description: str, sections: Mapping[str, Mapping[str, Any]]) -> str:
    """A preset file; keys whose value is None (auto) are left out, so the default applies."""
    doc: dict[str, Any] = {"description": description}
    for section, values in sections.items():
        doc[section] = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if v is not None}
    return tomli_w.dumps(doc)


def preset_sections(settings: config.Settings) -> dict[str, dict[str, Any]]:
    """What a preset saved from `settings` holds: every section's values, secrets left out."""
    out = {}
    for section in SECTIONS:
        values = settings.section(section)
        for secret in SECRET_KEYS.get(section, ()):
            values.pop(secret, None)
        out[section] = values
    return out


def save_preset(name: str, settings: config.Settings, description: str) -> Path:
    """Write `settings` as the user preset `name` (mode 0600) and return its path.

    The file is read back through `config.load_settings`, so a preset that would not load raises here
    (naming the file), not the next time someone picks it.
    """
    name = check_preset_name(name)
    path = paths.user_presets_dir() / f"{name}.toml"
    paths.write_private(path, preset_toml(description, preset_sections(settings)))
    config.load_settings(preset=name)
    return path
