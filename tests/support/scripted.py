"""A scripted controller with fixed content: for pilot tests, SVG snapshots and `benchmarks/tui_cost.py`.

Nothing here talks to a process. Snapshots are built from fixed numbers (and a fixed clock, `T0`),
so a screen rendered from them is the same on every run. Every call the app makes is recorded in
`ScriptedController.calls`, so a test can assert that a key really reached the core.
"""

from __future__ import annotations

import math
import threading
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

from llama_tui.core.config import PresetInfo
from llama_tui.core.errors import UserError
from llama_tui.core.snapshots import (
    BenchSample,
    FleetSnapshot,
    GpuSample,
    InstanceSnapshot,
    StepVerdict,
    SweepCellResult,
    SweepProgress,
    SystemSample,
    UpstreamSnapshot,
    UpstreamStat,
)
from llama_tui.core.presets import check_preset_name
from llama_tui.core.sweep import best_point
from llama_tui.ui.controller import Controller, FleetForm, LogSource, Progress, RunHandle

T = TypeVar("T")
T0 = 1_700_000_000.0  # the fixed "now" of every scripted snapshot
GIB = 1024**3
MIB = 1024**2


# ------------------------------------------------------------------------------------------------ fixed content


def instance(index: int, port: int, state: str = "ready", parallel: int = 2, busy: int = 1, tok_s: float = 2900.0,
             cpu: float = 48.0, rss: int = 182 * MIB, restarts: int = 0, uptime: float = 754.0,
             gpu: bool = False, last_error: str | None = None) -> InstanceSnapshot:
    up = state == "ready"
    return InstanceSnapshot(
        index=index, port=port, pid=41200 + index if state != "failed" else None, state=state,
        restarts=restarts, uptime_s=uptime if up else None, threads=1,
        slots_busy=busy if up else None, slots_total=parallel if up else None,
        requests_processing=float(busy) if up else None, requests_deferred=0.0 if up else None,
        server_tok_s=tok_s if up else None, cpu_percent=cpu if up else None, rss_bytes=rss if up else None,
        gpu_memory_bytes=(int(5.2 * GIB) + index * 37 * MIB) if gpu and up else None,
        gpu_util_percent=(61.0 + index) if gpu and up else None,
        log_path=f"/state/logs/instance-{index}.log", last_error=last_error,
    )


def nginx(ports: Sequence[int], nginx_port: int = 18000, policy: str = "least_conn", valid: bool = True,
          error: str | None = None, down: Sequence[int] = ()) -> UpstreamSnapshot:
    stats = tuple(
        UpstreamStat(address=f"127.0.0.1:{p}", requests=1520 + 13 * i, errors=(4 if p in down else 0),
                     errors_by_status={"502": 4} if p in down else {}, inflight=0 if p in down else 2,
                     rps=0.0 if p in down else 11.4 - 0.3 * i,
                     p50_ms=None if p in down else 412.0 + 9 * i, p95_ms=None if p in down else 688.0 + 15 * i)
        for i, p in enumerate(ports))
    return UpstreamSnapshot(
        port=nginx_port, pid=41100, policy=policy, listen="127.0.0.1",
        config_path="/state/nginx/conf/nginx.conf", config_valid=valid, config_error=error, upstreams=stats,
        stub_status={"active": 5, "reading": 0, "writing": 4, "waiting": 1, "accepts": 3058, "handled": 3058,
                     "requests": 3061},
    )


def system(gpus: int = 0, cores: int = 2) -> SystemSample:
    return SystemSample(
        cpu_percent=63.0, cores=cores, memory_used_bytes=int(3.1 * GIB), memory_total_bytes=int(7.7 * GIB),
        gpus=tuple(GpuSample(i, "NVIDIA H100 80GB HBM3", int((21.4 + i) * GIB), 80 * GIB, 64.0 + i)
                   for i in range(gpus)))


def empty_fleet() -> FleetSnapshot:
    return FleetSnapshot(taken_at=T0, running=False, system=system())


def running_fleet(instances: int = 2, parallel: int = 2, base_port: int = 18080, nginx_port: int = 18000,
                  policy: str = "least_conn", gpus: int = 0, model: str = "tiny-l2-e64-c4096-s1234.gguf",
                  cores: int = 2) -> FleetSnapshot:
    ports = [base_port + i for i in range(instances)]
    insts = tuple(instance(i, p, parallel=parallel, busy=min(parallel, 1 + i % 2), tok_s=2900.0 - 35 * i,
                           cpu=48.0 - i, gpu=gpus > 0) for i, p in enumerate(ports))
    return FleetSnapshot(
        taken_at=T0, running=True, supervisor_pid=41000, supervisor_alive=True, model=model, parallel=parallel,
        instances=insts, nginx=nginx(ports, nginx_port, policy), system=system(gpus, cores))


def degraded_fleet() -> FleetSnapshot:
    """One instance failed (after restarts), and the NGINX config the last reload tried is invalid."""
    snap = running_fleet(3)
    failed = instance(1, 18081, state="failed", restarts=3,
                      last_error="exited with code 1: failed to allocate KV cache (ctx 2048 x 2)")
    insts = (snap.instances[0], failed, snap.instances[2])
    error = 'nginx: [emerg] invalid number of arguments in "upstream" directive in nginx.conf:31'
    return replace(snap, instances=insts,
                   nginx=nginx([18080, 18081, 18082], valid=False, error=error, down=[18081]),
                   warnings=("instance 1 failed 3 times; not restarting again",))


def bench_ramp(concurrency: Sequence[int] = (1, 2, 4, 8), step_s: float = 6.0, warmup_s: float = 1.0,
               until_t: float | None = None, period: float = 0.5) -> tuple[BenchSample, ...]:
    """Samples of a closed-loop ramp; tok/s rises with concurrency and flattens (fixed numbers)."""
    out: list[BenchSample] = []
    t = 0.0
    done = 0
    for step, c in enumerate(concurrency):  # 0-based, as core/bench numbers steps
        level = 6100.0 * (1 - math.exp(-c / 2.2))
        k = 0
        while k * period < step_s - 1e-9:
            t = round(t + period, 3)
            if until_t is not None and t > until_t:
                return tuple(out)
            into = (k + 1) * period
            phase = "warmup" if into <= warmup_s else "measure"
            wobble = 1 + 0.04 * math.sin(t * 1.7) + 0.02 * math.sin(t * 4.1)
            tok = level * wobble * (min(1.0, into / warmup_s) if phase == "warmup" else 1.0)
            done += max(1, int(c * period * 2))
            out.append(BenchSample(
                t=t, step=step, concurrency=c, rate=None, tok_s=round(tok, 1), inflight=c, requests_done=done,
                ttft_p50_ms=round(18 + 9.5 * c, 1), errors=0, phase=phase, ttft_p95_ms=round(31 + 17 * c, 1),
                valid=None, steps_total=len(concurrency), step_elapsed_s=into, step_duration_s=step_s))
            k += 1
    return tuple(out)


def bench_events(samples: Sequence[BenchSample], invalid: Sequence[int] = ()) -> tuple[BenchSample | StepVerdict, ...]:
    """Samples with each finished step's verdict after its last sample, the way the bench process sends them."""
    out: list[BenchSample | StepVerdict] = []
    for n, s in enumerate(samples):
        out.append(s)
        nxt = samples[n + 1] if n + 1 < len(samples) else None
        if nxt is not None and nxt.step != s.step:
            measured = [x.tok_s for x in samples if x.step == s.step and x.phase == "measure"]
            out.append(StepVerdict(s.step, f"c={s.concurrency}", round(sum(measured) / max(1, len(measured)), 1),
                                   s.step not in invalid, "client CPU at 97% of a core" if s.step in invalid else None))
    return tuple(out)


SWEEP_INSTANCES = (1, 2, 4)
SWEEP_PARALLEL = (1, 2, 4, 8)
SWEEP_DIR = "/state/sweeps/20231114-2213"


def sweep_results(cells: int | None = None, concurrency: Sequence[int] = (1, 4, 16)) -> tuple[SweepCellResult, ...]:
    """Fixed sweep points; the best shape is 2 x 4. `cells` limits how many shapes are finished."""
    out: list[SweepCellResult] = []
    shapes = [(i, p) for i in SWEEP_INSTANCES for p in SWEEP_PARALLEL]
    for n, (i, p) in enumerate(shapes[:cells]):
        peak = 3000 * min(i, 2) * (1 - math.exp(-p / 2.5)) - 180 * max(0, i - 2) * p / 4
        for c in concurrency:
            load = 1 - math.exp(-c / max(1.0, 0.8 * i * p))
            tok = round(max(150.0, peak * load), 1)
            out.append(SweepCellResult(instances=i, parallel=p, concurrency=c, tok_s=tok,
                                       ttft_p50_ms=round(20 + 11 * c / max(1, i * p) * 4, 1),
                                       ttft_p95_ms=round(35 + 19 * c / max(1, i * p) * 4, 1),
                                       errors=1 if (i, p, c) == (4, 8, 16) else 0,
                                       valid=(i, p, c) != (4, 8, 16), good=(i, p, c) != (4, 8, 16)))
    return tuple(out)


def sweep_progress(cells_done: int = 7, running: bool = True) -> SweepProgress:
    total = len(SWEEP_INSTANCES) * len(SWEEP_PARALLEL)
    results = sweep_results(cells_done)
    if not running:
        return SweepProgress(t=31 * total, cell=total, cells_total=total, eta_s=0.0, phase="done",
                             results=sweep_results(), message=f"results in {SWEEP_DIR}", done=True, out_dir=SWEEP_DIR)
    i, p = [(i, p) for i in SWEEP_INSTANCES for p in SWEEP_PARALLEL][cells_done]
    return SweepProgress(t=31.0 * cells_done + 12, cell=cells_done + 1, cells_total=total,
                         eta_s=31.0 * (total - cells_done) - 12, instances=i, parallel=p, concurrency=4,
                         phase="measure", results=results, out_dir=SWEEP_DIR)


# ------------------------------------------------------------------------------------------------ the controller


class ScriptedRun(RunHandle[T]):
    """Yields `items` (one every `interval` s), then either ends or, with `hold`, stays running until cancelled."""

    def __init__(self, items: Sequence[T], interval: float = 0.0, hold: bool = False, summary: str | None = None,
                 fail: str | None = None) -> None:
        self.items = tuple(items)
        self.interval = interval
        self.hold = hold
        self.cancelled = threading.Event()
        self._summary = summary
        self.fail = fail

    def events(self) -> Iterator[T]:
        for item in self.items:
            if self.cancelled.wait(self.interval) if self.interval else self.cancelled.is_set():
                return
            yield item
        if self.fail:
            raise UserError(self.fail, "see the log")
        if self.hold:
            self.cancelled.wait()

    def cancel(self) -> None:
        self.cancelled.set()

    def summary(self) -> str | None:
        return self._summary


class ScriptedController(Controller):
    """Fixed content in, recorded calls out. Actions change the scripted fleet the way the core would."""

    def __init__(self, snap: FleetSnapshot | Callable[[], FleetSnapshot] | None = None,
                 bench: Sequence[BenchSample | StepVerdict] | None = None, sweep: Sequence[SweepProgress] | None = None,
                 hold_runs: bool = True, run_interval: float = 0.0, autostart: bool = False,
                 logs: Sequence[LogSource] = (), models: Sequence[Path] = (), form: FleetForm | None = None,
                 start_error: UserError | None = None, presets: Sequence[PresetInfo] = ()) -> None:
        self._snap = snap if snap is not None else empty_fleet()
        self.bench_items = tuple(bench) if bench is not None else bench_events(bench_ramp())
        self.sweep_items = tuple(sweep) if sweep is not None else (sweep_progress(3), sweep_progress(7))
        self.hold_runs = hold_runs
        self.run_interval = run_interval
        self.autostart = autostart
        self.logs = list(logs)
        self.models = list(models)
        self._form = form or FleetForm(model="tiny", preset="demo", ctx_per_slot=512)
        self.start_error = start_error
        self._presets = list(presets)
        self.calls: list[tuple] = []
        self.runs: list[ScriptedRun] = []
        self.saved: dict[str, FleetForm] = {}
        self.lock = threading.Lock()

    def _record(self, *call: object) -> None:
        with self.lock:
            self.calls.append(tuple(call))

    def called(self, name: str) -> list[tuple]:
        with self.lock:
            return [c for c in self.calls if c[0] == name]

    def _current(self) -> FleetSnapshot:
        return self._snap() if callable(self._snap) else self._snap

    def snapshot(self) -> FleetSnapshot:
        return self._current()

    def form(self) -> FleetForm:
        return self._form

    def start(self, form: FleetForm | None = None, on_progress: Progress | None = None) -> FleetSnapshot:
        form = form or self._form
        self._record("start", form)
        if on_progress:
            on_progress(f"starting {form.instances} instances")
        if self.start_error:
            raise self.start_error
        self._form = form
        self._snap = running_fleet(form.instances, form.parallel, policy=form.policy)
        return self._snap

    def stop(self) -> None:
        self._record("stop")
        self._snap = empty_fleet()

    def scale(self, instances: int) -> None:
        self._record("scale", instances)
        cur = self._current()
        self._snap = running_fleet(instances, cur.parallel or 2,
                                   policy=(cur.nginx.policy if cur.nginx else None) or "least_conn")

    def restart(self, index: int | None = None) -> None:
        self._record("restart", index)
        cur = self._current()
        insts = tuple(replace(i, restarts=i.restarts + 1, uptime_s=0.0) if index in (None, i.index) else i
                      for i in cur.instances)
        self._snap = replace(cur, instances=insts)

    def set_policy(self, policy: str) -> None:
        self._record("set_policy", policy)
        cur = self._current()
        self._snap = replace(cur, nginx=replace(cur.nginx, policy=policy) if cur.nginx else None)

    def _run(self, items: Sequence[T]) -> ScriptedRun[T]:
        run = ScriptedRun(items, interval=self.run_interval, hold=self.hold_runs, summary="results in /state/bench")
        self.runs.append(run)
        return run

    def start_bench(self) -> RunHandle[BenchSample | StepVerdict]:
        self._record("start_bench")
        return self._run(self.bench_items)

    def start_sweep(self) -> RunHandle[SweepProgress]:
        self._record("start_sweep")
        return self._run(self.sweep_items)

    def apply_shape(self, out_dir: Path | str, on_progress: Progress | None = None) -> FleetSnapshot:
        """The scripted sweep's best shape (the core's rule over its last results), as if read from out_dir."""
        done = [p for p in self.sweep_items if p.out_dir == str(out_dir) and p.results]
        best = best_point(done[-1].results) if done else None
        if best is None:
            raise UserError(f"{out_dir} has no error-free cell to apply", "look at `llama-tui sweep report DIR`")
        instances, parallel = best.instances, best.parallel
        self._record("apply_shape", instances, parallel)
        self._form = replace(self._form, instances=instances, parallel=parallel)
        self._snap = running_fleet(instances, parallel)
        return self._snap

    def log_sources(self, snap: FleetSnapshot) -> list[LogSource]:
        return list(self.logs)

    def find_models(self) -> list[Path]:
        return list(self.models)

    def presets(self) -> list[PresetInfo]:
        return list(self._presets)

    def load_preset(self, name: str) -> FleetForm:
        self._record("load_preset", name)
        return replace(self.saved.get(name, self._form), preset=name)

    def save_preset(self, name: str, form: FleetForm) -> Path:
        name = check_preset_name(name)
        self._record("save_preset", name, form)
        self.saved[name] = form
        return Path(f"/config/presets/{name}.toml")


class ChangingFleet:
    """A snapshot source whose numbers move on every call (deterministically): makes the UI redraw cells.

    Used by `benchmarks/tui_cost.py`, where a fleet that never changes would flatter the TUI.
    """

    def __init__(self, instances: int = 16, parallel: int = 4, gpus: int = 2) -> None:
        self.base = running_fleet(instances, parallel, gpus=gpus, cores=32)
        self.n = 0

    def __call__(self) -> FleetSnapshot:
        self.n += 1
        n = self.n
        insts = tuple(replace(i, slots_busy=(n + i.index) % (i.slots_total or 1),
                              server_tok_s=2500 + 400 * math.sin(n / 3 + i.index),
                              cpu_percent=40 + 15 * math.sin(n / 5 + i.index), uptime_s=(i.uptime_s or 0) + n,
                              rss_bytes=(i.rss_bytes or 0) + (n % 7) * MIB,
                              requests_processing=float((n + i.index) % 4))
                      for i in self.base.instances)
        ups = tuple(replace(u, requests=u.requests + 11 * n, rps=10 + 3 * math.sin(n / 4 + k),
                            inflight=(n + k) % 4) for k, u in enumerate(self.base.nginx.upstreams))
        return replace(self.base, taken_at=T0 + n, instances=insts, nginx=replace(self.base.nginx, upstreams=ups))


async def wait_for(pilot: object, condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Let the app run until `condition()` holds (polls and workers finish on their own time)."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        await pilot.pause(0.02)  # type: ignore[attr-defined]
