"""The node side of the Ray engine: `InstanceActor`, one per instance, run by Ray on the node it picks.

The actor starts llama-server on its node, bound to the node's IP on a port that is free there, with
the fleet's internal key in its environment (never on its command line). llama-server's output goes
to a log on the node, which the supervisor copies home piece by piece (`poll`). The actor reports the
process's CPU, RSS and NVML GPU memory and utilisation, and its node's own numbers (`sample`).

llama-server dies with its actor. It starts through a tiny exec trampoline that asks the kernel for
SIGKILL when its parent dies (Linux `PR_SET_PDEATHSIG`) and exits at once when that parent is already
gone. The parent is a thread of the actor that lives as long as llama-server does, so whether the
actor is stopped, killed by `ray.kill`, or loses its raylet with its node, nothing is left behind.
Where there is no such signal (macOS), a watchdog process does the same by polling.

This module runs in Ray worker processes on every node: llama-tui (the same version) must be
installed there, with a llama-server binary and the model file at the same path (or in the directory
`--model-dir` gives for the node's label, see `model_dirs.py`).
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from llama_tui.core.fleet import keys
from llama_tui.core.fleet import model_dirs as model_dirs_mod
from llama_tui.core.fleet.processes import holds_port

# Runs before llama-server in the same process (exec keeps the pid). argv: parent pid, program, args.
_TRAMPOLINE = ("import ctypes,os,signal,sys\n"
               "if sys.platform.startswith('linux'):ctypes.CDLL(None,use_errno=True).prctl(1,signal.SIGKILL)\n"
               "if os.getppid()!=int(sys.argv[1]):sys.exit(70)\n"  # the parent died before the prctl
               "try:os.setpriority(os.PRIO_PROCESS,0,0)\n"  # Ray starts its workers at nice 15
               "except OSError:pass\n"  # (not allowed for this user: `nice` in start's answer says so)
               "try:\n os.execv(sys.argv[2],sys.argv[2:])\n"
               "except OSError as e:\n print('llama-tui: cannot start',sys.argv[2],'(',e,')',file=sys.stderr);sys.exit(127)\n")
# Without PR_SET_PDEATHSIG (the prctl is 1, PR_SET_PDEATHSIG, on Linux only): watches its parent (the
# actor) and the instance, and kills the instance when the actor is gone.
_WATCHDOG = ("import os,signal,sys,time\n"
             "a,c=int(sys.argv[1]),int(sys.argv[2])\n"
             "while os.getppid()==a:\n"
             " time.sleep(1)\n"
             " try:os.kill(c,0)\n"
             " except OSError:sys.exit(0)\n"
             "try:os.kill(c,signal.SIGKILL)\n"
             "except OSError:pass\n")
LOG_CHUNK = 256 << 10  # bytes of log one poll carries home at most


def node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


def node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def free_port(ip: str) -> int:
    """A TCP port that is free on `ip` now (llama-server binds it a moment later)."""
    family = socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def find_binary(path: str) -> str | None:
    """llama-server on this node: `path` (the binary the fleet was started with) when it exists here,
    else the one llama-tui finds on this node (LLAMA_SERVER_BIN, PATH, its cache)."""
    if os.access(path, os.X_OK) and Path(path).is_file():
        return path
    from llama_tui.core import binaries

    found, _ = binaries.find_llama_server()
    return str(found) if found is not None and os.access(found, os.X_OK) else None


def node_resources() -> dict[str, float]:
    """This node's resources as the cluster knows them (its custom resources are its labels)."""
    import ray

    me = node_id()
    return dict(next((n.get("Resources") or {} for n in ray.nodes() if n.get("NodeID") == me), {}))


def check_node(model: str, llama_server: str) -> dict[str, Any]:
    """What a node offers the fleet: its IP and id, whether the model file (its path on this node) and its
    directory are there, its llama-server."""
    return {"ip": node_ip(), "node_id": node_id(), "hostname": socket.gethostname(),
            "model": os.path.isfile(model) and os.access(model, os.R_OK),
            "model_dir": os.path.isdir(os.path.dirname(model) or "."), "llama_server": find_binary(llama_server)}


def with_endpoint(cmd: list[str], host: str, port: int, binary: str) -> list[str]:
    """`cmd` (a fleet's llama-server command line) bound to `host`:`port` and run with `binary`."""
    out = [binary] + list(cmd[1:])
    for flag, value in (("--host", host), ("--port", str(port))):
        if flag in out:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
    return out


def log_dir(namespace: str) -> Path:
    return Path(tempfile.gettempdir()) / f"llama-tui-ray-{os.geteuid()}" / namespace


class InstanceActor:
    """One llama-server on this node (made a Ray actor by `ray_placement`)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.code: int | None = None
        self.log_path: Path | None = None
        self.info: dict[str, Any] = {}
        self._monitor: Any = None
        self._watchdog: subprocess.Popen | None = None

    # ------------------------------------------------------------------------------------ start

    def start(self, index: int, cmd: list[str], env: dict[str, str], namespace: str, model: str,
              model_dirs: list[list[str]] | None = None) -> dict[str, Any]:
        """Start llama-server, loading `model` or, on a node with one of `model_dirs`' labels, the file of
        that name in its DIR. Its endpoint and process, or {"error": why} (one line naming this node)."""
        import psutil

        ip = node_ip()
        where = f"Ray node {ip} ({socket.gethostname()})"
        pairs = model_dirs_mod.parse(model_dirs)
        path = model_dirs_mod.model_on_node(model, pairs, node_resources()) if pairs else model
        if not os.path.isfile(path):
            return {"error": f"the model {path} is missing on {where}", "fix": "copy the model to the same path on "
                    "every node, give that node's directory with --model-dir LABEL=DIR, or pin the fleet to nodes "
                    "that have it with --node-resource"}
        binary = find_binary(cmd[0])
        if binary is None:
            return {"error": f"no llama-server on {where}", "fix": "run `llama-tui doctor` there, or set LLAMA_SERVER_BIN"}
        port = free_port(ip)
        argv = with_endpoint(model_dirs_mod.with_model(cmd, path), ip, port, binary)
        d = log_dir(namespace)
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        self.log_path = d / f"instance-{index}.log"
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        started = threading.Event()
        failed: list[BaseException] = []
        child_env = {**keys.inherited_env(os.environ), **env}

        def keeper() -> None:
            # Spawned from this thread: the kernel's parent-death signal follows the thread that forked, and
            # this one lives exactly as long as llama-server.
            try:
                self.proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _TRAMPOLINE, str(os.getpid()), *argv], stdin=subprocess.DEVNULL,
                    stdout=fd, stderr=fd, env=child_env, close_fds=True, cwd=str(d))
            except BaseException as exc:
                failed.append(exc)
                return
            finally:
                started.set()
            self.code = self.proc.wait()

        threading.Thread(target=keeper, name=f"llama-server-{index}", daemon=True).start()
        started.wait()
        os.close(fd)
        if failed or self.proc is None:
            return {"error": f"cannot start llama-server on {where}: {failed[0] if failed else 'unknown'}", "fix": ""}
        if not sys.platform.startswith("linux"):
            self._watchdog = subprocess.Popen([sys.executable, "-I", "-S", "-c", _WATCHDOG, str(os.getpid()),
                                               str(self.proc.pid)], stdin=subprocess.DEVNULL, close_fds=True)
        try:
            created = psutil.Process(self.proc.pid).create_time()
        except psutil.Error:
            created = None
        nice = self._niceness(Path(binary).name)
        self.info = {"host": ip, "port": port, "node_id": node_id(), "pid": self.proc.pid, "started": created,
                     "log": str(self.log_path), "cmd": argv, "nice": nice}
        return dict(self.info)

    def _niceness(self, name: str, timeout: float = 2.0) -> int | None:
        """llama-server's niceness once the trampoline has exec'd it (None when it is gone or slow)."""
        import psutil

        deadline = time.monotonic() + timeout
        while self.proc is not None and time.monotonic() < deadline:
            try:
                p = psutil.Process(self.proc.pid)
                if p.name() == name[:15]:  # (the kernel keeps 15 characters)
                    return p.nice()
            except psutil.Error:
                return None
            time.sleep(0.01)
        return None

    # ------------------------------------------------------------------------------------ watching

    def describe(self) -> dict[str, Any]:
        """The running instance (as `start` returned it, plus its log's size), or {} once llama-server has exited."""
        if self.proc is None or self._exit_code() is not None:
            return {}
        try:
            size = os.path.getsize(self.log_path) if self.log_path is not None else 0
        except OSError:
            size = 0
        return {**self.info, "log_size": size}

    def listening(self) -> bool:
        """Whether llama-server itself holds the listening socket of its port (not a process that took
        the port between `free_port` and llama-server's bind)."""
        proc = self.proc
        if proc is None or self._exit_code() is not None or not self.info:
            return False
        return holds_port(proc.pid, int(self.info["port"]))

    def _exit_code(self) -> int | None:
        if self.proc is None:
            return None
        return self.code if self.code is not None else self.proc.poll()

    def poll(self, offset: int) -> tuple[int | None, bytes, int]:
        """(exit code or None while it runs, log bytes from `offset`, the offset after them)."""
        code = self._exit_code()
        data = b""
        if self.log_path is not None:
            try:
                with open(self.log_path, "rb") as f:
                    if os.fstat(f.fileno()).st_size < offset:
                        offset = 0  # truncated on the node
                    f.seek(offset)
                    data = f.read(LOG_CHUNK)
            except OSError:
                pass
        return code, data, offset + len(data)

    def sample(self) -> tuple[Any, Any]:
        """(ProcessStats of llama-server and its children or None, SystemSample of this node)."""
        if self._monitor is None:
            from llama_tui.core.fleet.monitor import Monitor

            self._monitor = Monitor()
        pid = self.proc.pid if self.proc is not None and self._exit_code() is None else None
        stats = self._monitor.processes([pid]).get(pid) if pid else None
        return stats, self._monitor.system()

    # ------------------------------------------------------------------------------------ stopping

    def stop(self, timeout: float, offset: int = 0) -> tuple[int | None, bytes]:
        """SIGTERM llama-server, SIGKILL after `timeout`. Its exit code and the rest of its log from
        `offset` (the log then goes: it has come home)."""
        code = self._stop(timeout)
        _, tail, _ = self.poll(offset)
        if self.log_path is not None:
            try:
                self.log_path.unlink()
                self.log_path.parent.rmdir()  # the namespace's directory, once its last log went
            except OSError:
                pass
        return code, tail

    def _stop(self, timeout: float) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        if self._watchdog is not None and self._watchdog.poll() is None:
            self._watchdog.kill()
        return code

    def kill(self) -> None:
        """SIGKILL llama-server at once (a hung one); `poll` then reports its exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
