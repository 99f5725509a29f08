"""Where llama-tui keeps its files.

- config: `$LLAMA_TUI_CONFIG_DIR`, else `$XDG_CONFIG_HOME/llama-tui`, else `~/.config/llama-tui`
- state (fleet state, logs, results): `$LLAMA_TUI_STATE_DIR`, else `$XDG_STATE_HOME/llama-tui`,
  else `~/.local/state/llama-tui`
- cache (built llama-server, the tiny model): `$LLAMA_TUI_CACHE_DIR`, else `$XDG_CACHE_HOME/llama-tui`,
  else `~/.cache/llama-tui`

The state dir is created with mode 0700 and files written through `write_private` get 0600.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _dir(env: str, xdg: str, fallback: str) -> Path:
    value = os.environ.get(env)
    if value:
        return Path(value).expanduser()
    base = os.environ.get(xdg)
    return (Path(base).expanduser() if base else Path.home() / fallback) / "llama-tui"


def config_dir() -> Path:
    return _dir("LLAMA_TUI_CONFIG_DIR", "XDG_CONFIG_HOME", ".config")


def state_dir(create: bool = False) -> Path:
    path = _dir("LLAMA_TUI_STATE_DIR", "XDG_STATE_HOME", ".local/state")
    if create:
        ensure_private_dir(path)
    return path


def cache_dir() -> Path:
    return _dir("LLAMA_TUI_CACHE_DIR", "XDG_CACHE_HOME", ".cache")


OWNER_ENV = "LLAMA_TUI_OWNER"


def owner_marker(directory: Path | str | None = None) -> str:
    """The LLAMA_TUI_OWNER value that marks a process as ours: the absolute state dir it belongs to
    (default: the marker inherited from our own environment, else the configured state dir)."""
    if directory is None:
        inherited = os.environ.get(OWNER_ENV)
        if inherited:
            return inherited
        directory = state_dir()
    return str(Path(directory).expanduser().absolute())


def owner_env(directory: Path | str | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """A child's environment (`base`, default ours) carrying the owner marker of `directory`."""
    return {**(os.environ if base is None else base), OWNER_ENV: owner_marker(directory)}


def user_presets_dir() -> Path:
    return config_dir() / "presets"


def user_config_file() -> Path:
    return config_dir() / "config.toml"


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make it 0700: it holds logs with prompts and API keys."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, data: bytes | str) -> None:
    """Write a file atomically with mode 0600 (temp file in the same dir, fsync, rename)."""
    if isinstance(data, str):
        data = data.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
