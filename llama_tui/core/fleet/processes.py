"""Which local processes are a fleet's, and how they are stopped.

A process belongs to the fleet of state dir D only if
- its environment carries D as its owner marker (`LLAMA_TUI_OWNER`, see `paths.owner_marker`), or its
  command line is the one recorded for it, or it is NGINX with D's prefix (the master's command line
  says `-p D/nginx`; every NGINX process runs in that prefix as its working directory: NGINX
  overwrites its environment with its process title, so the marker cannot be read back), and
- when a start time is recorded for it, it started then (a pid the kernel gave to another process
  since is not ours).

Nothing is signalled without that check (`ProcRef.signal`, `terminate`, `kill_group_remnants`), and
`owned_processes` finds every process of a state dir by scanning the process table, trusting no file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import psutil

from llama_tui.core import paths

# What a supervisor's command line holds (`python -m llama_tui.core.fleet.supervisor ...`).
SUPERVISOR_MODULE = "llama_tui.core.fleet.supervisor"
NGINX_DIR = "nginx"  # NGINX's prefix inside the state dir
START_TIME_SLACK_S = 1.0


def process_start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def alive(pid: int | None, started: float | None = None) -> bool:
    """True when `pid` runs (not a zombie) and, if `started` is given, is the process started then.
    Says nothing about whose process it is: see `ProcRef` for that."""
    return running_process(pid, started) is not None


def running_process(pid: int | None, started: float | None) -> psutil.Process | None:
    """The process `pid` when it runs (not a zombie) and started at `started` (when given)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        if started is not None and abs(p.create_time() - started) > START_TIME_SLACK_S:
            return None  # the pid was reused by another process
        return p
    except psutil.Error:
        return None


def holds_port(pid: int, port: int) -> bool:
    """Whether process `pid` (or one of its children) holds the listening TCP socket of `port`: an
    instance serves its endpoint itself, not another process that took the port while it was down."""
    try:
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            conns = p.net_connections(kind="inet") if hasattr(p, "net_connections") else p.connections("inet")
            if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns):
                return True
    except (psutil.Error, ValueError):
        return False
    return False


def nginx_prefix(owner: str) -> str:
    return str(Path(owner) / NGINX_DIR)


def is_nginx_of(p: psutil.Process, prefix: str) -> bool:
    """NGINX running with `prefix`: its master's command line names it, and every NGINX process of
    ours (workers included, whose title names nothing) runs in it as its working directory."""
    try:
        if not p.name().startswith("nginx"):
            return False
        title = " ".join(p.cmdline()) + " "
        if title.startswith("nginx: master process ") and f" -p {prefix} " in title:
            return True
        return p.cwd() == prefix
    except psutil.Error:
        return False


def _is_python(p: psutil.Process, argv: Sequence[str]) -> bool:
    try:
        name = p.name()
    except psutil.Error:
        name = ""
    return name.startswith("python") or bool(argv) and os.path.basename(argv[0]).startswith("python")


def environ(p: psutil.Process) -> dict[str, str]:
    """`p`'s environment. A process that is just being exec'd shows an empty one for a moment (the
    kernel sets it up after the exec has begun): a young process is given a little time."""
    env = p.environ()
    deadline = time.monotonic() + 0.5
    while not env and time.monotonic() < deadline and time.time() - p.create_time() < 2.0:
        time.sleep(0.01)
        env = p.environ()
    return env


def owns(p: psutil.Process, owner: str, cmd: Sequence[str] | None = None) -> bool:
    """Whether `p` belongs to the fleet whose owner marker is `owner` (the start time is checked by
    the caller, who knows which one was recorded)."""
    if not owner:
        return False
    try:
        if environ(p).get(paths.OWNER_ENV) == owner:
            return True
    except psutil.Error:
        pass
    try:
        if cmd and list(p.cmdline()) == list(cmd):
            return True
    except psutil.Error:
        return False
    return is_nginx_of(p, nginx_prefix(owner))


@dataclass(frozen=True)
class ProcRef:
    """A process llama-tui started, as recorded: pid, start time, and the owner marker (the state dir)
    it must carry. `group`: it leads its own process group (every instance and NGINX does), so
    signals go to the whole group. `cmd`: its recorded command line (an alternative proof of identity)."""

    pid: int
    started: float | None = None
    group: bool = True
    name: str = ""
    owner: str = ""
    cmd: tuple[str, ...] = ()

    def process(self) -> psutil.Process | None:
        """The process, when it runs, started at `started` (if recorded) and is ours; else None."""
        p = running_process(self.pid, self.started)
        if p is None or not owns(p, self.owner, self.cmd):
            return None
        return p

    def alive(self) -> bool:
        return self.process() is not None

    def signal(self, sig: int) -> bool:
        """Send `sig` (to the group) if the process is still ours; returns whether it was sent."""
        if self.process() is None:
            return False
        try:
            if self.group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            if self.group:  # it leads no group (any more): signal it alone
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(self.pid, sig)
                    return True
        return False


def terminate(refs: Iterable[ProcRef], timeout: float = 10.0, sig: int = signal.SIGTERM) -> list[ProcRef]:
    """Send `sig` to every live ref that is still ours (its group), wait up to `timeout`, then SIGKILL
    what is left. Returns the refs that had to be killed. A zombie counts as gone: its parent reaps it
    (this function never calls wait() on children it does not own)."""
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


def _group_members(pgid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                out.append(p)
        except (OSError, psutil.Error):
            continue
    return out


def kill_group_remnants(leader: ProcRef | None) -> list[int]:
    """SIGKILL what is left of `leader`'s process group (e.g. NGINX workers whose master was killed):
    only members that are ours (`owns`) and started no earlier than the leader did. Nothing when a
    process that is not ours leads a group of that id now. Returns the pids killed."""
    if leader is None or not leader.pid:
        return []
    head = running_process(leader.pid, None)
    if head is not None and not owns(head, leader.owner, leader.cmd):
        return []  # the id leads someone else's group now
    victims = []
    for p in _group_members(leader.pid):
        try:
            if p.status() == psutil.STATUS_ZOMBIE or not owns(p, leader.owner):
                continue
            if leader.started is not None and p.create_time() < leader.started - START_TIME_SLACK_S:
                continue
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


def owned_processes(state_dir: Path | str) -> list[psutil.Process]:
    """Every running process of the fleet in `state_dir`, found by scanning (no file is read): the
    supervisor, instances and anything else carrying its owner marker, and its NGINX (master and
    workers). Other llama-tui processes that inherited the marker (a bench or sweep child, the TUI)
    are not the fleet's. Supervisors come first, so a caller stops them before what they restart."""
    owner = paths.owner_marker(state_dir)
    prefix = nginx_prefix(owner)
    me = os.getpid()
    found = []
    for p in psutil.process_iter(["pid", "name"]):
        if p.pid == me:
            continue
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if (p.info["name"] or "").startswith("nginx"):
                if is_nginx_of(p, prefix):
                    found.append(p)
                continue
            if environ(p).get(paths.OWNER_ENV) != owner:
                continue
            argv = p.cmdline()
            if _is_python(p, argv) or (p.info["name"] or "").startswith("llama-tui"):
                if SUPERVISOR_MODULE not in argv:
                    continue  # a llama-tui process (bench, sweep child), not part of the fleet
            found.append(p)
        except psutil.Error:
            continue
    return sorted(found, key=lambda p: 0 if _is_supervisor(p) else 1)


def _is_supervisor(p: psutil.Process) -> bool:
    try:
        return SUPERVISOR_MODULE in p.cmdline()
    except psutil.Error:
        return False


def ref_of(p: psutil.Process, owner: str) -> ProcRef | None:
    """A ref to a process found by `owned_processes` (its own start time; its group when it leads one)."""
    try:
        started = p.create_time()
        leads = os.getpgid(p.pid) == p.pid
        name = "supervisor" if _is_supervisor(p) else p.name()
    except (OSError, psutil.Error):
        return None
    return ProcRef(p.pid, started, leads and name != "supervisor", name, owner)


def describe(procs: Sequence[psutil.Process], most: int = 6) -> str:
    """"nginx 123, llama-server 456 ..." for a message."""
    def one(p: psutil.Process) -> str:
        try:
            return f"{'supervisor' if _is_supervisor(p) else p.name()} {p.pid}"
        except psutil.Error:
            return str(p.pid)
    return ", ".join(one(p) for p in procs[:most]) + (" ..." if len(procs) > most else "")
