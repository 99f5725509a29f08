"""The fleet's state file and the processes it names.

One state dir holds one fleet:

    fleet.json        what the supervisor started: instances, NGINX, supervisor pid (written atomically, 0600)
    spec.json         the FleetSpec a fresh supervisor starts from (written by `fleet up`)
    upstream.json     cumulative per-upstream statistics from NGINX's access log (supervisor, ~1/s)
    supervisor.lock   held (flock) by the live supervisor: at most one per state dir
    fleet.lock        held briefly by commands that start or stop a fleet (`up`, `down`, adopt)
    control.sock      the supervisor's control socket (or a short path under /tmp when this one is too long)
    logs/             instance-N.log, supervisor.log (size-capped)
    nginx/            NGINX's prefix directory

Nothing in the file is trusted blindly: every pid is stored with its process start time
(`psutil.Process.create_time()`), so a pid that the kernel gave to another process since does not
count as alive. A file whose processes are all gone is stale; `load_state` removes it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import signal
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson
import psutil

from llama_tui.core import paths
from llama_tui.core.errors import UserError

STATE_FILE = "fleet.json"
SPEC_FILE = "spec.json"
UPSTREAM_FILE = "upstream.json"
REMOTE_FILES = ("placement.json", "ray.json")  # a remote fleet's published stats, its Ray placement groups
SUPERVISOR_LOCK = "supervisor.lock"
CLIENT_LOCK = "fleet.lock"
LOG_DIR = "logs"
NGINX_DIR = "nginx"
SCHEMA = 1

# What a supervisor's command line holds (`python -m llama_tui.core.fleet.supervisor ...`).
SUPERVISOR_MODULE = "llama_tui.core.fleet.supervisor"

# Instances that belong to the fleet (NGINX balances over those of them that are `in_upstream`).
MEMBER_STATES = ("starting", "ready", "restarting", "draining")


def resolve_dir(state_dir: Path | str | None) -> Path:
    """The state dir as an absolute path (default: `paths.state_dir()`)."""
    return Path(state_dir if state_dir is not None else paths.state_dir()).expanduser().absolute()


def control_path(state_dir: Path) -> Path:
    """The supervisor's control socket; a unix socket path must stay under ~104 bytes."""
    inside = resolve_dir(state_dir) / "control.sock"
    if len(str(inside).encode()) <= 100:
        return inside
    digest = hashlib.sha256(str(inside).encode()).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / f"llama-tui-{os.geteuid()}" / f"{digest}.ctl"


def instance_log_path(state_dir: Path, index: int) -> Path:
    return resolve_dir(state_dir) / LOG_DIR / f"instance-{index}.log"


def supervisor_log_path(state_dir: Path) -> Path:
    return resolve_dir(state_dir) / LOG_DIR / "supervisor.log"


# --------------------------------------------------------------------------------------------- processes


def process_start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def alive(pid: int | None, started: float | None = None) -> bool:
    """True when `pid` runs (not a zombie) and, if `started` is given, is the process started then."""
    if not pid or pid <= 0:
        return False
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        if started is not None and abs(p.create_time() - started) > 1.0:
            return False  # the pid was reused by another process
        return True
    except psutil.Error:
        return False


def _group_members(pgid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                out.append(p)
        except (OSError, psutil.Error):
            continue
    return out


@dataclass(frozen=True)
class ProcRef:
    """A process llama-tui started, as far as a state file records it. `group`: it leads its own process
    group (every instance and NGINX does), so signals go to the whole group."""

    pid: int
    started: float | None = None
    group: bool = True
    name: str = ""

    def alive(self) -> bool:
        return alive(self.pid, self.started)

    def signal(self, sig: int) -> None:
        try:
            if self.group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            if self.group:  # the leader is gone; signal it alone if it is still ours
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    if self.alive():
                        os.kill(self.pid, sig)


def terminate(refs: Iterable[ProcRef], timeout: float = 10.0, sig: int = signal.SIGTERM) -> list[ProcRef]:
    """Send `sig` to every live ref (its group), wait up to `timeout`, then SIGKILL what is left.
    Returns the refs that had to be killed. A zombie counts as gone: its parent reaps it (this
    function never calls wait() on children it does not own)."""
    live = [r for r in refs if r.alive()]
    for r in live:
        r.signal(sig)
    deadline = time.monotonic() + timeout
    while live and time.monotonic() < deadline:
        live = [r for r in live if r.alive()]
        if live:
            time.sleep(0.05)
    for r in live:
        r.signal(signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    rest = list(live)
    while rest and time.monotonic() < deadline:
        rest = [r for r in rest if r.alive()]
        if rest:
            time.sleep(0.05)
    return live


def kill_group_remnants(pgid: int | None, names: tuple[str, ...]) -> list[int]:
    """SIGKILL what is left of process group `pgid` (e.g. NGINX workers whose master was killed),
    but only processes whose name starts with one of `names`. Returns their pids."""
    if not pgid:
        return []
    victims = []
    for p in _group_members(pgid):
        try:
            if p.name().startswith(names) and p.status() != psutil.STATUS_ZOMBIE:
                victims.append(p)
        except psutil.Error:
            continue
    for p in victims:
        with contextlib.suppress(psutil.Error):
            p.kill()
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and any(alive(p.pid) for p in victims):
        time.sleep(0.02)  # a zombie is gone for us: whoever its parent is reaps it
    return [p.pid for p in victims]


def owned_processes(state_dir: Path) -> list[psutil.Process]:
    """Fleet processes (llama-server, nginx, the supervisor) whose environment names this state dir."""
    owner = paths.owner_marker(state_dir)
    me = os.getpid()
    found = []
    for p in psutil.process_iter(["pid", "name"]):
        if p.pid == me:
            continue
        try:
            name = p.info["name"] or ""
            if not (name.startswith(("llama-server", "nginx")) or name.startswith("python")):
                continue
            if p.environ().get("LLAMA_TUI_OWNER") != owner:
                continue
            if name.startswith("python") and SUPERVISOR_MODULE not in " ".join(p.cmdline()):
                continue
            found.append(p)
        except psutil.Error:
            continue
    return found


# --------------------------------------------------------------------------------------------- the records


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class InstanceState:
    index: int
    port: int
    threads: int
    log_path: str
    cmd: list[str] = field(default_factory=list)
    pid: int | None = None
    pid_started: float | None = None  # process start time: guards against pid reuse
    state: str = "starting"
    restarts: int = 0
    started_at: float | None = None  # wall clock of the current process's start
    ready_at: float | None = None
    in_upstream: bool = False  # NGINX balances over it
    gpu: int | None = None  # CUDA_VISIBLE_DEVICES
    cpus: list[int] | None = None  # the logical CPUs it is pinned to (--pin-cpus), else None
    exit_code: int | None = None
    last_error: str | None = None
    host: str | None = None  # its endpoint (placement.Endpoint) once started; None: the fleet's host
    node: str | None = None  # the node it runs on ("local": this machine)

    def local(self) -> bool:
        """Its pid names a process on this machine (not one on another node of a Ray fleet)."""
        return self.node in (None, "local")

    def ref(self) -> ProcRef | None:
        return ProcRef(self.pid, self.pid_started, True, "llama-server") if self.pid and self.local() else None

    def alive(self) -> bool:
        return self.local() and alive(self.pid, self.pid_started)


@dataclass
class NginxState:
    port: int
    listen: str
    policy: str
    prefix: str
    pid: int | None = None
    pid_started: float | None = None
    config_path: str | None = None
    config_valid: bool | None = None
    config_error: str | None = None
    restarts: int = 0
    error_log: str | None = None
    access_log: str | None = None

    def ref(self) -> ProcRef | None:
        return ProcRef(self.pid, self.pid_started, True, "nginx") if self.pid else None

    def alive(self) -> bool:
        return alive(self.pid, self.pid_started)


@dataclass
class FleetState:
    """The content of fleet.json. `supervisor_alive` is computed when the file is read, never stored."""

    state_dir: str
    spec: dict[str, Any]
    status: str = "starting"  # starting, running, failed, stopping
    error: str | None = None
    supervisor_pid: int | None = None
    supervisor_started: float | None = None
    control: str | None = None
    llama_server: str | None = None
    nginx_bin: str | None = None
    instances: list[InstanceState] = field(default_factory=list)
    nginx: NginxState | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    schema: int = SCHEMA
    supervisor_alive: bool = False

    # ---- what other modules ask of a fleet

    def instance_urls(self) -> list[str]:
        """Base URLs of the fleet's member instances (not failed or stopped), in index order."""
        from llama_tui.core.probe import base_url

        host = self.spec.get("host", "127.0.0.1")
        return [base_url(i.host or host, i.port) for i in sorted(self.instances, key=lambda i: i.index)
                if i.state in MEMBER_STATES]

    def nginx_url(self) -> str | None:
        """Where a local client reaches NGINX (a wildcard listen address is reached on loopback)."""
        from llama_tui.core.probe import base_url

        if self.nginx is None:
            return None
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.nginx.listen, self.nginx.listen)
        return base_url(host, self.nginx.port)

    def refs(self) -> list[ProcRef]:
        out = [r for r in (i.ref() for i in self.instances) if r is not None]
        if self.nginx is not None and self.nginx.ref() is not None:
            out.append(self.nginx.ref())  # type: ignore[arg-type]
        return out

    def supervisor_ref(self) -> ProcRef | None:
        if not self.supervisor_pid:
            return None
        return ProcRef(self.supervisor_pid, self.supervisor_started, False, "supervisor")

    def anything_alive(self) -> bool:
        if self.spec.get("engine") == "ray" and any(i.state in MEMBER_STATES for i in self.instances):
            return True  # its instances run on Ray nodes, out of sight: only `fleet down` ends such a fleet
        return self.supervisor_alive or any(r.alive() for r in self.refs())

    # ---- (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("supervisor_alive", None)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FleetState":
        d = dict(data)
        d["instances"] = [_from_dict(InstanceState, i) for i in d.get("instances") or []]
        d["nginx"] = _from_dict(NginxState, d["nginx"]) if d.get("nginx") else None
        d.pop("supervisor_alive", None)
        return _from_dict(cls, d)


def read_state(state_dir: Path | str | None = None) -> FleetState | None:
    """fleet.json as written, without judging it (None when absent or unreadable)."""
    path = resolve_dir(state_dir) / STATE_FILE
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError):
        return None  # a torn write cannot happen (atomic rename); an unreadable file is treated as absent
    if not isinstance(data, dict) or "spec" not in data:
        return None
    st = FleetState.from_dict(data)
    st.supervisor_alive = alive(st.supervisor_pid, st.supervisor_started)
    return st


def write_state(state_dir: Path, st: FleetState) -> None:
    st.updated_at = time.time()
    paths.write_private(resolve_dir(state_dir) / STATE_FILE,
                        orjson.dumps(st.to_dict(), option=orjson.OPT_INDENT_2))


def remove_runtime_files(state_dir: Path, control: str | None = None) -> None:
    """Remove what describes a running fleet (the logs stay)."""
    d = resolve_dir(state_dir)
    for name in (STATE_FILE, SPEC_FILE, UPSTREAM_FILE, *REMOTE_FILES):
        with contextlib.suppress(FileNotFoundError):
            (d / name).unlink()
    for sock in {control_path(d), Path(control) if control else None}:
        if sock is not None:
            with contextlib.suppress(FileNotFoundError, OSError):
                sock.unlink()


def load_state(state_dir: Path | str | None = None) -> FleetState | None:
    """The running fleet in `state_dir`, or None. Stale state (every process gone) is removed, not
    trusted. A fleet whose supervisor died but whose instances or NGINX still run is returned with
    `supervisor_alive=False` (`fleet up` adopts it)."""
    d = resolve_dir(state_dir)
    st = read_state(d)
    if st is None:
        return None
    if st.anything_alive():
        return st
    # Stale. Someone may be starting a fleet right now (holding fleet.lock): then leave it alone.
    with try_lock(d / CLIENT_LOCK) as got:
        if got:
            again = read_state(d)
            if again is not None and not again.anything_alive():
                remove_runtime_files(d, again.control)
    return None


# --------------------------------------------------------------------------------------------- locks


@contextlib.contextmanager
def try_lock(path: Path) -> Iterator[bool]:
    """A non-blocking exclusive flock; yields whether it was taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def client_lock(state_dir: Path, timeout: float = 60.0) -> Iterator[None]:
    """Serialises commands that start, adopt or stop a fleet in one state dir."""
    d = paths.ensure_private_dir(resolve_dir(state_dir))
    fd = os.open(d / CLIENT_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise UserError(f"another llama-tui command is starting or stopping the fleet in {d}",
                                    "wait for it to finish, then try again") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------- logs


def log(msg: str) -> None:
    """One line of the supervisor's log (its stdout, appended to `supervisor_log_path`)."""
    try:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {msg}", flush=True)
    except OSError:
        pass  # a full disk must not take the supervisor down


def tail_lines(path: Path | str | None, n: int = 20) -> list[str]:
    """The last `n` lines of a (possibly large) log file."""
    if not path:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except OSError:
        return []
    return data.decode(errors="replace").splitlines()[-n:]


_LOG_PREFIX = re.compile(r"^\d+\.\d+\.\d+\.\d+ [IWED] +")


def error_summary(path: Path | str | None, n: int = 3) -> str:
    """A one-line summary of a log's last run (after the last llama-tui banner) for an error message:
    the first distinct error lines (usually the cause) and the last one, else the last lines."""
    lines = tail_lines(path, 80)
    marks = [k for k, ln in enumerate(lines) if ln.startswith("--- llama-tui")]
    if marks:
        lines = lines[marks[-1] + 1:]
    lines = [" ".join(_LOG_PREFIX.sub("", ln).split()) for ln in lines if ln.strip()]
    errors: list[str] = []
    for ln in lines:
        low = ln.lower()
        if ("error" in low or "failed" in low or "abort" in low) and ln not in errors:
            errors.append(ln)
    if len(errors) > n:
        errors = errors[:n - 1] + errors[-1:]
    chosen = errors or lines[-n:]
    return " | ".join(chosen) if chosen else "(the log is empty)"


def rotate_log(path: Path, max_bytes: int) -> bool:
    """Cap a log that a child process appends to (O_APPEND): copy it to `.1`, then truncate it in
    place, so the writer keeps its file descriptor and needs no signal. Returns True if rotated."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
        old = path.with_name(path.name + ".1")
        tmp = path.with_name(path.name + ".1.tmp")
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            # Keep the newest part only; the copy is itself capped at max_bytes.
            src.seek(0, os.SEEK_END)
            size = src.tell()
            src.seek(max(0, size - max_bytes))
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.chmod(tmp, 0o600)
        os.replace(tmp, old)
        os.truncate(path, 0)
        return True
    except OSError:
        return False
