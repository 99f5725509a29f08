"""The sweep's plans on synthetic surfaces, without processes: repeats as rounds over the shapes, the
successive-halving search (noisy surfaces included), resuming with other repeats or from another
version, the time account, and two sweeps alternating rounds."""

from __future__ import annotations

import random
import statistics
from pathlib import Path
from typing import Any, Callable

import orjson
import pytest

from llama_tui.core import sweep
from llama_tui.core.errors import UserError
from llama_tui.core.sweep import GridPlan, HalvingPlan, cells, ledger, results
from llama_tui.core.sweep.planner import grid_indices

from test_sweep_core import Clock, FakeRunner, cfg_for, jsonl_rows, perf, run_fake


@pytest.fixture
def model(tiny_model: Path) -> Path:
    return tiny_model

Surface = Callable[[tuple[int, ...], int], float]


def drive(plan, surface: Surface, noise: float = 0.0, seed: int = 0) -> tuple[list, dict]:
    """Run a plan against a surface (tok/s of shape index x concurrency, times 1 + noise * N(0, 1))."""
    rng = random.Random(seed)
    visits, samples = [], {}
    while (v := plan.next_visit()) is not None:
        visits.append(v)
        v.steps = []  # type: ignore[attr-defined]  # what this visit measured, for the tests
        for n in plan.n_predicts:
            if n not in v.ramps:
                continue
            while (c := v.next(n)) is not None:
                tok = surface(v.idx, c) * (1 + noise * rng.gauss(0, 1))
                samples.setdefault((v.idx, c), []).append(tok)
                v.steps.append(c)  # type: ignore[attr-defined]
                plan.record(v, n, c, tok, True)
    return visits, samples


def best_cell(samples: dict) -> tuple[Any, float, tuple[float, float] | None]:
    key = max(samples, key=lambda k: statistics.fmean(samples[k]))
    return key, statistics.fmean(samples[key]), cells.interval(samples[key])


def real_model_like(axes: list) -> Surface:
    """Two cores: throughput grows with slots sub-linearly, a second instance helps a little, nothing
    more comes from concurrency above the slot count (a closed loop)."""
    def f(idx: tuple[int, ...], c: int) -> float:
        i, p = axes[0][idx[0]], axes[1][idx[1]]
        return 30.0 * p ** 0.55 * (1.1 if i == 2 else 1.0) * min(1.0, c / (i * p)) ** 0.8
    return f


def gaps(axes: list) -> Surface:
    """The tiny model: requests leave gaps, so the knee sits near twice the slot count."""
    def f(idx: tuple[int, ...], c: int) -> float:
        i, p = axes[0][idx[0]], axes[1][idx[1]]
        return 1000.0 * (i * p) ** 0.5 * i ** 0.3 * min(1.0, c / (1.8 * i * p))
    return f


AXES = [[1, 2], [1, 2, 4], [None], [None], [None]]  # the grid: instances 1,2 x parallel 1,2,4
CANDS = [2, 4, 8, 16]


def slots(axes: list) -> Callable[[tuple[int, ...]], int]:
    return lambda idx: axes[0][idx[0]] * axes[1][idx[1]]


# ------------------------------------------------------------------------------------------------ the grid plan


def test_grid_plan_repeats_are_rounds_over_the_shapes_not_back_to_back() -> None:
    plan = GridPlan(AXES, CANDS, [32], 3, auto=False)
    visits, samples = drive(plan, real_model_like(AXES))
    order = [v.idx[:2] for v in visits]
    shapes = [i[:2] for i in grid_indices(AXES)]
    assert order == shapes * 3  # round after round, every shape once per round
    assert [v.rung for v in visits] == [0] * 6 + [1] * 6 + [2] * 6
    assert all(len(s) == 3 for s in samples.values()) and len(samples) == 6 * 4
    assert plan.planned_cells() == 6 * 4 * 3
    # a 5 x 5 grid of one concurrency, one round: 25 visits
    axes = [[1, 2, 3, 4, 5], [1, 2, 4, 8, 16], [None], [None], [None]]
    assert len(drive(GridPlan(axes, [1], [32], 1, auto=False), lambda i, c: 1.0)[0]) == 25


def test_grid_plan_later_rounds_measure_what_the_auto_ramp_measured() -> None:
    plan = GridPlan([[1], [4], [None], [None], [None]], [1, 2, 4, 8, 16, 32], [32], 2, auto=True)
    visits, samples = drive(plan, lambda idx, c: 100.0 * min(c, 4))
    assert sorted(c for _, c in samples) == [1, 2, 4, 8]  # the knee is 4: 8 adds nothing
    assert all(len(s) == 2 for s in samples.values()) and len(visits) == 2


# ------------------------------------------------------------------------------------------------ halving


def test_halving_looks_at_every_shape_centre_and_corners_first_then_keeps_a_third() -> None:
    axes = [[1, 2, 3, 4, 5], [1, 2, 4, 8, 16], [None], [None], [None]]
    peak = (3, 1)

    def score(idx, c):
        return 100.0 - 10 * (abs(idx[0] - peak[0]) + abs(idx[1] - peak[1]))

    plan = HalvingPlan(axes, [1], [32], 1, slots=lambda idx: 1)
    visits, samples = drive(plan, score)
    rung0 = [v.idx[:2] for v in visits if v.rung == 0]
    assert rung0[:5] == [(2, 2), (4, 4), (0, 4), (4, 0), (0, 0)]
    assert sorted(rung0) == sorted(i[:2] for i in grid_indices(axes))  # every shape, once, briefly
    per_rung = [sum(v.rung == r for v in visits) for r in range(max(v.rung for v in visits) + 1)]
    assert per_rung[:3] == [25, 9, 3]  # keep the best third
    assert best_cell(samples)[0][0][:2] == peak
    finalists = plan.alive
    assert len(finalists) == 2 and all(len(samples[(i, 1)]) >= 2 for i in finalists)
    assert len(visits) < 2 * 25  # fewer fleet starts than a grid with two repeats


def test_halving_stops_each_ramp_at_its_knee_and_tops_up_the_last_two() -> None:
    f = real_model_like(AXES)
    plan = HalvingPlan(AXES, CANDS, [32], 2, slots=slots(AXES))
    visits, samples = drive(plan, f)
    rung0 = [v for v in visits if v.rung == 0]
    assert len(rung0) == 6 and all(sum(v.done.values()) == 1 for v in rung0)  # one step per shape
    # rung 0 measures where the slots are full: the largest candidate not above instances x parallel
    first = {v.idx[:2]: v.steps for v in rung0}
    assert first[(1, 2)] == [8] and first[(0, 0)] == [2] and first[(0, 2)] == [4]
    # ramps go up from there to the knee and no further: nothing below the slot count is measured
    assert all(c >= 8 for (i, c) in samples if i[:2] == (1, 2)) and (((1, 2, 0, 0, 0), 16) in samples)
    assert len(plan.alive) == 2 and all(plan.repeat_of(i, *plan.top_cell(i)) >= 2 for i in plan.alive)
    key, mean, ci = best_cell({k: v for k, v in samples.items() if len(v) >= 2})
    true_best = max(f(i, c) for i in grid_indices(AXES) for c in CANDS)
    assert f(*key) >= 0.95 * true_best and ci is not None
    grid_cells = 6 * 4 * 2
    assert sum(len(v) for v in samples.values()) <= 0.3 * grid_cells


def test_the_last_two_repeat_their_best_cell_on_the_start_that_ends_their_ramp() -> None:
    """A closed loop on a flat surface: nothing above the slot count gains. The two finalists' ramps end
    at rung 0's cell, so rung 1's start measures that cell again; no rung of top-ups is needed."""
    axes = [[1, 2], [2, 4], [None], [None], [None]]
    plan = HalvingPlan(axes, CANDS, [32], 2, slots=slots(axes))
    visits, samples = drive(plan, lambda idx, c: 10.0 * (idx[0] + 1) * (idx[1] + 1) * min(1.0, c / 2 ** (idx[1] + 1)))
    assert [v.rung for v in visits] == [0, 0, 0, 0, 1, 1]
    first = {v.idx: v.steps[0] for v in visits[:4]}
    for v in visits[4:]:  # one step up (no gain: the knee), then rung 0's cell again
        assert v.steps == [2 * first[v.idx], first[v.idx]]
    assert all(plan.repeat_of(i, *plan.top_cell(i)) == 2 for i in plan.alive)


@pytest.mark.parametrize("surface", [real_model_like, gaps])
@pytest.mark.parametrize("noise", [0.03, 0.06])
def test_on_noisy_surfaces_halving_finds_the_grid_best_or_a_cell_inside_its_interval(surface, noise) -> None:
    """Over 40 seeds: the adaptive best lies within 5% of the grid's best (both from their own noisy
    samples) or inside its interval, nearly always, at under a third of the grid's cost."""
    f = surface(AXES)
    hits, ratios = 0, []
    for seed in range(40):
        grid = GridPlan(AXES, CANDS, [32], 2, auto=False)
        gv, gs = drive(grid, f, noise, seed)
        adaptive = HalvingPlan(AXES, CANDS, [32], 2, slots=slots(AXES))
        av, as_ = drive(adaptive, f, noise, seed + 1000)
        _, g_mean, g_ci = best_cell(gs)
        _, a_mean, _ = best_cell(as_)
        hits += a_mean >= 0.95 * g_mean or (g_ci is not None and g_ci[0] <= a_mean <= g_ci[1])

        def cost(visits: list, samples: dict) -> float:  # 14 s per cell, 4 s per fleet start
            return 14.0 * sum(len(s) for s in samples.values()) + 4.0 * len(visits)

        ratios.append(cost(av, as_) / cost(gv, gs))
    assert hits >= 36, hits
    assert statistics.fmean(ratios) <= 0.30 and max(ratios) <= 0.36, ratios


def test_halving_ranks_shapes_without_a_good_cell_last_and_skips_dropped_shapes() -> None:
    plan = HalvingPlan(AXES, CANDS, [32], 1, slots=slots(AXES))
    visits = []
    while (v := plan.next_visit()) is not None:
        visits.append(v)
        if v.idx[:2] == (0, 0):
            plan.drop(v.idx)  # cannot start
            continue
        while (c := v.next(32)) is not None:
            plan.record(v, 32, c, 100.0 + v.idx[1], v.idx[:2] != (1, 2))  # 2 x 4 breaks
    assert (0, 0) not in [v.idx[:2] for v in visits if v.rung > 0]
    assert (1, 2) not in [i[:2] for i in plan.alive]


# ------------------------------------------------------------------------------------------------ the orchestrator


def noisy_perf(seed: int, noise: float = 0.04):
    rng = random.Random(seed)
    return lambda shape, c, n: perf(shape, c, n) * (1 + noise * rng.gauss(0, 1))


KW = dict(instances=(1, 2), parallel=(1, 2, 4), concurrency=(2, 4, 8), threads=(1,))


def test_repeats_rows_carry_intervals_and_best_json_names_the_runner_up(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    runner = FakeRunner(perf=noisy_perf(1))
    run_fake(cfg_for(model, out, repeats=3, **KW), runner)
    rows = jsonl_rows(out)
    assert len(rows) == 6 * 3 * 3
    # interleaved: each round starts every shape once before any shape is measured again
    assert [(s.instances, s.parallel) for s in runner.launches[:6]] == [(s.instances, s.parallel)
                                                                       for s in runner.launches[6:12]]
    last = {}
    for r in rows:
        last[(r["instances"], r["parallel"], r["concurrency"])] = r
        assert r["repeats"] == r["repeat"] + 1 and r["rung"] == r["repeat"]
        assert (r["output_tok_s_ci95"] is None) == (r["repeat"] == 0)
    for r in last.values():
        same = [x["output_tok_s"] for x in rows if (x["instances"], x["parallel"], x["concurrency"]) ==
                (r["instances"], r["parallel"], r["concurrency"])]
        assert r["output_tok_s_ci95"] == [pytest.approx(v, abs=1e-3) for v in cells.interval(same)]
    data = orjson.loads((out / "best.json").read_bytes())
    assert data["best"]["repeats"] == 3 and data["runner_up"] is not None
    assert (data["best"]["instances"], data["best"]["parallel"]) != (data["runner_up"]["instances"],
                                                                     data["runner_up"]["parallel"])
    assert isinstance(data["distinguishable"], bool)
    assert ("distinguishable" if data["distinguishable"] else "statistically tied") in sweep.report(out)


def test_time_account_adds_up_and_lands_in_metadata_and_the_report(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    clock = Clock()
    res = run_fake(cfg_for(model, out, repeats=2), FakeRunner(clock=clock), clock=clock)
    t = res.time
    # 4 shapes x 2 rounds = 8 fleet starts of 2 s; 16 cells of 1 s warm-up + 2 s window + 0.5 s more
    assert t["counts"] == {"fleet_starts": 8, "cells": 16}
    assert t["seconds"]["fleet_start"] == pytest.approx(16.0) and t["seconds"]["warmup"] == pytest.approx(16.0)
    assert t["seconds"]["window"] == pytest.approx(32.0) and t["seconds"]["cell_overhead"] == pytest.approx(8.0)
    assert t["wall_s"] == pytest.approx(clock.t - 1000.0) and t["seconds"]["other"] == pytest.approx(0.0)
    meta = orjson.loads((out / "metadata.json").read_bytes())
    assert meta["format"] == 2 and meta["runs"][-1]["time"] == t and meta["time"]["wall_s"] == t["wall_s"]
    line = next(x for x in sweep.report(out).splitlines() if x.startswith("time: "))
    assert "fleet starts 16.0 s (22%, 8 starts)" in line and "windows 32.0 s (44%, 16 cells)" in line
    # a resumed directory adds its runs up
    run_fake(cfg_for(model, out, repeats=3, resume=True), FakeRunner(clock=clock), clock=clock)
    meta = orjson.loads((out / "metadata.json").read_bytes())
    assert meta["time"]["runs"] == 2 and meta["time"]["counts"]["cells"] == 16 + 8


def test_resume_with_more_repeats_measures_only_the_missing_ones(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    run_fake(cfg_for(model, out, repeats=1), FakeRunner())
    again = FakeRunner()
    res = run_fake(cfg_for(model, out, repeats=3, resume=True), again)
    assert res.skipped_standing == 8 and res.measured == 16
    rows = jsonl_rows(out)
    assert sorted({r["repeat"] for r in rows}) == [0, 1, 2] and len({r["cell_id"] for r in rows}) == 24
    # fewer repeats than stand: nothing to do, every repeat counts in the intervals
    res = run_fake(cfg_for(model, out, repeats=2, resume=True), FakeRunner())
    assert res.measured == 0 and orjson.loads((out / "best.json").read_bytes())["best"]["repeats"] == 3


def test_resume_of_a_directory_from_another_version(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    run_fake(cfg_for(model, out, instances=(1,), parallel=(1,)), FakeRunner())
    meta = orjson.loads((out / "metadata.json").read_bytes())
    # an earlier version: no format, rows without the new fields -> continued
    old = {k: v for k, v in meta.items() if k not in ("format", "time")}
    (out / "metadata.json").write_bytes(orjson.dumps(old))
    rows = [{k: v for k, v in r.items() if k not in ("repeats", "output_tok_s_mean", "output_tok_s_ci95", "rung")}
            for r in jsonl_rows(out)]
    (out / "results.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    res = run_fake(cfg_for(model, out, instances=(1,), parallel=(1,), repeats=2, resume=True), FakeRunner())
    assert res.skipped_standing == 2 and res.measured == 2
    assert orjson.loads((out / "best.json").read_bytes())["best"]["repeats"] == 2
    # a newer version: refused, nothing measured
    meta = orjson.loads((out / "metadata.json").read_bytes())
    (out / "metadata.json").write_bytes(orjson.dumps({**meta, "format": 99}))
    runner = FakeRunner()
    with pytest.raises(UserError, match="newer llama-tui"):
        run_fake(cfg_for(model, out, instances=(1,), parallel=(1,), resume=True), runner)
    assert not runner.launches


def test_adaptive_sweep_on_a_noisy_machine_finds_the_grid_best_in_under_a_third(model: Path, tmp_path: Path) -> None:
    kw = dict(instances=(1, 2), parallel=(1, 2, 4, 8), concurrency=(1, 2, 4, 8, 16, 32), threads=(1,), repeats=2)
    gclock, aclock = Clock(), Clock()
    grid = run_fake(cfg_for(model, tmp_path / "g", **kw), FakeRunner(perf=noisy_perf(5), clock=gclock), clock=gclock)
    adaptive = run_fake(cfg_for(model, tmp_path / "a", adaptive=True, **kw),
                        FakeRunner(perf=noisy_perf(6), clock=aclock), clock=aclock)
    g, a = grid.best, adaptive.best
    assert a["repeats"] >= 2 and a["output_tok_s_ci95"] is not None
    ci = g["output_tok_s_ci95"]
    assert a["output_tok_s"] >= 0.95 * g["output_tok_s"] or ci[0] <= a["output_tok_s"] <= ci[1]
    assert adaptive.time["wall_s"] <= 0.3 * grid.time["wall_s"]
    assert adaptive.measured <= 0.3 * grid.measured


def test_two_sweeps_alternate_rounds_and_count_only_their_own_time(model: Path, tmp_path: Path) -> None:
    clock = Clock()
    a = sweep.Sweep(cfg_for(model, tmp_path / "a", repeats=2), FakeRunner(clock=clock), clock=clock)
    b = sweep.Sweep(cfg_for(model, tmp_path / "b", adaptive=True), FakeRunner(clock=clock), clock=clock)
    ga, gb = a.rounds(), b.rounds()
    order = []
    live = {"a": ga, "b": gb}
    while live:
        for name in list(live):
            try:
                order.append((name, next(live[name])))
            except StopIteration:
                del live[name]
    assert order[:4] == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    assert a.result.status == b.result.status == "done"
    total = clock.t - 1000.0
    assert a.result.wall_s + b.result.wall_s == pytest.approx(total)
    assert a.result.time["paused_s"] > 0 and b.result.time["paused_s"] > 0
    assert ledger.total([a.result.time, b.result.time])["wall_s"] == pytest.approx(total)


def test_results_are_read_back_into_cells_the_same_way(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    run_fake(cfg_for(model, out, repeats=2), FakeRunner(perf=noisy_perf(2)))
    rows = results.read_rows(out / "results.jsonl").rows
    found = cells.from_rows(rows)
    assert len(found) == 8 and all(c.repeats == 2 for c in found)
    for c in found:
        assert c.members[-1]["output_tok_s_mean"] == pytest.approx(c.tok_s, abs=1e-3)
