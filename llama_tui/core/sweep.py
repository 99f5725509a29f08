"""The sweep: find the best fleet shape (instances x parallel [x threads, batch, ubatch]) by measurement.

For each shape: bring a fleet up in the sweep's own state dir (`OUT/fleet-state`, so a user's running
fleet is never touched), run the concurrency steps with the bench engine (steady-state windows,
warm-up excluded), append one row per cell to `OUT/results.jsonl` (write + flush + fsync), and tear
the shape down before the next one.

- Threads: each shape gets the fleet's thread budget (physical cores // instances) unless a threads
  list is swept; the threads used are recorded in every row.
- `concurrency="auto"` doubles concurrency until throughput gains less than 3%, or the SLO breaks.
- Resume: a cell that already stands (same coordinates, same measurement parameters, same model
  fingerprint) is not measured again; results from another model are refused. A fleet left behind by
  a killed sweep is found in `OUT/fleet-state` and stopped first.
- Adaptive: shapes are visited coarse-first (the grid's centre and corners), then around the leaders;
  a shape's concurrency ramp starts near its slot count and stops at the knee; shapes whose estimated
  memory cannot fit are skipped; `budget_min` stops the sweep with the best found so far.
- Stopping (`stop` event, SIGINT/SIGTERM in the CLI) ends after the current step, tears the fleet
  down and leaves a resumable directory.

The fleet/bench side is behind a small `ShapeRunner` interface, so the bookkeeping, ordering and knee
logic are tested without processes (`FleetRunner` is the real one).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

from llama_tui.core import fit, hardware, paths, results
from llama_tui.core.childproc import EventStream
from llama_tui.core.errors import UserError
from llama_tui.core.snapshots import SweepCellResult, SweepProgress

GAIN = 0.03  # a step that adds less than 3% throughput is past the knee
FLEET_STATE = "fleet-state"
EXTRA_AXES = ("threads", "batch", "ubatch")
SHAPE_AXES = ("instances", "parallel") + EXTRA_AXES
STEP_OVERHEAD_S = 1.0  # per cell, beyond warm-up + duration (connection setup, result assembly)
LAUNCH_GUESS_S = 3.0  # until a launch has been timed


@dataclass(frozen=True)
class SweepConfig:
    model: Path
    out_dir: Path
    instances: tuple[int, ...] = (1, 2)
    parallel: tuple[int, ...] = (1, 2, 4)
    concurrency: tuple[int, ...] | str = "auto"
    ctx_per_slot: int = 2048
    duration: float = 8.0
    warmup: float = 2.0
    repeats: int = 1
    slo: Mapping[str, float] = field(default_factory=dict)
    policy: str = "least_conn"
    host: str = "127.0.0.1"
    base_port: int = 18180
    nginx_port: int = 18100
    threads: tuple[int, ...] | None = None  # None: the thread budget (physical cores // instances)
    batch: tuple[int, ...] | None = None  # --batch-size values to sweep (None: llama-server's default)
    ubatch: tuple[int, ...] | None = None  # --ubatch-size values
    n_predict: tuple[int, ...] = (128,)
    prompt_tokens: int = 32
    api: str = "completion"
    stream: bool = True
    gpu_layers: int | None = None
    gpus: tuple[int, ...] = ()
    extra_args: str = ""
    max_concurrency: int = 1024
    ready_timeout: float = 120.0
    resume: bool = False
    adaptive: bool = False
    budget_min: float | None = None
    cores: int | None = None  # for the thread budget; None: this machine's physical cores
    command: tuple[str, ...] = ()  # the command line that started the sweep (for the metadata)

    def validate(self) -> None:
        if isinstance(self.concurrency, str) and self.concurrency != "auto":
            raise UserError(f"--concurrency must be a list or auto, got {self.concurrency!r}",
                            "write --concurrency 1,4,16 or --concurrency auto")
        for name in ("instances", "parallel", "threads", "batch", "ubatch", "n_predict") + (
                () if isinstance(self.concurrency, str) else ("concurrency",)):
            vals = getattr(self, name)
            if vals is not None and (not vals or any(int(v) < 1 for v in vals)):
                raise UserError(f"--{name.replace('_', '-')} needs positive integers, got {vals!r}",
                                f"write --{name.replace('_', '-')} as e.g. 1,2,4")
        if self.repeats < 1 or self.duration <= 0 or self.warmup < 0:
            raise UserError("--repeats must be >= 1, --duration > 0 and --warmup >= 0", "correct those values")
        if self.budget_min is not None and self.budget_min <= 0:
            raise UserError(f"--budget must be a positive number of minutes, got {self.budget_min}",
                            "write --budget 10")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"], d["out_dir"], d["slo"] = str(self.model), str(self.out_dir), dict(self.slo)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "SweepConfig":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["model"], kw["out_dir"] = Path(kw["model"]), Path(kw["out_dir"])
        for k in ("instances", "parallel", "threads", "batch", "ubatch", "n_predict", "gpus", "command"):
            if isinstance(kw.get(k), list):
                kw[k] = tuple(kw[k])
        if isinstance(kw.get("concurrency"), list):
            kw["concurrency"] = tuple(kw["concurrency"])
        return cls(**kw)

    @classmethod
    def from_settings(cls, settings: Any, out_dir: Path | str, **overrides: Any) -> "SweepConfig":
        """From resolved `config.Settings`: the [sweep] table, with the model, context, policy and
        llama-server options of [fleet] and the request shape of [bench]. `overrides` (field names of
        this class) win when not None. Threads stay None (the budget) unless given. Validates."""
        from llama_tui.core import model as model_mod

        sw, fl, be = settings.section("sweep"), settings.section("fleet"), settings.section("bench")
        kw: dict[str, Any] = dict(
            model=model_mod.resolve_model(fl["model"]), out_dir=Path(out_dir).expanduser().absolute(),
            instances=tuple(sw["instances"]), parallel=tuple(sw["parallel"]),
            concurrency=sw["concurrency"] if sw["concurrency"] == "auto" else tuple(sw["concurrency"]),
            ctx_per_slot=fl["ctx_per_slot"], duration=sw["duration"], warmup=sw["warmup"], repeats=sw["repeats"],
            policy=fl["policy"], host=fl["host"], n_predict=(be["n_predict"],), prompt_tokens=be["prompt_tokens"],
            api=be["api"], stream=be["stream"], gpu_layers=fl["gpu_layers"], gpus=tuple(fl["gpus"] or ()),
            extra_args=fl["extra_args"], max_concurrency=sw["max_concurrency"], ready_timeout=fl["ready_timeout"])
        kw.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def params(self) -> dict[str, Any]:
        """What every cell shares; a cell measured under other parameters does not stand on resume."""
        return {"ctx_per_slot": self.ctx_per_slot, "duration": self.duration, "warmup": self.warmup,
                "policy": self.policy, "api": self.api, "stream": self.stream, "prompt_tokens": self.prompt_tokens,
                "gpu_layers": self.gpu_layers, "gpus": list(self.gpus), "extra_args": self.extra_args}

    def fleet_state_dir(self) -> Path:
        return Path(self.out_dir) / FLEET_STATE


@dataclass(frozen=True)
class Shape:
    instances: int
    parallel: int
    threads: int  # resolved: the budget when not swept
    batch: int | None = None
    ubatch: int | None = None

    @property
    def slots(self) -> int:
        return self.instances * self.parallel

    def coords(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in SHAPE_AXES}

    def label(self) -> str:
        s = f"{self.instances}x{self.parallel} t{self.threads}"
        if self.batch is not None:
            s += f" b{self.batch}"
        if self.ubatch is not None:
            s += f" ub{self.ubatch}"
        return s

    def server_args(self) -> tuple[str, ...]:
        out: list[str] = []
        if self.batch is not None:
            out += ["--batch-size", str(self.batch)]
        if self.ubatch is not None:
            out += ["--ubatch-size", str(self.ubatch)]
        return tuple(out)


# --------------------------------------------------------------------------------------------- the grid


def shape_axes(cfg: SweepConfig) -> list[list[Any]]:
    """Value lists of the shape axes; threads None means "the budget" (resolved per shape)."""
    return [list(cfg.instances), list(cfg.parallel), list(cfg.threads) if cfg.threads else [None],
            list(cfg.batch) if cfg.batch else [None], list(cfg.ubatch) if cfg.ubatch else [None]]


def make_shape(cfg: SweepConfig, idx: Sequence[int], axes: list[list[Any]] | None = None) -> Shape:
    axes = axes or shape_axes(cfg)
    inst, par, thr, b, ub = (axes[a][i] for a, i in enumerate(idx))
    if thr is None:
        thr = hardware.thread_budget(inst, cfg.cores)
    return Shape(inst, par, thr, b, ub)


def grid_indices(axes: list[list[Any]]) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = [()]
    for ax in axes:
        out = [i + (j,) for i in out for j in range(len(ax))]
    return out


def concurrency_candidates(cfg: SweepConfig) -> list[int]:
    if cfg.concurrency == "auto":
        out, c = [], 1
        while c <= cfg.max_concurrency:
            out.append(c)
            c *= 2
        return out
    return sorted(set(int(c) for c in cfg.concurrency))  # type: ignore[union-attr]


def coarse_order(axes: list[list[Any]]) -> list[tuple[int, ...]]:
    """The centre of the grid, then its instances x parallel corners (extra axes at their centre),
    largest slot count first: the first pass spans the grid so the best region shows early."""
    centre = tuple(len(a) // 2 for a in axes)
    corners = []
    for i in {0, len(axes[0]) - 1}:
        for p in {0, len(axes[1]) - 1}:
            corners.append((i, p) + centre[2:])
    corners.sort(key=lambda ix: -(axes[0][ix[0]] * axes[1][ix[1]]))
    out = [centre]
    for c in corners:
        if c not in out:
            out.append(c)
    return out


def neighbours(idx: tuple[int, ...], axes: list[list[Any]]) -> list[tuple[int, ...]]:
    out = []
    for a in range(len(axes)):
        for d in (1, -1):
            j = idx[a] + d
            if 0 <= j < len(axes[a]):
                out.append(idx[:a] + (j,) + idx[a + 1:])
    return out


class ShapePlanner:
    """Which shape to measure next, given each measured shape's score (best good tok/s, or None).

    Grid mode: every shape in order. Adaptive mode: the coarse pass, then the untried neighbours of
    the leaders (the top `leaders` shapes scoring at least `leader_share` of the best), best leader
    first, until no leader has an untried neighbour: a climb from the best region, not a grid."""

    def __init__(self, axes: list[list[Any]], adaptive: bool, leaders: int = 2, leader_share: float = 0.9) -> None:
        self.axes = axes
        self.adaptive = adaptive
        self.leaders = leaders
        self.leader_share = leader_share
        self.scores: dict[tuple[int, ...], float | None] = {}
        self._queue = coarse_order(axes) if adaptive else grid_indices(axes)

    def record(self, idx: tuple[int, ...], score: float | None) -> None:
        self.scores[idx] = score

    def next(self) -> tuple[int, ...] | None:
        while self._queue:
            idx = self._queue.pop(0)
            if idx not in self.scores:
                return idx
        if not self.adaptive:
            return None
        ranked = sorted((s, i) for i, s in self.scores.items() if s is not None)
        top = ranked[-1][0] if ranked else 0.0
        for score, leader in reversed(ranked[-self.leaders:]):
            if score < self.leader_share * top:
                break
            for n in neighbours(leader, self.axes):
                if n not in self.scores:
                    return n
        return None

    def planned(self) -> int:
        """A guess at how many shapes will be measured in all (for progress and ETA)."""
        total = len(grid_indices(self.axes))
        if not self.adaptive:
            return total
        return min(total, max(len(self.scores) + len(self._queue), len(coarse_order(self.axes)) + 2 * len(self.axes)))


class Ramp:
    """The concurrency steps of one shape.

    `full`: every candidate, ascending. Otherwise ascend from `start` while each step gains at least
    3% over the best so far and stays error-free and within the SLO (the knee); when the start point
    was not beaten (or failed), look below it until a point is good and no longer improving."""

    def __init__(self, candidates: Sequence[int], start: int = 0, full: bool = False, gain: float = GAIN) -> None:
        self.c = list(candidates)
        self.start = max(0, min(start, len(self.c) - 1))
        self.full = full
        self.gain = gain
        self.seen: dict[int, tuple[float | None, bool]] = {}  # index -> (tok/s, good)
        self._i: int | None = self.start if not full else 0
        self._dir = 1

    def best(self) -> float | None:
        good = [t for t, ok in self.seen.values() if ok and t is not None]
        return max(good) if good else None

    def next(self) -> int | None:
        return None if self._i is None else self.c[self._i]

    def record(self, tok_s: float | None, good: bool) -> None:
        i = self._i
        assert i is not None
        before = self.best()
        self.seen[i] = (tok_s, good)
        if self.full:
            self._i = i + 1 if i + 1 < len(self.c) else None
            return
        improved = good and tok_s is not None and (before is None or tok_s >= before * (1 + self.gain))
        if self._dir == 1:
            if good and (improved or i == self.start) and i + 1 < len(self.c):
                self._i = i + 1
                return
            # The knee (or a failure) going up. Look below the start only when the start failed, or
            # when the step just above it fell by more than the gain threshold (the start is already
            # past the peak). A plateau above the start means the knee is at or below the start.
            start_tok, start_ok = self.seen.get(self.start, (None, False))
            up_tok, up_ok = self.seen.get(self.start + 1, (None, False))
            fell = (start_ok and up_ok and start_tok is not None and up_tok is not None
                    and up_tok < start_tok * (1 - self.gain))
            if self.start > 0 and (not start_ok or fell):
                self._dir, self._i = -1, self.start - 1
            else:
                self._i = None
            return
        # going down: past failures, and while a good point still beats the best good one above it
        if (not good or (improved and before is not None)) and i > 0:
            self._i = i - 1
        else:
            self._i = None


def ramp_start(candidates: Sequence[int], slots: int) -> int:
    """Index of the largest candidate not above the shape's slot count (where throughput usually
    stops growing), or 0."""
    start = 0
    for i, c in enumerate(candidates):
        if c <= slots:
            start = i
    return start


# --------------------------------------------------------------------------------------------- runners


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
                "gpu_mem_peak_total_bytes": sum(g for g in gpu if g is not None) if gpu else None}


# Bench step fields -> row fields (the row keeps the names).
_STEP_FIELDS = ("output_tok_s", "server_output_tok_s", "ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms", "itl_p50_ms",
                "itl_p95_ms", "tpot_p50_ms", "e2e_p95_ms", "errors", "requests_ok", "valid", "invalid_reason",
                "latency_valid", "latency_note", "client_cpu_percent", "duration_s", "api", "stream", "errors_by_class", "reconnects",
                "token_agreement_pct", "workers")


def row_from_step(step: Mapping[str, Any]) -> dict[str, Any]:
    """The row fields of one bench step (see core/bench.py for the step's own definitions)."""
    out = {k: step.get(k) for k in _STEP_FIELDS}
    out["errors"] = int(out["errors"] or 0)
    out["requests_ok"] = int(out["requests_ok"] or 0)
    out["valid"] = bool(out["valid"]) if out["valid"] is not None else out["requests_ok"] > 0
    return out


class FleetRunner:
    """The real shape runner: core/fleet.py brings each shape up in `OUT/fleet-state`, core/bench.py
    measures it through NGINX, the fleet monitor samples memory peaks."""

    def __init__(self, cfg: SweepConfig) -> None:
        self.cfg = cfg
        self.state_dir = cfg.fleet_state_dir()
        self.pids: tuple[int, ...] = ()
        self.nginx_url: str | None = None

    def cleanup_stale(self) -> list[str]:
        """Stop a fleet that a killed sweep left behind in this output directory."""
        from llama_tui.core import fleet
        from llama_tui.core.fleet import state

        notes = []
        st = state.read_state(self.state_dir)
        if st is not None:
            fleet.down(state_dir=self.state_dir)
            n = len(st.instances)
            notes.append(f"stopped the fleet an interrupted sweep left running ({n} instance{'' if n == 1 else 's'})")
        stray = state.owned_processes(self.state_dir)  # belt and braces: anything still carrying its marker
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
            expose_admin=False, ready_timeout=cfg.ready_timeout)
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
        self.pids = tuple(i.pid for i in insts if i.pid)
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
            with probe.Probe() as pr:
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
            state_dir=str(self.state_dir))  # the servers behind NGINX: their token counters give server tok/s
        with PeakSampler(self.pids) as peaks:
            step = bench.run_step(bc, concurrency=concurrency, stop=stop)
        return {**row_from_step(step), **peaks.fields(), "interrupted": stop.is_set()}

    def teardown(self) -> None:
        from llama_tui.core import fleet
        from llama_tui.core.fleet import state

        if state.read_state(self.state_dir) is not None:
            fleet.down(state_dir=self.state_dir)
        self.pids, self.nginx_url = (), None


# --------------------------------------------------------------------------------------------- the run


@dataclass
class SweepResult:
    out_dir: Path
    status: str  # "done", "stopped", "budget"
    measured: int  # cells measured in this run
    skipped_standing: int  # cells found already standing (resume)
    best: dict[str, Any] | None
    damaged: list[str]
    wall_s: float


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Sweep:
    """One sweep run over an output directory. `run()` does the work; see the module docstring."""

    def __init__(self, cfg: SweepConfig, runner: ShapeRunner, on_event: Callable[[SweepProgress], None] | None = None,
                 stop: threading.Event | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        cfg.validate()
        self.cfg = cfg
        self.runner = runner
        self.on_event = on_event
        self.stop = stop or threading.Event()
        self.clock = clock
        self.t0 = clock()
        self.deadline = self.t0 + cfg.budget_min * 60 if cfg.budget_min else None
        self.params_id = results.stable_id(cfg.params())
        self.measured = 0
        self.skipped_standing = 0
        self.cell_times: list[float] = []
        self.launch_times: list[float] = []
        self.points: list[SweepCellResult] = []
        self.axes = shape_axes(cfg)
        self.planner = ShapePlanner(self.axes, cfg.adaptive)
        self.fp: dict[str, Any] = {}
        self.store: results.ResultStore | None = None
        self.standing: dict[str, dict[str, Any]] = {}

    # ----------------------------------------------------------------------------------- set-up

    def _open(self) -> None:
        cfg = self.cfg
        out = Path(cfg.out_dir)
        existing = read_existing(out)
        if existing and not cfg.resume:
            raise UserError(f"{out} already holds sweep results",
                            "pass --resume to continue that sweep, or another --out directory")
        self.fp = results.fingerprint(cfg.model)
        self.store = results.ResultStore(out, cfg.slo)
        meta = self.store.metadata() or {}
        others = {r.get("fingerprint") for r in self.store.rows if r.get("fingerprint")}
        old = (meta.get("fingerprint") or {}).get("id")
        if (old and old != self.fp["id"]) or (others - {self.fp["id"]}):
            name = (meta.get("fingerprint") or {}).get("path") or "another model"
            raise UserError(f"{out} holds results for another model ({name}), not {cfg.model}",
                            "resume with the same --model, or pass another --out directory")
        for note in self.store.damaged:
            self._emit(phase="measure", message=f"warning: {note}")
        for r in self.store.rows:
            if r.get("cell_id") and r.get("params_id") == self.params_id and r.get("fingerprint") == self.fp["id"]:
                if r.get("status") in results.MEASURED or r.get("status") == results.OOM:
                    self.standing[r["cell_id"]] = r
        stale = self.runner.cleanup_stale()
        for note in stale:
            self._emit(phase="fleet", message=note)
        self._write_metadata(meta)

    def _write_metadata(self, old: Mapping[str, Any]) -> None:
        from llama_tui.core import binaries

        assert self.store is not None
        ls = binaries.inspect_llama_server()
        total, available = hardware.memory()
        try:
            from llama_tui.core import gpu

            gpus = [asdict(g) for g in gpu.nvml().devices()]
        except Exception:
            gpus = []
        runs = list(old.get("runs", [])) + [{"started_at": _now_iso(), "command": list(self.cfg.command),
                                             "config": self.cfg.to_json(), "resume": self.cfg.resume}]
        meta = {
            "fingerprint": self.fp,
            "params": self.cfg.params(),
            "params_id": self.params_id,
            "slo": dict(self.cfg.slo),
            "llama_server": {"path": ls.path, "version": ls.version, "detail": ls.detail,
                             "build_info": old.get("llama_server", {}).get("build_info")},
            "hardware": {"cpu": hardware.cpu_model(), "physical_cores": hardware.physical_cores(),
                         "logical_cores": hardware.logical_cores(), "memory_total_bytes": total,
                         "memory_available_bytes": available, "gpus": gpus},
            "runs": runs,
            "shapes": dict(old.get("shapes", {})),
        }
        self.meta = meta
        self.store.write_metadata(meta)

    # ----------------------------------------------------------------------------------- events

    def _cells_total(self) -> int:
        per_shape = len(self.cfg.n_predict) * self.cfg.repeats
        if self.cfg.concurrency != "auto" and not self.cfg.adaptive:
            per_shape *= len(concurrency_candidates(self.cfg))
        else:
            per_shape *= 3 if self.cfg.adaptive else max(2, int(math.log2(max(2, self.cfg.parallel[-1]))) + 2)
        return max(self.planner.planned() * per_shape, self.measured + self.skipped_standing)

    def _eta(self) -> float | None:
        if not self.cell_times:
            return None
        per_cell = sum(self.cell_times) / len(self.cell_times)
        done = self.measured + self.skipped_standing
        left = max(0, self._cells_total() - done)
        shapes_left = max(0, self.planner.planned() - len(self.planner.scores))
        per_launch = sum(self.launch_times) / len(self.launch_times) if self.launch_times else LAUNCH_GUESS_S
        eta = left * per_cell + shapes_left * per_launch
        if self.deadline is not None:
            eta = min(eta, max(0.0, self.deadline - self.clock()))
        return eta

    def _emit(self, phase: str, shape: Shape | None = None, concurrency: int | None = None,
              message: str | None = None, row: Mapping[str, Any] | None = None, done: bool = False) -> None:
        if self.on_event is None:
            return
        ev = SweepProgress(
            t=self.clock() - self.t0, cell=min(self.measured + self.skipped_standing + (0 if done or row else 1),
                                               self._cells_total()),
            cells_total=self._cells_total(), eta_s=0.0 if done else self._eta(),
            instances=shape.instances if shape else None, parallel=shape.parallel if shape else None,
            concurrency=concurrency, phase=phase, results=tuple(self.points), message=message, done=done,
            row=dict(row) if row else None)
        self.on_event(ev)

    # ----------------------------------------------------------------------------------- the loop

    def _cell_time_guess(self) -> float:
        if self.cell_times:
            return sum(self.cell_times) / len(self.cell_times)
        return self.cfg.warmup + self.cfg.duration + STEP_OVERHEAD_S

    def _out_of_budget(self, need_s: float) -> bool:
        return self.deadline is not None and self.clock() + need_s > self.deadline

    def _cell_id(self, shape: Shape, concurrency: int | None, n_predict: int | None, repeat: int | None) -> str:
        coords = {**shape.coords(), "n_predict": n_predict, "concurrency": concurrency, "repeat": repeat}
        return results.stable_id({**coords, "params": self.params_id, "model": self.fp["id"]})

    def _base_row(self, shape: Shape, concurrency: int | None, n_predict: int | None, repeat: int | None) -> dict:
        return {**shape.coords(), "concurrency": concurrency, "n_predict": n_predict, "repeat": repeat,
                "ctx_per_slot": self.cfg.ctx_per_slot, "policy": self.cfg.policy,
                "cell_id": self._cell_id(shape, concurrency, n_predict, repeat), "params_id": self.params_id,
                "fingerprint": self.fp["id"]}

    def _append(self, row: dict[str, Any]) -> dict[str, Any]:
        assert self.store is not None
        row = self.store.append(row)
        self.standing[row["cell_id"]] = row
        return row

    def run(self) -> SweepResult:
        self._open()
        assert self.store is not None
        status = "done"
        try:
            while True:
                if self.stop.is_set():
                    status = "stopped"
                    break
                idx = self.planner.next()
                if idx is None:
                    break
                shape = make_shape(self.cfg, idx, self.axes)
                outcome = self._run_shape(shape)
                if outcome in ("stopped", "budget"):
                    status = outcome
                    break
                self.planner.record(idx, self._shape_score(shape))
        finally:
            self.runner.teardown()
        best = results.best_row(self.store.rows, self.cfg.slo)
        wall = self.clock() - self.t0
        msg = {"done": "sweep finished", "stopped": "sweep stopped; run again with --resume to finish",
               "budget": "budget spent; best found so far kept"}[status]
        self._emit(phase="done" if status != "stopped" else "cancelled", message=f"{msg}: {self.cfg.out_dir}",
                   done=True)
        return SweepResult(Path(self.cfg.out_dir), status, self.measured, self.skipped_standing, best,
                           list(self.store.damaged), wall)

    def _shape_score(self, shape: Shape) -> float | None:
        assert self.store is not None
        good = [r["output_tok_s"] for r in self.store.rows
                if results.is_good(r) and results.within_slo(r, self.cfg.slo)
                and r.get("params_id") == self.params_id and r.get("fingerprint") == self.fp["id"]
                and results.shape_key(r) == tuple(shape.coords().values())]
        return max(good) if good else None

    def _plan_cells(self, shape: Shape) -> list[tuple[int, int, int]]:
        """(n_predict, concurrency, repeat) for a shape with a fixed concurrency list (no ramp)."""
        return [(n, c, r) for n in self.cfg.n_predict for c in concurrency_candidates(self.cfg)
                for r in range(self.cfg.repeats)]

    def _run_shape(self, shape: Shape) -> str:
        """Measure one shape. Returns "ok", "skipped", "failed", "stopped" or "budget"."""
        cfg = self.cfg
        shape_id = self._cell_id(shape, None, None, None)
        if shape_id in self.standing:  # a standing OOM record: not retried
            self.skipped_standing += 1
            self._emit(phase="fleet", shape=shape, message=f"{shape.label()}: skipped, failed for memory before")
            return "skipped"
        fitcheck = self._fit(shape)
        if fitcheck is not None and not fitcheck.fits:
            if not any(r.get("cell_id") == shape_id for r in self.store.rows):  # type: ignore[union-attr]
                self._append({**self._base_row(shape, None, None, None), "status": results.NO_FIT, "valid": False,
                              "message": fitcheck.reason, "started_at": _now_iso()})
            self._emit(phase="fleet", shape=shape, message=f"{shape.label()}: skipped, {fitcheck.reason}")
            return "skipped"

        ramps = {n: self._new_ramp(shape) for n in cfg.n_predict}
        pending = self._pending(shape, ramps)
        if pending is None:
            return "ok"  # every cell of this shape already stands
        if self._out_of_budget(self._cell_time_guess() + self._launch_guess()):
            return "budget"
        self._emit(phase="fleet", shape=shape, message=f"starting {shape.label()}")
        t = self.clock()
        try:
            info = self.runner.launch(shape, cfg)
        except LaunchFailed as exc:
            self.runner.teardown()
            status = results.OOM if exc.memory else results.LAUNCH_FAILED
            self._append({**self._base_row(shape, None, None, None), "status": status, "valid": False,
                          "message": exc.message[-2000:], "started_at": _now_iso()})
            self._emit(phase="failed", shape=shape, message=f"{shape.label()}: {status}: {exc.message[-300:]}")
            return "failed"
        self.launch_times.append(self.clock() - t)
        self._record_launch(shape, info)
        try:
            return self._measure_shape(shape, ramps)
        finally:
            self.runner.teardown()

    def _launch_guess(self) -> float:
        return sum(self.launch_times) / len(self.launch_times) if self.launch_times else LAUNCH_GUESS_S

    def _fit(self, shape: Shape) -> fit.FitCheck | None:
        try:
            facts = fit.read_model_facts(self.cfg.model)
        except Exception:
            return None  # cannot read the header: let llama-server decide
        est = fit.estimate(facts, shape.instances, shape.parallel, self.cfg.ctx_per_slot, self.cfg.gpu_layers,
                           shape.ubatch, self.cfg.extra_args)
        free_ram, gpu_free = fit.free_memory(bool(self.cfg.gpu_layers))
        return fit.check(est, shape.instances, free_ram, gpu_free, self.cfg.gpus)

    def _record_launch(self, shape: Shape, info: LaunchInfo) -> None:
        assert self.store is not None
        self.meta["shapes"][shape.label()] = {"commands": list(info.commands), "build_info": info.build_info,
                                              "launched_at": _now_iso()}
        if info.build_info:
            self.meta["llama_server"]["build_info"] = info.build_info
        self.store.write_metadata(self.meta)

    def _new_ramp(self, shape: Shape) -> Ramp:
        cands = concurrency_candidates(self.cfg)
        if self.cfg.adaptive:
            return Ramp(cands, ramp_start(cands, shape.slots))
        return Ramp(cands, 0, full=self.cfg.concurrency != "auto")

    def _pending(self, shape: Shape, ramps: dict[int, Ramp]) -> dict[int, Ramp] | None:
        """Advance each ramp over cells that already stand; None when nothing is left to measure."""
        left = {}
        for n, ramp in ramps.items():
            while (c := ramp.next()) is not None:
                rows = [self.standing.get(self._cell_id(shape, c, n, r)) for r in range(self.cfg.repeats)]
                if not all(rows):
                    break
                self.skipped_standing += len(rows)
                self._feed(ramp, rows)  # type: ignore[arg-type]
            if ramp.next() is not None:
                left[n] = ramp
        return left or None

    def _feed(self, ramp: Ramp, rows: list[dict[str, Any]]) -> None:
        toks = [r.get("output_tok_s") for r in rows]
        good = all(results.is_good(r) and results.within_slo(r, self.cfg.slo) for r in rows)
        tok = sum(toks) / len(toks) if all(isinstance(t, (int, float)) for t in toks) else None
        ramp.record(tok, good)

    def _measure_shape(self, shape: Shape, ramps: dict[int, Ramp]) -> str:
        for n, ramp in ramps.items():
            while (c := ramp.next()) is not None:
                rows = []
                for r in range(self.cfg.repeats):
                    cid = self._cell_id(shape, c, n, r)
                    if cid in self.standing:
                        self.skipped_standing += 1
                        rows.append(self.standing[cid])
                        continue
                    if self.stop.is_set():
                        return "stopped"
                    if self._out_of_budget(self._cell_time_guess()):
                        return "budget"
                    self._emit(phase="measure", shape=shape, concurrency=c)
                    started_at, t = _now_iso(), self.clock()
                    metrics = self.runner.measure(shape, self.cfg, c, n, self.stop)
                    if metrics.pop("interrupted", False):
                        return "stopped"  # a step cut short is not a cell
                    row = {**self._base_row(shape, c, n, r), **metrics, "started_at": started_at}
                    row.setdefault("duration_s", self.cfg.duration)
                    row["status"] = "ok" if (row.get("errors") or 0) == 0 else "error"
                    row = self._append(row)
                    self.cell_times.append(self.clock() - t)
                    self.measured += 1
                    self.points.append(SweepCellResult(
                        shape.instances, shape.parallel, c, float(row.get("output_tok_s") or 0.0),
                        row.get("ttft_p50_ms"), row.get("ttft_p95_ms"), int(row.get("errors") or 0),
                        bool(row.get("valid"))))
                    self._emit(phase="measure", shape=shape, concurrency=c, row=row,
                               message=f"{shape.label()} c={c}: {row.get('output_tok_s') or 0:,.0f} tok/s, "
                                       f"{row.get('errors') or 0} errors")
                    rows.append(row)
                self._feed(ramp, rows)
        return "ok"


def read_existing(out: Path) -> bool:
    return (Path(out) / results.RESULTS).is_file() and bool((Path(out) / results.RESULTS).stat().st_size)


def run(config: SweepConfig, on_event: Callable[[SweepProgress], None] | None = None,
        stop: threading.Event | None = None, runner: ShapeRunner | None = None) -> SweepResult:
    """Run (or resume) a sweep. Raises UserError for bad input; returns how it ended."""
    return Sweep(config, runner or FleetRunner(config), on_event, stop).run()


# --------------------------------------------------------------------------------------------- the report

SHADES = " .:-=+*#%@"  # ASCII, so the heatmap survives any terminal and SSH link


def _fmt(v: Any, digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        return f"{v:,.{digits}f}"
    return str(v)


def _mib(v: Any) -> str:
    return "n/a" if not isinstance(v, (int, float)) else f"{v / (1 << 20):,.0f}"


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 0) -> list[str]:
    """Columns padded to fit; the first `left` columns left-aligned, the rest right-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    out = []
    for r in [header, *rows]:
        cells = [str(x).ljust(w) if i < left else str(x).rjust(w) for i, (x, w) in enumerate(zip(r, widths))]
        out.append("  ".join(cells).rstrip())
    return out


def heatmap(rows: Sequence[Mapping[str, Any]], slo: Mapping[str, float] | None = None) -> list[str]:
    """Best good output tok/s by instances (rows) x parallel (columns), shaded by share of the best."""
    insts = sorted({r["instances"] for r in rows if r.get("instances") is not None})
    pars = sorted({r["parallel"] for r in rows if r.get("parallel") is not None})
    best: dict[tuple[int, int], float] = {}
    note: dict[tuple[int, int], str] = {}
    why_not = {results.NO_FIT: "no fit", results.OOM: "oom", results.LAUNCH_FAILED: "failed"}
    for r in rows:
        key = (r.get("instances"), r.get("parallel"))
        if results.is_good(r) and results.within_slo(r, slo):
            best[key] = max(best.get(key, 0.0), float(r["output_tok_s"]))  # type: ignore[index]
        elif r.get("status") in (results.NO_FIT, results.OOM, results.LAUNCH_FAILED):
            note.setdefault(key, why_not[r["status"]])  # type: ignore[arg-type]
        elif results.is_measured(r):
            reason = "errors" if (r.get("errors") or 0) else "invalid" if not r.get("valid") else "slo"
            note.setdefault(key, reason)  # type: ignore[arg-type]
    top = max(best.values(), default=0.0)
    table = []
    for i in insts:
        line = [f"{i} inst"]
        for p in pars:
            v = best.get((i, p))
            if v is None:
                line.append(note.get((i, p), "-"))
            else:
                shade = SHADES[min(len(SHADES) - 1, int(v / top * (len(SHADES) - 1)))] if top > 0 else " "
                line.append(f"{v:,.0f} {shade * 3}{' <' if v == top else '  '}")
        table.append(line)
    return render_table(["", *[f"par {p}" for p in pars]], table, left=1)


def fleet_settings_for(best: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The `fleet.*` settings that start a fleet of the best row's shape (for --apply and the report)."""
    params = meta.get("params") or {}
    extra = []
    if best.get("batch") is not None:
        extra += ["--batch-size", str(best["batch"])]
    if best.get("ubatch") is not None:
        extra += ["--ubatch-size", str(best["ubatch"])]
    if params.get("extra_args"):
        extra.append(str(params["extra_args"]))
    out = {"fleet.model": (meta.get("fingerprint") or {}).get("path") or "MODEL.gguf",
           "fleet.instances": best["instances"], "fleet.parallel": best["parallel"],
           "fleet.ctx_per_slot": best.get("ctx_per_slot") or params.get("ctx_per_slot"),
           "fleet.threads": best.get("threads"), "fleet.policy": best.get("policy") or params.get("policy"),
           "fleet.gpu_layers": params.get("gpu_layers"), "fleet.gpus": list(params.get("gpus") or []) or None,
           "fleet.extra_args": " ".join(extra) or None}
    return {k: v for k, v in out.items() if v is not None}


def recommended_command(best: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    import shlex

    cmd = ["llama-tui", "fleet", "up"]
    for key, value in fleet_settings_for(best, meta).items():
        value = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        cmd += [f"--{key.split('.', 1)[1].replace('_', '-')}", value]
    return shlex.join(cmd)


def report(out_dir: Path | str) -> str:
    """The table, a heatmap of best tok/s by instances x parallel, the frontier, and what to run."""
    out = Path(out_dir)
    if not (out / results.RESULTS).is_file():
        raise UserError(f"{out} holds no sweep results (no {results.RESULTS})",
                        "pass the --out directory of a sweep (see `llama-tui sweep --help`)")
    loaded = results.read_rows(out / results.RESULTS)
    rows = loaded.rows
    meta = results.read_json(out / results.METADATA) or {}
    slo = meta.get("slo") or {}
    fp = meta.get("fingerprint") or {}
    params = meta.get("params") or {}
    mode = "streamed" if params.get("stream", True) else "non-streamed"
    measured = [r for r in rows if results.is_measured(r)]
    lines = [f"sweep {out}",
             f"model: {fp.get('path', 'n/a')} ({fp.get('arch') or 'n/a'}, fingerprint {fp.get('id', 'n/a')})",
             f"llama-server: {(meta.get('llama_server') or {}).get('version') or 'n/a'}, "
             f"build_info {(meta.get('llama_server') or {}).get('build_info') or 'n/a'}",
             f"cells: {len(measured)} measured, {len(rows) - len(measured)} shape records; "
             f"duration {_fmt(params.get('duration'), 1)} s per cell, warm-up {_fmt(params.get('warmup'), 1)} s; "
             f"SLO: {', '.join(f'{k} <= {v:g}' for k, v in slo.items()) or 'none'}; tok/s are {mode} output tokens"]
    for note in loaded.damaged:
        lines.append(f"warning: {note}")
    show_b = any(r.get("batch") is not None for r in rows)
    show_ub = any(r.get("ubatch") is not None for r in rows)
    show_np = len({r.get("n_predict") for r in measured}) > 1
    header = ["status", "inst", "par", "thr"] + (["batch"] if show_b else []) + (["ubatch"] if show_ub else []) + (
        ["n_pred"] if show_np else []) + ["conc", "tok/s", "srv tok/s", "ttft p50", "ttft p95", "ttft p99",
                                          "itl p50", "e2e p95", "err", "ok", "valid", "rss MiB"]
    table = []
    for r in sorted(rows, key=lambda r: tuple((v is None, v) for v in (
            r.get("instances"), r.get("parallel"), r.get("threads"), r.get("batch"), r.get("ubatch"),
            r.get("n_predict"), r.get("concurrency"), r.get("repeat")))):
        line = [str(r.get("status", "ok")), _fmt(r.get("instances")), _fmt(r.get("parallel")), _fmt(r.get("threads"))]
        line += [_fmt(r.get("batch"))] if show_b else []
        line += [_fmt(r.get("ubatch"))] if show_ub else []
        line += [_fmt(r.get("n_predict"))] if show_np else []
        if results.is_measured(r):
            line += [_fmt(r.get("concurrency")), _fmt(r.get("output_tok_s")), _fmt(r.get("server_output_tok_s")),
                     _fmt(r.get("ttft_p50_ms"), 1), _fmt(r.get("ttft_p95_ms"), 1), _fmt(r.get("ttft_p99_ms"), 1),
                     _fmt(r.get("itl_p50_ms"), 2), _fmt(r.get("e2e_p95_ms"), 1), _fmt(r.get("errors")),
                     _fmt(r.get("requests_ok")), _fmt(r.get("valid")), _mib(r.get("rss_peak_total_bytes"))]
        else:
            line += ["-"] * 11 + [""]
            line[-1] = str(r.get("message") or "")[:60]
        table.append(line)
    lines += ["", *render_table(header, table, left=1)]
    lines += ["", f"best output tok/s by instances x parallel ({mode}; '<' marks the best; shade ' ' low .. '@' high):",
              *heatmap(rows, slo)]
    front = results.pareto_frontier(rows)
    lines += ["", "frontier (output tok/s against TTFT p95; nothing else is both faster and quicker to first token):"]
    lines += render_table(["ttft p95 ms", "tok/s", "shape", "conc"],
                          [[_fmt(r.get("ttft_p95_ms"), 1), _fmt(r.get("output_tok_s")),
                            f"{r.get('instances')}x{r.get('parallel')} t{r.get('threads')}", _fmt(r.get("concurrency"))]
                           for r in front]) if front else ["  (no error-free cells)"]
    best = results.best_row(rows, slo)
    lines.append("")
    if best is None:
        lines.append("no error-free, valid cell" + (" within the SLO" if slo else "") + ": nothing to recommend")
    else:
        t = best.get("threads")
        lines += [f"best: {best['instances']} instances x {best['parallel']} slots, {t} thread{'' if t == 1 else 's'}, "
                  f"at concurrency {best['concurrency']}: {_fmt(best.get('output_tok_s'))} tok/s ({mode}), "
                  f"TTFT p95 {_fmt(best.get('ttft_p95_ms'), 1)} ms, E2E p95 {_fmt(best.get('e2e_p95_ms'), 1)} ms",
                  "run it with:", "  " + recommended_command(best, meta)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- child process


def progress_to_json(ev: SweepProgress) -> dict[str, Any]:
    return asdict(ev)


def progress_from_json(d: Mapping[str, Any]) -> SweepProgress:
    d = dict(d)
    d["results"] = tuple(SweepCellResult(**r) for r in d.get("results") or ())
    names = {f.name for f in fields(SweepProgress)}
    return SweepProgress(**{k: v for k, v in d.items() if k in names})


class SweepProcess:
    """A sweep running in a child process (its own session), streaming `SweepProgress` events.

    `events()` blocks and yields every event until the sweep ends; `poll()` returns what has arrived
    without blocking (for a UI timer); `cancel()` asks the child to stop cleanly (it finishes the
    current step, tears its fleet down and leaves a resumable directory)."""

    def __init__(self, proc: subprocess.Popen, log_path: Path) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.log_path = log_path
        self._q: EventStream[SweepProgress] = EventStream()
        self._result: dict[str, Any] | None = None
        self._error: str | None = None
        self._reader = threading.Thread(target=self._read, name="sweep-events", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "event" in msg:
                self._q.put(progress_from_json(msg["event"]))
            elif "result" in msg:
                self._result = msg["result"]
            elif "error" in msg:
                self._error = msg["error"]
        self.proc.wait()
        self._q.close()

    def events(self, timeout: float | None = None) -> Iterator[SweepProgress]:
        return self._q.iter(timeout)

    def poll(self) -> list[SweepProgress]:
        return self._q.drain()

    def cancel(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float | None = None) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return rc

    def result(self) -> dict[str, Any] | None:
        """The final summary (status, measured, best, out_dir) once the child has ended."""
        return self._result

    @property
    def error(self) -> str | None:
        """The one-line error the child ended with (bad input, ports in use), if any."""
        return self._error


def spawn(config: SweepConfig) -> SweepProcess:
    """Run a sweep in a child process carrying LLAMA_TUI_OWNER; events stream back as JSON lines."""
    out = paths.ensure_private_dir(Path(config.out_dir))
    log_path = out / "sweep-child.log"
    env = paths.owner_env()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "llama_tui.core.sweep"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log, env=env, start_new_session=True, text=True)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(config.to_json()))
    proc.stdin.close()
    return SweepProcess(proc, log_path)


def install_stop_handlers(stop: threading.Event, on_first: Callable[[], None] | None = None) -> None:
    """SIGINT/SIGTERM: the first asks the sweep to stop after the current step; a second SIGINT
    interrupts at once (the fleet is still torn down on the way out)."""

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        if on_first is not None:
            on_first()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def summary(res: SweepResult) -> dict[str, Any]:
    return {"out_dir": str(res.out_dir), "status": res.status, "measured": res.measured,
            "skipped_standing": res.skipped_standing, "best": res.best, "damaged": res.damaged,
            "wall_s": round(res.wall_s, 3)}


def _child_main() -> int:
    def send(obj: Any) -> None:
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
        sys.stdout.flush()

    stop = threading.Event()
    install_stop_handlers(stop)
    try:
        cfg = SweepConfig.from_json(json.loads(sys.stdin.read()))
        res = run(cfg, on_event=lambda ev: send({"event": progress_to_json(ev)}), stop=stop)
    except UserError as exc:
        send({"error": exc.one_line()})
        return exc.exit_code
    except KeyboardInterrupt:
        send({"error": "interrupted"})
        return 130
    send({"result": summary(res)})
    return 0


if __name__ == "__main__":
    raise SystemExit(_child_main())
