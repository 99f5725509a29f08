"""The sweep: find the best fleet shape (instances x parallel [x threads, batch, ubatch]) by measurement.

    config.py        SweepConfig: what a sweep measures; build_config makes one from options and settings
    planner.py       the grid, the adaptive shape order and each shape's concurrency ramp (the knee)
    runner.py        the ShapeRunner interface and the real FleetRunner (fleet up, bench, memory peaks)
    orchestrator.py  Sweep / run(): measure shape after shape, resume, budget, stop
    results.py       the output directory: results.jsonl, results.csv, best.json, frontier.json, metadata
    fit.py           will a shape fit in memory (from the GGUF header)?
    best.py          the one rule for the best shape and the heatmap (CLI, report and TUI alike)
    report.py        the text report: table, heatmap, frontier, the command to run
    child.py         a sweep in its own process (spawn, SweepProcess, the child's entry point)

commands/ and ui/ use the names exported here (`from llama_tui.core import sweep`).
"""

from llama_tui.core.sweep.best import (BestShape, ShapeGrid, best_point, best_shape, fleet_settings_for,
                                       grid_from_rows, shape_grid)
from llama_tui.core.sweep.child import SweepProcess, spawn, summary
from llama_tui.core.sweep.config import OPTIONS, SweepConfig, build_config, command_line
from llama_tui.core.sweep.orchestrator import Sweep, SweepResult, out_lock, run
from llama_tui.core.sweep.planner import Ramp, Shape, ShapePlanner, ramp_start
from llama_tui.core.sweep.report import heatmap, recommended_command, render_table, report
from llama_tui.core.sweep.runner import FleetRunner, LaunchFailed, LaunchInfo, PeakSampler, ShapeRunner

__all__ = [
    "OPTIONS", "BestShape", "FleetRunner", "LaunchFailed", "LaunchInfo", "PeakSampler", "Ramp", "Shape", "ShapeGrid",
    "ShapePlanner", "ShapeRunner", "Sweep", "SweepConfig", "SweepProcess", "SweepResult", "best_point", "best_shape",
    "build_config", "command_line", "fleet_settings_for", "grid_from_rows", "heatmap", "out_lock",
    "ramp_start", "recommended_command", "render_table", "report", "run", "shape_grid", "spawn", "summary",
]
