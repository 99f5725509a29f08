"""One rule for the best shape: `sweep report --apply` and the TUI's apply-best start the same fleet.

A hand-made sweep directory holds an erroneous cell, an invalid one and one outside the SLO, all faster
than the real best; the best ties on tok/s with a slower-to-first-token cell. Both paths run for real
(the CLI's `main`, the TUI's app with the real `CoreController`) with `fleet.up` captured."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from llama_tui.core import fleet, sweep
from llama_tui.core.snapshots import SweepProgress
from llama_tui.core.sweep import best, results

from conftest import REPO

SLO = {"ttft_p95_ms": 500.0}
PARAMS = {"ctx_per_slot": 256, "duration": 2.0, "warmup": 1.0, "policy": "round_robin", "api": "completion",
          "stream": True, "prompt_tokens": 32, "gpu_layers": None, "gpus": [], "extra_args": ""}


def cell(instances: int, parallel: int, concurrency: int, tok: float, ttft: float, errors: int = 0,
         valid: bool = True, **kw: Any) -> dict[str, Any]:
    return {"status": "error" if errors else "ok", "instances": instances, "parallel": parallel, "threads": 1,
            "batch": None, "ubatch": None, "n_predict": 32, "concurrency": concurrency, "repeat": 0,
            "ctx_per_slot": 256, "policy": "round_robin", "output_tok_s": tok, "ttft_p50_ms": ttft / 2,
            "ttft_p95_ms": ttft, "e2e_p95_ms": ttft * 3, "errors": errors, "requests_ok": 40, "valid": valid, **kw}


ROWS = [
    cell(1, 1, 1, 1000.0, 90.0),
    cell(2, 4, 16, 9000.0, 300.0, errors=3),  # the fastest: has errors
    cell(4, 2, 8, 8000.0, 250.0, valid=False, invalid_reason="client CPU at 97% of a core"),
    cell(4, 4, 16, 7000.0, 900.0),  # error-free and valid, outside the SLO
    cell(1, 4, 4, 5000.0, 400.0),  # ties with the best on tok/s, slower to the first token
    cell(2, 2, 8, 5000.0, 200.0),  # the best
    {"status": "oom", "instances": 4, "parallel": 8, "threads": 1, "concurrency": None, "valid": False},
]


@pytest.fixture
def sweep_dir(tmp_path: Path, tiny_model: Path) -> Path:
    out = tmp_path / "sweep"
    store = results.ResultStore(out, SLO)
    for r in ROWS:
        store.append(r)
    store.write_metadata({"fingerprint": results.fingerprint(tiny_model), "params": PARAMS, "slo": SLO})
    return out


@pytest.fixture
def captured_up(monkeypatch) -> list[fleet.FleetSpec]:
    """fleet.up records the spec it was given and reports a fleet of that shape (no processes)."""
    from tests.support import scripted

    specs: list[fleet.FleetSpec] = []

    def up(spec, state_dir=None, on_progress=None):
        specs.append(spec)
        return scripted.running_fleet(spec.instances, spec.parallel)

    monkeypatch.setattr(fleet, "up", up)
    return specs


def test_the_best_is_error_free_valid_within_the_slo_and_wins_ties_on_ttft(sweep_dir: Path, tiny_model: Path) -> None:
    top = sweep.best_shape(sweep_dir)
    assert (top.row["instances"], top.row["parallel"], top.row["output_tok_s"]) == (2, 2, 5000.0)
    assert top.row["output_tok_s"] < max(r.get("output_tok_s") or 0 for r in ROWS)  # not the raw fastest
    assert top.fleet == {"fleet.model": str(tiny_model.resolve()), "fleet.instances": 2,
                         "fleet.parallel": 2, "fleet.ctx_per_slot": 256, "fleet.threads": 1,
                         "fleet.policy": "round_robin"}
    # the TUI's points, judged by the core, pick the same cell
    points = [best.point(r, SLO) for r in ROWS if results.is_measured(r)]
    assert [p.good for p in points] == [True, False, False, False, True, True]
    pick = best.best_point(points)
    assert (pick.instances, pick.parallel, pick.concurrency) == (2, 2, 8)


def test_the_report_and_the_tui_draw_their_heatmap_from_one_grid(sweep_dir: Path) -> None:
    grid = best.grid_from_rows(ROWS, SLO)
    assert grid.instances == (1, 2, 4) and grid.parallel == (1, 2, 4, 8) and grid.top == 5000.0
    assert grid.cell(2, 2) == best.HeatCell(5000.0, best=True)
    assert grid.cell(1, 4) == best.HeatCell(5000.0, best=False)  # same tok/s, lost on TTFT
    assert [grid.cell(*k).note for k in ((2, 4), (4, 2), (4, 4), (4, 8))] == ["errors", "invalid", "slo", "oom"]
    assert grid.cell(1, 2) is None
    live = best.shape_grid([best.point(r, SLO) for r in ROWS if results.is_measured(r)])
    assert {k: v for k, v in grid.cells.items() if k != (4, 8)} == dict(live.cells)
    heat = next(line for line in sweep.report(sweep_dir).splitlines() if line.startswith("2 inst"))
    assert heat.split()[2:] == ["-", "5,000", "@@@", "<", "errors", "-"], heat


def test_cli_apply_and_tui_apply_best_start_the_same_fleet_spec(sweep_dir: Path, tmp_path: Path,
                                                               captured_up: list, capsys) -> None:
    from llama_tui import cli
    from llama_tui.ui.app import make_app
    from llama_tui.ui.controller import CoreController
    from llama_tui.ui.screens.confirm import ConfirmScreen
    from llama_tui.ui.screens.sweep import SweepScreen
    from tests.support.scripted import wait_for

    assert cli.main(["sweep", "report", str(sweep_dir), "--apply"]) == 0
    assert "starting the best shape: 2 instances x 2 slots, 1 threads" in capsys.readouterr().err
    assert len(captured_up) == 1

    ctrl = CoreController(state_dir=tmp_path / "tui-state")
    app = make_app(ctrl)
    points = tuple(best.point(r, SLO) for r in ROWS if results.is_measured(r))
    progress = SweepProgress(t=60.0, cell=6, cells_total=6, phase="done", results=points, done=True,
                             out_dir=str(sweep_dir))

    async def scenario() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: app.polls >= 1)
            await pilot.press("w")
            await wait_for(pilot, lambda: isinstance(app.screen, SweepScreen))
            app.sweep_progress = progress
            app.render_sweep()
            await pilot.press("a")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            assert "2 instances x 2 slots" in str(app.screen.query_one("#confirm-question").render())
            await pilot.press("y")
            await wait_for(pilot, lambda: len(captured_up) == 2 and not app.busy, what="the TUI's fleet.up")

    asyncio.run(scenario())
    cli_spec, tui_spec = (asdict(s) for s in captured_up)
    assert tui_spec == cli_spec
    assert (tui_spec["instances"], tui_spec["parallel"], tui_spec["threads"], tui_spec["ctx_per_slot"],
            tui_spec["policy"]) == (2, 2, 1, 256, "round_robin")
    assert ctrl.form().instances == 2 and ctrl.form().policy == "round_robin"  # the form follows the fleet


def test_an_unusable_sweep_directory_is_refused_before_the_fleet_is_touched(tmp_path: Path, captured_up: list,
                                                                          monkeypatch) -> None:
    from llama_tui.core.errors import UserError
    from llama_tui.ui.controller import CoreController

    out = tmp_path / "bad"
    store = results.ResultStore(out, SLO)
    for r in ROWS[1:4]:  # only the erroneous, invalid and SLO-breaking cells
        store.append(r)
    store.write_metadata({"params": PARAMS, "slo": SLO})
    ctrl = CoreController(state_dir=tmp_path / "tui-state")
    stopped = []
    monkeypatch.setattr(ctrl, "stop", lambda: stopped.append(True))
    with pytest.raises(UserError, match="no error-free cell to apply"):
        ctrl.apply_shape(out)
    assert not stopped and not captured_up


def test_the_tui_builds_and_applies_sweeps_without_the_cli_or_its_commands(tmp_path: Path, sweep_dir: Path) -> None:
    """start_sweep and apply_shape call the core alone: neither llama_tui.cli nor llama_tui.commands loads."""
    code = f"""
import sys
from pathlib import Path
from llama_tui.core import fleet, sweep
from llama_tui.ui.controller import CoreController
from tests.support import scripted
seen = []
sweep.spawn = lambda cfg: seen.append(cfg) or scripted.ScriptedRun([])
fleet.up = lambda spec, state_dir=None, on_progress=None: seen.append(spec) or scripted.running_fleet(1)
ctrl = CoreController(preset="demo", state_dir=Path({str(tmp_path / 'st')!r}))
ctrl.start_sweep()
ctrl.apply_shape({str(sweep_dir)!r})
cfg, spec = seen
assert cfg.model.name.startswith("tiny") and cfg.ctx_per_slot == 512 and cfg.command[:4] == ("llama-tui", "sweep", "--preset", "demo")
assert cfg.nginx_port == cfg.base_port + max(cfg.instances) and spec.parallel == 2
print("LOADED:" + ",".join(sorted(m for m in sys.modules if m.startswith(("llama_tui.cli", "llama_tui.commands")))))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "LOADED:"
