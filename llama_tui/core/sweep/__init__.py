"""The sweep: find the best fleet shape (instances x parallel [x threads, batch, ubatch]) by measurement.

    config.py        SweepConfig: what a sweep measures; build_config makes one from options and settings
    planner.py       shapes, the grid plan (repeats as rounds over the shapes) and each concurrency ramp (the knee)
    halving.py       the adaptive plan: successive halving over the shapes
    runner.py        the ShapeRunner interface and the real FleetRunner (fleet up, bench, memory peaks)
    orchestrator.py  Sweep / run(): one fleet start per visit of the plan, resume, budget, stop
    ledger.py        where the time went: fleet starts, warm-ups, windows, the rest
    results.py       the output directory: results.jsonl, results.csv, best.json, frontier.json, metadata
    fit.py           will a shape fit in memory (from the GGUF header)?
    cells.py         a cell over its repeats: mean, 95% interval, best, runner-up, distinguishable
    best.py          the best shape's fleet settings and the heatmap grid (CLI, report and TUI alike)
    report.py        the text report: cells, heatmap, frontier, best vs runner-up, time, the command to run
    page.py          the same as one self-contained HTML page (charts.py draws its inline SVG charts)
    child.py         a sweep in its own process (spawn, SweepProcess, the child's entry point)

commands/ and ui/ use the names exported here (`from llama_tui.core import sweep`).
"""

from llama_tui.core.sweep.best import (BestShape, ShapeGrid, best_point, best_shape, fleet_settings_for,
                                       grid_from_rows, shape_grid)
from llama_tui.core.sweep.child import SweepProcess, spawn, summary
from llama_tui.core.sweep.config import OPTIONS, SweepConfig, build_config, command_line
from llama_tui.core.sweep.halving import HalvingPlan
from llama_tui.core.sweep.orchestrator import Sweep, SweepResult, out_lock, run
from llama_tui.core.sweep.page import write_page
from llama_tui.core.sweep.planner import GridPlan, Plan, Ramp, Shape, Visit, ramp_start
from llama_tui.core.sweep.report import heatmap, recommended_command, render_table, report
from llama_tui.core.sweep.runner import FleetRunner, LaunchFailed, LaunchInfo, PeakSampler, ShapeRunner

__all__ = [
    "OPTIONS", "BestShape", "FleetRunner", "GridPlan", "HalvingPlan", "LaunchFailed", "LaunchInfo", "PeakSampler",
    "Plan", "Ramp", "Shape", "ShapeGrid", "ShapeRunner", "Sweep", "SweepConfig", "SweepProcess", "SweepResult",
    "Visit", "best_point", "best_shape", "build_config", "command_line", "fleet_settings_for", "grid_from_rows",
    "heatmap", "out_lock", "ramp_start", "recommended_command", "render_table", "report", "run",
    "shape_grid", "spawn", "summary", "write_page",
]
