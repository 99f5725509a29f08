"""The best shape: one rule for best.json, the report, `sweep report --apply` and the TUI.

A row is good when it is measured, error-free, valid, has completed requests and a throughput figure,
and is within the sweep's SLO (`results.is_good` and `results.within_slo`). A cell is good when every
one of its repeats is; the best is the good cell with the highest mean output tok/s; ties go to the
lower TTFT p95, then to the earlier cell (cells.py, which also gives the interval and the runner-up).

- `best_shape(out_dir)`: the best row of a sweep directory and the full fleet settings that start it
  (threads, batch, ubatch, context, policy, GPU options), for `sweep report --apply` and the TUI.
- `point(row, slo)`: a row as the TUI's `SweepCellResult`, judged by the rule above (`good`), so the
  TUI's live view needs no rule of its own; `best_point` picks the best of such points.
- `shape_grid(...)`: best good tok/s per instances x parallel, or why a shape has none; the report's
  text heatmap and the TUI's heatmap widget both render it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

from llama_tui.core.errors import UserError
from llama_tui.core.snapshots import SweepCellResult
from llama_tui.core.sweep import cells, results

# Why a shape has no number: its shape-level record, or what kept its measured cells from being good.
SHAPE_FAILURES = {results.NO_FIT: "no fit", results.OOM: "oom", results.LAUNCH_FAILED: "failed"}

Key = tuple[int, int]  # (instances, parallel)


# --------------------------------------------------------------------------------------------- points


def point(row: Mapping[str, Any], slo: Mapping[str, float] | None = None) -> SweepCellResult:
    """A measured row as a point for the TUI, with the rule's verdict in `good` and its cell's key (the
    repeats of a cell share it)."""
    group = cells.cell_group(row, 0)
    shape = f"{row['instances']}x{row['parallel']}" + (f" t{row['threads']}" if row.get("threads") else "") + "".join(
        f" {tag}{row[k]}" for k, tag in (("batch", "b"), ("ubatch", "ub")) if row.get(k) is not None)
    return SweepCellResult(
        int(row["instances"]), int(row["parallel"]), int(row["concurrency"]), float(row.get("output_tok_s") or 0.0),
        row.get("ttft_p50_ms"), row.get("ttft_p95_ms"), int(row.get("errors") or 0), bool(row.get("valid")),
        good=results.is_good(row) and results.within_slo(row, slo),
        cell=results.stable_id({"g": list(group)}) if group[0] != "row" else None, shape=shape)


def best_point(points: Sequence[SweepCellResult]) -> SweepCellResult | None:
    """The best cell of the points (the rule of `results.best_row`) as its latest point, carrying the
    cell's mean tok/s and TTFT p95 when it has several repeats; None when no cell is good."""
    return cells.best_of_points(points)


def why_not(p: SweepCellResult) -> str:
    """Why a point is not good: "errors", "invalid", or (valid and error-free) outside the SLO."""
    return "errors" if p.errors else "invalid" if not p.valid else "slo"


def why_not_row(row: Mapping[str, Any], slo: Mapping[str, float] | None) -> str:
    """Why a measured row is not good; a row also knows when no request finished in its window."""
    if row.get("errors") or row.get("valid") is not True:
        return "errors" if row.get("errors") else "invalid"
    if not (row.get("requests_ok") or 0) > 0 or not isinstance(row.get("output_tok_s"), (int, float)):
        return "unfinished"  # no request finished inside the window: it is too short for this load
    return "slo"


# --------------------------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class HeatCell:
    tok_s: float | None  # the best good cell's mean output tok/s (over concurrency and the extra axes)
    note: str | None = None  # without a number: why ("errors", "invalid", "slo", "no fit", "oom", "failed")
    best: bool = False  # the best shape of the sweep
    ci95: tuple[float, float] | None = None  # that cell's 95% interval (None: a single repeat)


@dataclass(frozen=True)
class ShapeGrid:
    """Best good tok/s by instances (rows) x parallel (columns)."""

    instances: tuple[int, ...]
    parallel: tuple[int, ...]
    cells: Mapping[Key, HeatCell] = field(default_factory=lambda: MappingProxyType({}))  # read-only
    top: float | None = None  # the best value (what shades are relative to)

    def cell(self, instances: int, parallel: int) -> HeatCell | None:
        """None: nothing known about this shape yet."""
        return self.cells.get((instances, parallel))


def shape_grid(points: Sequence[SweepCellResult], notes: Mapping[Key, str] | None = None,
               shapes: Iterable[Key] = ()) -> ShapeGrid:
    """The grid of `points`. `notes` say why a shape has no number, first reason first (None: from the
    points); `shapes` are further shapes the axes must show (the one being measured, failed launches)."""
    if notes is None:
        notes = {}
        for p in points:
            if not p.good:
                notes.setdefault((p.instances, p.parallel), why_not(p))
    found = cells.from_points(points)
    leaders: dict[Key, cells.Cell] = {}
    for c in found:
        if c.good and c.tok_s is not None:
            p = c.members[0]
            key = (p.instances, p.parallel)
            if key not in leaders or c.rank() > leaders[key].rank():
                leaders[key] = c
    top = cells.verdict(found).best
    best_key = (top.members[0].instances, top.members[0].parallel) if top is not None else None
    heat = {key: HeatCell(None, note) for key, note in notes.items()}
    heat.update({key: HeatCell(c.tok_s, best=key == best_key, ci95=c.ci95) for key, c in leaders.items()})
    keys = set(heat) | {(p.instances, p.parallel) for p in points} | set(shapes)
    return ShapeGrid(tuple(sorted({i for i, _ in keys})), tuple(sorted({p for _, p in keys})),
                     MappingProxyType(heat), top.tok_s if top is not None else None)


def grid_from_rows(rows: Iterable[Mapping[str, Any]], slo: Mapping[str, float] | None = None) -> ShapeGrid:
    """The grid of a sweep directory's rows (measured cells and shape-level records)."""
    points: list[SweepCellResult] = []
    notes: dict[Key, str] = {}
    shapes: set[Key] = set()
    for r in rows:
        if r.get("instances") is None or r.get("parallel") is None:
            continue
        key = (r["instances"], r["parallel"])
        shapes.add(key)
        if results.is_measured(r):
            p = point(r, slo)
            points.append(p)
            if not p.good:
                notes.setdefault(key, why_not_row(r, slo))
        elif r.get("status") in SHAPE_FAILURES:
            notes.setdefault(key, SHAPE_FAILURES[r["status"]])
    return shape_grid(points, notes, shapes)


# --------------------------------------------------------------------------------------------- the best shape


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


@dataclass(frozen=True)
class BestShape:
    """A sweep directory's best row and the fleet settings that start its shape."""

    out_dir: Path
    row: Mapping[str, Any]
    fleet: Mapping[str, Any]  # "fleet.key" -> value (fleet_settings_for)
    meta: Mapping[str, Any] = field(default_factory=dict)

    def settings(self, preset: str | None = None, cli: Mapping[str, Any] | None = None) -> Any:
        """Resolved settings (config.Settings) for a fleet of this shape: the shape's fleet settings
        over `cli` (the caller's own options, e.g. the TUI's ports), over the preset and user settings.
        `fleet.FleetSpec.from_settings` makes the spec; the CLI and the TUI both start fleets this way."""
        from llama_tui.core import config

        return config.load_settings(preset=preset, cli={**(cli or {}), **self.fleet})


def best_shape(out_dir: Path | str) -> BestShape:
    """The best shape of a sweep directory (the rule above). UserError when no cell is good."""
    out = Path(out_dir)
    rows = results.read_rows(out / results.RESULTS).rows
    meta = results.read_json(out / results.METADATA) or {}
    best = results.best_row(rows, meta.get("slo"))
    if best is None:
        raise UserError(f"{out} has no error-free cell to apply", "look at `llama-tui sweep report DIR`")
    return BestShape(out, best, fleet_settings_for(best, meta), meta)
