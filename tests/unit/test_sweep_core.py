"""The sweep's bookkeeping, ordering and knee logic, driven by a fake shape runner (no processes).

What a real fleet must show (launch, measure, SIGKILL and resume) is in test_sweep_integration.py.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from llama_tui.core import sweep
from llama_tui.core.errors import UserError
from llama_tui.core.sweep import LaunchFailed, LaunchInfo, Ramp, Shape, SweepConfig, fit, results


def perf(shape: Shape, c: int, n_predict: int) -> float:
    """A made-up machine: throughput grows with busy slots (sub-linearly) and collapses when
    instances x threads oversubscribe its 2 cores."""
    busy = min(c, shape.slots)
    tok = 1000.0 * busy ** 0.5 * shape.instances ** 0.3
    if shape.instances * shape.threads > 2:
        tok *= 0.1
    return round(tok, 3)


class FakeRunner:
    def __init__(self, perf=perf, clock=None, stop_after: int | None = None, stop: threading.Event | None = None,
                 fail: dict | None = None, errors_at: int | None = None, ttft=lambda s, c: 10.0 * c) -> None:
        self.perf = perf
        self.clock = clock
        self.stop_after = stop_after
        self.stop = stop
        self.fail = fail or {}  # (instances, parallel) -> LaunchFailed
        self.errors_at = errors_at  # concurrency at or above which requests fail
        self.ttft = ttft
        self.launches: list[Shape] = []
        self.measures: list[tuple[Shape, int, int]] = []
        self.teardowns = 0
        self.cleanups = 0
        self.up = False

    def cleanup_stale(self) -> list[str]:
        self.cleanups += 1
        return []

    def launch(self, shape: Shape, cfg: SweepConfig) -> LaunchInfo:
        assert not self.up, "a shape was launched before the previous one was torn down"
        self.launches.append(shape)
        if (shape.instances, shape.parallel) in self.fail:
            raise self.fail[(shape.instances, shape.parallel)]
        self.up = True
        if self.clock:
            self.clock.t += 2.0
        return LaunchInfo(commands=(f"llama-server -np {shape.parallel} -t {shape.threads}",), build_info="b0-fake")

    def measure(self, shape: Shape, cfg: SweepConfig, concurrency: int, n_predict: int,
                stop: threading.Event) -> dict[str, Any]:
        assert self.up
        self.measures.append((shape, concurrency, n_predict))
        if self.clock:
            self.clock.t += cfg.warmup + cfg.duration + 0.5
        if self.stop_after is not None and len(self.measures) >= self.stop_after and self.stop is not None:
            self.stop.set()
        errors = 3 if self.errors_at is not None and concurrency >= self.errors_at else 0
        tok = self.perf(shape, concurrency, n_predict)
        ttft = self.ttft(shape, concurrency)
        return {"output_tok_s": tok, "server_output_tok_s": tok * 1.01, "ttft_p50_ms": ttft / 2,
                "ttft_p95_ms": ttft, "ttft_p99_ms": ttft * 1.2,
                "itl_p50_ms": 1.0, "itl_p95_ms": 2.0, "tpot_p50_ms": 1.1, "e2e_p95_ms": 100.0 + concurrency,
                "errors": errors, "requests_ok": 50, "valid": True, "rss_peak_bytes": [100 << 20] * shape.instances,
                "rss_peak_total_bytes": (100 << 20) * shape.instances, "gpu_mem_peak_bytes": None,
                "gpu_mem_peak_total_bytes": None, "duration_s": cfg.duration}

    def teardown(self) -> None:
        self.teardowns += 1
        self.up = False


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def model(tiny_model: Path) -> Path:
    return tiny_model


def cfg_for(model: Path, out: Path, **kw: Any) -> SweepConfig:
    base = dict(model=model, out_dir=out, instances=(1, 2), parallel=(1, 2), concurrency=(1, 4), duration=2.0,
                warmup=1.0, cores=2, n_predict=(32,))
    base.update(kw)
    return SweepConfig(**base)


def run_fake(cfg: SweepConfig, runner: FakeRunner, stop=None, events=None, clock=None):
    return sweep.Sweep(cfg, runner, on_event=events.append if events is not None else None, stop=stop,
                       clock=clock or Clock()).run()


def jsonl_rows(out: Path) -> list[dict]:
    return [orjson.loads(line) for line in (out / "results.jsonl").read_bytes().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------------ the grid


def test_grid_2x2x2_writes_eight_rows_csv_best_frontier_and_metadata(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    runner = FakeRunner()
    events: list = []
    res = run_fake(cfg_for(model, out, command=("llama-tui", "sweep", "--x")), runner, events=events)
    rows = jsonl_rows(out)
    assert res.status == "done" and res.measured == 8 and len(rows) == 8
    assert len({r["cell_id"] for r in rows}) == 8
    assert len((out / "results.csv").read_text().strip().splitlines()) == 1 + 8
    assert len(runner.launches) == 4 and runner.teardowns >= 4 and not runner.up
    # threads follow the budget: 2 cores // instances
    assert {(r["instances"], r["threads"]) for r in rows} == {(1, 2), (2, 1)}
    expected = max(rows, key=lambda r: r["output_tok_s"])
    best = orjson.loads((out / "best.json").read_bytes())["best"]
    assert best["cell_id"] == expected["cell_id"]
    assert (best["instances"], best["parallel"], best["concurrency"]) == (2, 2, 4)
    front = orjson.loads((out / "frontier.json").read_bytes())["frontier"]
    assert front and front[-1]["cell_id"] == expected["cell_id"]
    meta = orjson.loads((out / "metadata.json").read_bytes())
    assert meta["fingerprint"]["id"] == results.fingerprint(model)["id"]
    assert meta["llama_server"]["build_info"] == "b0-fake"
    assert meta["runs"][0]["command"] == ["llama-tui", "sweep", "--x"]
    assert "llama-server -np 2 -t 1" in meta["shapes"]["2x2 t1"]["commands"]
    assert meta["hardware"]["physical_cores"] >= 1
    # progress: one event per finished cell, with a 1-based index and a total; the last says done
    finished = [e for e in events if e.row is not None]
    assert [e.cell for e in finished] == list(range(1, 9)) and all(e.cells_total == 8 for e in finished)
    assert events[-1].done and events[-1].phase == "done" and len(events[-1].results) == 8


def test_existing_results_without_resume_are_refused(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    run_fake(cfg_for(model, out, instances=(1,), parallel=(1,)), FakeRunner())
    with pytest.raises(UserError, match="already holds sweep results"):
        run_fake(cfg_for(model, out), FakeRunner())


def test_stop_then_resume_finishes_without_redoing_cells(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    stop = threading.Event()
    first = FakeRunner(stop_after=3, stop=stop)
    res = run_fake(cfg_for(model, out), first, stop=stop)
    assert res.status == "stopped" and len(jsonl_rows(out)) == 3 and not first.up
    done_before = {(s.instances, s.parallel, c) for s, c, _ in first.measures}

    second = FakeRunner()
    res = run_fake(cfg_for(model, out, resume=True), second)
    assert res.status == "done" and res.measured == 5 and res.skipped_standing == 3
    assert second.cleanups == 1  # looked for a stale fleet first
    redone = {(s.instances, s.parallel, c) for s, c, _ in second.measures}
    assert not redone & done_before
    rows = jsonl_rows(out)
    assert len(rows) == 8 and len({r["cell_id"] for r in rows}) == 8
    assert len((out / "results.csv").read_text().strip().splitlines()) == 9
    # a shape whose cells all stand is not even launched again
    assert len(second.launches) == 3


def test_resume_refuses_another_models_results(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    run_fake(cfg_for(model, out, instances=(1,), parallel=(1,)), FakeRunner())
    other = tmp_path / "other.gguf"
    other.write_bytes(model.read_bytes()[:-1] + b"\x01")
    with pytest.raises(UserError, match="another model"):
        run_fake(cfg_for(other, out, resume=True), FakeRunner())


def test_resume_with_other_parameters_measures_again(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    run_fake(cfg_for(model, out, instances=(1,), parallel=(1,)), FakeRunner())
    again = FakeRunner()
    res = run_fake(cfg_for(model, out, instances=(1,), parallel=(1,), duration=3.0, resume=True), again)
    assert res.measured == 2 and len(again.measures) == 2 and len(jsonl_rows(out)) == 4


def test_damaged_last_line_is_ignored_reported_and_survived(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    stop = threading.Event()
    run_fake(cfg_for(model, out), FakeRunner(stop_after=3, stop=stop), stop=stop)
    with open(out / "results.jsonl", "ab") as f:
        f.write(b'{"instances": 2, "parallel": 2, "concurrency": 4, "output_tok_')  # a crash mid-write
    events: list = []
    res = run_fake(cfg_for(model, out, resume=True), FakeRunner(), events=events)
    assert res.status == "done"
    assert any("half-written last line" in d for d in res.damaged)
    assert any(e.message and "half-written" in e.message for e in events)
    rows = jsonl_rows(out)  # every line parses again: the tail was set aside, not glued to the next row
    assert len(rows) == 8 and len({r["cell_id"] for r in rows}) == 8
    assert b"output_tok_" in (out / "results.jsonl.damaged").read_bytes()
    assert "half-written" not in sweep.report(out)  # repaired file: nothing left to warn about


def test_reading_a_damaged_file_reports_without_changing_it(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"a": 1}\nnot json\n{"b": 2}\n{"c": ')
    loaded = results.read_rows(path)
    assert [list(r) for r in loaded.rows] == [["a"], ["b"]]
    assert len(loaded.damaged) == 2 and "line 2" in loaded.damaged[0] and "half-written" in loaded.damaged[1]
    assert path.read_bytes().endswith(b'{"c": ')


# ------------------------------------------------------------------------------------------------ best, frontier, SLO


def row(tok: float, ttft: float, errors: int = 0, valid: bool = True, ok: int = 5, **kw: Any) -> dict:
    return {"status": "ok" if not errors else "error", "concurrency": 1, "output_tok_s": tok, "ttft_p95_ms": ttft,
            "errors": errors, "valid": valid, "requests_ok": ok, "e2e_p95_ms": ttft * 2, **kw}


def test_best_row_is_the_best_error_free_valid_row_within_the_slo() -> None:
    rows = [row(100, 10, id=1), row(500, 50, errors=1, id=2), row(400, 80, valid=False, id=3),
            row(300, 40, id=4), row(250, 5, id=5), row(900, 5, ok=0, id=6),
            {"status": "no_fit", "concurrency": None, "valid": False, "id": 7}]
    assert results.best_row(rows)["id"] == 4
    assert results.best_row(rows, {"ttft_p95_ms": 30})["id"] == 5
    assert results.best_row(rows, {"ttft_p95_ms": 1}) is None
    # ties on tok/s go to the lower TTFT p95
    assert results.best_row([row(300, 40, id=1), row(300, 20, id=2)])["id"] == 2


def test_pareto_frontier_keeps_only_unbeaten_points() -> None:
    rows = [row(100, 10, id="a"), row(90, 20, id="b"), row(300, 40, id="c"), row(250, 30, id="d"),
            row(1000, 50, errors=2, id="e"), row(300, 60, id="f")]
    assert [r["id"] for r in results.pareto_frontier(rows)] == ["a", "d", "c"]


def test_parse_slo() -> None:
    assert results.parse_slo("ttft_p95_ms=500, e2e_p95_ms=4000") == {"ttft_p95_ms": 500.0, "e2e_p95_ms": 4000.0}
    assert results.parse_slo(None) == {}
    for bad, msg in (("ttft=5", "unknown SLO key"), ("ttft_p95_ms=fast", "number"), ("ttft_p95_ms=-1", "positive")):
        with pytest.raises(UserError, match=msg):
            results.parse_slo(bad)


def test_slo_best_and_auto_ramp_stops_when_the_slo_breaks(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    runner = FakeRunner()  # ttft p95 = 10 ms x concurrency
    run_fake(cfg_for(model, out, instances=(1,), parallel=(8,), concurrency="auto", max_concurrency=64,
                     slo={"ttft_p95_ms": 45.0}), runner)
    # 1, 2, 4 meet the SLO; 8 breaks it (80 ms) and ends the ramp
    assert [c for _, c, _ in runner.measures] == [1, 2, 4, 8]
    best = orjson.loads((out / "best.json").read_bytes())
    assert best["slo"] == {"ttft_p95_ms": 45.0} and best["best"]["concurrency"] == 4


def test_csv_mirror_flattens_lists_and_keeps_every_column(tmp_path: Path) -> None:
    store = results.ResultStore(tmp_path / "o")
    store.append(row(1, 2, rss_peak_bytes=[1, 2], custom="x"))
    text = (tmp_path / "o" / "results.csv").read_text().splitlines()
    header = text[0].split(",")
    assert header[:3] == ["status", "instances", "parallel"] and header[-1] == "custom"
    values = dict(zip(header, text[1].split(",")))
    assert values["rss_peak_bytes"] == "1;2" and values["valid"] == "true" and values["custom"] == "x"


# ------------------------------------------------------------------------------------------------ knee and adaptive


def test_auto_ramp_doubles_until_gains_fall_below_three_percent() -> None:
    tok = {1: 100, 2: 190, 4: 350, 8: 600, 16: 610, 32: 900}
    ramp = Ramp([1, 2, 4, 8, 16, 32])
    seen = []
    while (c := ramp.next()) is not None:
        seen.append(c)
        ramp.record(tok[c], True)
    assert seen == [1, 2, 4, 8, 16]  # 16 adds under 3%: the knee is 8


def test_adaptive_ramp_starts_at_the_slot_count_and_looks_down_when_not_beaten() -> None:
    cands = [1, 2, 4, 8, 16]
    assert sweep.ramp_start(cands, 4) == 2 and sweep.ramp_start(cands, 3) == 1 and sweep.ramp_start(cands, 100) == 4
    # rising past the start: up until the knee, never down
    tok = {1: 100, 2: 200, 4: 400, 8: 600, 16: 605}
    ramp, seen = Ramp(cands, 2), []
    while (c := ramp.next()) is not None:
        seen.append(c)
        ramp.record(tok[c], True)
    assert seen == [4, 8, 16]
    # falling after the start: look below it until it stops improving
    tok = {1: 100, 2: 700, 4: 600, 8: 500, 16: 400}
    ramp, seen = Ramp(cands, 2), []
    while (c := ramp.next()) is not None:
        seen.append(c)
        ramp.record(tok[c], True)
    assert seen == [4, 8, 2, 1]
    # the start breaks the SLO: go down until a point is good
    ramp, seen = Ramp(cands, 3), []
    while (c := ramp.next()) is not None:
        seen.append(c)
        ramp.record(100.0 * c, c <= 2)
    assert seen == [8, 4, 2]


def test_adaptive_sweep_finds_the_grid_best_with_fewer_cells(model: Path, tmp_path: Path) -> None:
    kw = dict(instances=(1, 2, 3, 4), parallel=(1, 2, 4, 8), concurrency=(1, 2, 4, 8, 16, 32), threads=(1,))
    full = FakeRunner()
    run_fake(cfg_for(model, tmp_path / "grid", **kw), full)
    quick = FakeRunner()
    run_fake(cfg_for(model, tmp_path / "adaptive", adaptive=True, **kw), quick)
    best_grid = orjson.loads((tmp_path / "grid" / "best.json").read_bytes())["best"]
    best_adaptive = orjson.loads((tmp_path / "adaptive" / "best.json").read_bytes())["best"]
    assert best_adaptive["output_tok_s"] >= 0.95 * best_grid["output_tok_s"]
    assert len(quick.measures) <= 0.4 * len(full.measures)


def test_budget_stops_with_the_best_found_so_far(model: Path, tmp_path: Path) -> None:
    clock = Clock()
    runner = FakeRunner(clock=clock)  # 3.5 s per cell (1 s warm-up + 2 s + 0.5), 2 s per launch
    res = run_fake(cfg_for(model, tmp_path / "s", budget_min=0.25, adaptive=True), runner, clock=clock)
    assert res.status == "budget" and res.best is not None
    assert 1 <= res.measured < 8
    assert clock.t - 1000.0 <= 15.0 + 0.01  # nothing was started that could not finish in time


def test_extra_dimensions_are_swept_and_recorded(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    runner = FakeRunner()
    run_fake(cfg_for(model, out, instances=(1,), parallel=(2,), concurrency=(2,), threads=(1, 2), batch=(64, 128),
                     ubatch=(32,), n_predict=(16, 32), repeats=2), runner)
    rows = jsonl_rows(out)
    assert len(rows) == 2 * 2 * 2 * 2  # threads x batch x n_predict x repeats
    assert {(r["threads"], r["batch"], r["ubatch"]) for r in rows} == {
        (1, 64, 32), (1, 128, 32), (2, 64, 32), (2, 128, 32)}
    assert {r["n_predict"] for r in rows} == {16, 32} and {r["repeat"] for r in rows} == {0, 1}
    assert Shape(1, 2, 1, 64, 32).server_args() == ("--batch-size", "64", "--ubatch-size", "32")


# ------------------------------------------------------------------------------------------------ memory


def test_shapes_that_cannot_fit_are_skipped_and_recorded(model: Path, tmp_path: Path, monkeypatch) -> None:
    facts = fit.read_model_facts(model)
    one = fit.estimate(facts, 1, 2, 512).ram_bytes
    monkeypatch.setattr(fit, "free_memory", lambda want_gpu: (int(one * 1.5 / fit.HEADROOM), None))
    out = tmp_path / "s"
    runner = FakeRunner()
    run_fake(cfg_for(model, out, ctx_per_slot=512), runner)
    rows = jsonl_rows(out)
    assert {s.instances for s in runner.launches} == {1}
    no_fit = [r for r in rows if r["status"] == "no_fit"]
    assert len(no_fit) == 2 and all(r["instances"] == 2 and "RAM" in r["message"] for r in no_fit)
    assert "no fit" in sweep.report(out)


def test_a_launch_that_fails_for_memory_is_recorded_and_not_retried(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    fail = {(2, 2): LaunchFailed("instance 1: ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer",
                                 memory=True),
            (2, 1): LaunchFailed("instance 0 exited: unknown argument --bogus", memory=False)}
    run_fake(cfg_for(model, out), FakeRunner(fail=fail))
    statuses = {(r["instances"], r["parallel"]): r["status"] for r in jsonl_rows(out) if r["concurrency"] is None}
    assert statuses == {(2, 2): "oom", (2, 1): "launch_failed"}
    again = FakeRunner(fail=fail)
    run_fake(cfg_for(model, out, resume=True), again)
    assert [(s.instances, s.parallel) for s in again.launches] == [(2, 1)]  # the OOM shape is not launched again


def test_fit_estimate_from_gguf_metadata(model: Path) -> None:
    facts = fit.read_model_facts(model)
    assert (facts.arch, facts.n_layers, facts.n_head_kv, facts.head_dim_k) == ("llama", 2, 4, 16)
    # 2 layers x 4 kv heads x (16 K + 16 V) x 2 bytes (f16) per token
    assert facts.kv_bytes_per_slot(512) == 2 * 4 * 32 * 2 * 512
    assert facts.kv_bytes_per_slot(512, "q8_0", "q8_0") == int(2 * 4 * 32 * 34 / 32 * 512)
    a, b = fit.estimate(facts, 1, 4, 512), fit.estimate(facts, 2, 4, 512)
    # weights are shared (mmap), KV and overhead are per instance
    assert b.ram_bytes - a.ram_bytes == 4 * facts.kv_bytes_per_slot(512) + a.overhead_per_instance_bytes
    assert fit.cache_types("--cache-type-k q8_0 -ctv q4_0") == ("q8_0", "q4_0")
    assert fit.check(a, 1, free_ram=a.ram_bytes * 2).fits
    assert not fit.check(a, 1, free_ram=a.ram_bytes).fits  # no headroom left


def test_the_facts_agree_with_gguf_and_a_damaged_file_is_refused(model: Path, tmp_path: Path) -> None:
    from gguf import GGUFReader

    from llama_tui.core import gguf_header

    reader = GGUFReader(str(model))
    facts = fit.read_model_facts(model)  # through gguf_header: the header alone (GGUFReader took minutes on Gemma)
    assert facts.weights_bytes == sum(int(t.n_bytes) for t in reader.tensors) and facts.n_vocab == 306
    assert facts.arch == "llama" and facts.n_layers == 2
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(gguf_header.GGUFHeaderError):
        fit.read_model_facts(bad)


def test_fit_checks_vram_per_gpu_when_layers_are_offloaded(model: Path) -> None:
    facts = fit.read_model_facts(model)
    est = fit.estimate(facts, 3, 2, 512, gpu_layers=99)
    assert est.vram_per_instance_bytes > facts.weights_bytes
    room = int(est.vram_per_instance_bytes * 2.5)
    # 3 instances pinned round-robin over GPUs 0,1 (--gpus 0,1): GPU 0 gets two of them
    res = fit.check(est, 3, free_ram=1 << 40, gpu_free={0: room, 1: room}, gpus=(0, 1))
    assert res.fits
    res = fit.check(est, 3, free_ram=1 << 40, gpu_free={0: int(room * 0.7), 1: room}, gpus=(0, 1))
    assert not res.fits and res.where == "VRAM gpu 0"
    assert fit.check(est, 3, free_ram=1 << 40, gpu_free=None).fits  # no NVML: RAM only


def test_memory_failure_is_recognised_in_logs() -> None:
    assert fit.is_memory_failure("llama_kv_cache: failed to allocate buffer for kv cache")
    assert fit.is_memory_failure("CUDA error: out of memory")
    assert fit.is_memory_failure("terminate called after throwing an instance of 'std::bad_alloc'")
    assert not fit.is_memory_failure("error: unknown argument: --bogus")


def test_free_memory_uses_nvml_when_asked(monkeypatch) -> None:
    from llama_tui.core import gpu

    class FakeNvml:
        def devices(self):
            return [gpu.GpuInfo(0, "Fake", None, 8 << 30, 3 << 30, 0.0)]

    monkeypatch.setattr(gpu, "nvml", lambda: FakeNvml())
    ram, vram = fit.free_memory(want_gpu=True)
    assert ram > 0 and vram == {0: 5 << 30}
    assert fit.free_memory(want_gpu=False)[1] is None


# ------------------------------------------------------------------------------------------------ fingerprint, config


def test_fingerprint_ignores_the_path_but_not_the_content(model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(model.read_bytes())
    a, b = results.fingerprint(model), results.fingerprint(copy)
    assert a["id"] == b["id"] and a["arch"] == "llama" and a["size"] == model.stat().st_size
    changed = tmp_path / "changed.gguf"
    changed.write_bytes(model.read_bytes()[:-1] + b"\xff")
    assert results.fingerprint(changed)["id"] != a["id"]


def test_config_round_trips_through_json(model: Path, tmp_path: Path) -> None:
    cfg = cfg_for(model, tmp_path, slo={"ttft_p95_ms": 5.0}, threads=(1, 2), concurrency="auto", budget_min=2.0)
    assert SweepConfig.from_json(orjson.loads(orjson.dumps(cfg.to_json()))) == cfg
    with pytest.raises(UserError):
        cfg_for(model, tmp_path, concurrency="lots").validate()
    with pytest.raises(UserError):
        cfg_for(model, tmp_path, parallel=(0,)).validate()


def test_report_renders_table_heatmap_frontier_and_command(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    run_fake(cfg_for(model, out, instances=(1, 2), parallel=(1, 2, 4), concurrency=(1, 8)), FakeRunner())
    text = sweep.report(out)
    lines = text.splitlines()
    assert sum(1 for line in lines if line.startswith("ok ")) == 12  # one table line per cell
    heat = lines.index(next(line for line in lines if line.startswith("best output tok/s by instances")))
    assert lines[heat + 1].split() == ["par", "1", "par", "2", "par", "4"]
    assert lines[heat + 3].startswith("2 inst") and lines[heat + 3].rstrip().endswith("<")  # 2x4 is the best
    assert "frontier" in text
    assert f"llama-tui fleet up --model {model}" in text and "--instances 2 --parallel 4" in text
    assert "--threads 1" in text
    with pytest.raises(UserError, match="no sweep results"):
        sweep.report(tmp_path / "empty")


def test_report_with_only_failing_cells_recommends_nothing(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    run_fake(cfg_for(model, out, instances=(1,), parallel=(1,)), FakeRunner(errors_at=1))
    text = sweep.report(out)
    assert "nothing to recommend" in text and "errors" in text
    assert orjson.loads((out / "best.json").read_bytes())["best"] is None


# ------------------------------------------------------------------------------------------------ the command line


def test_cli_report_prints_the_report_and_json(model: Path, tmp_path: Path) -> None:
    from conftest import run_cli

    out = tmp_path / "s"
    run_fake(cfg_for(model, out), FakeRunner())
    proc = run_cli("sweep", "report", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "best output tok/s by instances x parallel" in proc.stdout and "llama-tui fleet up" in proc.stdout
    proc = run_cli("sweep", "report", str(out), "--json")
    data = orjson.loads(proc.stdout)
    assert data["best"]["cell_id"] == orjson.loads((out / "best.json").read_bytes())["best"]["cell_id"]
    assert len(data["rows"]) == 8 and data["frontier"]


@pytest.mark.parametrize("args, message", [
    (["sweep", "report", "/nonexistent/sweep"], "holds no sweep results"),
    (["sweep", "--model", "tiny", "--slo", "speed=fast"], "unknown SLO key"),
    (["sweep", "--model", "tiny", "--concurrency", "1,x"], "malformed"),
    (["sweep", "--model", "/nonexistent.gguf"], "model file not found"),
    (["sweep", "--model", "tiny", "--resume"], "found no sweep to continue"),
    (["sweep", "--model", "tiny", "--budget", "-3"], "--budget must be a positive"),
])
def test_cli_bad_input_is_one_line_with_a_fix(args: list[str], message: str) -> None:
    from conftest import run_cli

    proc = run_cli(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "(fix: " in lines[0] and message in lines[0]


def test_adaptive_ramp_at_the_top_candidate_does_not_look_down_unless_it_failed() -> None:
    ramp, seen = Ramp([1, 8], 1), []
    while (c := ramp.next()) is not None:
        seen.append(c)
        ramp.record(500.0, True)
    assert seen == [8]
    ramp, seen = Ramp([1, 8], 1), []
    while (c := ramp.next()) is not None:
        seen.append(c)
        ramp.record(500.0, c == 1)
    assert seen == [8, 1]


def test_a_sweep_stopped_before_its_first_row_is_a_resumable_directory(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    stop = threading.Event()
    stop.set()
    res = run_fake(cfg_for(model, out), FakeRunner(), stop=stop)
    assert res.status == "stopped" and res.measured == 0
    assert "cells: 0 measured" in sweep.report(out) and "nothing to recommend" in sweep.report(out)
    res = run_fake(cfg_for(model, out, resume=True), FakeRunner())
    assert res.status == "done" and res.measured == 8


def test_peak_sampler_keeps_rss_and_gpu_peaks_per_instance(monkeypatch) -> None:
    import os
    import time

    from llama_tui.core import gpu

    used = iter([100 << 20, 300 << 20, 200 << 20] + [200 << 20] * 1000)

    class FakeNvml:
        available = True

        def process_memory(self):
            return {os.getpid(): next(used)}

        def process_utilization(self):
            return {os.getpid(): 50.0}

        def devices(self):
            return []

    monkeypatch.setattr(gpu, "nvml", lambda: FakeNvml())
    with sweep.PeakSampler([os.getpid()], interval=0.05) as peaks:
        time.sleep(0.3)
    f = peaks.fields()
    assert f["gpu_mem_peak_bytes"] == [300 << 20] and f["gpu_mem_peak_total_bytes"] == 300 << 20
    assert f["rss_peak_bytes"][0] > 0 and f["rss_peak_total_bytes"] == f["rss_peak_bytes"][0]


def test_peak_sampler_without_a_gpu_says_none(monkeypatch) -> None:
    import os

    from llama_tui.core import gpu

    class NoGpu:
        available = False

    monkeypatch.setattr(gpu, "nvml", lambda: NoGpu())
    with sweep.PeakSampler([os.getpid(), 999999999], interval=0.05) as peaks:
        pass
    f = peaks.fields()
    assert f["gpu_mem_peak_bytes"] is None and f["gpu_mem_peak_total_bytes"] is None
    assert f["rss_peak_bytes"][1] is None and f["rss_peak_total_bytes"] == f["rss_peak_bytes"][0]


def test_adaptive_ramp_on_a_plateau_above_the_start_does_not_look_down() -> None:
    tok = {1: 100, 2: 200, 4: 600, 8: 610, 16: 590}
    ramp, seen = Ramp([1, 2, 4, 8, 16], 2), []
    while (c := ramp.next()) is not None:
        seen.append(c)
        ramp.record(tok[c], True)
    assert seen == [4, 8]


def test_config_from_settings_takes_the_preset_tables(tmp_path: Path) -> None:
    from llama_tui.core import config

    settings = config.load_settings(preset="demo", cli={"sweep.instances": "1,3"})
    cfg = SweepConfig.from_settings(settings, tmp_path / "o", adaptive=True, threads=None, base_port=30001)
    assert cfg.instances == (1, 3) and cfg.parallel == (1, 2, 4) and cfg.concurrency == (1, 2, 4, 8)
    assert (cfg.duration, cfg.warmup, cfg.ctx_per_slot, cfg.n_predict) == (4.0, 1.0, 512, (64,))
    assert cfg.threads is None and cfg.adaptive and cfg.base_port == 30001 and cfg.nginx_port == 18100
    assert cfg.model.name.startswith("tiny") and cfg.out_dir.is_absolute()


def test_build_config_takes_options_as_typed_or_as_text_and_records_the_command(tmp_path: Path) -> None:
    typed = {"model": "tiny", "instances": [1, 3], "ctx_per_slot": 256, "policy": "round_robin", "threads": [1, 2],
             "base_port": 30001, "nginx_port": 30003, "gpus": None, "adaptive": True, "out": str(tmp_path / "o")}
    cfg, settings = sweep.build_config(typed, preset="demo")
    text, _ = sweep.build_config({k: v if isinstance(v, (bool, type(None))) else
                                  ",".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in typed.items()},
                                 preset="demo")
    assert cfg == replace(text, command=cfg.command)
    assert cfg.instances == (1, 3) and cfg.parallel == (1, 2, 4) and cfg.threads == (1, 2) and cfg.adaptive
    assert (cfg.ctx_per_slot, cfg.policy, cfg.base_port, cfg.nginx_port) == (256, "round_robin", 30001, 30003)
    assert settings.get("fleet.ctx_per_slot") == 256 and cfg.out_dir == (tmp_path / "o").absolute()
    assert cfg.command == ("llama-tui", "sweep", "--preset", "demo", "--model", "tiny", "--instances", "1,3",
                           "--ctx-per-slot", "256", "--policy", "round_robin", "--threads", "1,2",
                           "--base-port", "30001", "--nginx-port", "30003", "--adaptive", "--out", str(tmp_path / "o"))
    assert sweep.build_config({"model": "tiny"}, command=["llama-tui", "x"])[0].command == ("llama-tui", "x")
    with pytest.raises(UserError, match="--threads"):
        sweep.build_config({"model": "tiny", "threads": "1,x"})
    with pytest.raises(UserError, match="found no sweep to continue"):
        sweep.build_config({"model": "tiny", "resume": True})
    with pytest.raises(UserError, match="--nginx-port"):
        sweep.build_config({"model": "tiny", "nginx_port": "70000"})
    with pytest.raises(TypeError):
        sweep.build_config({"modle": "tiny"})


def test_heatmap_says_why_a_shape_has_no_number() -> None:
    rows = [row(500, 90, instances=1, parallel=1), row(900, 10, valid=False, instances=1, parallel=2),
            row(700, 10, errors=2, instances=2, parallel=1), row(800, 10, instances=2, parallel=2),
            {"status": "oom", "instances": 3, "parallel": 1, "concurrency": None},
            {"status": "no_fit", "instances": 3, "parallel": 2, "concurrency": None}]
    lines = sweep.heatmap(rows, {"ttft_p95_ms": 50})
    assert lines[1].split()[2:] == ["slo", "invalid"]
    assert lines[2].split()[2:4] == ["errors", "800"] and lines[2].rstrip().endswith("<")
    assert lines[3].split()[2:] == ["oom", "no", "fit"]
