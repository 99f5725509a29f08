"""The sweep run: start shapes one after another as the plan says and keep every cell on disk.

For each visit of the plan (one fleet start): bring the shape up (through the `ShapeRunner`), run the
visit's concurrency steps with the bench engine (steady-state windows, warm-up excluded), append one row
per cell and repeat to `OUT/results.jsonl` (write + flush + fsync), and tear the fleet down.

- Plans (planner.py, halving.py): the grid runs `repeats` rounds over every shape; the adaptive sweep
  is successive halving. Repeats of a cell come from later rounds, never back to back.
- Each row carries its cell's `repeats` so far, `output_tok_s_mean` and `output_tok_s_ci95` (cells.py).
- Resume: a cell repeat that already stands (same coordinates and repeat index, same measurement
  parameters, same model fingerprint) is not measured again; results from another model are refused.
  A directory written by an earlier version (no `format` in metadata.json) or with other --repeats
  continues: its rows stand and only the missing repeats are measured. A directory written by a newer
  format is refused. A fleet left behind by a killed sweep is found in `OUT/fleet-state` and stopped.
- Adaptive: shapes whose estimated memory cannot fit are skipped; `budget_min` stops the sweep with
  the best found so far.
- Time: a `TimeLedger` (ledger.py) records where the time went into metadata.json.
- Stopping (`stop` event, SIGINT/SIGTERM in the CLI) ends after the current step, tears the fleet
  down and leaves a resumable directory.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from llama_tui.core import hardware
from llama_tui.core.errors import UserError
from llama_tui.core.snapshots import SweepCellResult, SweepProgress
from llama_tui.core.sweep import best, cells, fit, ledger, results
from llama_tui.core.sweep.config import SweepConfig
from llama_tui.core.sweep.halving import HalvingPlan
from llama_tui.core.sweep.planner import GridPlan, Plan, Shape, Visit, concurrency_candidates, make_shape, shape_axes
from llama_tui.core.sweep.runner import FleetRunner, LaunchFailed, LaunchInfo, ShapeRunner

FORMAT = 2  # metadata.json "format": 2 added repeats as rounds, intervals and the time account
STEP_OVERHEAD_S = 1.0  # per cell, beyond warm-up + duration (connection setup, result assembly)
LAUNCH_GUESS_S = 3.0  # until a launch has been timed
PAGE_CACHE_SHARE = 0.5  # read the model ahead only when it takes at most this share of the free memory


@dataclass
class SweepResult:
    out_dir: Path
    status: str  # "done", "stopped", "budget"
    measured: int  # cells measured in this run
    skipped_standing: int  # cells found already standing (resume)
    best: dict[str, Any] | None
    damaged: list[str]
    wall_s: float
    time: dict[str, Any] = field(default_factory=dict)  # this run's time account (ledger.py)


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def run_metadata(cfg: SweepConfig, fp: Mapping[str, Any], params_id: str, old: Mapping[str, Any]) -> dict[str, Any]:
    """metadata.json: the model fingerprint, the measurement parameters, llama-server, the hardware and
    every run's command line, config and time account (`old`: what an earlier run of this directory wrote)."""
    from llama_tui.core import binaries

    ls = binaries.inspect_llama_server()
    total, available = hardware.memory()
    try:
        from llama_tui.core import gpu

        gpus = [asdict(g) for g in gpu.nvml().devices()]
    except Exception:
        gpus = []
    runs = list(old.get("runs", [])) + [{"started_at": _now_iso(), "command": list(cfg.command),
                                         "config": cfg.to_json(), "resume": cfg.resume, "format": FORMAT}]
    return {
        "format": FORMAT,
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


def make_plan(cfg: SweepConfig, axes: list[list[Any]]) -> Plan:
    cands = concurrency_candidates(cfg)
    if cfg.adaptive:
        return HalvingPlan(axes, cands, cfg.n_predict, cfg.repeats, lambda idx: make_shape(cfg, idx, axes).slots)
    return GridPlan(axes, cands, cfg.n_predict, cfg.repeats, auto=cfg.concurrency == "auto")


def warm_page_cache(model: Path, available_bytes: int) -> bool:
    """Read the model file once so that it sits in the page cache before the first fleet start (every
    shape then loads it from memory, the first one too). Skipped for a model too large to stay there."""
    size = Path(model).stat().st_size
    if size > available_bytes * PAGE_CACHE_SHARE:
        return False
    buf = bytearray(16 << 20)
    with open(model, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    return True


class Sweep:
    """One sweep run over an output directory. `run()` does the work; `rounds()` does it one round
    (grid round, halving rung) at a time. See the module docstring."""

    def __init__(self, cfg: SweepConfig, runner: ShapeRunner, on_event: Callable[[SweepProgress], None] | None = None,
                 stop: threading.Event | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        cfg.validate()
        self.cfg = cfg
        self.runner = runner
        self.on_event = on_event
        self.stop = stop or threading.Event()
        self.clock = clock
        self.ledger = ledger.TimeLedger(clock)
        self.budget_s = cfg.budget_min * 60 if cfg.budget_min else None
        self.params_id = results.stable_id(cfg.params())
        self.measured = 0
        self.skipped_standing = 0
        self.cell_times: list[float] = []
        self.launch_times: list[float] = []
        self.points: list[SweepCellResult] = []
        self.axes = shape_axes(cfg)
        self.plan = make_plan(cfg, self.axes)
        self.fp: dict[str, Any] = {}
        self.store: results.ResultStore | None = None
        self.standing: dict[str, dict[str, Any]] = {}
        self.warmed = False
        self.result: SweepResult | None = None

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
        if int(meta.get("format") or 1) > FORMAT:
            raise UserError(f"{out} was written by a newer llama-tui (results format {meta.get('format')}, "
                            f"this one reads up to {FORMAT})", "resume it with that version, or pass another --out")
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
        with self.ledger.timing("fleet_stop"):
            stale = self.runner.cleanup_stale()
        for note in stale:
            self._emit(phase="fleet", message=note)
        self.meta = run_metadata(self.cfg, self.fp, self.params_id, meta)
        self._write_metadata()

    def _write_metadata(self) -> None:
        assert self.store is not None
        self.meta["runs"][-1]["time"] = self.ledger.to_json()
        self.meta["time"] = ledger.total([r.get("time") for r in self.meta["runs"]])
        self.store.write_metadata(self.meta)

    # ----------------------------------------------------------------------------------- events

    def _cells_total(self) -> int:
        return max(self.plan.planned_cells(), self.measured + self.skipped_standing)

    def _eta(self) -> float | None:
        if not self.cell_times:
            return None
        per_cell = sum(self.cell_times) / len(self.cell_times)
        left = max(0, self._cells_total() - self.measured - self.skipped_standing)
        # fleet starts per cell so far (a visit measures one step or a whole ramp)
        starts_per_cell = len(self.launch_times) / len(self.cell_times)
        eta = left * (per_cell + starts_per_cell * self._launch_guess())
        if self.budget_s is not None:
            eta = min(eta, max(0.0, self.budget_s - self.ledger.wall()))
        return eta

    def _emit(self, phase: str, shape: Shape | None = None, concurrency: int | None = None,
              message: str | None = None, row: Mapping[str, Any] | None = None, done: bool = False) -> None:
        if self.on_event is None:
            return
        ev = SweepProgress(
            t=self.ledger.wall(), cell=min(self.measured + self.skipped_standing + (0 if done or row else 1),
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

    def _launch_guess(self) -> float:
        return sum(self.launch_times) / len(self.launch_times) if self.launch_times else LAUNCH_GUESS_S

    def _out_of_budget(self, need_s: float) -> bool:
        return self.budget_s is not None and self.ledger.wall() + need_s > self.budget_s

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
        if results.is_measured(row):
            row = {**row, **self._cell_stats(row)}
        row = self.store.append(row)
        self.standing[row["cell_id"]] = row
        return row

    def _cell_stats(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The row's cell over every repeat that stands so far, this one included."""
        assert self.store is not None
        group = cells.cell_group(row, -1)
        same = [r for r in self.store.rows if results.is_measured(r) and cells.cell_group(r, -1) == group]
        c = cells.from_rows([*same, row])[0]
        ci = c.ci95
        return {"repeats": c.repeats, "output_tok_s_mean": round(c.tok_s, 3) if c.tok_s is not None else None,
                "output_tok_s_ci95": [round(ci[0], 3), round(ci[1], 3)] if ci else None}

    def run(self) -> SweepResult:
        for _ in self.rounds():
            pass
        assert self.result is not None
        return self.result

    def rounds(self) -> Iterator[int]:
        """Run the sweep, yielding the number of each round (grid round, halving rung) after it ends and
        before the next one starts; no fleet is up while the caller holds it, and that time is not
        counted as this sweep's (so two sweeps can alternate rounds on one machine). `self.result` holds
        how it ended."""
        self.ledger.start()
        self._open()
        assert self.store is not None
        status = "done"
        rung: int | None = None
        try:
            while True:
                if self.stop.is_set():
                    status = "stopped"
                    break
                visit = self.plan.next_visit()
                if visit is None:
                    break
                if rung is not None and visit.rung != rung:
                    self._write_metadata()
                    self.ledger.pause()
                    yield rung
                    self.ledger.resume()
                rung = visit.rung
                outcome = self._visit(visit)
                if outcome in ("stopped", "budget"):
                    status = outcome
                    break
        finally:
            with self.ledger.timing("fleet_stop"):
                self.runner.teardown()
            self._finish(status)
        if rung is not None:
            yield rung

    def _finish(self, status: str) -> None:
        assert self.store is not None
        self._write_metadata()
        top = results.best_row(self.store.rows, self.cfg.slo)
        msg = {"done": "sweep finished", "stopped": "sweep stopped; run again with --resume to finish",
               "budget": "budget spent; best found so far kept"}[status]
        self._emit(phase="done" if status != "stopped" else "cancelled", message=f"{msg}: {self.cfg.out_dir}",
                   done=True)
        self.result = SweepResult(Path(self.cfg.out_dir), status, self.measured, self.skipped_standing, top,
                                  list(self.store.damaged), self.ledger.wall(), self.ledger.to_json())

    def _visit(self, visit: Visit) -> str:
        """One visit: start the shape (unless every step stands) and measure its steps. Returns "ok",
        "skipped", "failed", "stopped" or "budget"."""
        assert self.store is not None
        shape = make_shape(self.cfg, visit.idx, self.axes)
        shape_id = self._cell_id(shape, None, None, None)
        if shape_id in self.standing:  # a standing OOM record: not retried
            self.plan.drop(visit.idx)
            self._emit(phase="fleet", shape=shape, message=f"{shape.label()}: skipped, failed for memory before")
            return "skipped"
        fitcheck = fit_check(self.cfg, shape)
        if fitcheck is not None and not fitcheck.fits:
            self.plan.drop(visit.idx)
            if not any(r.get("cell_id") == shape_id for r in self.store.rows):
                self._append({**self._base_row(shape, None, None, None), "status": results.NO_FIT, "valid": False,
                              "message": fitcheck.reason, "started_at": _now_iso()})
            self._emit(phase="fleet", shape=shape, message=f"{shape.label()}: skipped, {fitcheck.reason}")
            return "skipped"
        if self._steps(shape, visit, live=False) == "ok":
            return "ok"  # every step of this visit already stands
        if self._out_of_budget(self._cell_time_guess() + self._launch_guess()):
            return "budget"
        if not self.warmed:
            self.warmed = True
            with self.ledger.timing("page_cache"):
                warm_page_cache(self.cfg.model, hardware.memory()[1])
        self._emit(phase="fleet", shape=shape, message=f"starting {shape.label()}")
        t = self.clock()
        self.ledger.counts["fleet_starts"] += 1
        try:
            info = self.runner.launch(shape, self.cfg)
        except LaunchFailed as exc:
            self.runner.teardown()
            self.ledger.add("fleet_start", self.clock() - t)
            self.plan.drop(visit.idx)
            status = results.OOM if exc.memory else results.LAUNCH_FAILED
            self._append({**self._base_row(shape, None, None, None), "status": status, "valid": False,
                          "message": exc.message[-2000:], "started_at": _now_iso()})
            self._emit(phase="failed", shape=shape, message=f"{shape.label()}: {status}: {exc.message[-300:]}")
            return "failed"
        self.launch_times.append(self.clock() - t)
        self.ledger.add("fleet_start", self.clock() - t)
        self._record_launch(shape, info)
        try:
            return self._steps(shape, visit, live=True)
        finally:
            with self.ledger.timing("fleet_stop"):
                self.runner.teardown()
            self._write_metadata()

    def _record_launch(self, shape: Shape, info: LaunchInfo) -> None:
        self.meta["shapes"][shape.label()] = {"commands": list(info.commands), "build_info": info.build_info,
                                              "launched_at": _now_iso()}
        if info.build_info:
            self.meta["llama_server"]["build_info"] = info.build_info
        self._write_metadata()

    def _steps(self, shape: Shape, visit: Visit, live: bool) -> str:
        """Walk the visit's steps. Standing cells feed the plan as they are; without `live`, stop at the
        first step that must be measured ("pending"), with it, measure it. Returns "ok" when the visit is
        done, "pending", "stopped" or "budget"."""
        for n in self.plan.n_predicts:
            if n not in visit.ramps:
                continue
            while (c := visit.next(n)) is not None:
                repeat = self.plan.repeat_of(visit.idx, n, c)
                row = self.standing.get(self._cell_id(shape, c, n, repeat))
                if row is not None:
                    self.skipped_standing += 1
                elif not live:
                    return "pending"
                elif self.stop.is_set():
                    return "stopped"
                elif self._out_of_budget(self._cell_time_guess()):
                    return "budget"
                else:
                    row = self._measure(shape, visit, n, c, repeat)
                    if row is None:
                        return "stopped"  # a step cut short is not a cell
                self.plan.record(visit, n, c, row.get("output_tok_s"),
                                 results.is_good(row) and results.within_slo(row, self.cfg.slo))
        return "ok"

    def _measure(self, shape: Shape, visit: Visit, n: int, c: int, repeat: int) -> dict[str, Any] | None:
        self._emit(phase="measure", shape=shape, concurrency=c)
        started_at, t = _now_iso(), self.clock()
        metrics = self.runner.measure(shape, self.cfg, c, n, self.stop)
        if metrics.pop("interrupted", False):
            return None
        wall = self.clock() - t
        row = {**self._base_row(shape, c, n, repeat), **metrics, "rung": visit.rung, "started_at": started_at}
        row.setdefault("duration_s", self.cfg.duration)
        row.setdefault("warmup_s", self.cfg.warmup)
        row["status"] = "ok" if (row.get("errors") or 0) == 0 else "error"
        row = self._append(row)
        self.ledger.cell(wall, float(row.get("warmup_s") or 0.0), float(row.get("duration_s") or 0.0))
        self.cell_times.append(wall)
        self.measured += 1
        self.points.append(best.point(row, self.cfg.slo))
        ci = row.get("output_tok_s_ci95")
        interval = f" (cell mean {row['output_tok_s_mean']:,.0f}, 95% CI {ci[0]:,.0f}-{ci[1]:,.0f} over " \
                   f"{row['repeats']})" if ci else ""
        self._emit(phase="measure", shape=shape, concurrency=c, row=row,
                   message=f"{shape.label()} c={c}: {row.get('output_tok_s') or 0:,.0f} tok/s, "
                           f"{row.get('errors') or 0} errors{interval}")
        return row


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
