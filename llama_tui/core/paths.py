"""Where llama-tui keeps its files.

- config: `$LLAMA_TUI_CONFIG_DIR`, else `$XDG_CONFIG_HOME/llama-tui`, else `~/.config/llama-tui`
- state (fleet state, logs, results): `$LLAMA_TUI_STATE_DIR`, else `$XDG_STATE_HOME/llama-tui`,
  else `~/.local/state/llama-tui`
- cache (built llama-server, the tiny model): `$LLAMA_TUI_CACHE_DIR`, else `$XDG_CACHE_HOME/llama-tui`,
  else `~/.cache/llama-tui`

The state dir is created with mode 0700 and files written through `write_private` get 0600. A
directory llama-tui keeps private files or sockets in (state, sweep output, sockets) must be ours: not
a symbolic link, owned by us, writable by no one else (`ensure_private_dir` refuses it otherwise).
Sockets whose path would be too long inside the state dir go to `runtime_dir()`.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from llama_tui.core.errors import UserError


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


def runtime_dir() -> Path:
    """Where sockets go that do not fit inside the state dir: `$XDG_RUNTIME_DIR/llama-tui` when
    XDG_RUNTIME_DIR is set, else `TMPDIR/llama-tui-UID` (checked like any private dir before use:
    another user may have created it first)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "llama-tui"
    return Path(tempfile.gettempdir()) / f"llama-tui-{os.geteuid()}"


def _refuse(path: Path, cause: str, fix: str) -> UserError:
    return UserError(f"{path} {cause}", fix)


def check_private_dir(path: Path | str, *, ancestors: bool = True) -> None:
    """Refuse a directory we cannot trust with private files: a symbolic link, one owned by another
    user, or one that others can write. With `ancestors`, each existing parent must not let others
    replace it (owned by us or root, and not world-writable unless sticky, like /tmp). A path that
    does not exist yet passes (its parents are checked)."""
    path = Path(path).expanduser().absolute()
    me = os.geteuid()
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        st = None  # (creating it fails with the OSError that says why)
    except OSError as exc:
        raise _refuse(path, f"cannot be checked ({exc.strerror or exc})", "use a directory of your own") from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise _refuse(path, "is a symbolic link, not a directory of its own",
                          f"use the real directory ({os.path.realpath(path)}) or another one, not a link")
        if not stat.S_ISDIR(st.st_mode):
            raise _refuse(path, "is not a directory", "pass a directory path")
        if st.st_uid != me:
            raise _refuse(path, f"belongs to user id {st.st_uid}, not to you ({me})",
                          "use a directory of your own (it holds logs, keys and sockets)")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise _refuse(path, f"can be written by other users (mode {stat.S_IMODE(st.st_mode):o})",
                          f"chmod 700 '{path}', or use another directory")
    if not ancestors:
        return
    for parent in path.parents:
        try:
            pst = os.stat(parent)
        except FileNotFoundError:
            continue
        except OSError:
            break
        if pst.st_uid not in (me, 0):
            raise _refuse(parent, f"(a parent of {path}) belongs to user id {pst.st_uid}, who could replace it",
                          "keep llama-tui's directories under a directory of your own")
        if pst.st_mode & stat.S_IWOTH and not pst.st_mode & stat.S_ISVTX:
            raise _refuse(parent, f"(a parent of {path}) can be written by other users "
                          f"(mode {stat.S_IMODE(pst.st_mode):o}), who could replace it",
                          "keep llama-tui's directories under a directory of your own")


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) mode 0700 and return it: it holds logs with prompts, keys and
    sockets. An existing directory must pass `check_private_dir` (it is then made 0700). Raises
    UserError for a directory we cannot trust, OSError when it cannot be made (a full disk)."""
    path = Path(path)
    check_private_dir(path)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except FileExistsError:
        check_private_dir(path, ancestors=False)  # a file, or a link made since the check: say which
        raise
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)  # never chmod through a link
    try:
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
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
