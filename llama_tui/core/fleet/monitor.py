"""Per-instance and per-server numbers for a fleet: CPU, memory, GPU, slots, tok/s; and the machine.

A `Monitor` is stateful so that rates (CPU percent, server tok/s) come from the difference between
two samples; the first sample of a process or server has no rate yet (None). Everything it returns
is a frozen dataclass; a value that is not known is None (the UI shows "n/a").

Process numbers come through the placement seam (`placement.stats(handles)`: `LocalPlacement`
samples local processes with `process_stats.ProcessSampler`); server numbers come from each
endpoint's /slots and /metrics through `probe.Probe`. Cost matters: the TUI samples 16+ instances
every second, so the two HTTP probes per instance go over a kept-alive connection (standard library
http.client) rather than a full async client. `benchmarks/monitor_cost.py` measures it.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import orjson
import psutil

from llama_tui.core import gpu as gpu_mod
from llama_tui.core import hardware
from llama_tui.core.fleet.local import LocalPlacement
from llama_tui.core.fleet.placement import Endpoint, InstanceHandle, Placement, ProcessStats
from llama_tui.core.fleet.process_stats import ProcessSampler
from llama_tui.core.probe import (REQUESTS_DEFERRED, REQUESTS_PROCESSING, TOKENS_PREDICTED_TOTAL, Probe,
                                  parse_prometheus, summarize_slots)
from llama_tui.core.snapshots import GpuSample, NodeSample, SystemSample

if TYPE_CHECKING:
    from llama_tui.core.fleet.spec import FleetSpec


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
class MonitorSample:
    taken_at: float
    processes: tuple[tuple[InstanceHandle, ProcessStats], ...]
    servers: tuple[tuple[Endpoint, ServerSample], ...]
    system: SystemSample
    nodes: tuple[NodeSample, ...] = ()  # the nodes of a multi-host placement, with their own numbers

    def process(self, handle: InstanceHandle | None) -> ProcessStats | None:
        return dict(self.processes).get(handle) if handle is not None else None

    def server(self, endpoint: Endpoint) -> ServerSample | None:
        return dict(self.servers).get(endpoint)


class Monitor:
    """Samples instances (through their placement), servers and the machine. One instance per polling
    loop; not thread-safe. `placement` defaults to local processes."""

    def __init__(self, nvml: gpu_mod.Nvml | None = None, http_timeout: float = 1.0,
                 children_every_s: float = 15.0, max_workers: int = 8, placement: Placement | None = None,
                 api_key: str | None = None) -> None:
        self._local = ProcessSampler(nvml, children_every_s)
        self.placement: Placement = placement if placement is not None else LocalPlacement(sampler=self._local)
        self.http_timeout = http_timeout
        self.max_workers = max_workers
        self._tokens_last: dict[Endpoint, tuple[float, float]] = {}  # -> (tokens total, monotonic)
        self._sys_last: tuple[float, float] | None = None  # (busy seconds, total seconds)
        self._pool: ThreadPoolExecutor | None = None
        # keep-alive, one connection per server; `api_key` for instances that require one
        self._probe = Probe(timeout=http_timeout, connect_timeout=None, api_key=api_key)
        self._fleet: tuple[str, str, str | None] | None = None  # (source, state dir, namespace) followed

    def use_fleet(self, spec: "FleetSpec | None", state_dir: Path) -> None:
        """Sample the fleet in `state_dir` (`spec`: its spec, None when it cannot be read) through its
        engine's placement, with its internal key. A local fleet's placement attaches only to processes
        of that state dir (`LocalPlacement` with its owner marker); a Ray fleet's process numbers come
        from what its supervisor publishes while that is fresh, else from the cluster itself (this
        process then joins it as a driver)."""
        from llama_tui.core.fleet import keys, placement, published

        self.use_key(keys.read_internal_key(state_dir))
        source = spec.engine if spec is not None else "local"
        if source == "ray":
            source = "published" if published.fresh(state_dir) else "ray"
        fleet = (source, str(state_dir), spec.ray_namespace if spec is not None else None)
        if fleet == self._fleet:
            return
        if source == "published":
            self.placement = published.PublishedPlacement(state_dir)  # type: ignore[assignment]
        elif source == "ray":
            self.placement = placement.for_fleet(spec, state_dir)  # type: ignore[arg-type]
        else:
            self.placement = LocalPlacement(state_dir, spec.host if spec is not None else "127.0.0.1",
                                            sampler=self._local)
        self._fleet = fleet

    def use_key(self, api_key: str | None) -> None:
        """The key the servers require from now on (a fleet's internal key, `keys.read_internal_key`)."""
        self._probe.set_api_key(api_key)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        self._probe.close()

    # ------------------------------------------------------------------------------------ processes

    def instances(self, handles: Iterable[InstanceHandle]) -> dict[InstanceHandle, ProcessStats]:
        """Process stats of each running instance, from its placement (CPU percent since the previous call)."""
        handles = list(dict.fromkeys(handles))
        return self.placement.stats(handles) if handles else {}

    def processes(self, pids: Iterable[int]) -> dict[int, ProcessStats]:
        """Process stats of local pids, each with its descendants (for scripts that watch local processes;
        a fleet's instances are sampled through `instances`). Pids that do not exist are left out."""
        return self._local.processes(pids)

    # ------------------------------------------------------------------------------------ servers

    def _server(self, ep: Endpoint) -> ServerSample:
        slots_r = self._probe.get(ep.url, "/slots")
        metrics_r = self._probe.get(ep.url, "/metrics")
        now = time.monotonic()
        if slots_r is None and metrics_r is None:
            self._tokens_last.pop(ep, None)
            return ServerSample(False)
        busy = total = None
        if slots_r is not None and slots_r.status == 200:
            try:
                summary = summarize_slots(orjson.loads(slots_r.body))
            except orjson.JSONDecodeError:
                summary = None
            if summary is not None:
                busy, total = summary.busy, summary.total
        processing = deferred = tokens = rate = None
        if metrics_r is not None and metrics_r.status == 200:
            m = parse_prometheus(metrics_r.body.decode(errors="replace"))
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
        self._probe.keep_only(ep.url for ep in eps)
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
        nv = self._local.gpu()
        gpus = tuple(GpuSample(g.index, g.name, g.memory_used_bytes, g.memory_total_bytes, g.util_percent)
                     for g in nv.devices()) if nv else ()
        return SystemSample(pct, hardware.logical_cores(), int(vm.total - vm.available), int(vm.total), gpus)

    # ------------------------------------------------------------------------------------ all at once

    def sample(self, handles: Iterable[InstanceHandle] = (), endpoints: Iterable[Endpoint] = (),
               http: bool = True) -> MonitorSample:
        procs = self.instances(handles)
        servers = self.servers(endpoints) if http else {}
        node_systems = getattr(self.placement, "node_systems", None)
        nodes = node_systems() if node_systems is not None else ()
        return MonitorSample(time.time(), tuple(procs.items()), tuple(servers.items()), self.system(), nodes)
