"""The front door: NGINX in front of the fleet, rendered from templates, validated, started, reloaded.

NGINX runs unprivileged under its own prefix directory (`<state>/nginx`) with `nginx -p PREFIX -c
FILE`; it never reads or writes the system's nginx files. `daemon off`, so the process that starts
it (the fleet supervisor, or a test fixture) is its parent and can restart it.

Every start and reload runs `nginx -t` on the candidate file first. The live config file is only
replaced when the candidate passes, so a bad config never reaches the running master, which keeps
serving with the old one. `reload` waits until the new workers run (and the old ones have stopped
accepting), so a caller may then drain and stop a backend that left the upstream.

The private status listener (stub_status) is a unix socket in a 0700 directory: `status_socket(prefix)`;
`read_stub_status(prefix)` reads it.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import os
import re
import resource
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import jinja2

from llama_tui import __version__
from llama_tui.core import hardware, paths, probe, resources
from llama_tui.core.config import POLICIES
from llama_tui.core.errors import UserError
from llama_tui.core.fleet import processes

if TYPE_CHECKING:
    from llama_tui.core.fleet.placement import Endpoint

READ_TIMEOUT = "3600s"  # longest prompt processing + generation a stream may take
MAX_BODY = "64m"  # long prompts are large JSON bodies
BODY_IN_MEMORY = "128k"  # larger bodies go to a temp file in the private prefix
# The public listener: a client that sends its headers or body this slowly, or reads its response this
# slowly (between two writes, not per stream), is cut off instead of holding a connection.
CLIENT_HEADER_TIMEOUT = "10s"
CLIENT_BODY_TIMEOUT = "30s"
SEND_TIMEOUT = "60s"
PUBLIC_CONN_LIMIT = 64  # concurrent requests per remote client address on a non-loopback listener (default)
MAX_CONN_LIMIT = 65535  # NGINX refuses a larger limit_conn
# The only routes the listener serves (unless expose_admin): inference, the model list and /health.
PUBLIC_ROUTES = ("/v1/chat/completions", "/v1/completions", "/completion", "/v1/embeddings", "/v1/models",
                 "/health")
PREFIX_BYTES = 512  # the `prefix` policy keys each request by this much of its prompt's JSON


@dataclass(frozen=True)
class Backend:
    """One upstream server: an instance's endpoint and its slots."""

    host: str
    port: int
    slots: int = 1

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class FrontDoorSpec:
    """What NGINX should do. `max_conns`: cap each backend at its slots (excess goes to an uncapped
    overflow group and waits inside llama-server: open-source NGINX has no queue). `api_key` or
    `api_key_file` (first non-empty line; re-read at every render, so a reload rotates the key):
    requests without `Authorization: Bearer KEY` get 401 at NGINX. `internal_key`: the fleet's
    internal key (`keys.py`), which replaces the client's Authorization on the way to the instances.

    The listener serves only `PUBLIC_ROUTES` unless `expose_admin`. `upstream_header` (X-Upstream,
    the backend that answered): None = on for a loopback listener, off for a public one.
    `conn_limit`: concurrent requests per remote client address (loopback clients are not counted);
    None = `PUBLIC_CONN_LIMIT` on a public listener and no limit on a loopback one; 0 = no limit."""

    port: int
    backends: tuple[Backend, ...]
    policy: str = "least_conn"
    listen: str = "127.0.0.1"
    max_conns: bool = False
    max_concurrency: int = 1024
    expose_admin: bool = False
    api_key: str | None = None
    hash_header: str = "X-Session-Id"
    # Passive health: one refused connection (or 503 while loading) takes a backend out for 2 s; the
    # request itself is re-sent to the next backend. After 2 s one request probes it again.
    max_fails: int = 1
    fail_timeout: str = "2s"
    worker_processes: int | None = None
    api_key_file: str | None = None
    internal_key: str | None = None  # the instances require it: NGINX sends it in place of the client's
    upstream_header: bool | None = None
    conn_limit: int | None = None

    @classmethod
    def for_fleet(cls, fleet: Any, endpoints: Sequence[Endpoint], policy: str | None = None,
                  internal_key: str | None = None) -> "FrontDoorSpec":
        """The front door of a fleet (a `fleet.FleetSpec`, or anything with its attribute names) whose
        member instances serve at `endpoints` (`placement.Endpoint`: host, port, node); `policy`
        overrides the fleet's; `internal_key` is the key its instances require."""
        slots = int(getattr(fleet, "parallel", 1))
        return cls(port=fleet.nginx_port, backends=tuple(Backend(ep.host, ep.port, slots) for ep in endpoints),
                   policy=policy or getattr(fleet, "policy", "least_conn"),
                   listen=getattr(fleet, "listen", "127.0.0.1"), max_conns=bool(getattr(fleet, "max_conns", False)),
                   max_concurrency=int(getattr(fleet, "max_concurrency", 1024)),
                   expose_admin=bool(getattr(fleet, "expose_admin", False)), api_key=getattr(fleet, "api_key", None),
                   api_key_file=getattr(fleet, "api_key_file", None), internal_key=internal_key,
                   upstream_header=getattr(fleet, "upstream_header", None),
                   conn_limit=getattr(fleet, "conn_limit", None))


@dataclass
class ConfigCheck:
    ok: bool
    error: str | None = None


def _jinja() -> jinja2.Environment:
    return _jinja_for(str(resources.templates_dir()))


@functools.lru_cache(maxsize=4)
def _jinja_for(templates: str) -> jinja2.Environment:
    """One environment per templates dir: it keeps the compiled templates (and reloads a changed file)."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


MIN_KEY_LENGTH = 16
_SAFE_KEY = re.compile(r"^[A-Za-z0-9._~+/=-]{%d,200}\Z" % MIN_KEY_LENGTH)
_SAFE_HEADER = re.compile(r"^[A-Za-z0-9-]{1,64}\Z")
_SAFE_HOST = re.compile(r"^[A-Za-z0-9.:_-]{1,253}\Z")
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


def status_socket(prefix: Path) -> Path:
    """The stub_status unix socket: in the prefix, or (when that path is too long for a socket)
    in the private runtime dir (`paths.runtime_dir()`), named after the prefix."""
    inside = Path(prefix) / "status.sock"
    if len(str(inside)) <= 100:
        return inside
    digest = hashlib.sha256(str(Path(prefix).resolve()).encode()).hexdigest()[:20]
    return paths.runtime_dir() / f"{digest}.sock"


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


def render(spec: FrontDoorSpec, prefix: Path, *, nofile: int | None = None, as_root: bool | None = None,
           modules_dir: str | None = None) -> str:
    """The full nginx.conf for `spec`, with file paths inside `prefix`.

    `nofile` (the open-files limit), `as_root` and `modules_dir` (NGINX's modules, for the `prefix`
    policy) default to this process's and this nginx's; pass them for a reproducible rendering (golden
    files)."""
    load_modules = check_policy(spec.policy, modules_dir)
    if not spec.backends:
        raise UserError("no backends to balance", "start at least one instance")
    for b in spec.backends:
        if (not isinstance(b.host, str) or not _SAFE_HOST.match(b.host) or not _is_int(b.port)
                or not 1 <= b.port <= 65535 or not _is_int(b.slots) or b.slots < 1):
            raise UserError(f"bad backend {b.host!r}:{b.port} with {b.slots} slots",
                            "instances need a host name or IP, a port 1-65535 and at least one slot")
    if not _is_int(spec.port) or not 1 <= spec.port <= 65535:
        raise UserError(f"NGINX port {spec.port!r} is out of range", "pick --nginx-port between 1024 and 65535")
    if not _is_int(spec.max_concurrency) or not 1 <= spec.max_concurrency <= 1_000_000:
        raise UserError(f"--max-concurrency must be 1-1000000, got {spec.max_concurrency!r}",
                        "pass the largest concurrency you plan, e.g. --max-concurrency 1024")
    api_key = read_api_key(spec)
    internal_key = check_key(spec.internal_key) if spec.internal_key is not None else None
    if not isinstance(spec.hash_header, str) or not _SAFE_HEADER.match(spec.hash_header):
        raise UserError(f"bad hash header name {spec.hash_header!r}", "use letters, digits and dashes, e.g. X-Session-Id")
    listen_ip = parse_listen(spec.listen)
    public = not listen_ip.is_loopback
    conn_limit = (PUBLIC_CONN_LIMIT if public else 0) if spec.conn_limit is None else spec.conn_limit
    if not _is_int(conn_limit) or not 0 <= conn_limit <= MAX_CONN_LIMIT:
        raise UserError(f"--conn-limit must be 0 (no limit) to {MAX_CONN_LIMIT}, got {spec.conn_limit!r}",
                        "pass the concurrent requests one client address may make, e.g. --conn-limit 64")
    listen_addr = f"[{listen_ip}]" if listen_ip.version == 6 else str(listen_ip)
    lim = limits(spec, nofile)
    as_root = (os.geteuid() == 0) if as_root is None else as_root
    return _jinja().get_template("nginx.conf.j2").render(
        version=__version__,
        prefix=conf_path(prefix),
        pid_path=conf_path(Path(prefix) / "nginx.pid"),
        error_log=conf_path(Path(prefix) / "logs" / "error.log"),
        access_log=conf_path(Path(prefix) / "logs" / "access.log"),
        temp_paths={name: conf_path(Path(prefix) / "tmp" / name)
                    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")},
        status_listen=conf_path(f"unix:{status_socket(prefix)}"),
        policy=spec.policy,
        backends=spec.backends,
        listen=str(listen_ip),
        listen_addr=listen_addr,
        port=spec.port,
        max_conns=spec.max_conns,
        max_concurrency=spec.max_concurrency,
        expose_admin=spec.expose_admin,
        routes=PUBLIC_ROUTES,
        api_key=api_key,
        internal_key=internal_key,
        upstream_header=(not public) if spec.upstream_header is None else bool(spec.upstream_header),
        conn_limit=conn_limit,
        hash_header=spec.hash_header,
        max_fails=spec.max_fails,
        fail_timeout=spec.fail_timeout,
        worker_user="root" if as_root else None,
        worker_processes=lim.workers,
        worker_connections=lim.worker_connections,
        rlimit_nofile=lim.rlimit_nofile,
        nofile_limit=nofile_limit() if nofile is None else nofile,
        connections_capped=lim.capped,
        stream_capacity=lim.stream_capacity,
        backlog=max(511, min(4096, spec.max_concurrency * 2)),
        read_timeout=READ_TIMEOUT,
        max_body=MAX_BODY,
        body_in_memory=BODY_IN_MEMORY,
        client_header_timeout=CLIENT_HEADER_TIMEOUT,
        client_body_timeout=CLIENT_BODY_TIMEOUT,
        send_timeout=SEND_TIMEOUT,
        load_modules=load_modules,
        prefix_bytes=PREFIX_BYTES,
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def config_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------- stub_status

_STUB = re.compile(
    r"Active connections:\s*(\d+)\s+server accepts handled requests\s+(\d+)\s+(\d+)\s+(\d+)\s+"
    r"Reading:\s*(\d+)\s+Writing:\s*(\d+)\s+Waiting:\s*(\d+)", re.S)


def parse_stub_status(text: str) -> dict[str, int] | None:
    m = _STUB.search(text)
    if not m:
        return None
    keys = ("active", "accepts", "handled", "requests", "reading", "writing", "waiting")
    return dict(zip(keys, (int(g) for g in m.groups())))


def read_stub_status(prefix: Path, timeout: float = 1.0) -> dict[str, int] | None:
    """NGINX's stub_status from the private unix socket, or None when NGINX is not there.

    `active` and `writing` leave out this probe's own connection, so an idle NGINX reads 0. The
    connection is not kept alive: an idle one would count as `active` and `waiting` for every reader."""
    sock = status_socket(Path(prefix))
    if not sock.exists():
        return None
    r = probe.fetch(probe.unix_url(sock), "/nginx_status", timeout=timeout, max_bytes=65536)
    if r is None or r.status != 200:
        return None
    data = parse_stub_status(r.body.decode("latin-1"))
    if data is not None:
        data["active"] = max(0, data["active"] - 1)
        data["writing"] = max(0, data["writing"] - 1)
    return data


# ------------------------------------------------------------------------------------------- running NGINX


@dataclass
class FrontDoor:
    """One NGINX instance under `prefix`. Not thread-safe; owned by one process."""

    nginx_bin: Path
    prefix: Path = field(default_factory=lambda: paths.state_dir() / "nginx")
    proc: subprocess.Popen | None = None
    spec: FrontDoorSpec | None = None
    last_error: str | None = None
    owner: str | None = None  # LLAMA_TUI_OWNER for NGINX's environment (default: inherited, else the state dir)

    @property
    def conf_path(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def pid_path(self) -> Path:
        return self.prefix / "nginx.pid"

    @property
    def access_log(self) -> Path:
        return self.prefix / "logs" / "access.log"

    @property
    def error_log(self) -> Path:
        return self.prefix / "logs" / "error.log"

    @property
    def status_socket(self) -> Path:
        return status_socket(self.prefix)

    def _prepare(self) -> None:
        paths.ensure_private_dir(self.prefix)
        for sub in ("logs", "tmp"):
            paths.ensure_private_dir(self.prefix / sub)
        if self.status_socket.parent != self.prefix:
            paths.ensure_private_dir(self.status_socket.parent)

    def _cmd(self, conf: Path, *extra: str) -> list[str]:
        return [str(self.nginx_bin), "-p", str(self.prefix), "-e", str(self.error_log), "-c", str(conf), *extra]

    def test(self, text: str) -> ConfigCheck:
        """`nginx -t` on `text` written to a candidate file next to the live one."""
        candidate = self.prefix / "nginx.conf.candidate"
        try:
            self._prepare()
            paths.write_private(candidate, text)
        except OSError as exc:  # e.g. a full disk: the running config stays, the error is reported
            return ConfigCheck(False, f"cannot write {candidate}: {exc.strerror or exc}")
        try:
            proc = subprocess.run(self._cmd(candidate, "-t", "-q"), capture_output=True, text=True, timeout=30,
                                  umask=0o077, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return ConfigCheck(False, f"cannot run nginx -t: {exc}")
        if proc.returncode != 0:
            out = (proc.stderr + proc.stdout).strip().splitlines()
            lines = [ln for ln in out if "[emerg]" in ln or "[alert]" in ln] or out[-1:] or ["nginx -t failed"]
            return ConfigCheck(False, re.sub(r"^nginx: ", "", lines[0]).strip())
        return ConfigCheck(True)

    def _install(self, text: str) -> ConfigCheck:
        check = self.test(text)
        if check.ok:
            os.replace(self.prefix / "nginx.conf.candidate", self.conf_path)
        self.last_error = check.error
        return check

    def _env(self) -> dict[str, str]:
        return paths.owner_env(self.owner)

    def start(self, spec: FrontDoorSpec) -> subprocess.Popen:
        """Validate, then start NGINX in the foreground of its own process group."""
        text = render(spec, self.prefix)
        check = self._install(text)
        if not check.ok:
            raise UserError(f"nginx rejected the generated config: {check.error}",
                            f"see {self.prefix / 'nginx.conf.candidate'}; report this as a bug")
        sock = self.status_socket
        if sock.exists():  # left by an NGINX that was killed; it would block the listen
            sock.unlink()
        fd = os.open(self.prefix / "logs" / "stderr.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            # umask 077: the pid file and the logs NGINX creates are private (0600) like the rest of the state dir
            # cwd = the prefix: how a scan knows NGINX's workers, whose title names no prefix (processes.py)
            self.proc = subprocess.Popen(self._cmd(self.conf_path), stdin=subprocess.DEVNULL, stdout=fd,
                                         stderr=subprocess.STDOUT, start_new_session=True, env=self._env(),
                                         umask=0o077, cwd=str(self.prefix))
        finally:
            os.close(fd)
        self.spec = spec
        self._wait_listening(spec)
        return self.proc

    def adopt(self, pid: int, spec: FrontDoorSpec | None, started: float | None = None) -> None:
        """Take over an NGINX started by an earlier process (reattach). It counts (and gets signals)
        only while `pid` is an NGINX with this prefix, started at `started` when that is given."""
        self.proc = None
        self.spec = spec
        self._adopted = (pid, started)

    @property
    def pid(self) -> int | None:
        if self.proc is not None:
            return self.proc.pid if self.proc.poll() is None else None
        pid, started = getattr(self, "_adopted", (None, None))
        return pid if pid and _is_ours(pid, started, self.prefix) else None

    def _wait_listening(self, spec: FrontDoorSpec, timeout: float = 10.0) -> None:
        import socket

        deadline = time.monotonic() + timeout
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(spec.listen, spec.listen)
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                tail = _tail(self.error_log, 5) or _tail(self.prefix / "logs" / "stderr.log", 5)
                raise UserError(f"nginx exited at start (code {self.proc.returncode}): {tail}",
                                f"check that port {spec.port} is free and see {self.error_log}")
            try:
                with socket.create_connection((host, spec.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise UserError(f"nginx did not listen on {spec.listen}:{spec.port} within {timeout:.0f}s",
                        f"see {self.error_log}")

    def workers(self) -> tuple[set[int], set[int]]:
        """(accepting workers, workers shutting down after a reload) of the running master."""
        import psutil

        pid = self.pid
        if pid is None:
            return set(), set()
        active, leaving = set(), set()
        try:
            children = psutil.Process(pid).children()
        except psutil.Error:
            return set(), set()
        for child in children:
            try:
                title = " ".join(child.cmdline())
            except psutil.Error:
                continue
            if "shutting down" in title:
                leaving.add(child.pid)
            elif "worker process" in title:
                active.add(child.pid)
        return active, leaving

    def reload(self, spec: FrontDoorSpec, wait: float = 10.0) -> ConfigCheck:
        """Validate and apply `spec` with SIGHUP. On failure the running config stays in place and the
        error is returned (and kept in `last_error`).

        With `wait` > 0, return only once every accepting worker is a new one (the old workers have
        stopped taking requests and only finish their open streams), so the caller may then drain a
        backend that left the upstream. A reload the master refused (e.g. the port is taken) is an error."""
        try:
            text = render(spec, self.prefix)
        except UserError as exc:
            self.last_error = exc.cause
            return ConfigCheck(False, exc.cause)
        pid = self.pid
        if pid is None:
            self.last_error = "nginx is not running"
            return ConfigCheck(False, self.last_error)
        check = self._install(text)
        if not check.ok:
            return check
        before, _ = self.workers()
        log_mark = _size(self.error_log)
        os.kill(pid, signal.SIGHUP)
        self.spec = spec
        if wait <= 0:
            return check
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            active, _ = self.workers()
            if active and not (active & before):
                return check
            emerg = _new_emerg(self.error_log, log_mark)
            if emerg:
                self.last_error = f"nginx kept the old config: {emerg}"
                return ConfigCheck(False, self.last_error)
            time.sleep(0.02)
        self.last_error = f"nginx did not apply the new config within {wait:.0f}s (see {self.error_log})"
        return ConfigCheck(False, self.last_error)

    def reopen_logs(self) -> None:
        """SIGUSR1: NGINX reopens its log files (after the access log was renamed for rotation)."""
        pid = self.pid
        if pid is not None:
            os.kill(pid, signal.SIGUSR1)

    def rotate_access_log(self, max_bytes: int = 256 << 20) -> bool:
        """Rename access.log to access.log.1 when it exceeds `max_bytes` and make NGINX reopen it.
        `accesslog.AccessLogFollower` reads the rest of the old file before moving to the new one."""
        if _size(self.access_log) <= max_bytes:
            return False
        os.replace(self.access_log, self.access_log.with_name("access.log.1"))
        self.reopen_logs()
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """SIGQUIT (finish open streams), then SIGTERM, then SIGKILL; wait for the whole group."""
        pid = self.pid
        if pid is None:
            return
        for sig, wait in ((signal.SIGQUIT, timeout), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            if _wait_gone(pid, self.proc, wait):
                break
        if self.proc is not None:
            try:
                self.proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass


def _is_ours(pid: int, started: float | None, prefix: Path) -> bool:
    """`pid` is an NGINX running with `prefix` (started at `started`, when given)."""
    p = processes.running_process(pid, started)
    return p is not None and processes.is_nginx_of(p, str(prefix))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _wait_gone(pid: int, proc: subprocess.Popen | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return True
        elif not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _new_emerg(path: Path, offset: int) -> str | None:
    """The first [emerg] line written to the error log after `offset`."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read(1 << 16).decode(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if "[emerg]" in line:
            return line.split("[emerg]", 1)[1].split(":", 1)[-1].strip()
    return None


def _tail(path: Path, n: int) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(lines[-n:])
