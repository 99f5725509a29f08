"""The sweep run: measure shapes one after another and keep every cell on disk.

For each shape: bring a fleet up (through the `ShapeRunner`), run the concurrency steps with the bench
engine (steady-state windows, warm-up excluded), append one row per cell to `OUT/results.jsonl`
(write + flush + fsync), and tear the shape down before the next one.

- Resume: a cell that already stands (same coordinates, same measurement parameters, same model
  fingerprint) is not measured again; results from another model are refused. A fleet left behind by
  a killed sweep is found in `OUT/fleet-state` and stopped first.
- Adaptive: shapes whose estimated memory cannot fit are skipped; `budget_min` stops the sweep with
  the best found so far.
- Stopping (`stop` event, SIGINT/SIGTERM in the CLI) ends after the current step, tears the fleet
  down and leaves a resumable directory.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from llama_tui.core import hardware
from llama_tui.core.errors import UserError
from llama_tui.core.snapshots import SweepCellResult, SweepProgress
from llama_tui.core.sweep import best, fit, results
from llama_tui.core.sweep.config import SweepConfig
from llama_tui.core.sweep.planner import Ramp, Shape, ShapePlanner, concurrency_candidates, make_shape, ramp_start, shape_axes
from llama_tui.core.sweep.runner import FleetRunner, LaunchFailed, LaunchInfo, ShapeRunner

STEP_OVERHEAD_S = 1.0  # per cell, beyond warm-up + duration (connection setup, result assembly)
LAUNCH_GUESS_S = 3.0  # until a launch has been timed


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


def run_metadata(cfg: SweepConfig, fp: Mapping[str, Any], params_id: str, old: Mapping[str, Any]) -> dict[str, Any]:
    """metadata.json: the model fingerprint, the measurement parameters, llama-server, the hardware and
    every run's command line and config (`old`: what an earlier run of this directory wrote)."""
    from llama_tui.core import binaries

    ls = binaries.inspect_llama_server()
    total, available = hardware.memory()
    try:
        from llama_tui.core import gpu

        gpus = [asdict(g) for g in gpu.nvml().devices()]
    except Exception:
        gpus = []
    runs = list(old.get("runs", [])) + [{"started_at": _now_iso(), "command": list(cfg.command),
                                         "config": cfg.to_json(), "resume": cfg.resume}]
    return {
        "fingerprint": fp,
        "params": cfg.params(),
        "params_id": params_id,
        "slo": dict(cfg.slo),
        "llama_server": {"path": ls.path, "version": ls.version, "detail": ls.detail,
                         "build_info": old.get("llama_server", {}).get("build_info")},
        "hardware": {"cpu": hardware.cpu_model(), "physical_cores": hardware.physical_cores(),
                     "logical_cores": hardware.logical_cores(), "memory_total_bytes": total,
                     "memory_available_bytes": available, "gpus": gpus},
        "runs": runs,
        "shapes": dict(old.get("shapes", {})),
    }


def fit_check(cfg: SweepConfig, shape: Shape) -> fit.FitCheck | None:
    """Will this shape fit in memory? None when the model's header cannot be read (llama-server decides)."""
    try:
        facts = fit.read_model_facts(cfg.model)
    except Exception:
        return None  # cannot read the header: let llama-server decide
    est = fit.estimate(facts, shape.instances, shape.parallel, cfg.ctx_per_slot, cfg.gpu_layers,
                       shape.ubatch, cfg.extra_args)
    free_ram, gpu_free = fit.free_memory(bool(cfg.gpu_layers))
    return fit.check(est, shape.instances, free_ram, gpu_free, cfg.gpus)


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
        assert self.store is not None
        self.meta = run_metadata(self.cfg, self.fp, self.params_id, old)
        self.store.write_metadata(self.meta)

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
            row=dict(row) if row else None, out_dir=str(self.cfg.out_dir))
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
        top = results.best_row(self.store.rows, self.cfg.slo)
        wall = self.clock() - self.t0
        msg = {"done": "sweep finished", "stopped": "sweep stopped; run again with --resume to finish",
               "budget": "budget spent; best found so far kept"}[status]
        self._emit(phase="done" if status != "stopped" else "cancelled", message=f"{msg}: {self.cfg.out_dir}",
                   done=True)
        return SweepResult(Path(self.cfg.out_dir), status, self.measured, self.skipped_standing, top,
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
        fitcheck = fit_check(self.cfg, shape)
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
                    self.points.append(best.point(row, self.cfg.slo))
                    self._emit(phase="measure", shape=shape, concurrency=c, row=row,
                               message=f"{shape.label()} c={c}: {row.get('output_tok_s') or 0:,.0f} tok/s, "
                                       f"{row.get('errors') or 0} errors")
                    rows.append(row)
                self._feed(ramp, rows)
        return "ok"


def read_existing(out: Path) -> bool:
    return (Path(out) / results.RESULTS).is_file() and bool((Path(out) / results.RESULTS).stat().st_size)


OUT_LOCK = "sweep.lock"  # held (flock) by the sweep that runs in an output directory


@contextlib.contextmanager
def out_lock(out: Path | str) -> Iterator[Path]:
    """Held while a sweep runs in `out` (made private if new); raises UserError when another sweep holds
    it: two sweeps in one directory would stop each other's fleets."""
    from llama_tui.core import paths
    from llama_tui.core.fleet.state import try_lock

    out = paths.ensure_private_dir(Path(out))
    with try_lock(out / OUT_LOCK) as got:
        if not got:
            raise UserError(f"another sweep is running with --out {out}",
                            "wait for it to finish, or pass another --out directory")
        yield out


def run(config: SweepConfig, on_event: Callable[[SweepProgress], None] | None = None,
        stop: threading.Event | None = None, runner: ShapeRunner | None = None) -> SweepResult:
    """Run (or resume) a sweep. Raises UserError for bad input, or when another sweep runs in the same
    output directory; returns how it ended."""
    sweep = Sweep(config, runner or FleetRunner(config), on_event, stop)
    with out_lock(config.out_dir):
        return sweep.run()
