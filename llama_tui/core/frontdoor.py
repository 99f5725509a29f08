"""The front door: NGINX in front of the fleet, rendered from templates, validated, started, reloaded.

NGINX runs unprivileged under its own prefix directory (`<state>/nginx`) with `nginx -p PREFIX -c
FILE`; it never reads or writes the system's nginx files. `daemon off`, so the process that starts
it (the fleet supervisor, or a test fixture) is its parent and can restart it.

Every start and reload runs `nginx -t` on the candidate file first. The live config file is only
replaced when the candidate passes, so a bad config never reaches the running master, which keeps
serving with the old one.
"""

from __future__ import annotations

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

import jinja2

from llama_tui import __version__
from llama_tui.core import hardware, paths, resources
from llama_tui.core.config import POLICIES
from llama_tui.core.errors import UserError


@dataclass(frozen=True)
class Backend:
    host: str
    port: int
    slots: int = 1

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class FrontDoorSpec:
    port: int
    backends: tuple[Backend, ...]
    policy: str = "least_conn"
    listen: str = "127.0.0.1"
    max_conns: bool = False
    max_concurrency: int = 1024
    expose_admin: bool = False
    api_key: str | None = None
    hash_header: str = "X-Session-Id"
    max_fails: int = 2
    fail_timeout: str = "3s"
    worker_processes: int | None = None


@dataclass
class ConfigCheck:
    ok: bool
    error: str | None = None


def _jinja() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.templates_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


_SAFE_KEY = re.compile(r"^[A-Za-z0-9._~+/=-]{8,200}$")
_SAFE_HEADER = re.compile(r"^[A-Za-z0-9-]{1,64}$")


def _hard_nofile_limit() -> int:
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ValueError, OSError):
        return 65536
    return hard if hard != resource.RLIM_INFINITY else 1 << 20


def render(spec: FrontDoorSpec, prefix: Path) -> str:
    """The full nginx.conf for `spec`, with file paths inside `prefix`."""
    if spec.policy not in POLICIES:
        raise UserError(f"unknown policy {spec.policy!r}", f"use one of: {', '.join(POLICIES)}")
    if not spec.backends:
        raise UserError("no backends to balance", "start at least one instance")
    if spec.api_key is not None and not _SAFE_KEY.match(spec.api_key):
        raise UserError("API key must be 8-200 characters of letters, digits and ._~+/=-",
                        "choose a key such as the output of `openssl rand -hex 24`")
    if not _SAFE_HEADER.match(spec.hash_header):
        raise UserError(f"bad hash header name {spec.hash_header!r}", "use letters, digits and dashes, e.g. X-Session-Id")
    try:
        listen_ip = ipaddress.ip_address(spec.listen)
    except ValueError:
        raise UserError(f"--listen must be an IP address, got {spec.listen!r}",
                        "use 127.0.0.1 (default) or 0.0.0.0 for every interface") from None
    listen_addr = f"[{listen_ip}]" if listen_ip.version == 6 else str(listen_ip)
    workers = spec.worker_processes or max(1, min(hardware.logical_cores(), 4))
    worker_connections = max(1024, 2 * spec.max_concurrency + 256)
    rlimit = min(2 * worker_connections + 64, _hard_nofile_limit())
    return _jinja().get_template("nginx.conf.j2").render(
        version=__version__,
        prefix=str(prefix),
        policy=spec.policy,
        backends=spec.backends,
        listen=spec.listen,
        listen_addr=listen_addr,
        port=spec.port,
        max_conns=spec.max_conns,
        max_concurrency=spec.max_concurrency,
        expose_admin=spec.expose_admin,
        api_key=spec.api_key,
        hash_header=spec.hash_header,
        max_fails=spec.max_fails,
        fail_timeout=spec.fail_timeout,
        worker_processes=workers,
        worker_connections=worker_connections,
        rlimit_nofile=rlimit,
        backlog=max(511, min(4096, spec.max_concurrency * 2)),
    )


def config_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class FrontDoor:
    """One NGINX instance under `prefix`. Not thread-safe; owned by one process."""

    nginx_bin: Path
    prefix: Path = field(default_factory=lambda: paths.state_dir() / "nginx")
    proc: subprocess.Popen | None = None
    spec: FrontDoorSpec | None = None
    last_error: str | None = None

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
        return self.prefix / "status.sock"

    def _prepare(self) -> None:
        paths.ensure_private_dir(self.prefix)
        for sub in ("logs", "tmp"):
            paths.ensure_private_dir(self.prefix / sub)

    def _cmd(self, conf: Path, *extra: str) -> list[str]:
        return [str(self.nginx_bin), "-p", str(self.prefix), "-e", str(self.error_log), "-c", str(conf), *extra]

    def test(self, text: str) -> ConfigCheck:
        """`nginx -t` on `text` written to a candidate file next to the live one."""
        self._prepare()
        candidate = self.prefix / "nginx.conf.candidate"
        paths.write_private(candidate, text)
        try:
            proc = subprocess.run(self._cmd(candidate, "-t", "-q"), capture_output=True, text=True, timeout=30,
                                  stdin=subprocess.DEVNULL)
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

    def start(self, spec: FrontDoorSpec) -> subprocess.Popen:
        """Validate, then start NGINX in the foreground of its own process group."""
        text = render(spec, self.prefix)
        check = self._install(text)
        if not check.ok:
            raise UserError(f"nginx rejected the generated config: {check.error}",
                            f"see {self.prefix / 'nginx.conf.candidate'}; report this as a bug")
        logf = open(self.prefix / "logs" / "stderr.log", "ab")
        self.proc = subprocess.Popen(self._cmd(self.conf_path), stdin=subprocess.DEVNULL, stdout=logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        self.spec = spec
        self._wait_listening(spec)
        return self.proc

    def adopt(self, pid: int, spec: FrontDoorSpec | None) -> None:
        """Take over an NGINX started by an earlier process (reattach)."""
        self.proc = None
        self.spec = spec
        self._adopted_pid = pid

    @property
    def pid(self) -> int | None:
        if self.proc is not None:
            return self.proc.pid if self.proc.poll() is None else None
        pid = getattr(self, "_adopted_pid", None)
        return pid if pid and _alive(pid) else None

    def _wait_listening(self, spec: FrontDoorSpec, timeout: float = 10.0) -> None:
        import socket

        deadline = time.monotonic() + timeout
        host = "127.0.0.1" if spec.listen in ("0.0.0.0", "127.0.0.1") else spec.listen
        if spec.listen == "::":
            host = "::1"
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

    def reload(self, spec: FrontDoorSpec) -> ConfigCheck:
        """Validate and apply `spec` with SIGHUP. On failure the running config stays in place."""
        try:
            text = render(spec, self.prefix)
        except UserError as exc:
            self.last_error = exc.cause
            return ConfigCheck(False, exc.cause)
        check = self._install(text)
        if not check.ok:
            return check
        pid = self.pid
        if pid is None:
            self.last_error = "nginx is not running"
            return ConfigCheck(False, self.last_error)
        os.kill(pid, signal.SIGHUP)
        self.spec = spec
        return check

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


def _tail(path: Path, n: int) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(lines[-n:])
