"""Per-process and per-server numbers for a fleet: CPU, memory, GPU, slots, tok/s.

A `Monitor` is stateful so that rates (CPU percent, server tok/s) come from the difference between
two samples; the first sample of a process or server has no rate yet (None). Everything it returns
is a frozen dataclass. NVML starts lazily on the first GPU question; without a GPU, a driver or a
value, the field is None (the UI shows "n/a").

Cost matters: the TUI samples 16+ instances every second. Per process it reads two /proc files
(`oneshot`), the process tree is rescanned only every `children_every_s` (llama-server rarely has
children), and the two HTTP probes per instance use the standard library's http.client over a
kept-alive loopback connection rather than a full async client. `benchmarks/monitor_cost.py` measures it.
"""

from __future__ import annotations

import http.client
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Sequence

import orjson
import psutil

from llama_tui.core import gpu as gpu_mod
from llama_tui.core import hardware
from llama_tui.core.snapshots import GpuSample, SystemSample


def http_get(host: str, port: int, path: str, timeout: float = 1.0) -> tuple[int, bytes] | None:
    """GET on a fresh connection: (status, body), or None when the server cannot be reached."""
    host = host.strip("[]")
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


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


def health(host: str, port: int, timeout: float = 1.0) -> int | None:
    """HTTP status of /health (200 ready, 503 loading), or None when unreachable."""
    r = http_get(host, port, "/health", timeout)
    return r[0] if r else None


@dataclass(frozen=True)
class ProcessSample:
    """One process and its descendants."""

    pid: int
    cpu_percent: float | None  # percent of one core (can exceed 100); None on the first sample
    rss_bytes: int | None
    gpu_memory_bytes: int | None  # None without NVML
    gpu_util_percent: float | None
    children: int = 0


@dataclass(frozen=True)
class ServerSample:
    """What one llama-server says about itself (/slots, /metrics)."""

    reachable: bool
    slots_busy: int | None = None
    slots_total: int | None = None
    requests_processing: float | None = None
    requests_deferred: float | None = None
    tokens_predicted_total: float | None = None
    server_tok_s: float | None = None  # from the tokens_predicted_total counter between two samples


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


@dataclass(frozen=True)
class MonitorSample:
    taken_at: float
    processes: tuple[tuple[int, ProcessSample], ...]
    servers: tuple[tuple[Endpoint, ServerSample], ...]
    system: SystemSample

    def process(self, pid: int | None) -> ProcessSample | None:
        return dict(self.processes).get(pid) if pid else None

    def server(self, host: str, port: int) -> ServerSample | None:
        return dict(self.servers).get(Endpoint(host, port))


class Monitor:
    """Samples processes, servers and the machine. One instance per polling loop; not thread-safe."""

    def __init__(self, nvml: gpu_mod.Nvml | None = None, http_timeout: float = 1.0,
                 children_every_s: float = 15.0, max_workers: int = 8) -> None:
        self._nvml = nvml
        self._gpu_checked = False
        self._gpu_ok = False
        self.http_timeout = http_timeout
        self.children_every_s = children_every_s
        self.max_workers = max_workers
        self._procs: dict[int, psutil.Process] = {}
        self._cpu_last: dict[int, tuple[float, float]] = {}  # pid -> (cpu seconds, monotonic)
        self._children: dict[int, tuple[int, ...]] = {}
        self._children_at = float("-inf")
        self._tokens_last: dict[Endpoint, tuple[float, float]] = {}  # -> (tokens total, monotonic)
        self._sys_last: tuple[float, float] | None = None  # (busy seconds, total seconds)
        self._pool: ThreadPoolExecutor | None = None
        self._conns: dict[Endpoint, http.client.HTTPConnection] = {}  # keep-alive, one per server

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    # ------------------------------------------------------------------------------------ GPU

    def _gpu(self) -> gpu_mod.Nvml | None:
        if not self._gpu_checked:
            self._gpu_checked = True
            if self._nvml is None:
                self._nvml = gpu_mod.nvml()
            self._gpu_ok = self._nvml.available
        return self._nvml if self._gpu_ok else None

    # ------------------------------------------------------------------------------------ processes

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

    def processes(self, pids: Iterable[int]) -> dict[int, ProcessSample]:
        """CPU percent (since the previous call), RSS and GPU memory/utilisation of each pid plus its
        descendants. Pids that do not exist are left out."""
        pids = [p for p in dict.fromkeys(pids) if p]
        if not pids:
            return {}
        self._refresh_children(pids)
        nv = self._gpu()
        gpu_mem = nv.process_memory() if nv else {}
        gpu_util = nv.process_utilization() if nv else {}
        now = time.monotonic()
        out: dict[int, ProcessSample] = {}
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
            if nv:
                ids = [m for m, _ in members]
                mem = sum(gpu_mem.get(m, 0) for m in ids)
                util = max((gpu_util.get(m, 0.0) for m in ids), default=0.0)
                gmem, gutil = int(mem), float(util)
            else:
                gmem, gutil = None, None
            out[pid] = ProcessSample(pid, None if cpu_pct is None else round(cpu_pct, 1), rss, gmem, gutil,
                                     len(members) - 1)
        # forget processes that are no longer asked about
        keep = set(pids) | {c for p in pids for c in self._children.get(p, ())}
        for gone in [p for p in self._procs if p not in keep]:
            self._procs.pop(gone, None)
            self._cpu_last.pop(gone, None)
        return out

    # ------------------------------------------------------------------------------------ servers

    def _get(self, ep: Endpoint, path: str) -> tuple[int, bytes] | None:
        """GET over a kept-alive connection (half the CPU of a fresh one). A reused connection that the
        server closed meanwhile is retried once on a fresh one; a fresh one that fails is not."""
        for _ in range(2):
            conn = self._conns.pop(ep, None)
            reused = conn is not None
            if conn is None:
                conn = http.client.HTTPConnection(ep.host.strip("[]"), ep.port, timeout=self.http_timeout)
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                if reused:
                    continue
                return None
            if resp.will_close:
                conn.close()
            else:
                self._conns[ep] = conn
            return resp.status, body
        return None

    def _server(self, ep: Endpoint) -> ServerSample:
        from llama_tui.core.probe import (REQUESTS_DEFERRED, REQUESTS_PROCESSING, TOKENS_PREDICTED_TOTAL,
                                          parse_prometheus, summarize_slots)  # (probe loads httpx: only when used)

        slots_r = self._get(ep, "/slots")
        metrics_r = self._get(ep, "/metrics")
        now = time.monotonic()
        if slots_r is None and metrics_r is None:
            self._tokens_last.pop(ep, None)
            return ServerSample(False)
        busy = total = None
        if slots_r is not None and slots_r[0] == 200:
            try:
                summary = summarize_slots(orjson.loads(slots_r[1]))
            except orjson.JSONDecodeError:
                summary = None
            if summary is not None:
                busy, total = summary.busy, summary.total
        processing = deferred = tokens = rate = None
        if metrics_r is not None and metrics_r[0] == 200:
            m = parse_prometheus(metrics_r[1].decode(errors="replace"))
            processing = m.get(REQUESTS_PROCESSING)
            deferred = m.get(REQUESTS_DEFERRED)
            tokens = m.get(TOKENS_PREDICTED_TOTAL)
        if tokens is not None:
            last = self._tokens_last.get(ep)
            if last is not None and tokens >= last[0] and now > last[1]:
                rate = round((tokens - last[0]) / (now - last[1]), 1)
            self._tokens_last[ep] = (tokens, now)
        return ServerSample(True, busy, total, processing, deferred, tokens, rate)

    def servers(self, endpoints: Iterable[Endpoint]) -> dict[Endpoint, ServerSample]:
        eps = list(dict.fromkeys(endpoints))
        for gone in [ep for ep in self._conns if ep not in eps]:
            self._conns.pop(gone).close()
        if len(eps) <= 1:
            return {ep: self._server(ep) for ep in eps}
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="llama-tui-probe")
        return dict(zip(eps, self._pool.map(self._server, eps)))

    # ------------------------------------------------------------------------------------ machine

    def system(self) -> SystemSample:
        t = psutil.cpu_times()
        idle = t.idle + getattr(t, "iowait", 0.0)
        total = sum(t)
        pct = None
        if self._sys_last is not None and total > self._sys_last[1]:
            busy_d = (total - idle) - self._sys_last[0]
            pct = round(max(0.0, min(100.0, busy_d / (total - self._sys_last[1]) * 100.0)), 1)
        self._sys_last = (total - idle, total)
        vm = psutil.virtual_memory()
        nv = self._gpu()
        gpus = tuple(GpuSample(g.index, g.name, g.memory_used_bytes, g.memory_total_bytes, g.util_percent)
                     for g in nv.devices()) if nv else ()
        return SystemSample(pct, hardware.logical_cores(), int(vm.total - vm.available), int(vm.total), gpus)

    # ------------------------------------------------------------------------------------ all at once

    def sample(self, pids: Iterable[int] = (), endpoints: Iterable[Endpoint] = (), http: bool = True) -> MonitorSample:
        procs = self.processes(pids)
        servers = self.servers(endpoints) if http else {}
        return MonitorSample(time.time(), tuple(procs.items()), tuple(servers.items()), self.system())
