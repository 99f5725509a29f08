"""The sweep against the real stack: real llama-server instances behind real NGINX, tiny model.

Cells are kept short (2-3 s measured after 1 s of warm-up); on 2 shared cores the numbers are noisy,
so nothing here asserts a speed: only structure, bookkeeping, and what was left running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest

from conftest import REPO, free_port_block, run_cli, wait_for
from llama_tui.core import hardware, sweep
from llama_tui.core.fleet import processes
from llama_tui.core.fleet import state
from llama_tui.core.sweep import SweepConfig, results, runner

pytestmark = pytest.mark.integration


def owned_under(root: Path) -> list[psutil.Process]:
    """Processes whose LLAMA_TUI_OWNER lies under `root` (the test's state dir: the sweep's own
    fleets live in OUT/fleet-state below it, which the conftest safety net does not match)."""
    found = []
    prefix = str(root)
    for p in psutil.process_iter(["pid"]):
        if p.pid == os.getpid():
            continue
        try:
            owner = p.environ().get("LLAMA_TUI_OWNER", "")
        except psutil.Error:
            continue
        if owner == prefix or owner.startswith(prefix + os.sep):
            found.append(p)
    return found


@pytest.fixture
def no_leftovers(isolated_dirs: Path):
    """Fails the test if any process of the sweep's fleets is left (and kills it)."""
    yield isolated_dirs
    left = owned_under(isolated_dirs)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=5)
    assert not left, f"sweep processes left running: {[(p.pid, p.info if hasattr(p, 'info') else '') for p in left]}"


def rows_of(out: Path) -> list[dict]:
    return results.read_rows(out / "results.jsonl").rows


ROW_FIELDS = ("instances", "parallel", "concurrency", "ctx_per_slot", "threads", "output_tok_s", "server_output_tok_s",
              "ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p95_ms", "tpot_p50_ms", "e2e_p95_ms",
              "errors", "requests_ok", "valid", "rss_peak_bytes", "rss_peak_total_bytes", "gpu_mem_peak_bytes",
              "gpu_mem_peak_total_bytes", "duration_s", "started_at")


def test_grid_2x2x2_then_adaptive_finds_the_grid_best(tiny_model: Path, no_leftovers: Path) -> None:
    base = free_port_block(4)
    common = dict(model=tiny_model, instances=(1, 2), parallel=(1, 8), concurrency=(1, 8), ctx_per_slot=256,
                  duration=2.0, warmup=1.0, n_predict=(32,), prompt_tokens=8, nginx_port=base, base_port=base + 1)
    out = no_leftovers / "grid"
    events: list = []
    res = sweep.run(SweepConfig(out_dir=out, **common), on_event=events.append)
    rows = rows_of(out)
    assert res.status == "done" and len(rows) == 8 and len({results.cell_key(r) for r in rows}) == 8
    assert len((out / "results.csv").read_text().strip().splitlines()) == 9
    for r in rows:
        missing = [f for f in ROW_FIELDS if f not in r]
        assert not missing, missing
        assert r["threads"] == hardware.thread_budget(r["instances"])  # the budget: cores // instances
        assert len(r["rss_peak_bytes"]) == r["instances"] and r["rss_peak_total_bytes"] > 0
        assert r["gpu_mem_peak_total_bytes"] is None  # no GPU here: n/a, not 0
    good = [r for r in rows if results.is_good(r)]
    assert good, "no error-free cell"
    best = orjson.loads((out / "best.json").read_bytes())["best"]
    assert best["cell_id"] == max(good, key=lambda r: r["output_tok_s"])["cell_id"]
    meta = orjson.loads((out / "metadata.json").read_bytes())
    assert meta["fingerprint"]["arch"] == "llama" and meta["llama_server"]["build_info"]
    assert len(meta["shapes"]) == 4
    cmds = next(v["commands"] for k, v in meta["shapes"].items() if k.startswith("2x8 "))
    assert sum("llama-server" in c and "-np 8" in c for c in cmds) == 2 and any("nginx" in c for c in cmds)
    assert [e.cell for e in events if e.row is not None] == list(range(1, 9))
    text = sweep.report(out)
    assert "best output tok/s by instances x parallel" in text and "llama-tui fleet up" in text
    assert not processes.owned_processes(out / "fleet-state")

    # Adaptive on the same grid, replayed over the grid run's own real measurements: which cell wins is
    # whatever this machine measured (validity included), and the search must find that cell.
    out2 = no_leftovers / "adaptive"
    replay = ReplayRunner(rows)
    res2 = sweep.run(SweepConfig(out_dir=out2, adaptive=True, **common), runner=replay)
    rows2 = [r for r in rows_of(out2) if results.is_measured(r)]
    assert res2.status == "done" and len(rows2) == len(replay.measured) <= len(rows)
    assert res2.best is not None
    assert (res2.best["instances"], res2.best["parallel"], res2.best["concurrency"]) == \
        (best["instances"], best["parallel"], best["concurrency"]), (replay.measured, best)


class ReplayRunner:
    """A sweep runner that serves the cells a real sweep measured, keyed by their coordinates."""

    def __init__(self, rows: list[dict]) -> None:
        self.cells = {(r["instances"], r["parallel"], r["concurrency"]): r for r in rows}
        self.measured: list[tuple[int, int, int]] = []

    def cleanup_stale(self) -> list[str]:
        return []

    def launch(self, shape, cfg) -> sweep.LaunchInfo:
        return sweep.LaunchInfo(commands=("replayed",), build_info="replay")

    def measure(self, shape, cfg, concurrency: int, n_predict: int, stop) -> dict:
        key = (shape.instances, shape.parallel, concurrency)
        self.measured.append(key)
        return {k: v for k, v in self.cells[key].items() if k in runner._STEP_FIELDS or k.endswith("_bytes")}

    def teardown(self) -> None:
        pass


def _sweep_cmd(out: Path, base: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "llama_tui", "sweep", "--model", "tiny", "--instances", "1,2", "--parallel", "1,2",
            "--concurrency", "1,4", "--duration", "2", "--warmup", "1", "--n-predict", "32", "--prompt-tokens", "8",
            "--ctx-per-slot", "256", "--base-port", str(base + 1), "--nginx-port", str(base), "--out", str(out),
            *extra]


@pytest.mark.faults
def test_sigkill_then_resume_finishes_without_redoing_and_leaves_nothing(no_leftovers: Path) -> None:
    out = no_leftovers / "killed"
    base = free_port_block(4)
    env = {**os.environ, "LLAMA_TUI_OWNER": str(no_leftovers)}
    proc = subprocess.Popen(_sweep_cmd(out, base), cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(rows_of(out)) < 3:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.2)
        assert len(rows_of(out)) >= 3
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    before = rows_of(out)
    assert 3 <= len(before) < 8
    # SIGKILL gives no chance to clean up: the fleet (detached supervisor, instances, NGINX) survives.
    survivors = owned_under(no_leftovers)
    assert state.read_state(out / "fleet-state") is not None
    # A crash can also leave half a row behind.
    with open(out / "results.jsonl", "ab") as f:
        f.write(b'{"instances": 2, "parallel": 2, "concurrency": 4, "output_tok')

    done = run_cli(*_sweep_cmd(out, base, "--resume")[3:], timeout=240, env=env)
    assert done.returncode == 0, done.stderr
    assert "half-written last line" in done.stderr
    rows = rows_of(out)
    ids = [r["cell_id"] for r in rows]
    assert len(rows) == 8 and len(set(ids)) == 8  # exactly 8 distinct cells, none measured twice
    assert rows[:len(before)] == before  # the cells that stood were kept, not redone
    assert len((out / "results.csv").read_text().strip().splitlines()) == 1 + 8
    good = [r for r in rows if results.is_good(r)]
    best = orjson.loads((out / "best.json").read_bytes())["best"]
    assert best["cell_id"] == max(good, key=lambda r: r["output_tok_s"])["cell_id"]
    assert "best output tok/s by instances x parallel" in done.stdout
    # Nothing of the killed run is left: its fleet was found and stopped before the sweep went on.
    alive = [p.pid for p in survivors if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"processes of the killed run still running: {alive}"
    assert not owned_under(no_leftovers)

    report = run_cli("sweep", "report", str(out))
    assert report.returncode == 0 and "frontier" in report.stdout


def test_spawn_streams_progress_and_cancel_stops_cleanly(tiny_model: Path, no_leftovers: Path) -> None:
    base = free_port_block(4)
    cfg = SweepConfig(model=tiny_model, out_dir=no_leftovers / "spawned", instances=(1,), parallel=(1, 2),
                      concurrency=(1, 2), ctx_per_slot=256, duration=2.0, warmup=0.5, n_predict=(16,),
                      prompt_tokens=8, nginx_port=base, base_port=base + 1)
    proc = sweep.spawn(cfg)
    try:
        seen = []
        for ev in proc.events(timeout=120):
            seen.append(ev)
            if ev.row is not None:
                break
        assert seen and seen[-1].row is not None and seen[-1].cell == 1 and seen[-1].cells_total == 4
        assert seen[-1].results and seen[-1].results[0].tok_s >= 0
        proc.cancel()
        rc = proc.wait(timeout=120)
    finally:
        if proc.proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.proc.wait()
    rest = list(proc.events(timeout=5))
    assert rc == 0 and rest and rest[-1].done and rest[-1].phase == "cancelled"
    assert proc.result()["status"] == "stopped"
    assert 1 <= len(rows_of(cfg.out_dir)) < 4
    assert state.read_state(cfg.fleet_state_dir()) is None  # torn down on the way out


def test_a_spawned_sweep_whose_parent_goes_away_stops_and_takes_its_fleet_down(tiny_model: Path,
                                                                              no_leftovers: Path) -> None:
    """The TUI that started a sweep exits (or is killed): the sweep's stdin closes, which asks for the
    same graceful stop as the stop line; its fleet, in a session of its own, is torn down."""
    base = free_port_block(3)
    cfg = SweepConfig(model=tiny_model, out_dir=no_leftovers / "orphaned", instances=(1,), parallel=(1, 2),
                      concurrency=(1,), ctx_per_slot=256, duration=30.0, warmup=0.5, n_predict=(16,),
                      prompt_tokens=8, nginx_port=base, base_port=base + 1)
    proc = sweep.spawn(cfg)
    try:
        for ev in proc.events(timeout=120):
            if ev.phase == "measure":
                break
        assert state.read_state(cfg.fleet_state_dir()) is not None  # its fleet is up, measuring
        assert proc.proc.stdin is not None
        proc.proc.stdin.close()
        rc = proc.wait(timeout=120)
    finally:
        if proc.proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.proc.wait()
    assert rc == 0 and proc.result()["status"] == "stopped" and rows_of(cfg.out_dir) == []
    assert state.read_state(cfg.fleet_state_dir()) is None


def test_report_apply_starts_the_fleet_with_the_best_shape(tiny_model: Path, isolated_dirs: Path) -> None:
    from llama_tui.core import fleet

    out = isolated_dirs / "applied"
    store = results.ResultStore(out)
    store.write_metadata({"fingerprint": results.fingerprint(tiny_model), "params": {"ctx_per_slot": 256,
                                                                                      "policy": "round_robin"}})
    for inst, par, tok in ((1, 2, 900.0), (2, 2, 1500.0), (2, 1, 1200.0)):
        store.append({"status": "ok", "instances": inst, "parallel": par, "threads": 1, "concurrency": 4,
                      "ctx_per_slot": 256, "output_tok_s": tok, "ttft_p95_ms": 10.0, "errors": 0, "requests_ok": 9,
                      "valid": True})
    base = free_port_block(3)
    env = {"LLAMA_TUI_FLEET_BASE_PORT": str(base + 1), "LLAMA_TUI_FLEET_NGINX_PORT": str(base)}
    try:
        proc = run_cli("sweep", "report", str(out), "--apply", env=env)
        assert proc.returncode == 0, proc.stderr
        st = fleet.load_state()
        assert st is not None and len(st.instance_urls()) == 2
        assert st.spec["parallel"] == 2 and st.spec["threads"] == 1 and st.spec["policy"] == "round_robin"
        again = run_cli("sweep", "report", str(out), "--apply", env=env)
        assert again.returncode == 2 and "already running" in again.stderr
    finally:
        fleet.down()


def test_a_second_sweep_on_the_same_out_is_refused_and_leaves_the_first_alone(no_leftovers: Path) -> None:
    out = no_leftovers / "shared"
    base = free_port_block(4)
    env = {**os.environ, "LLAMA_TUI_OWNER": str(no_leftovers)}
    first = subprocess.Popen(_sweep_cmd(out, base, "--duration", "8"), cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        def running() -> Any:
            assert first.poll() is None, first.stderr.read().decode() if first.stderr else ""
            st = state.read_state(out / "fleet-state")
            return st if st is not None and st.status == "running" and st.supervisor_alive else None

        st = wait_for(running, 120, "the first sweep's fleet to run")
        pids = [st.supervisor_pid] + [p.pid for p in st.refs()]
        second = run_cli(*_sweep_cmd(out, free_port_block(4), "--resume")[3:], timeout=60, env=env)
        err = second.stderr.strip()
        assert second.returncode == 2 and len(err.splitlines()) == 1, err
        assert err.startswith("error: another sweep is running with --out") and "(fix: " in err, err
        assert all(processes.alive(p) for p in pids), "the second sweep stopped the first one's fleet"
        assert first.poll() is None
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGTERM)  # stops after the current step and tears its fleet down
        first.wait(timeout=120)
    assert state.read_state(out / "fleet-state") is None


def test_repeats_on_the_real_stack_give_intervals_a_verdict_and_a_page(no_leftovers: Path) -> None:
    """The issue's new-user run, on the tiny model: 4 shapes x 2 concurrencies x 2 repeats (16 cells)."""
    out = no_leftovers / "repeats"
    base = free_port_block(4)  # below the ephemeral range (conftest): the sweep holds its ports for a minute
    proc = run_cli("sweep", "--model", "tiny", "--instances", "1,2", "--parallel", "1,2", "--concurrency", "2,4",
                   "--repeats", "2", "--duration", "2", "--warmup", "0.5", "--n-predict", "32", "--prompt-tokens", "8",
                   "--ctx-per-slot", "256", "--base-port", str(base + 1), "--nginx-port", str(base), "--out", str(out),
                   timeout=400)
    assert proc.returncode == 0, proc.stderr
    rows = rows_of(out)
    assert len(rows) == 16 and {r["repeat"] for r in rows} == {0, 1}
    # repeats are rounds over the shapes: the second repeat of any cell comes after every shape's first
    assert max(r["started_at"] for r in rows if r["repeat"] == 0) <= min(r["started_at"] for r in rows
                                                                       if r["repeat"] == 1)
    second = [r for r in rows if r["repeat"] == 1]
    assert all(r["repeats"] == 2 and len(r["output_tok_s_ci95"]) == 2 for r in second)
    assert all(r["output_tok_s_ci95"][0] <= r["output_tok_s_mean"] <= r["output_tok_s_ci95"][1] for r in second)
    data = orjson.loads((out / "best.json").read_bytes())
    assert "runner_up" in data and "distinguishable" in data
    if data["best"] is not None and data["runner_up"] is not None:
        assert isinstance(data["distinguishable"], bool) and data["best"]["repeats"] == 2
    meta = orjson.loads((out / "metadata.json").read_bytes())
    t = meta["time"]
    assert t["counts"]["fleet_starts"] == 8 and t["counts"]["cells"] == 16
    assert t["seconds"]["window"] >= 16 * 2 * 0.9 and t["seconds"]["fleet_start"] > 0
    assert sum(t["seconds"].values()) == pytest.approx(t["wall_s"], rel=0.01)

    page = no_leftovers / "r.html"
    report = run_cli("sweep", "report", str(out), "--html", str(page))
    assert report.returncode == 0, report.stderr
    assert any(w in report.stdout for w in ("distinguishable", "statistically tied", "nothing to recommend"))
    assert "time: " in report.stdout and "fleet starts" in report.stdout
    html = page.read_text()
    assert html.count("<svg ") == 4 and "<script" not in html and "http" not in html
    assert not state.owned_processes(out / "fleet-state")
