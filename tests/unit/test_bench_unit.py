"""The bench engine's pure parts: configuration, validity, prompt sizing, live samples, CSV, discovery."""

from __future__ import annotations

import csv
import io

import orjson
import pytest

from llama_tui.core import bench, config, hardware
from llama_tui.core.bench import BenchConfig, plans, servers
from llama_tui.core.bench.live import LiveSamples
from llama_tui.core.bench.step import LiveCounters
from llama_tui.core.errors import UserError


def test_client_bottleneck_names_each_reason():
    # (events/s per worker, max worker CPU, mean loop lag ms, mean E2E ms, ceiling)
    assert bench.client_bottleneck(1000.0, 0.3, 2.0, 200.0, 10_000.0) == []
    [r] = bench.client_bottleneck(7500.0, 0.3, 2.0, 200.0, 10_000.0)
    assert "75% of its calibrated ceiling" in r and "--workers" in r
    [r] = bench.client_bottleneck(1000.0, 0.95, 2.0, 200.0, 10_000.0)
    assert "CPU saturated (95%" in r
    [r] = bench.client_bottleneck(1000.0, 0.3, 21.0, 200.0, 10_000.0)
    assert "started requests late" in r and "10% of the" in r  # (21 - 1 ms resolution) / 200 ms
    # a lag that is small next to the request does not invalidate the throughput
    assert bench.client_bottleneck(1000.0, 0.3, 8.0, 200.0, 10_000.0) == []
    # nor does the probe's own resolution on a short request (an idle loop's timers run ~0.7 ms late)
    assert bench.client_bottleneck(1000.0, 0.3, 0.7, 7.0, 10_000.0) == []
    assert bench.client_bottleneck(1000.0, 0.3, 1.6, 7.0, 10_000.0) != []  # 0.6 ms beyond it is 9% of 7 ms
    assert len(bench.client_bottleneck(9000.0, 0.99, 99.0, 200.0, 10_000.0)) == 3
    assert bench.client_bottleneck(9000.0, None, None, None, None) == []  # no ceiling known: nothing to compare


def test_parse_rates():
    assert bench.parse_rates("2") == (2.0,) and bench.parse_rates("0.5, 1,4") == (0.5, 1.0, 4.0)
    for bad in ("x", "0", "-1", "", "inf"):
        with pytest.raises(UserError):
            bench.parse_rates(bad)


def test_config_round_trips_through_json():
    c = BenchConfig(urls=("http://127.0.0.1:1", "http://127.0.0.1:2"), concurrency=(1, 2), rates=(3.0,),
                    server_urls=("http://127.0.0.1:3",), workers=2, api="chat")
    back = BenchConfig.from_json(orjson.loads(orjson.dumps(c.to_json())))
    assert back == c and back.target_urls == c.urls and back.rate == 3.0


@pytest.mark.parametrize("kw, cause", [
    ({}, "no target URL"),
    ({"url": "ftp://x"}, "bad URL"),
    ({"url": "http://127.0.0.1:1", "api": "grpc"}, "unknown API"),
    ({"url": "http://127.0.0.1:1", "concurrency": (0,)}, "must be >= 1"),
    ({"url": "http://127.0.0.1:1", "duration": 0.1}, "--duration must be >= 0.5"),
    ({"url": "http://127.0.0.1:1", "n_predict": 0}, "--n-predict"),
    ({"url": "http://127.0.0.1:1", "prompt": "a", "prompt_file": "b"}, "both given"),
    ({"url": "http://127.0.0.1:1", "prompt_file": "/no/such/file"}, "does not exist"),
])
def test_bad_config_is_a_user_error(kw, cause):
    with pytest.raises(UserError) as e:
        BenchConfig(**kw).validated()
    assert cause in e.value.cause


def test_from_settings_uses_the_bench_table(monkeypatch):
    monkeypatch.setenv("LLAMA_TUI_BENCH_N_PREDICT", "77")
    s = config.load_settings(preset="demo")
    c = BenchConfig.from_settings(s, url="http://127.0.0.1:9", duration=3.0)
    assert c.url == "http://127.0.0.1:9" and c.n_predict == 77 and c.duration == 3.0
    assert c.concurrency == tuple(s.get("bench.concurrency")) and c.api == s.get("bench.api")


def test_build_prompt_converges_on_the_tokenizer():
    def four_chars_per_token(text: str) -> int:
        return max(1, len(text) // 4)

    text, n = bench.build_prompt(200, four_chars_per_token)
    assert n is not None and abs(n - 200) <= 2 and four_chars_per_token(text) == n
    text, n = bench.build_prompt(10, lambda t: None)  # no tokenizer: one word per token
    assert n is None and len(text.split()) == 10


def test_split_and_auto_workers(monkeypatch):
    assert plans.split(5, 2) == [3, 2] and plans.split(1, 3) == [1, 0, 0]
    monkeypatch.setattr(hardware, "logical_cores", lambda: 16)
    assert plans.auto_workers("closed", 4, 0, 128, 30_000) == 1
    assert plans.auto_workers("closed", 512, 0, 128, 30_000) == 4
    assert plans.auto_workers("closed", 4096, 0, 128, 30_000) == 8  # at most half the cores
    assert plans.auto_workers("open", 0, 400.0, 128, 30_000) == 4  # 51k events/s at 15k per worker
    monkeypatch.setattr(hardware, "logical_cores", lambda: 2)
    assert plans.auto_workers("closed", 1024, 0, 128, 30_000) == 1


def test_live_samples_merge_workers():
    seen = []
    live = LiveSamples(seen.append, t0=100.0, index=1, steps_total=3, concurrency=8, rate=None, t_start=100.0,
                       t_window=101.0, t_end=105.0)
    live.update(LiveCounters(0, 100.5, tokens=500, inflight=4, done=3, errors=0, ttft_new=[0.010, 0.030]))
    live.update(LiveCounters(1, 100.5, tokens=300, inflight=4, done=2, errors=1, ttft_new=[0.020]))
    live.emit(100.5)
    live.update(LiveCounters(0, 101.5, tokens=1500, inflight=4, done=9, errors=0))
    live.emit(101.5)
    a, b = seen
    assert (a.tok_s, a.inflight, a.requests_done, a.errors, a.phase) == (1600.0, 8, 5, 1, "warmup")
    assert a.ttft_p50_ms == 20.0 and a.step == 1 and a.steps_total == 3 and a.step_duration_s == 5.0
    assert (b.tok_s, b.requests_done, b.phase, b.t) == (1000.0, 11, "measure", 1.5)


def _step(**kw):
    base = {k: None for k in bench.CSV_FIELDS}
    base.update(step=0, mode="closed", concurrency=4, errors_by_class={"truncated": 1}, per_upstream={"a:1": {}})
    base.update(kw)
    return base


def test_csv_has_one_row_per_step_with_flat_latencies():
    text = bench.to_csv({"steps": [_step(ttft_p50_ms=1.5), _step(step=1, concurrency=8)]})
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 2 and rows[0]["ttft_p50_ms"] == "1.5" and rows[1]["concurrency"] == "8"
    assert orjson.loads(rows[0]["errors_by_class"]) == {"truncated": 1}


class FakeState:
    spec = {"instances": 2, "parallel": 2, "policy": "least_conn"}
    nginx = None
    state_dir = "/x"

    def instance_urls(self):
        return ["http://127.0.0.1:18080", "http://127.0.0.1:18081"]

    def nginx_url(self):
        return "http://127.0.0.1:18000"


@pytest.mark.parametrize("target, found", [
    ("http://127.0.0.1:18000", True), ("http://localhost:18000", True), ("http://127.0.0.1:18081", True),
])
def test_servers_come_from_the_fleet_state_when_the_target_is_the_fleet(monkeypatch, target, found):
    monkeypatch.setattr(servers, "fleet_state", lambda d: FakeState())
    s = bench.discover_servers(BenchConfig(url=target))
    assert s.source == "fleet" and s.urls == ("http://127.0.0.1:18080", "http://127.0.0.1:18081")


def test_explicit_server_urls_win(monkeypatch):
    monkeypatch.setattr(servers, "fleet_state", lambda d: FakeState())
    s = bench.discover_servers(BenchConfig(url="http://127.0.0.1:18000", server_urls=("127.0.0.1:5",)))
    assert s.source == "--server-url" and s.urls == ("http://127.0.0.1:5",)


def test_a_foreign_target_gets_no_fleet_servers(monkeypatch):
    monkeypatch.setattr(servers, "fleet_state", lambda d: FakeState())
    s = bench.discover_servers(BenchConfig(url="http://127.0.0.1:1"))  # nothing listens: not a llama-server
    assert s.urls == () and s.source is None
