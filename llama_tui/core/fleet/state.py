"""The fleet's state file, its locks and its logs.

One state dir holds one fleet:

    fleet.json        what the supervisor started: instances, NGINX, supervisor pid (written atomically, 0600)
    spec.json         the FleetSpec a fresh supervisor starts from (written by `fleet up`)
    upstream.json     cumulative per-upstream statistics from NGINX's access log (supervisor, ~1/s)
    supervisor.lock   held (flock) by the live supervisor: at most one per state dir
    fleet.lock        held briefly by commands that start or stop a fleet (`up`, `down`, adopt)
    control.sock      the supervisor's control socket (in `paths.runtime_dir()` when this path is too long)
    logs/             instance-N.log, supervisor.log (size-capped)
    nginx/            NGINX's prefix directory

Nothing in the file is trusted blindly:
- the state dir must be ours (`paths.check_private_dir`: no link, our own, writable by no one else);
- a pid counts only while it names a process of this fleet, started when recorded (`processes.ProcRef`);
- paths (logs, sockets, NGINX's prefix) are computed from the state dir, never taken from the file;
- a file that cannot be read or makes no sense is damaged (`StateDamaged`: one line whose fix is
  `llama-tui fleet down`, which stops whatever runs by scanning for the owner marker).
A file whose processes are all gone is stale; `load_state` removes it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

import orjson

from llama_tui.core import paths
from llama_tui.core.errors import UserError
from llama_tui.core.fleet.placement import LOCAL_NODE, placed_remotely
from llama_tui.core.fleet.processes import ProcRef, alive, describe, owned_processes

STATE_FILE = "fleet.json"
SPEC_FILE = "spec.json"
UPSTREAM_FILE = "upstream.json"
REMOTE_FILES = ("placement.json", "ray.json")  # a remote fleet's published stats, its Ray placement groups
SUPERVISOR_LOCK = "supervisor.lock"
CLIENT_LOCK = "fleet.lock"
LOG_DIR = "logs"
SCHEMA = 1

# Instances that belong to the fleet (NGINX balances over those of them that are `in_upstream`).
MEMBER_STATES = ("starting", "ready", "restarting", "draining")


def resolve_dir(state_dir: Path | str | None) -> Path:
    """The state dir as an absolute path (default: `paths.state_dir()`)."""
    return Path(state_dir if state_dir is not None else paths.state_dir()).expanduser().absolute()


def _control_name(state_dir: Path) -> str:
    return hashlib.sha256(str(resolve_dir(state_dir) / "control.sock").encode()).hexdigest()[:20] + ".ctl"


def control_path(state_dir: Path) -> Path:
    """The supervisor's control socket: in the state dir, or (a unix socket path must stay under ~104
    bytes) in `paths.runtime_dir()`, named after the state dir."""
    inside = resolve_dir(state_dir) / "control.sock"
    if len(str(inside).encode()) <= 100:
        return inside
    return paths.runtime_dir() / _control_name(state_dir)


def control_socket(s: "FleetState", state_dir: Path) -> Path:
    """Where a client reaches the supervisor of `s`: `control_path`, or the socket the supervisor
    recorded when it was started with another runtime dir ($XDG_RUNTIME_DIR differs between
    sessions), provided it has this state dir's name and lies in a directory of ours."""
    computed = control_path(state_dir)
    rec = Path(s.control) if isinstance(s.control, str) and s.control else None
    if rec is None or rec == computed or rec.name != _control_name(state_dir) or not rec.is_absolute():
        return computed
    try:
        paths.check_private_dir(rec.parent)
    except UserError:
        return computed
    return rec


def instance_log_path(state_dir: Path, index: int) -> Path:
    return resolve_dir(state_dir) / LOG_DIR / f"instance-{index}.log"


def supervisor_log_path(state_dir: Path) -> Path:
    return resolve_dir(state_dir) / LOG_DIR / "supervisor.log"


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
    retry_at: float | None = None  # wall clock of the next try of a failed instance (half-open)

    def local(self) -> bool:
        """Its pid names a process of this machine that the fleet itself signals. An instance that a
        remote placement runs (a Ray actor's, on any node, even this one) is not: its identity is its
        actor, and only its placement stops it."""
        return self.node in (None, LOCAL_NODE)

    def ref(self, owner: str) -> ProcRef | None:
        if not self.pid or not self.local():
            return None
        return ProcRef(self.pid, self.pid_started, True, "llama-server", owner, tuple(self.cmd))

    def alive(self, owner: str | None = None) -> bool:
        """It runs here (and, given the fleet's `owner` marker, is the fleet's process)."""
        if not self.local():
            return False
        if owner is None:
            return alive(self.pid, self.pid_started)
        ref = self.ref(owner)
        return ref is not None and ref.alive()


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

    def ref(self, owner: str) -> ProcRef | None:
        return ProcRef(self.pid, self.pid_started, True, "nginx", owner) if self.pid else None

    def alive(self, owner: str | None = None) -> bool:
        """It runs (and, given the fleet's `owner` marker, is the fleet's NGINX)."""
        if owner is None:
            return alive(self.pid, self.pid_started)
        ref = self.ref(owner)
        return ref is not None and ref.alive()


@dataclass
class FleetState:
    """The content of fleet.json. `supervisor_alive` and `owner` (the owner marker of the state dir it
    was read from) are computed when the file is read, never stored."""

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
    owner: str = ""

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
        out = [r for r in (i.ref(self.owner) for i in self.instances) if r is not None]
        ng = self.nginx.ref(self.owner) if self.nginx is not None else None
        return out + ([ng] if ng is not None else [])

    def supervisor_ref(self) -> ProcRef | None:
        if not self.supervisor_pid:
            return None
        return ProcRef(self.supervisor_pid, self.supervisor_started, False, "supervisor", self.owner)

    def anything_alive(self) -> bool:
        if placed_remotely(self.spec) and any(i.state in MEMBER_STATES for i in self.instances):
            return True  # its instances run out of this machine's sight: only `fleet down` ends such a fleet
        return self.supervisor_alive or any(r.alive() for r in self.refs())

    # ---- (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("supervisor_alive", None)
        d.pop("owner", None)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FleetState":
        d = dict(data)
        d["instances"] = [_from_dict(InstanceState, i) for i in d.get("instances") or []]
        d["nginx"] = _from_dict(NginxState, d["nginx"]) if d.get("nginx") else None
        d.pop("supervisor_alive", None)
        d.pop("owner", None)
        return _from_dict(cls, d)


class StateDamaged(UserError):
    """fleet.json cannot be read or makes no sense. Nothing in it is used: `fleet down` finds the
    fleet's processes by their owner marker instead."""

    def __init__(self, state_dir: Path, what: str) -> None:
        super().__init__(f"fleet state damaged: {state_dir / STATE_FILE}: {what}",
                         f"llama-tui fleet down{state_dir_arg(state_dir)} (it stops whatever still runs, "
                         "found by its owner marker)")


def state_dir_arg(state_dir: Path) -> str:
    """` --state-dir DIR` for a command a message suggests, when DIR is not the default."""
    return "" if resolve_dir(state_dir) == resolve_dir(None) else f" --state-dir '{state_dir}'"


def refuse_strays(state_dir: Path) -> None:
    """Raise when processes of a fleet run in `state_dir` although no fleet state describes them (the
    file was deleted, or they outlived it): nothing should start there, and nothing should say that
    no fleet runs."""
    strays = owned_processes(state_dir)
    if strays:
        raise UserError(f"{len(strays)} process(es) of a fleet run in {resolve_dir(state_dir)} without a fleet "
                        f"state ({describe(strays)})", f"stop them with `llama-tui fleet down{state_dir_arg(state_dir)}`")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_time(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _shape_problem(data: Any) -> str | None:
    """What makes a decoded fleet.json unusable, or None."""
    if not isinstance(data, dict):
        return "not a JSON object"
    if not isinstance(data.get("spec"), dict):
        return "no fleet spec"
    if not (data.get("supervisor_pid") is None or _is_int(data["supervisor_pid"])) or not _is_time(
            data.get("supervisor_started")):
        return "bad supervisor pid"
    insts = data.get("instances", [])
    if not isinstance(insts, list):
        return "instances is not a list"
    for k, i in enumerate(insts):
        if not isinstance(i, dict) or not all(_is_int(i.get(f)) for f in ("index", "port", "threads")):
            return f"instance record {k} is incomplete"
        if not (i.get("pid") is None or _is_int(i["pid"])) or not _is_time(i.get("pid_started")):
            return f"instance record {k} has a bad pid"
        if not isinstance(i.get("cmd", []), list) or not isinstance(i.get("state", ""), str):
            return f"instance record {k} is malformed"
    ng = data.get("nginx")
    if ng is not None and (not isinstance(ng, dict) or not _is_int(ng.get("port"))
                           or not (ng.get("pid") is None or _is_int(ng["pid"])) or not _is_time(ng.get("pid_started"))):
        return "the nginx record is malformed"
    return None


def read_state(state_dir: Path | str | None = None) -> FleetState | None:
    """fleet.json as written (None when there is none). Raises StateDamaged when it cannot be read or
    makes no sense, and UserError when the state dir is not one we can trust."""
    d = resolve_dir(state_dir)
    paths.check_private_dir(d)
    path = d / STATE_FILE
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise StateDamaged(d, f"cannot be read ({exc.strerror or exc})") from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise StateDamaged(d, f"not valid JSON ({len(raw)} bytes: {exc})") from None
    problem = _shape_problem(data)
    if problem is None:
        try:
            st = FleetState.from_dict(data)
        except (TypeError, ValueError) as exc:
            problem = f"malformed ({exc})"
    if problem is not None:
        raise StateDamaged(d, problem)
    st.owner = paths.owner_marker(d)
    ref = st.supervisor_ref()
    st.supervisor_alive = ref is not None and ref.alive()
    return st


def write_state(state_dir: Path, st: FleetState) -> None:
    st.updated_at = time.time()
    paths.write_private(resolve_dir(state_dir) / STATE_FILE,
                        orjson.dumps(st.to_dict(), option=orjson.OPT_INDENT_2))


def remove_runtime_files(state_dir: Path) -> None:
    """Remove what describes a running fleet (the logs stay). Only paths computed from the state dir
    are removed, never one a file names."""
    d = resolve_dir(state_dir)
    for name in (STATE_FILE, SPEC_FILE, UPSTREAM_FILE, *REMOTE_FILES):
        with contextlib.suppress(FileNotFoundError):
            (d / name).unlink()
    with contextlib.suppress(FileNotFoundError, OSError):
        control_path(d).unlink()


def load_state(state_dir: Path | str | None = None) -> FleetState | None:
    """The running fleet in `state_dir`, or None. Stale state (every process gone) is removed, not
    trusted; damaged state raises StateDamaged. A fleet whose supervisor died but whose instances or
    NGINX still run is returned with `supervisor_alive=False` (`fleet up` adopts it)."""
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
                remove_runtime_files(d)
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
