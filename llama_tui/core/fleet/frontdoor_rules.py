"""What a front door accepts, checked before anything is rendered or started: API keys (and the files
that hold them), listen addresses, paths that nginx.conf can name, policies and the NGINX modules they
need, and the worker and connection limits that follow the planned concurrency."""

from __future__ import annotations

import ipaddress
import os
import re
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llama_tui.core import hardware
from llama_tui.core.config import POLICIES
from llama_tui.core.errors import UserError

if TYPE_CHECKING:
    from llama_tui.core.fleet.frontdoor import FrontDoorSpec


MIN_KEY_LENGTH = 16
_SAFE_KEY = re.compile(r"^[A-Za-z0-9._~+/=-]{%d,200}\Z" % MIN_KEY_LENGTH)
SAFE_HEADER = re.compile(r"^[A-Za-z0-9-]{1,64}\Z")
SAFE_HOST = re.compile(r"^[A-Za-z0-9.:_-]{1,253}\Z")
_KEY_RULE = (f"API key must be {MIN_KEY_LENGTH}-200 characters of letters, digits and ._~+/=-",
             "choose a key such as the output of `openssl rand -hex 24`")
# A path nginx.conf can hold: bare when it is one plain token, else in double quotes. A quote, a
# backslash, a `$` (a variable in access_log) or a control character cannot be written safely.
_BARE_PATH = re.compile(r"^[A-Za-z0-9/._+:@%,=~-]+\Z")
_UNQUOTABLE = re.compile(r'["\\$\x00-\x1f\x7f]')


def check_key(key: str) -> str:
    """`key` when it is a usable API key (16-200 safe characters), else a UserError."""
    if not isinstance(key, str) or not _SAFE_KEY.match(key):
        raise UserError(*_KEY_RULE)
    return key


def parse_listen(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The `--listen` address: a plain IPv4 or IPv6 address (no host name, no scope id such as `%lo`)."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        ip = None
    if ip is None or not isinstance(value, str) or getattr(ip, "scope_id", None) or "%" in value:
        raise UserError(f"--listen must be an IP address (plain: no host name, no %scope), got {value!r}",
                        "use 127.0.0.1 (default), 0.0.0.0 for every interface, or an address of this machine")
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:  # NGINX's IPv6-only listening socket cannot bind it (EINVAL), though Python's can
        raise UserError(f"--listen {value} is an IPv4 address written as IPv6, which NGINX cannot listen on",
                        f"write it as IPv4: --listen {mapped}")
    return ip


def is_public(listen: str) -> bool:
    """Whether NGINX listening on `listen` can be reached from other machines (not loopback)."""
    return not parse_listen(listen).is_loopback


def conf_path(path: Path | str) -> str:
    """`path` as nginx.conf writes it: a bare token, or double-quoted (spaces, `;`, `#`, braces).
    A UserError names a path that nginx.conf cannot hold."""
    text = str(path)
    if _BARE_PATH.match(text):
        return text
    if not text or _UNQUOTABLE.search(text):
        raise UserError(f"the path {text!r} cannot be written into nginx.conf (it holds a quote, a backslash, "
                        "a $ or a control character)",
                        "use a state dir (--state-dir, LLAMA_TUI_STATE_DIR) or --out path without those characters")
    return f'"{text}"'


def nofile_limit() -> int:
    """Most open files NGINX may ask for: the hard limit, or fs.nr_open when running as root."""
    try:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ValueError, OSError):
        hard = 65536
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if os.geteuid() == 0:
        try:
            return max(hard, int(Path("/proc/sys/fs/nr_open").read_text().strip()))
        except (OSError, ValueError):
            return hard
    return hard


@dataclass(frozen=True)
class Limits:
    workers: int
    worker_connections: int
    rlimit_nofile: int
    capped: bool  # the open-files limit is below what max_concurrency needs
    stream_capacity: int  # concurrent streams one worker can hold


def limits(spec: FrontDoorSpec, nofile: int | None = None) -> Limits:
    """Worker and connection limits for `spec.max_concurrency` streams, all in one worker if need be."""
    nofile = nofile_limit() if nofile is None else nofile
    workers = spec.worker_processes or max(1, min(hardware.logical_cores(), 4))
    wanted = max(1024, 2 * spec.max_concurrency + 256)  # client + upstream connection per stream
    rlimit = min(2 * wanted, nofile)  # connections + log and temp files, with room
    conns = min(wanted, rlimit - 128)
    return Limits(workers, conns, rlimit, conns < wanted, max(0, (conns - 64) // 2))


def read_key_file(path: Path | str) -> str:
    """The API key in `path`: its first non-empty line, stripped. UserError names the file."""
    path = Path(path).expanduser()
    try:
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except OSError as exc:
        raise UserError(f"cannot read API key file {path}: {exc.strerror}",
                        f"check that {path} exists and is readable") from None
    if not lines:
        raise UserError(f"API key file {path} is empty", "write the key on its first line")
    return lines[0]


def read_api_key(spec: FrontDoorSpec) -> str | None:
    """The key NGINX enforces: `api_key`, else the first non-empty line of `api_key_file`."""
    if spec.api_key is not None:
        key = spec.api_key
    elif spec.api_key_file:
        key = read_key_file(spec.api_key_file)
    else:
        return None
    return check_key(key)


def check_policy(policy: str, modules_dir: str | None = None) -> tuple[str, ...]:
    """The modules NGINX must load for `policy` (the `prefix` policy: NGINX's Lua module, read from
    `modules_dir`, default: where this nginx keeps its modules); UserError for an unknown policy, or
    for `prefix` when the module is not installed (and no `modules_dir` is given)."""
    if policy not in POLICIES:
        raise UserError(f"unknown policy {policy!r}", f"use one of: {', '.join(POLICIES)}")
    if policy != "prefix":
        return ()
    from llama_tui.core import binaries

    if modules_dir is not None:
        return tuple(str(Path(modules_dir) / m) for m in binaries.NGINX_LUA_MODULES)
    found = binaries.nginx_lua_modules()
    if found is None:
        raise UserError("the prefix policy needs NGINX's Lua module, which is not installed",
                        f"run `llama-tui setup` as root, or `apt-get install {binaries.NGINX_LUA_PACKAGE}`; "
                        "or pick another policy")
    return tuple(str(p) for p in found)
