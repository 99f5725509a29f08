"""Per-fleet keys.

Every instance of a fleet requires one random internal key (`INSTANCE_KEY_ENV` in its environment,
never on a command line). NGINX replaces the client's `Authorization` header with it; the
supervisor, the monitor and `bench --url` at an instance read it from the state dir. It lives in
its own 0600 file beside the state (never in `fleet.json` or `spec.json`), so a process that can
read a fleet's state dir is already the fleet's owner.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Mapping

from llama_tui.core import paths

INTERNAL_KEY_FILE = "internal.key"
INSTANCE_KEY_ENV = "LLAMA_API_KEY"  # llama-server reads its --api-key from here
KEY_BYTES = 32


def internal_key_path(state_dir: Path | str | None) -> Path:
    return Path(paths.owner_marker(state_dir)) / INTERNAL_KEY_FILE


def read_internal_key(state_dir: Path | str | None) -> str | None:
    """The fleet's internal key, or None when the fleet has none (not started, or older than keys)."""
    try:
        key = internal_key_path(state_dir).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return key or None


def ensure_internal_key(state_dir: Path | str | None) -> str:
    """The fleet's internal key, made (random, 0600) on first use and kept while the fleet lives."""
    key = read_internal_key(state_dir)
    if key is None:
        key = secrets.token_hex(KEY_BYTES)  # hex: safe in a header, an env var and nginx.conf
        path = internal_key_path(state_dir)
        paths.ensure_private_dir(path.parent)
        paths.write_private(path, key + "\n")
    return key


def instance_env(key: str, base: dict[str, str]) -> dict[str, str]:
    """An instance's environment carrying the internal key."""
    return {**base, INSTANCE_KEY_ENV: key}


def inherited_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What an instance inherits of its starter's environment (`environ`): no LLAMA_ARG_* (its recorded
    command line is all its configuration), no inherited internal key and no inherited owner marker
    (the placement sets both)."""
    return {k: v for k, v in environ.items()
            if not k.startswith("LLAMA_ARG_") and k not in (INSTANCE_KEY_ENV, paths.OWNER_ENV)}


API_KEY_FILE = "api.key"  # the public key, when it was given as a value (--api-key, a config file)


def api_key_path(state_dir: Path | str | None) -> Path:
    return Path(paths.owner_marker(state_dir)) / API_KEY_FILE


def store_api_key(state_dir: Path | str | None, key: str) -> Path:
    """Keep a public API key that was given as a value in a private (0600) file beside the state and
    return its path: `spec.json` and `fleet.json` then name the file, never the key."""
    path = api_key_path(state_dir)
    paths.ensure_private_dir(path.parent)
    paths.write_private(path, key + "\n")
    return path
