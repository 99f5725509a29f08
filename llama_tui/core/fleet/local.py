"""`LocalPlacement`: instances as processes on this machine (the first implementation of the placement
seam, see `placement.py`).

Each llama-server runs in its own session and process group (signals reach the whole group), with
LLAMA_TUI_OWNER naming the state dir (so a scan finds it), the fleet's internal key as LLAMA_API_KEY
(never in argv), no inherited LLAMA_ARG_* variables (its command line, recorded in fleet.json, is all
its configuration), `CUDA_VISIBLE_DEVICES` set to its GPU,
its output appended to its log after a banner line, and, with `--pin-cpus`, its CPU affinity set
before it starts (a trampoline that execs llama-server, so the pid stays the same). Nothing ties it
to the process that started it: it keeps serving when that process dies, and `attach` finds it again
from its record (pid and start time). A placement with a state dir signals and attaches only to
processes that are that fleet's (`processes.ProcRef`); one without (the Monitor's) only reads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from llama_tui.core import hardware, paths
from llama_tui.core.errors import UserError
from llama_tui.core.fleet import keys
from llama_tui.core.fleet.placement import (LOCAL_NODE, Endpoint, ExitStatus, InstanceHandle, PlacementError,
                                            ProcessStats, endpoint_of)
from llama_tui.core.fleet.process_stats import ProcessSampler
from llama_tui.core.fleet.processes import ProcRef, alive, holds_port, process_start_time, terminate
from llama_tui.core.fleet.state import InstanceState, log

# Runs before llama-server in the same process (exec keeps the pid): sets the CPU affinity every thread
# llama-server will create inherits. llama.cpp's own --cpu-mask leaves the main thread unpinned at -t 1.
_PIN_EXEC = ("import os,sys\n"
             "os.sched_setaffinity(0,[int(c) for c in sys.argv[1].split(',')])\n"
             "try:\n os.execv(sys.argv[2],sys.argv[2:])\n"
             "except OSError as e:\n print('llama-tui: cannot start',sys.argv[2],'(',e,')',file=sys.stderr);sys.exit(127)\n")


def pinned(cmd: list[str], cpus: list[int] | None) -> list[str]:
    """The argv that starts `cmd` restricted to `cpus` (the command itself when there are none)."""
    if not cpus:
        return list(cmd)
    return [sys.executable, "-I", "-S", "-c", _PIN_EXEC, ",".join(map(str, cpus)), *cmd]


def cuda_env(gpu: int) -> dict[str, str]:
    """The environment that pins a process to the GPU with NVML index `gpu`. NVML numbers GPUs in PCI bus
    order, CUDA by default fastest first, so on a box with mixed cards the same number can name two
    different GPUs: PCI_BUS_ID makes CUDA count the way NVML (and nvidia-smi) do."""
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": str(gpu)}


class LocalPlacement:
    """Instances as local processes. `state_dir` (where they run, whose owner marker they carry) is
    needed to start them; `host` is the loopback address they bind (the fleet's --host);
    `internal_key` is the key they require (None: keyless instances)."""

    starts_in_background = False  # a Popen is quick

    def reserve(self, indices: Sequence[int]) -> None:
        pass  # the machine is there already

    def release(self, indices: Sequence[int]) -> None:
        pass

    def __init__(self, state_dir: Path | None = None, host: str = "127.0.0.1",
                 sampler: ProcessSampler | None = None, internal_key: str | None = None) -> None:
        self.state_dir = state_dir
        self.host = host
        self.internal_key = internal_key
        self.sampler = sampler or ProcessSampler()
        self._procs: dict[InstanceHandle, subprocess.Popen] = {}  # the ones this placement started
        self._stats_lock = threading.Lock()
        self.owner = paths.owner_marker(state_dir) if state_dir is not None else ""  # "" signals nothing

    def _ref(self, handle: InstanceHandle) -> ProcRef | None:
        return ProcRef(handle.pid, handle.started, True, "llama-server", self.owner) if handle.pid else None

    def _open_log(self, rec: InstanceState) -> int:
        """The instance's log, opened for appending; /dev/null when it cannot be opened (full disk)."""
        log_path = Path(rec.log_path)
        try:
            paths.ensure_private_dir(log_path.parent)
            return os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except (OSError, UserError) as exc:
            log(f"instance {rec.index}: cannot open its log {log_path} ({exc}); its output is discarded")
            return os.open(os.devnull, os.O_WRONLY)

    def start(self, rec: InstanceState, restart: bool = False) -> InstanceHandle:
        if self.state_dir is None:
            raise PlacementError("this placement has no state dir to start instances in")
        env = paths.owner_env(self.state_dir, keys.inherited_env(os.environ))
        if self.internal_key:
            env = keys.instance_env(self.internal_key, env)
        if rec.gpu is not None:
            env.update(cuda_env(rec.gpu))
        fd = self._open_log(rec)
        try:
            on = f" on CPUs {hardware.format_cpus(rec.cpus)}" if rec.cpus else ""
            banner = (f"--- llama-tui: instance {rec.index} {'restart' if restart else 'start'} at "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}{on}: {' '.join(rec.cmd)}\n")
            try:
                os.write(fd, banner.encode())
            except OSError:
                pass  # a full disk loses the banner, not the instance
            proc = subprocess.Popen(pinned(rec.cmd, rec.cpus), stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, env=env,
                                    start_new_session=True, close_fds=True, cwd=str(self.state_dir))
        except OSError as exc:
            raise PlacementError(f"cannot start llama-server: {exc}") from None
        finally:
            os.close(fd)
        handle = InstanceHandle(rec.index, Endpoint(self.host, rec.port, LOCAL_NODE), proc.pid,
                                process_start_time(proc.pid))
        self._procs[handle] = proc
        return handle

    def attach(self, rec: InstanceState) -> InstanceHandle | None:
        if not rec.pid or not rec.alive(self.owner or None):
            return None
        return InstanceHandle(rec.index, endpoint_of(rec, self.host), rec.pid, rec.pid_started)

    def poll(self, handle: InstanceHandle) -> ExitStatus | None:
        proc = self._procs.get(handle)
        if proc is not None:
            code = proc.poll()
            return None if code is None else ExitStatus(code)
        # not ours to wait() on (adopted): it runs while its pid names our process, started then
        ref = self._ref(handle)
        running = ref.alive() if ref is not None and self.owner else alive(handle.pid, handle.started)
        return None if running else ExitStatus(None)

    def stop(self, handles: Sequence[InstanceHandle], timeout: float) -> None:
        refs = [r for r in (self._ref(h) for h in handles) if r is not None]
        terminate(refs, timeout=timeout)
        for h in handles:
            proc = self._procs.pop(h, None)
            if proc is not None:
                try:
                    proc.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    pass

    def kill(self, handle: InstanceHandle) -> None:
        ref = self._ref(handle)
        if ref is not None:
            ref.signal(signal.SIGKILL)

    def listens(self, handle: InstanceHandle) -> bool:
        """Its process (or one of its children) holds the listening socket of its port."""
        return bool(handle.pid) and holds_port(handle.pid, handle.endpoint.port)  # type: ignore[arg-type]

    def stats(self, handles: Sequence[InstanceHandle]) -> dict[InstanceHandle, ProcessStats]:
        with self._stats_lock:
            by_pid = self.sampler.processes(h.pid for h in handles if h.pid)
        return {h: by_pid[h.pid] for h in handles if h.pid in by_pid}

    def close(self) -> None:
        pass
