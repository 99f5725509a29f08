"""A cell over its repeats (core/sweep/cells.py): the Student-t interval, the best cell against the
runner-up, best.json and the reports built on them, older directories, and the TUI showing the interval."""

from __future__ import annotations

import asyncio
import math
import statistics
from pathlib import Path
from typing import Any

import orjson
import pytest

from llama_tui.core import sweep
from llama_tui.core.snapshots import SweepProgress
from llama_tui.core.sweep import best, cells, results


def rep(inst: int, par: int, conc: int, repeat: int | None, tok: float, ttft: float = 50.0, **kw: Any) -> dict:
    return {"status": "error" if kw.get("errors") else "ok", "instances": inst, "parallel": par, "threads": 1,
            "batch": None, "ubatch": None, "n_predict": 32, "concurrency": conc, "repeat": repeat,
            "params_id": "p", "fingerprint": "f", "cell_id": f"{inst}-{par}-{conc}-{repeat}", "output_tok_s": tok,
            "ttft_p50_ms": ttft / 2, "ttft_p95_ms": ttft, "e2e_p95_ms": ttft * 3, "errors": 0, "requests_ok": 20,
            "valid": True, **kw}


# ------------------------------------------------------------------------------------------------ the interval


def test_t_quantiles_match_the_tables_and_the_expansion_joins_them() -> None:
    for df, t in ((1, 12.706), (2, 4.303), (3, 3.182), (5, 2.571), (10, 2.228), (30, 2.042)):
        assert cells.t975(df) == pytest.approx(t, abs=5e-4)
    # beyond the table: 40 -> 2.021, 60 -> 2.000, 120 -> 1.980, then the normal quantile
    for df, t in ((40, 2.0211), (60, 2.0003), (120, 1.9799), (100_000, 1.95998)):
        assert cells.t975(df) == pytest.approx(t, abs=2e-4)
    assert cells.t975(31) == pytest.approx(2.0395, abs=2e-4) and cells.t975(31) < cells.t975(30)
    with pytest.raises(ValueError):
        cells.t975(0)


def test_interval_is_mean_plus_minus_t_times_the_standard_error() -> None:
    lo, hi = cells.interval([10.0, 12.0, 14.0])  # mean 12, s = 2, n = 3
    half = 4.3027 * 2 / math.sqrt(3)
    assert (lo, hi) == (pytest.approx(12 - half, abs=1e-3), pytest.approx(12 + half, abs=1e-3))
    assert cells.interval([5.0]) is None and cells.interval([]) is None
    lo, hi = cells.interval([7.0, 7.0])
    assert lo == hi == 7.0
    assert cells.overlap((1, 3), (2, 5)) is True and cells.overlap((1, 2), (3, 4)) is False
    assert cells.overlap(None, (1, 2)) is None


# ------------------------------------------------------------------------------------------------ the verdict


def test_the_best_cell_is_ranked_by_its_mean_and_needs_every_repeat_good() -> None:
    rows = [rep(1, 1, 4, 0, 100.0), rep(1, 1, 4, 1, 300.0),  # mean 200 (one lucky repeat at 300)
            rep(2, 2, 4, 0, 250.0), rep(2, 2, 4, 1, 250.0),  # mean 250: the best
            rep(2, 4, 8, 0, 900.0), rep(2, 4, 8, 1, 950.0, valid=False)]  # fastest, but one repeat invalid
    top = results.best_row(rows)
    assert (top["instances"], top["parallel"], top["output_tok_s"], top["repeats"]) == (2, 2, 250.0, 2)
    assert top["output_tok_s_samples"] == [250.0, 250.0] and top["cell_ids"] == ["2-2-4-0", "2-2-4-1"]
    assert top["output_tok_s_ci95"] == [250.0, 250.0]
    found = {c.shape[:2]: c for c in cells.from_rows(rows)}
    assert found[(2, 4)].good is False and found[(1, 1)].tok_s == 200.0
    summary = found[(2, 4)].summary()
    assert summary["valid"] is False and summary["valid_repeats"] == 1 and summary["requests_ok"] == 40


def test_best_and_runner_up_are_distinguishable_only_when_their_intervals_separate() -> None:
    apart = [rep(2, 2, 4, r, t) for r, t in enumerate((300.0, 305.0, 298.0))] + \
            [rep(1, 2, 4, r, t) for r, t in enumerate((200.0, 204.0, 199.0))] + \
            [rep(2, 2, 8, r, t) for r, t in enumerate((296.0, 290.0, 293.0))]  # same shape: not the runner-up
    v = cells.verdict(cells.from_rows(apart))
    assert v.best.shape[:2] == (2, 2) and v.runner_up.shape[:2] == (1, 2)
    assert v.distinguishable is True and v.reason.startswith("distinguishable")
    tied = [rep(2, 2, 4, r, t) for r, t in enumerate((300.0, 260.0, 280.0))] + \
           [rep(1, 2, 4, r, t) for r, t in enumerate((270.0, 285.0, 265.0))]
    v = cells.verdict(cells.from_rows(tied))
    assert v.distinguishable is False and "statistically tied" in v.reason
    single = [rep(2, 2, 4, 0, 300.0), rep(1, 2, 4, 0, 200.0)]
    v = cells.verdict(cells.from_rows(single))
    assert v.distinguishable is False and "single measurement" in v.reason and "--repeats" in v.reason
    alone = [rep(2, 2, 4, 0, 300.0), rep(2, 2, 4, 1, 310.0)]
    v = cells.verdict(cells.from_rows(alone))
    assert v.runner_up is None and v.distinguishable is None
    assert cells.verdict([]).best is None


def test_best_json_names_the_runner_up_and_the_report_says_whether_they_separate(tmp_path: Path) -> None:
    out = tmp_path / "s"
    store = results.ResultStore(out)
    rows = [rep(2, 2, 4, r, t) for r, t in enumerate((300.0, 260.0, 280.0))] + \
           [rep(1, 2, 4, r, t) for r, t in enumerate((270.0, 285.0, 265.0))]
    for r in rows:
        store.append(r)
    data = orjson.loads((out / "best.json").read_bytes())
    assert data["best"]["instances"] == 2 and data["runner_up"]["instances"] == 1
    assert data["distinguishable"] is False and "statistically tied" in data["comparison"]
    assert data["best"]["output_tok_s"] == pytest.approx(280.0) and len(data["best"]["output_tok_s_ci95"]) == 2
    assert "Student t" in data["ci_method"] and data["slo"] is None
    text = sweep.report(out)
    assert "statistically tied" in text and "runner-up: 1 instances x 2 slots" in text
    assert "95% CI" in text and "time: not recorded" in text
    table = [line for line in text.splitlines() if line.startswith("ok ")]
    assert len(table) == 2 and all(" 3 " in line for line in table)  # one line per cell, 3 repeats each
    from conftest import run_cli

    proc = run_cli("sweep", "report", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    js = orjson.loads(proc.stdout)
    assert js["runner_up"]["instances"] == 1 and js["distinguishable"] is False and len(js["rows"]) == 6


def test_a_directory_from_before_repeats_still_reports(tmp_path: Path) -> None:
    """Rows written by the previous version: no repeats, intervals or rung; metadata without format or time."""
    out = tmp_path / "old"
    out.mkdir()
    old = [{k: v for k, v in rep(i, p, c, 0, tok).items()} for i, p, c, tok in
           ((1, 1, 1, 500.0), (1, 2, 4, 900.0), (2, 2, 4, 1200.0))]
    (out / "results.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in old))
    (out / "metadata.json").write_bytes(orjson.dumps({"fingerprint": {"id": "f", "path": "/m.gguf"},
                                                      "params": {"duration": 8.0, "warmup": 2.0}, "slo": {}}))
    text = sweep.report(out)
    assert "best: 2 instances x 2 slots" in text and "1 repeat, no interval" in text
    assert "not distinguishable: the best has a single measurement" in text and "time: not recorded" in text
    assert results.best_row(old)["output_tok_s"] == 1200.0
    page = sweep.page.render(out)
    assert "<svg" in page and "1,200" in page


def test_the_heatmap_says_when_no_request_finished_inside_the_window() -> None:
    rows = [rep(1, 1, 4, 0, 1.2, requests_ok=0), rep(2, 1, 4, 0, 14.0)]
    grid = best.grid_from_rows(rows)
    assert grid.cell(1, 1).note == "unfinished" and grid.cell(2, 1).best
    assert "unfinished" in "\n".join(sweep.heatmap(rows))


# ------------------------------------------------------------------------------------------------ the TUI's points


def test_points_of_one_cell_pool_and_the_grid_carries_the_interval() -> None:
    rows = [rep(2, 2, 4, r, t) for r, t in enumerate((300.0, 260.0, 280.0))] + \
           [rep(1, 2, 4, r, t) for r, t in enumerate((270.0, 285.0, 265.0))] + [rep(1, 1, 4, 0, 250.0)]
    points = [best.point(r) for r in rows]
    assert len({p.cell for p in points}) == 3 and points[0].shape == "2x2 t1"
    top = best.best_point(points)
    assert (top.instances, top.parallel, top.tok_s) == (2, 2, pytest.approx(280.0))
    grid = best.shape_grid(points)
    lo, hi = cells.interval([300.0, 260.0, 280.0])
    assert grid.cell(2, 2).best and grid.cell(2, 2).ci95 == (pytest.approx(lo), pytest.approx(hi))
    assert grid.cell(1, 1).ci95 is None and grid.cell(1, 1).tok_s == 250.0
    # points without a cell key (older producers) stay cells of their own
    loose = [best.point({**r, "repeat": None}) for r in rows[:2]]
    assert all(p.cell is None for p in loose) and best.best_point(loose).tok_s == 300.0


def test_the_sweep_screen_shows_each_cells_interval_and_the_tie() -> None:
    from tests.support import scripted
    from llama_tui.ui.app import make_app
    from llama_tui.ui.screens.sweep import ResultsTable, SweepScreen, interval_text
    from llama_tui.ui.widgets.sweep_heatmap import SweepHeatmap

    rows = [rep(2, 2, 4, r, t) for r, t in enumerate((300.0, 260.0, 280.0))] + \
           [rep(1, 2, 4, r, t) for r, t in enumerate((270.0, 285.0, 265.0))]
    points = tuple(best.point(r) for r in rows)
    half = (cells.interval([300.0, 260.0, 280.0])[1] - 280.0)
    app = make_app(scripted.ScriptedController(scripted.running_fleet(2)))

    async def scenario() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await scripted.wait_for(pilot, lambda: app.polls >= 1)
            await pilot.press("w")
            await scripted.wait_for(pilot, lambda: isinstance(app.screen, SweepScreen))
            for n in (4, 6):  # the interval of a cell appears (and its older rows update) as repeats arrive
                app.sweep_progress = SweepProgress(t=9.0, cell=n, cells_total=6, results=points[:n], out_dir="/x")
                app.render_sweep()
                await pilot.pause()
            table = app.screen.query_one(ResultsTable)
            shown = {str(table.get_row_at(r)[0]).lstrip("★ "): str(table.get_row_at(r)[-1])
                     for r in range(table.row_count)}
            assert shown["1"] == shown["2"] == shown["3"] == f"±{half:,.0f}"
            assert shown["4"] == interval_text(cells.interval([270.0, 285.0, 265.0]))
            assert "statistically tied with 1x2 t1" in str(app.screen.query_one(SweepHeatmap).render())

    asyncio.run(scenario())
    assert interval_text(None) == "" and interval_text((1000.0, 4000.0)) == "±1.5k"
    assert statistics.fmean([300.0, 260.0, 280.0]) == 280.0
