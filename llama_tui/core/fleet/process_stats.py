"""Per-process numbers of processes on this machine: CPU, RSS, GPU memory and utilisation.

A `ProcessSampler` is stateful so that CPU percent comes from the difference between two samples;
the first sample of a process has no rate yet (None). NVML starts lazily on the first GPU question;
without a GPU, a driver or a value, the GPU fields are None (the UI shows "n/a").

Cost matters: the TUI samples 16+ instances every second. Per process it reads two /proc files
(`oneshot`), and the process tree is rescanned only every `children_every_s` (llama-server rarely
has children). `benchmarks/monitor_cost.py` measures it. `LocalPlacement.stats` is built on it.
"""

from __future__ import annotations

import time
from typing import Iterable, Mapping, Sequence

import psutil

from llama_tui.core import gpu as gpu_mod
from llama_tui.core.fleet.placement import ProcessStats


def tree_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of `pid` and its descendants so far, or None when `pid` is gone."""
    try:
        proc = psutil.Process(pid)
        kids = proc.children(recursive=True)
        total = sum(proc.cpu_times()[:2])
    except psutil.Error:
        return None
    for p in kids:
        try:
            total += sum(p.cpu_times()[:2])
        except psutil.Error:
            pass  # a child that just exited
    return total


def gpu_numbers(members: Sequence[int], memory: Mapping[int, int | None],
                utilization: Mapping[int, float] | None) -> tuple[int | None, float | None]:
    """GPU memory and utilisation of a process and its descendants (`members`) from NVML's per-process
    answers. Unknown stays None: no member on a GPU that NVML lists (a CPU-only instance, or pids NVML
    cannot see from inside a container), or a listed member whose memory NVML does not know. A member on
    a GPU without a utilisation sample was idle (0%); without any utilisation answer, None."""
    listed = [m for m in members if m in memory]
    if not listed:
        return None, None
    values = [memory[m] for m in listed]
    mem = None if any(v is None for v in values) else sum(v for v in values if v is not None)
    util = None if utilization is None else max((utilization.get(m, 0.0) for m in members), default=0.0)
    return mem, util


class ProcessSampler:
    """Samples local processes (each with its descendants). Not thread-safe."""

    def __init__(self, nvml: gpu_mod.Nvml | None = None, children_every_s: float = 15.0) -> None:
        self._nvml = nvml
        self._gpu_checked = False
        self._gpu_ok = False
        self.children_every_s = children_every_s
        self._procs: dict[int, psutil.Process] = {}
        self._cpu_last: dict[int, tuple[float, float]] = {}  # pid -> (cpu seconds, monotonic)
        self._children: dict[int, tuple[int, ...]] = {}
        self._children_at = float("-inf")

    def gpu(self) -> gpu_mod.Nvml | None:
        """NVML, started on the first call; None without a GPU."""
        if not self._gpu_checked:
            self._gpu_checked = True
            if self._nvml is None:
                self._nvml = gpu_mod.nvml()
            self._gpu_ok = self._nvml.available
        return self._nvml if self._gpu_ok else None

    def _refresh_children(self, pids: Sequence[int]) -> None:
        now = time.monotonic()
        if now - self._children_at < self.children_every_s and all(p in self._children for p in pids):
            return
        self._children_at = now
        kids: dict[int, list[int]] = {}
        for p in psutil.process_iter(["ppid"]):
            ppid = p.info.get("ppid")
            if ppid:
                kids.setdefault(ppid, []).append(p.pid)
        out: dict[int, tuple[int, ...]] = {}
        for pid in pids:
            seen: list[int] = []
            stack = list(kids.get(pid, ()))
            while stack and len(seen) < 256:
                c = stack.pop()
                seen.append(c)
                stack.extend(kids.get(c, ()))
            out[pid] = tuple(seen)
        self._children = out

    def _one(self, pid: int, now: float) -> tuple[float, int] | None:
        """(cpu seconds, rss) of one process, or None when it is gone."""
        p = self._procs.get(pid)
        try:
            if p is None:
                p = self._procs[pid] = psutil.Process(pid)
            with p.oneshot():
                t = p.cpu_times()
                rss = p.memory_info().rss
        except psutil.Error:
            self._procs.pop(pid, None)
            self._cpu_last.pop(pid, None)
            return None
        return t.user + t.system, int(rss)

    def processes(self, pids: Iterable[int]) -> dict[int, ProcessStats]:
        """CPU percent (since the previous call), CPU seconds, RSS and GPU memory/utilisation of each pid
        plus its descendants. Pids that do not exist are left out."""
        pids = [p for p in dict.fromkeys(pids) if p]
        if not pids:
            return {}
        self._refresh_children(pids)
        nv = self.gpu()
        gpu_mem = nv.process_memory() if nv else {}
        gpu_util = nv.process_utilization() if nv else None
        now = time.monotonic()
        out: dict[int, ProcessStats] = {}
        for pid in pids:
            own = self._one(pid, now)
            if own is None:
                continue
            members = [(pid, own)]
            for c in self._children.get(pid, ()):
                got = self._one(c, now)
                if got is not None:
                    members.append((c, got))
            cpu_pct: float | None = 0.0
            rss = 0
            for member, (cpu_s, member_rss) in members:
                rss += member_rss
                last = self._cpu_last.get(member)
                self._cpu_last[member] = (cpu_s, now)
                if member == pid and (last is None or now - last[1] <= 0):
                    cpu_pct = None  # no baseline for the process itself yet
                elif last is not None and cpu_pct is not None and now > last[1]:
                    cpu_pct += max(0.0, (cpu_s - last[0]) / (now - last[1]) * 100.0)
            gmem, gutil = gpu_numbers([m for m, _ in members], gpu_mem, gpu_util) if nv else (None, None)
            out[pid] = ProcessStats(pid, None if cpu_pct is None else round(cpu_pct, 1), rss, gmem, gutil,
                                    len(members) - 1, sum(cpu_s for _, (cpu_s, _r) in members))
        # forget processes that are no longer asked about
        keep = set(pids) | {c for p in pids for c in self._children.get(p, ())}
        for gone in [p for p in self._procs if p not in keep]:
            self._procs.pop(gone, None)
            self._cpu_last.pop(gone, None)
        return out
