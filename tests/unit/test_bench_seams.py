"""The bench package's seams: the tally's window accounting, how a step is shared among workers, and
the worker and child entry points (against the loopback SSE source, no llama-server needed)."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time

import orjson
import pytest

from llama_tui.core import bench
from llama_tui.core.bench import BenchConfig, RequestShape, Source, StepPlan, Target
from llama_tui.core.bench.client import READ_SIZE, Exchange
from llama_tui.core.bench.live import LiveSamples
from llama_tui.core.bench.steady import StepWindow, WarmupGate
from llama_tui.core.bench.plans import worker_plans
from llama_tui.core.bench.tally import Tally
from llama_tui.core.bench.workers import WorkerPool
from llama_tui.core.childproc import json_lines
from llama_tui.core.snapshots import BenchSample, StepVerdict

from conftest import REPO


@pytest.fixture
def loop():
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def _tally(mode: str = "closed", stream: bool = True) -> Tally:
    plan = StepPlan(mode, t_start=9.0, t_window=10.0, t_end=20.0, concurrency=1)
    return Tally([Target.parse("http://127.0.0.1:1")], RequestShape(stream=stream), plan)


def test_tokens_count_where_their_read_arrived_and_latency_from_the_intended_start(loop):
    tally = _tally()
    ex = Exchange(tally, loop, b"", intended=9.0, target_index=0)
    tally.add_tokens(ex, 1, 9.5)  # warm-up: the first token (TTFT), no gap yet
    tally.add_tokens(ex, 2, 10.5)  # one event carrying two tokens: two gaps of half the time
    tally.add_tokens(ex, 1, 11.0)
    ex.t_end, ex.final_n, ex.prompt_n, ex.cache_n = 11.0, 4, 5, 2
    tally.finish(ex)
    part = tally.part
    assert (ex.n, ex.win_n, tally.live_tokens, tally.events) == (4, 3, 4, 3)
    assert list(part.itl.values) == [0.5, 0.5, 0.5]
    assert part.output_tokens == 3.0 and part.tokens_received == 4 and part.requests_ok == 1
    assert list(part.ttft.values) == [0.5] and list(part.e2e.values) == [2.0] and list(part.tpot.values) == [0.5]
    assert (part.prompt_tokens, part.cache_n) == (5, 2) and tally.ttft_new == [0.5]
    assert part.per_upstream == {"127.0.0.1:1": {"requests_ok": 1, "errors": 0, "output_tokens": 3.0}}


def test_closed_loop_population_is_what_finished_inside_the_window(loop):
    tally = _tally("closed")
    late = Exchange(tally, loop, b"", intended=15.0, target_index=0)
    tally.add_tokens(late, 3, 19.0)
    late.t_end = 21.0  # finished after the window: its tokens inside count, its latency does not
    tally.finish(late)
    failed = Exchange(tally, loop, b"", intended=12.0, target_index=0)
    failed.fail("http_503", "busy", 13.0)
    tally.finish(failed)
    part = tally.part
    assert part.output_tokens == 3.0 and part.requests_ok == 0 and len(part.e2e) == 0
    assert part.errors_by_class == {"http_503": 1} and part.error_examples == {"http_503": "busy"}
    assert (tally.live_done, tally.live_errors) == (1, 1)


def test_open_loop_population_is_what_was_meant_to_start_inside_the_window(loop):
    tally = _tally("open")
    ex = Exchange(tally, loop, b"", intended=19.5, target_index=0)
    tally.add_tokens(ex, 2, 19.8)
    tally.add_tokens(ex, 2, 25.0)
    ex.t_end, ex.final_n = 25.0, 4
    tally.finish(ex)
    assert tally.part.requests_ok == 1 and list(tally.part.e2e.values) == [5.5]
    assert tally.part.output_tokens == 2.0  # throughput still counts only what arrived inside the window


def test_a_non_streamed_response_counts_at_its_end(loop):
    tally = _tally(stream=False)
    ex = Exchange(tally, loop, b"", intended=10.0, target_index=0)
    tally.add_whole(ex, 64, 12.0)
    ex.t_end, ex.final_n = 12.0, 64
    tally.finish(ex)
    assert tally.part.output_tokens == 64.0 and len(tally.part.ttft) == 0 and list(tally.part.e2e.values) == [2.0]


def test_a_window_closed_early_ends_now():
    now = time.monotonic()
    tally = Tally([Target.parse("http://127.0.0.1:1")], RequestShape(),
                  StepPlan("closed", now - 2, now - 1, now + 100, concurrency=1))
    tally.open_window()
    tally.close_window()
    tally.close_window()  # once only
    assert tally.te < now + 1 and 1.0 <= tally.part.window_s < 2.0
    assert len(tally.part.worker_cpu_s) == 1 and tally.part.worker_events == [0]


def test_a_step_is_shared_among_workers_on_one_clock():
    plans = worker_plans("closed", 5, None, 2, warmup=1.0, duration=2.0, drain=3.0, seed=7, index=1)
    assert [p.concurrency for p in plans] == [3, 2] and [p.target_offset for p in plans] == [0, 1]
    assert len({(p.t_start, p.t_window, p.t_end) for p in plans}) == 1
    p = plans[0]
    assert p.t_window == pytest.approx(p.t_start + 1.0) and p.t_end == pytest.approx(p.t_window + 2.0)
    assert p.t_start - time.monotonic() == pytest.approx(0.4, abs=0.2)  # worker processes get a lead
    assert plans[0].seed != plans[1].seed and all(p.drain_s == 3.0 for p in plans)
    again = worker_plans("closed", 5, None, 2, warmup=1.0, duration=2.0, drain=3.0, seed=7, index=1)
    later = worker_plans("closed", 5, None, 2, warmup=1.0, duration=2.0, drain=3.0, seed=7, index=2)
    assert [p.seed for p in again] == [p.seed for p in plans] != [p.seed for p in later]
    [one] = worker_plans("open", None, 6.0, 1, warmup=0.0, duration=1.0, drain=1.0, seed=1, index=0)
    assert one.mode == "open" and one.rate == 6.0 and one.t_start - time.monotonic() < 0.1
    assert [p.rate for p in worker_plans("open", None, 6.0, 3, warmup=0, duration=1, drain=1, seed=1,
                                         index=0)] == [2.0, 2.0, 2.0]


def test_a_worker_process_loads_the_load_generator_only():
    code = ("import sys, llama_tui.core.bench.workers; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('httpx', 'psutil') "
            "or m in ('llama_tui.core.bench.session', 'llama_tui.core.probe')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def _entry(module: str) -> subprocess.CompletedProcess:
    """`python -m MODULE` with nothing on stdin; a module run twice (imported by its package, then as
    __main__) would warn, and the warning is made an error."""
    return subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", module], input=b"",
                          capture_output=True, cwd=REPO, timeout=60)


def test_the_worker_entry_exits_quietly_when_its_parent_goes():
    proc = _entry("llama_tui.core.bench.workers")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")


def test_the_child_entry_without_a_configuration_reports_one_error():
    proc = _entry("llama_tui.core.bench.child")
    [msg] = list(json_lines(io.BytesIO(proc.stdout)))
    assert msg["t"] == "error" and msg["error"]["fix"] and proc.returncode == 1 and proc.stderr == b""
    assert "no configuration" in msg["error"]["cause"] and msg["error"]["exit_code"] == 1


def test_worker_processes_merge_their_raw_samples():
    live = LiveSamples(None, 0.0, 0, 1, 4, None, 0.0, 0.0, 0.0)
    with Source(interval_s=0.002) as src:
        pool = WorkerPool(2)
        try:
            # a warm-up long enough for a worker process that starts late on a busy machine
            plans = worker_plans("closed", 4, None, 2, warmup=1.0, duration=1.0, drain=1.0, seed=1, index=0)
            window = StepWindow(WarmupGate("closed", 4, plans[0].t_start, 1.0, 1.0, 0.4), live, None)
            part = pool.run([Target.parse(src.url)], RequestShape(n_predict=40, nonce=False), plans, window, None)
        finally:
            pool.close()
    assert not pool.procs and part.errors == 0 and part.requests_ok >= 2
    assert len(part.worker_cpu_s) == 2 and len(part.worker_events) == 2 and all(e > 0 for e in part.worker_events)
    assert len(part.e2e) == part.requests_ok and part.output_tokens > 0
    # each worker's live counters reached the parent (its last report: every token it received)
    assert sorted(live.latest) == [0, 1] and sum(c.tokens for c in live.latest.values()) >= part.output_tokens


def test_a_child_benchmark_against_the_loopback_source(tmp_path):
    out = tmp_path / "r.json"
    with Source(interval_s=0.002) as src:
        cfg = BenchConfig(url=src.url, concurrency=(2,), duration=1.0, warmup=0.2, n_predict=16,
                          ceiling_events_s=1e6, json_path=str(out))
        proc = bench.spawn(cfg)
        events = list(proc.events(timeout=60))
        samples = [e for e in events if isinstance(e, BenchSample)]
        result = proc.result(timeout=60)
        stopped = bench.spawn(BenchConfig(url=src.url, concurrency=(2,), duration=30, warmup=0, n_predict=16,
                                          ceiling_events_s=1e6, json_path=str(tmp_path / "s.json")))
        next(iter(stopped.samples(timeout=60)))
        stopped.stop()
        early = stopped.result(timeout=60)
    [step] = result["steps"]
    assert step["requests_ok"] > 0 and step["errors"] == 0 and step["servers"] == []
    assert result["out"] == str(out) and orjson.loads(out.read_bytes())["steps"][0]["step"] == 0
    assert samples and samples[-1].valid is not None and proc.proc.poll() == 0
    assert early["stopped"] and early["steps"][0]["duration_s"] < 10
    # the step's verdict comes typed, after the step's last sample, and judges as the result does
    assert events[-1] == StepVerdict.from_step(step) and len(events) == len(samples) + 1
    assert events[-1].tok_s == step["output_tok_s"] and events[-1].valid == step["valid"]


def test_reads_are_sized_to_stay_on_the_heap(loop):
    class Plain:  # a socket transport: asyncio reads `max_size` bytes per recv
        max_size = 256 * 1024

        def write(self, data: bytes) -> None:
            self.sent = data

    class Tls:  # TLS reads through its protocol: nothing to size here
        def write(self, data: bytes) -> None:
            self.sent = data

    plain, tls = Plain(), Tls()
    Exchange(_tally(), loop, b"GET", intended=0.0, target_index=0).connection_made(plain)
    Exchange(_tally(), loop, b"GET", intended=0.0, target_index=0).connection_made(tls)
    assert plain.max_size == READ_SIZE < 128 * 1024 and plain.sent == b"GET"
    assert not hasattr(tls, "max_size") and tls.sent == b"GET"
