"""The benchmark engine against real llama-server instances behind real NGINX (tiny model, one thread each).

Throughput figures are never asserted (2 shared cores); what is asserted is what must hold on any
machine: token counts agree with the servers' own counters, attribution, error classes, fields.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import orjson
import psutil
import pytest

from llama_tui.core import bench, probe
from llama_tui.core.fleet import keys
from llama_tui.core.bench import BenchConfig
from llama_tui.core.errors import UserError
from llama_tui.core.snapshots import BenchSample

from conftest import free_port, free_port_block, run_cli

pytestmark = pytest.mark.integration

STEP_FIELDS = (
    "concurrency", "rate", "duration_s", "requests_ok", "errors", "errors_by_class", "output_tokens", "output_tok_s",
    "prompt_tokens", "prompt_tok_s", "ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "server_output_tok_s", "cache_n",
    "per_upstream", "client_cpu_percent", "loop_lag_p99_ms", "valid", "invalid_reason", "reconnects",
    "token_agreement_pct", "mode", "workers")


def addr(url: str) -> str:
    return url.removeprefix("http://")


def server_tokens(urls: list[str], key: str | None = None) -> float:
    """Tokens the servers at `urls` generated so far (a llama-tui fleet's instances need its internal `key`)."""
    with probe.Probe(api_key=key) as pr:
        return sum(pr.metrics(u)[probe.TOKENS_PREDICTED_TOTAL] for u in urls)


@pytest.fixture
def fleet2x2(llama_server, nginx_front):
    """2 llama-server x 2 slots behind NGINX (least_conn): (NGINX URL, instance URLs)."""
    urls = [llama_server(parallel=2, ctx_per_slot=1024), llama_server(parallel=2, ctx_per_slot=1024)]
    _, front = nginx_front(urls, slots=2)
    return front, urls


def cfg(front: str, urls: list[str], **kw) -> BenchConfig:
    base = dict(url=front, server_urls=tuple(urls), concurrency=(4,), duration=3.0, warmup=0.5, n_predict=64,
                prompt_tokens=24, workers=1)
    base.update(kw)
    return BenchConfig(**base)


def assert_quantiles(q: dict) -> None:
    assert set(q) == {"p50", "p95", "p99", "mean"}
    assert q["p50"] is not None and 0 <= q["p50"] <= q["p95"] <= q["p99"]


# --------------------------------------------------------------------------------------------- counting


def test_a_step_agrees_with_the_servers_counters(fleet2x2):
    front, urls = fleet2x2
    step = bench.run_step(cfg(front, urls))
    assert step["errors"] == 0 and step["requests_ok"] > 0, step["errors_by_class"]
    # every token the client received during the step vs the servers' counter delta over it
    assert abs(step["token_agreement_pct"]) <= 2.0, (step["tokens_received"], step["server_tokens_step"])
    # the window: client tokens in the window vs the counter delta read at the window's edges
    assert step["output_tokens"] == pytest.approx(step["server_output_tokens"], rel=0.05)
    assert step["output_tok_s"] == pytest.approx(step["output_tokens"] / step["duration_s"], rel=1e-3)
    # per-upstream attribution from X-Upstream: both instances, adding up to the step
    per = step["per_upstream"]
    assert set(per) == {addr(u) for u in urls} and all(e["requests_ok"] > 0 for e in per.values())
    assert sum(e["requests_ok"] for e in per.values()) == step["requests_ok"]
    assert sum(e["output_tokens"] for e in per.values()) == pytest.approx(step["output_tokens"], abs=2)
    for name in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
        assert_quantiles(step[name])
    assert step["e2e_ms"]["p50"] > step["ttft_ms"]["p50"]
    assert step["samples_n"]["ttft"] == step["requests_ok"] == step["samples_n"]["e2e"]
    # a unique nonce per request: at most a few tokens (BOS) come from the prompt cache
    assert step["cache_n"] <= 4 * step["requests_ok"]
    assert step["prompt_tokens"] >= 24 * step["requests_ok"]
    assert step["workers"] == 1 and step["client_cpu_percent"] > 0 and step["loop_lag_p99_ms"] is not None
    assert isinstance(step["valid"], bool) and (step["valid"] == (step["invalid_reason"] is None))


def test_chat_api_counts_usage_tokens(fleet2x2):
    front, urls = fleet2x2
    step = bench.run_step(cfg(front, urls, api="chat", n_predict=48, concurrency=(2,), duration=2.5))
    assert step["errors"] == 0 and step["requests_ok"] > 0 and step["api"] == "chat"
    assert abs(step["token_agreement_pct"]) <= 2.0
    assert_quantiles(step["ttft_ms"])
    assert step["output_tokens"] == pytest.approx(step["server_output_tokens"], rel=0.05)


def test_no_stream_takes_tokens_from_timings(fleet2x2):
    front, urls = fleet2x2
    step = bench.run_step(cfg(front, urls, stream=False, concurrency=(2,), duration=2.5))
    assert step["errors"] == 0 and step["requests_ok"] > 0 and step["stream"] is False
    assert step["ttft_ms"] == {"p50": None, "p95": None, "p99": None, "mean": None}
    assert step["itl_ms"]["p50"] is None and step["tpot_ms"]["p50"] is None
    assert_quantiles(step["e2e_ms"])
    assert step["output_tokens"] == 64 * step["requests_ok"]
    assert step["output_tokens"] == pytest.approx(step["server_output_tokens"], rel=0.05)


def test_cache_prompt_measures_reuse(llama_server):
    url = llama_server(parallel=1, ctx_per_slot=1024)
    base = dict(url=url, concurrency=(1,), duration=1.5, warmup=0.3, n_predict=8, prompt_tokens=64, workers=1)
    fresh = bench.run_step(BenchConfig(**base))
    reused = bench.run_step(BenchConfig(cache_prompt=True, **base))
    assert fresh["requests_ok"] > 0 and reused["requests_ok"] > 0
    assert fresh["cache_n"] / fresh["requests_ok"] < 4  # the nonce defeats the cache
    assert reused["cache_n"] / reused["requests_ok"] > 50  # the same 64-token prompt comes from the cache
    assert fresh["servers"] == [url]  # the target itself is a llama-server: its /metrics is read


def test_prompt_tokens_are_sized_with_the_servers_tokenizer(llama_server):
    url = llama_server(parallel=1)
    text, info = bench.resolve_prompt(BenchConfig(url=url, prompt_tokens=100))
    assert abs(info["tokens"] - 100) <= 3 and info["tokenizer"] == "server /tokenize"
    r = httpx.post(f"{url}/tokenize", json={"content": text})
    assert len(r.json()["tokens"]) == info["tokens"]


def test_two_worker_processes_merge_exactly(fleet2x2):
    front, urls = fleet2x2
    step = bench.run_step(cfg(front, urls, workers=2, concurrency=(4,), duration=2.5))
    assert step["workers"] == 2 and step["errors"] == 0 and step["requests_ok"] > 0
    assert abs(step["token_agreement_pct"]) <= 2.0
    assert step["samples_n"]["ttft"] == step["requests_ok"]
    assert set(step["per_upstream"]) == {addr(u) for u in urls}


def test_several_urls_are_client_side_round_robin(fleet2x2):
    _, urls = fleet2x2
    step = bench.run_step(BenchConfig(urls=tuple(urls), concurrency=(2,), duration=2.0, warmup=0.3, n_predict=32,
                                      workers=1))
    assert step["errors"] == 0 and step["servers"] == urls  # each target is a llama-server: its /metrics is read
    per = step["per_upstream"]  # no X-Upstream without NGINX: attributed to the target each request went to
    assert set(per) == {addr(u) for u in urls}
    a, b = per[addr(urls[0])]["requests_ok"], per[addr(urls[1])]["requests_ok"]
    assert a > 0 and b > 0 and abs(a - b) <= max(2, (a + b) // 5), (a, b)
    assert abs(step["token_agreement_pct"]) <= 2.0


def test_open_loop_rate(fleet2x2):
    front, urls = fleet2x2
    step = bench.run_step(cfg(front, urls, n_predict=16, duration=2.0, warmup=0.2), rate=20.0)
    assert step["mode"] == "open" and step["rate"] == 20.0 and step["concurrency"] is None
    assert step["errors"] == 0 and step["requests_ok"] >= 10
    assert_quantiles(step["e2e_ms"])


def test_ramp_doubles_until_gains_stop(fleet2x2):
    front, urls = fleet2x2
    result = bench.run(cfg(front, urls, ramp=True, concurrency=(1,), max_concurrency=4, duration=1.0, warmup=0.2,
                           n_predict=32))
    concs = [s["concurrency"] for s in result["steps"]]
    assert concs == [1, 2, 4][:len(concs)] and len(concs) >= 2
    rates = [s["output_tok_s"] for s in result["steps"]]
    best = [max(rates[:i + 1]) for i in range(len(rates))]
    for i in range(1, len(rates) - 1):  # it only went on while each step gained at least 3%
        assert rates[i] >= best[i - 1] * 1.03
    if concs[-1] != 4:
        assert rates[-1] < best[-2] * 1.03
    meta = result["metadata"]
    assert meta["load_shape"] == "ramp" and meta["llama_server"]["build_info"]


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.faults
def test_an_instance_killed_mid_stream_shows_as_truncated_streams(llama_server, nginx_front, started):
    urls = [llama_server(parallel=2, ctx_per_slot=4096), llama_server(parallel=2, ctx_per_slot=4096)]
    _, front = nginx_front(urls, policy="round_robin", slots=2)
    victim = started.procs[-1]
    box: dict = {}
    samples: list[BenchSample] = []
    config = BenchConfig(url=front, concurrency=(4,), duration=4.0, warmup=0.0, n_predict=3500, prompt_tokens=8,
                         workers=1, timeout=20)
    t = threading.Thread(target=lambda: box.setdefault("step", bench.run_step(config, on_sample=samples.append)))
    t.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (samples and samples[-1].tok_s > 0 and samples[-1].inflight >= 2):
        time.sleep(0.05)
    time.sleep(0.3)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    t.join(timeout=60)
    step = box["step"]
    killed = addr(urls[1])
    assert step["errors_by_class"].get("truncated", 0) >= 1, step["errors_by_class"]
    assert step["per_upstream"][killed]["errors"] >= step["errors_by_class"]["truncated"]
    assert "truncated" in step["error_examples"]
    assert step["errors"] == sum(step["errors_by_class"].values())


# --------------------------------------------------------------------------------------------- the command line


@pytest.fixture
def real_fleet(isolated_dirs: Path, tiny_model: Path):
    """A 2 x 2 fleet started by llama-tui's own fleet code (supervisor + NGINX), in the test's state dir."""
    from llama_tui.core import fleet

    spec = fleet.FleetSpec(model=tiny_model, instances=2, parallel=2, ctx_per_slot=512, threads=1,
                           base_port=free_port_block(4), nginx_port=free_port(), ready_timeout=60)
    fleet.up(spec, state_dir=isolated_dirs)
    try:
        yield fleet.load_state(isolated_dirs)
    finally:
        fleet.down(isolated_dirs, timeout=5)


def test_done_when_bench_against_a_2x2_fleet_writes_every_field(real_fleet, tmp_path):
    """The issue's acceptance run (5 s instead of 15): instances come from the fleet state, not flags."""
    nginx, instances = real_fleet.nginx_url(), real_fleet.instance_urls()
    out = tmp_path / "out.json"
    key = keys.read_internal_key(real_fleet.state_dir)
    before = server_tokens(instances, key)
    proc = run_cli("bench", "--url", nginx, "--concurrency", "4", "--duration", "5", "--warmup", "0",
                   "--n-predict", "64", "--json", str(out), "--csv", str(tmp_path / "out.csv"))
    after = server_tokens(instances, key)
    assert proc.returncode == 0, proc.stderr
    result = orjson.loads(out.read_bytes())
    [step] = result["steps"]
    missing = [f for f in STEP_FIELDS if f not in step]
    assert not missing, missing
    assert step["errors"] == 0 and step["requests_ok"] > 0 and step["concurrency"] == 4
    assert step["output_tokens"] == pytest.approx(after - before, rel=0.05)
    assert step["servers"] == instances and step["server_output_tok_s"] is not None
    assert set(step["per_upstream"]) == {addr(u) for u in instances}
    meta = result["metadata"]
    assert meta["servers_from"] == "fleet" and meta["fleet"]["instances"] == 2 and meta["fleet"]["parallel"] == 2
    assert meta["nginx"]["policy"] == "least_conn" and len(meta["nginx"]["config_hash"]) == 12
    assert meta["llama_server"]["build_info"] == "b0-unknown" and meta["streaming"] == "stream"
    assert meta["version"] and meta["date"] and meta["host"]["cpu"] and "gpus" in meta["host"]
    assert {"ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "output_tok_s"} <= set(meta["definitions"])
    assert "tok/s" in proc.stdout and "c=4" in proc.stdout  # the table
    assert "step 1/1 c=4" in proc.stderr  # plain live lines: stderr is not a TTY here
    csv_lines = (tmp_path / "out.csv").read_text().splitlines()
    assert len(csv_lines) == 2 and csv_lines[0].startswith("step,mode,concurrency")


def test_bench_straight_at_an_instance_uses_the_fleets_internal_key(real_fleet, tmp_path):
    """The instances answer only holders of the internal key; `bench --url INSTANCE` reads it from the state."""
    instance = real_fleet.instance_urls()[0]
    assert httpx.post(f"{instance}/completion", json={"prompt": "x", "n_predict": 2}, timeout=30).status_code == 401
    out = tmp_path / "direct.json"
    proc = run_cli("bench", "--url", instance, "--concurrency", "2", "--duration", "2", "--warmup", "0",
                   "--n-predict", "16", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    result = orjson.loads(out.read_bytes())
    [step] = result["steps"]
    assert step["errors"] == 0 and step["requests_ok"] > 0
    assert step["servers"] == real_fleet.instance_urls() and step["server_output_tok_s"] is not None
    assert result["metadata"]["servers_from"] == "fleet" and result["metadata"]["llama_server"]["build_info"]
    assert keys.read_internal_key(real_fleet.state_dir) not in out.read_text() + proc.stdout + proc.stderr


def test_calibrate_prints_a_ceiling(tmp_path):
    proc = run_cli("bench", "--calibrate", "--duration", "1", "--json", str(tmp_path / "cal.json"),
                   env={"LLAMA_TUI_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("client ceiling:"))
    assert float(line.split()[2].replace(",", "")) > 0
    assert "CPU per 1,000 tok/s" in proc.stdout
    cal = orjson.loads((tmp_path / "cache" / "bench-calibration.json").read_bytes())
    assert cal["ceiling_events_s_per_worker"] > 0 and cal["errors"] == 0


@pytest.mark.parametrize("args, cause", [
    (["--url", "http://127.0.0.1:{dead}"], "cannot reach http://127.0.0.1:"),
    (["--url", "http://127.0.0.1:{dead}", "--concurrency", "1,two"], "malformed --concurrency list"),
    (["--url", "http://127.0.0.1:{dead}", "--rate", "-1"], "rate must be above 0"),
    (["--url", "http://127.0.0.1:{dead}", "--workers", "0"], "--workers must be >= 1"),
    ([], "no --url and no running fleet"),
])
def test_bad_input_is_one_line_and_exit_2(args, cause):
    dead = free_port()
    proc = run_cli("bench", *[a.format(dead=dead) for a in args], "--duration", "1")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and cause in lines[0] and "(fix: " in lines[0]


def test_concurrency_and_rate_are_exclusive():
    proc = run_cli("bench", "--url", "http://127.0.0.1:1", "--concurrency", "1", "--rate", "2")
    assert proc.returncode == 2 and proc.stderr.startswith("error: --rate (open loop) cannot be combined")


# --------------------------------------------------------------------------------------------- the TUI's child process


def test_spawn_streams_samples_and_a_result(fleet2x2, tmp_path):
    front, urls = fleet2x2
    out = tmp_path / "r.json"
    proc = bench.spawn(cfg(front, urls, concurrency=(1, 2), duration=1.5, warmup=0.3, json_path=str(out)))
    samples = list(proc.samples())
    result = proc.result(timeout=60)
    assert len(samples) >= 4 and all(isinstance(s, BenchSample) for s in samples)
    assert {s.step for s in samples} == {0, 1} and samples[-1].steps_total == 2
    assert {s.phase for s in samples} <= {"warmup", "measure"} and any(s.tok_s > 0 for s in samples)
    # each step ends with a sample carrying the step's own tok/s and validity
    ends = [s for s in samples if s.valid is not None]
    assert [s.step for s in ends] == [0, 1]
    assert [s.tok_s for s in ends] == [st["output_tok_s"] for st in result["steps"]]
    assert [s["concurrency"] for s in result["steps"]] == [1, 2] and result["out"] == str(out)
    assert orjson.loads(out.read_bytes())["steps"][1]["requests_ok"] > 0
    assert proc.proc.poll() == 0


def test_cancel_leaves_no_process(fleet2x2):
    front, urls = fleet2x2
    proc = bench.spawn(cfg(front, urls, concurrency=(4,), duration=30, warmup=0, workers=2))
    first = next(iter(proc.samples(timeout=30)))
    assert first.inflight >= 0
    family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    assert len(family) >= 3  # the child and its two load workers
    proc.cancel()
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in family)
    with pytest.raises(UserError):
        proc.result(timeout=5)


def test_stop_ends_the_run_early_with_what_was_measured(fleet2x2):
    front, urls = fleet2x2
    proc = bench.spawn(cfg(front, urls, concurrency=(2, 4), duration=30, warmup=0))
    next(iter(proc.samples(timeout=30)))
    time.sleep(1.0)
    proc.stop()
    result = proc.result(timeout=30)
    assert result["stopped"] and len(result["steps"]) == 1 and 0 < result["steps"][0]["duration_s"] < 10
