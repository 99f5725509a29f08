"""The NGINX behind the front door, run unprivileged under its own prefix directory (`<state>/nginx`)
with `nginx -p PREFIX -c FILE`; it never reads or writes the system's nginx files. `daemon off`, so the
process that starts it (the fleet supervisor, or a test fixture) is its parent and can restart it.

Every start and reload runs `nginx -t` on the candidate file first. The live config file is only
replaced when the candidate passes, so a bad config never reaches the running master, which keeps
serving with the old one. `reload` waits until the new workers run (and the old ones have stopped
accepting), so a caller may then drain and stop a backend that left the upstream.

`read_stub_status(prefix)` reads the private status listener (`frontdoor.status_socket`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from llama_tui.core import paths, probe
from llama_tui.core.errors import UserError
from llama_tui.core.fleet import processes
from llama_tui.core.fleet.frontdoor import FrontDoorSpec, render, status_socket


@dataclass
class ConfigCheck:
    ok: bool
    error: str | None = None


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
