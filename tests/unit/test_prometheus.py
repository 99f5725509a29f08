"""The supervisor's Prometheus listener: what it exports, and that scraping it does no work on the fleet.

Unit tests feed synthetic access-log lines and snapshots through the collector and parse the text with
prometheus_client's own parser. The integration test starts a real fleet on the tiny model and counts
the requests its instance received (llama-server numbers every /slots, /metrics and completion task:
the task id of a completion sent straight to the instance, before and after a window, says how many
requests it served in between) while nothing scrapes, and while a client scrapes at 10 Hz.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llama_tui.cli import main
from llama_tui.core.errors import UserError
from llama_tui.core.fleet import keys
from llama_tui.core.fleet.accesslog import LATENCY_BUCKETS, AccessLogFollower
from llama_tui.core.fleet.metrics_server import MetricsListener
from llama_tui.core.fleet.prometheus import FleetCollector, MetricsSample
from llama_tui.core.fleet.spec import metrics_url, parse_metrics_listen
from llama_tui.core.snapshots import FleetSnapshot, GpuSample, InstanceSnapshot, SystemSample, UpstreamSnapshot

from conftest import free_port, run_cli, wait_for


def line(addr: str, status: str, rt: str, ht: str, client: int = 200, msec: float = 1000.0) -> str:
    return orjson.dumps({"msec": msec, "status": client, "request_time": 0.5, "upstream_addr": addr,
                         "upstream_status": status, "upstream_connect_time": "0.000", "upstream_header_time": ht,
                         "upstream_response_time": rt, "bytes_sent": 10, "completion": "OK", "method": "POST",
                         "uri": "/completion"}).decode() + "\n"


A, B = "127.0.0.1:18080", "127.0.0.1:18081"


@pytest.fixture
def follower(tmp_path: Path) -> AccessLogFollower:
    log = tmp_path / "access.log"
    log.write_text("".join([
        line(A, "200", "0.004", "0.001"),
        line(A, "200", "0.005", "0.005"),  # exactly on a bound: counted in it ("le")
        line(A, "200", "700.0", "0.2"),  # above every bound: +Inf only
        line(f"{A}, {B}", "502, 200", "0.000, 1.5", "-, 0.05"),  # refused by A, served by B
        line(B, "503", "0.01", "0.01", client=503),
    ]))
    f = AccessLogFollower(log, error_log=None)
    assert f.poll() == 5
    return f


def test_access_log_totals_hold_bucketed_histograms(follower: AccessLogFollower) -> None:
    t = follower.totals()
    a, b = t.backends
    assert (a.address, a.requests, a.errors, dict(a.errors_by_status)) == (A, 4, 1, {"502": 1})
    assert (b.address, b.requests, b.errors, dict(b.errors_by_status)) == (B, 2, 1, {"503": 1})
    assert t.requests == 5 and dict(t.by_client_status) == {"200": 4, "503": 1}
    bounds = (*LATENCY_BUCKETS, float("inf"))
    # A's response times: 0.004 and 0.005 in the 0.005 bucket, 0.000 (the refused try) too, 700 above all
    assert a.response.counts[bounds.index(0.005)] == 3 and a.response.counts[-1] == 1 and a.response.count == 4
    assert a.response.sum == pytest.approx(700.009)
    # a try without a header time ("-") is not observed as one
    assert a.header.count == 3 and b.header.count == 2
    assert b.response.counts[bounds.index(2.5)] == 1 and b.response.counts[bounds.index(0.01)] == 1


def snapshot(**kw: Any) -> FleetSnapshot:
    insts = (
        InstanceSnapshot(index=0, port=18080, pid=11, state="ready", restarts=2, slots_busy=1, slots_total=4,
                         requests_processing=1.0, requests_deferred=0.0, server_tok_s=123.4, cpu_percent=150.0,
                         rss_bytes=1 << 30, gpu_memory_bytes=None, host="127.0.0.1", node="local", threads=2,
                         uptime_s=10.0),
        InstanceSnapshot(index=1, port=18081, pid=None, state="restarting", host="127.0.0.1", node="local"),
    )
    nginx = UpstreamSnapshot(port=18000, pid=99, policy="least_conn", config_valid=True,
                             stub_status={"active": 3, "reading": 0, "writing": 2, "waiting": 1})
    system = SystemSample(cpu_percent=50.0, cores=2, memory_used_bytes=100, memory_total_bytes=1000,
                          gpus=(GpuSample(0, "H100", 10, 80, 25.0),))
    return FleetSnapshot(taken_at=1.0, running=True, model="/m/tiny.gguf", instances=insts, nginx=nginx,
                         system=system, **kw)


def scrape_text(sample: MetricsSample | None) -> dict[str, list[Any]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(lambda: sample))
    text = generate_latest(registry).decode()
    out: dict[str, list[Any]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def value(m: dict[str, list[Any]], metric: str, **labels: str) -> float:
    hits = [v for ls, v in m[metric] if all(ls.get(k) == w for k, w in labels.items())]
    assert len(hits) == 1, (metric, labels, m.get(metric))
    return hits[0]


def test_collector_exports_instances_backends_frontdoor_and_system(follower: AccessLogFollower) -> None:
    m = scrape_text(MetricsSample(taken_at=time.time() - 1.0, duration_s=0.02, snapshot=snapshot(),
                                  access=follower.totals(), samples=7))
    assert value(m, "llama_tui_metrics_samples_total") == 7
    assert 0.9 < value(m, "llama_tui_metrics_sample_age_seconds") < 30
    i0 = {"index": "0", "host": "127.0.0.1", "node": "local", "port": "18080"}
    assert value(m, "llama_tui_instance_state", **i0, state="ready") == 1
    assert sum(v for ls, v in m["llama_tui_instance_state"] if ls["index"] == "0") == 1  # one state at a time
    assert value(m, "llama_tui_instance_state", index="1", state="restarting") == 1
    assert value(m, "llama_tui_instance_slots_busy", **i0) == 1 and value(m, "llama_tui_instance_slots_total", **i0) == 4
    assert value(m, "llama_tui_instance_tokens_per_second", **i0) == pytest.approx(123.4)
    assert value(m, "llama_tui_instance_restarts_total", **i0) == 2
    assert value(m, "llama_tui_instance_resident_memory_bytes", **i0) == 1 << 30
    assert value(m, "llama_tui_instance_cpu_cores", **i0) == pytest.approx(1.5)
    # unknown values (n/a) are left out rather than exported as 0
    assert "llama_tui_instance_gpu_memory_bytes" not in m
    assert not [ls for ls, _ in m["llama_tui_instance_slots_busy"] if ls["index"] == "1"]
    # the access log's backends carry the instance they belong to
    assert value(m, "llama_tui_backend_requests_total", backend=A, index="0", port="18080") == 4
    assert value(m, "llama_tui_backend_errors_total", backend=B, index="1", status="503") == 1
    buckets = [(ls["le"], v) for ls, v in m["llama_tui_backend_response_seconds_bucket"] if ls["backend"] == A]
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert buckets[-1] == ("+Inf", 4.0) and dict(buckets)["0.005"] == 3
    assert value(m, "llama_tui_backend_response_seconds_count", backend=A) == 4
    assert value(m, "llama_tui_frontdoor_up") == 1 and value(m, "llama_tui_frontdoor_config_valid") == 1
    assert value(m, "llama_tui_frontdoor_connections", state="writing") == 2
    assert value(m, "llama_tui_frontdoor_requests_total", status="503") == 1
    assert value(m, "llama_tui_gpu_utilization_ratio", gpu="0", name="H100") == pytest.approx(0.25)
    assert value(m, "llama_tui_system_memory_total_bytes") == 1000


def test_before_the_first_sample_only_the_sampler_counter_is_exported() -> None:
    m = scrape_text(None)
    assert value(m, "llama_tui_metrics_samples_total") == 0
    assert not any(name.startswith("llama_tui_instance") for name in m)


@pytest.mark.parametrize("text, public, expect", [
    ("127.0.0.1:9464", False, ("127.0.0.1", 9464)),
    ("[::1]:9464", False, ("::1", 9464)),
    ("0.0.0.0:9464", True, ("0.0.0.0", 9464)),
])
def test_metrics_listen_parses(text: str, public: bool, expect: tuple[str, int]) -> None:
    assert parse_metrics_listen(text, public) == expect


@pytest.mark.parametrize("text, cause", [
    ("0.0.0.0:9464", "not a loopback address"),
    ("10.1.2.3:9464", "not a loopback address"),
    ("localhost:9464", "must be IP:PORT"),
    ("127.0.0.1", "must be IP:PORT"),
    ("127.0.0.1:0", "must be IP:PORT"),
    ("127.0.0.1:70000", "must be IP:PORT"),
    ("::1:9464", "must be IP:PORT"),
])
def test_metrics_listen_refuses(text: str, cause: str) -> None:
    with pytest.raises(UserError) as exc:
        parse_metrics_listen(text)
    assert cause in exc.value.one_line() and "(fix: " in exc.value.one_line()


def test_metrics_url_reaches_a_wildcard_on_loopback() -> None:
    assert metrics_url("0.0.0.0:9464") == "http://127.0.0.1:9464/metrics"
    assert metrics_url("[::1]:9464") == "http://[::1]:9464/metrics"


def test_fleet_up_refuses_a_public_metrics_address_in_one_line(capsys) -> None:
    code = main(["fleet", "up", "--model", "tiny", "--metrics-listen", "0.0.0.0:9464"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--metrics-public" in err[0]


def test_fleet_up_refuses_a_taken_metrics_port_before_starting_anything(port_block) -> None:
    base, nginx, metrics = port_block(1), port_block(1), free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", metrics))
        s.listen()
        r = run_cli("fleet", "up", "--model", "tiny", "--instances", "1", "--base-port", str(base),
                    "--nginx-port", str(nginx), "--metrics-listen", f"127.0.0.1:{metrics}", "--detach")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"port {metrics} (--metrics-listen) is already in use" in r.stderr


def test_the_listener_answers_from_its_latest_sample_only(tmp_path: Path) -> None:
    """A scrape reads the sample the sampler left; the sampler runs on its own clock (here: never again)."""
    port = free_port()
    listener = MetricsListener(tmp_path, f"127.0.0.1:{port}", lambda: None, interval=3600)
    taken = []
    listener.sample_once = lambda monitor: taken.append(1) or MetricsSample(  # type: ignore[method-assign]
        taken_at=time.time(), duration_s=0.0, snapshot=snapshot(), access=None, samples=len(taken))
    listener.start()
    try:
        wait_for(lambda: listener.latest() is not None, 5, "the first sample")
        texts = [httpx.get(listener.url, timeout=5).text for _ in range(20)]
    finally:
        listener.close()
    assert taken == [1]  # twenty scrapes, one sample
    assert all('llama_tui_instance_slots_total{host="127.0.0.1",index="0",node="local",port="18080"} 4.0' in t
               for t in texts)


# --------------------------------------------------------------------------------------------- a real fleet


def _task_ids(log: Path) -> list[int]:
    return [int(x) for x in re.findall(r"launch_slot_: id +\d+ \| task (\d+) \|", log.read_text(errors="replace"))]


def _mark(url: str, log: Path) -> int:
    """The task id of one completion sent straight to the instance (llama-server numbers every /slots,
    /metrics and completion task it serves; /health takes none)."""
    before = len(_task_ids(log))
    key = keys.read_internal_key(None)  # the instances require the fleet's internal key
    r = httpx.post(f"{url}/completion", json={"prompt": "mark", "n_predict": 1, "cache_prompt": False}, timeout=30,
                   headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return wait_for(lambda: _task_ids(log)[before:], 10, "the completion's task in the log")[-1]


@pytest.mark.integration
def test_scraping_at_10_hz_sends_no_request_to_the_instances(port_block) -> None:
    base, nginx, metrics = port_block(1), port_block(1), free_port()
    r = run_cli("fleet", "up", "--model", "tiny", "--instances", "1", "--parallel", "2", "--threads", "1",
                "--ctx-per-slot", "256", "--base-port", str(base), "--nginx-port", str(nginx),
                "--metrics-listen", f"127.0.0.1:{metrics}", "--detach")
    assert r.returncode == 0, r.stderr
    try:
        status = orjson.loads(run_cli("fleet", "status", "--json").stdout)
        url = status["metrics_url"]
        assert url == f"http://127.0.0.1:{metrics}/metrics"
        inst_url, log = status["instances"][0]["url"], Path(status["instances"][0]["log_path"])
        # NGINX traffic shows in the access-log metrics
        for _ in range(5):
            assert httpx.post(f"{status['nginx_url']}/completion", json={"prompt": "x", "n_predict": 2}).status_code == 200
        backend = f"127.0.0.1:{base}"
        wait_for(lambda: f'llama_tui_backend_requests_total{{backend="{backend}",host="127.0.0.1",index="0",'
                 f'node="local",port="{base}"}} 5.0' in httpx.get(url).text, 10, "five requests in the metrics")

        window = 8.0
        t0 = _mark(inst_url, log)
        time.sleep(window)
        t1 = _mark(inst_url, log)
        samples_1 = _samples(url)
        scrapes = _scrape_for(url, window, hz=10)
        t2 = _mark(inst_url, log)
        samples_2 = _samples(url)
    finally:
        run_cli("fleet", "down")
    quiet, scraped = t1 - t0, t2 - t1
    print(f"task ids: {quiet} in {window:.0f}s without scrapes, {scraped} in {window:.0f}s with {scrapes} scrapes; "
          f"samples taken meanwhile: {samples_2 - samples_1:.0f}")
    assert scrapes >= 40  # the scraper did scrape, ~10 per second
    assert quiet >= 4  # the supervisor's own samples do reach the instance (/slots + /metrics each): the count sees them
    assert scraped <= quiet + 4, (quiet, scraped)  # scrapes added no request (4: one sample of jitter, twice)
    assert samples_2 - samples_1 <= window / 2.0 + 2  # the sampler kept its 2 s clock


def _samples(url: str) -> float:
    m = re.search(r"^llama_tui_metrics_samples_total ([0-9.e+]+)$", httpx.get(url).text, re.M)
    assert m is not None
    return float(m.group(1))


def _scrape_for(url: str, seconds: float, hz: float) -> int:
    n, stop = 0, time.monotonic() + seconds
    with httpx.Client(timeout=5) as c:
        while time.monotonic() < stop:
            t = time.monotonic()
            assert c.get(url).status_code == 200
            n += 1
            time.sleep(max(0.0, 1 / hz - (time.monotonic() - t)))
    return n


