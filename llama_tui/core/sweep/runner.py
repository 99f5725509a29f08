"""The fleet/bench side of a sweep, behind the small `ShapeRunner` interface.

The bookkeeping, ordering and knee logic (orchestrator, planner) are tested against fake runners
without processes; `FleetRunner` is the real one: core/fleet/ brings each shape up in the sweep's
own state dir (`OUT/fleet-state`, so a user's running fleet is never touched) and core/bench/
measures it through NGINX while `PeakSampler` keeps the memory peaks.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from llama_tui.core.errors import UserError
from llama_tui.core.sweep import fit
from llama_tui.core.sweep.config import SweepConfig
from llama_tui.core.sweep.planner import Shape, concurrency_candidates


class LaunchFailed(Exception):
    def __init__(self, message: str, memory: bool) -> None:
        super().__init__(message)
        self.message = message
        self.memory = memory


@dataclass(frozen=True)
class LaunchInfo:
    commands: tuple[str, ...] = ()  # exact command lines (llama-server instances, nginx)
    build_info: str | None = None
    pids: tuple[int, ...] = ()


class ShapeRunner(Protocol):
    def cleanup_stale(self) -> list[str]: ...
    def launch(self, shape: Shape, cfg: SweepConfig) -> LaunchInfo: ...
    def measure(self, shape: Shape, cfg: SweepConfig, concurrency: int, n_predict: int,
                stop: threading.Event) -> dict[str, Any]: ...
    def teardown(self) -> None: ...


class PeakSampler:
    """Samples RSS and GPU memory of the fleet's instance processes (with their children) through the
    fleet monitor every `interval` seconds while a cell runs; keeps the peaks per instance."""

    def __init__(self, pids: Sequence[int], interval: float = 0.5) -> None:
        self.pids = list(pids)
        self.interval = interval
        self.rss: dict[int, int] = {}
        self.gpu: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sweep-peaks", daemon=True)

    def _sample(self, mon: Any) -> None:
        for pid, s in mon.processes(self.pids).items():
            if s.rss_bytes is not None:
                self.rss[pid] = max(self.rss.get(pid, 0), s.rss_bytes)
            if s.gpu_memory_bytes is not None:
                self.gpu[pid] = max(self.gpu.get(pid, 0), s.gpu_memory_bytes)

    def _loop(self) -> None:
        from llama_tui.core.fleet.monitor import Monitor

        mon = Monitor()
        try:
            while True:
                self._sample(mon)
                if self._stop.wait(self.interval):
                    break
            self._sample(mon)
        finally:
            mon.close()

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def fields(self) -> dict[str, Any]:
        rss = [self.rss.get(p) for p in self.pids]
        gpu = [self.gpu.get(p) for p in self.pids] if self.gpu else None
        return {"rss_peak_bytes": rss,
                "rss_peak_total_bytes": sum(r for r in rss if r is not None) if self.rss else None,
                "gpu_mem_peak_bytes": gpu,
                # an instance whose GPU memory stayed unknown leaves the total unknown, not short
                "gpu_mem_peak_total_bytes": sum(g for g in gpu if g is not None) if gpu and None not in gpu else None}


# Bench step fields -> row fields (the row keeps the names).
_STEP_FIELDS = ("output_tok_s", "server_output_tok_s", "ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms", "itl_p50_ms",
                "itl_p95_ms", "tpot_p50_ms", "e2e_p95_ms", "errors", "requests_ok", "valid", "invalid_reason",
                "latency_valid", "latency_note", "client_cpu_percent", "duration_s", "warmup_s", "api", "stream", "errors_by_class", "reconnects",
                "token_agreement_pct", "workers", "prompt_tok_s", "cache_n_mean", "workload")


def row_from_step(step: Mapping[str, Any]) -> dict[str, Any]:
    """The row fields of one bench step (see core/bench/ for the step's own definitions)."""
    out = {k: step.get(k) for k in _STEP_FIELDS}
    out["errors"] = int(out["errors"] or 0)
    out["requests_ok"] = int(out["requests_ok"] or 0)
    out["valid"] = bool(out["valid"]) if out["valid"] is not None else out["requests_ok"] > 0
    return out


class FleetRunner:
    """The real shape runner: core/fleet/ brings each shape up in `OUT/fleet-state`, core/bench/
    measures it through NGINX, the fleet monitor samples memory peaks."""

    def __init__(self, cfg: SweepConfig) -> None:
        self.cfg = cfg
        self.state_dir = cfg.fleet_state_dir()
        self.pids: tuple[int, ...] = ()
        self.nginx_url: str | None = None

    def cleanup_stale(self) -> list[str]:
        """Stop a fleet that a killed sweep left behind in this output directory."""
        from llama_tui.core import fleet
        from llama_tui.core.fleet import processes, state

        notes = []
        st = state.read_state(self.state_dir)
        if st is not None:
            fleet.down(state_dir=self.state_dir)
            n = len(st.instances)
            notes.append(f"stopped the fleet an interrupted sweep left running ({n} instance{'' if n == 1 else 's'})")
        stray = processes.owned_processes(self.state_dir)  # belt and braces: anything still carrying its marker
        if stray:
            for p in stray:
                try:
                    p.kill()
                except Exception:
                    pass
            import psutil

            psutil.wait_procs(stray, timeout=5)
            notes.append(f"killed {len(stray)} leftover process(es) of an interrupted sweep")
        return notes

    def launch(self, shape: Shape, cfg: SweepConfig) -> LaunchInfo:
        import shlex

        import psutil

        from llama_tui.core import fleet, probe

        cands = concurrency_candidates(cfg)
        spec = fleet.FleetSpec(
            model=Path(cfg.model), instances=shape.instances, parallel=shape.parallel,
            ctx_per_slot=cfg.ctx_per_slot, threads=shape.threads, gpu_layers=cfg.gpu_layers, gpus=tuple(cfg.gpus),
            host=cfg.host, base_port=cfg.base_port, nginx_port=cfg.nginx_port, listen=cfg.host, policy=cfg.policy,
            max_conns=False, max_concurrency=max(cands + [cfg.max_concurrency if cfg.concurrency == "auto" else 1]),
            extra_args=shape.server_args() + tuple(shlex.split(cfg.extra_args or "")), api_key=None,
            expose_admin=False, ready_timeout=cfg.ready_timeout, engine=cfg.engine, ray_address=cfg.ray_address,
            placement=cfg.placement, gpus_per_instance=cfg.gpus_per_instance, node_resource=cfg.node_resource,
            model_dirs=cfg.model_dirs)
        fleet.check_ports(spec)  # busy ports are the user's to fix: a UserError ends the sweep
        try:
            fleet.up(spec, state_dir=self.state_dir)
        except UserError as exc:
            text = f"{exc.cause} {exc.fix}"
            raise LaunchFailed(text, memory=fit.is_memory_failure(text)) from None
        st = fleet.load_state(state_dir=self.state_dir)
        if st is None:
            raise LaunchFailed("the fleet came up but left no state file", memory=False)
        self.nginx_url = st.nginx_url()
        insts = sorted(st.instances, key=lambda i: i.index)
        self.pids = tuple(i.pid for i in insts if i.pid and i.local())  # (peaks of Ray instances: not sampled)
        commands = [shlex.join(i.cmd) for i in insts if i.cmd]
        if st.nginx is not None and st.nginx.pid:
            try:
                # NGINX rewrites its title to "nginx: master process <the command line>"
                title = " ".join(psutil.Process(st.nginx.pid).cmdline())
                commands.append(title.split("master process ", 1)[-1])
            except psutil.Error:
                pass
        build_info = None
        urls = st.instance_urls()
        if urls:
            from llama_tui.core.fleet import keys

            with probe.Probe(api_key=keys.read_internal_key(self.state_dir)) as pr:
                props = pr.props(urls[0]) or {}
            build_info = props.get("build_info")
        return LaunchInfo(tuple(commands), str(build_info) if build_info else None, self.pids)

    def measure(self, shape: Shape, cfg: SweepConfig, concurrency: int, n_predict: int,
                stop: threading.Event) -> dict[str, Any]:
        from llama_tui.core import bench

        assert self.nginx_url is not None
        bc = bench.BenchConfig(
            url=self.nginx_url, api=cfg.api, concurrency=(concurrency,), duration=cfg.duration, warmup=cfg.warmup,
            n_predict=n_predict, prompt_tokens=cfg.prompt_tokens, stream=cfg.stream,
            state_dir=str(self.state_dir), **dict(cfg.workload))  # the servers behind NGINX: their token counters give server tok/s
        with PeakSampler(self.pids) as peaks:
            step = bench.run_step(bc, concurrency=concurrency, stop=stop)
        return {**row_from_step(step), **peaks.fields(), "interrupted": stop.is_set()}

    def teardown(self) -> None:
        from llama_tui.core import fleet
        from llama_tui.core.fleet import state

        if state.read_state(self.state_dir) is not None:
            fleet.down(state_dir=self.state_dir)
        self.pids, self.nginx_url = (), None
