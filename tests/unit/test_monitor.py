"""The monitor: per-process CPU/RSS (+ children), NVML through a fake pynvml, and real server probes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import types

import httpx
import pytest

from llama_tui.core import gpu
from llama_tui.core.fleet.monitor import Monitor
from llama_tui.core.probe import health
from llama_tui.core.fleet.placement import Endpoint

from conftest import free_port


def _busy(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_first_sample_has_no_rate_then_cpu_is_measured():
    mon = Monitor(nvml=gpu.Nvml())
    me = os.getpid()
    first = mon.processes([me])[me]
    w0, c0 = time.monotonic(), time.process_time()
    assert first.cpu_percent is None and first.rss_bytes > 10 << 20
    _busy(0.2)
    second = mon.processes([me])[me]
    expected = (time.process_time() - c0) / (time.monotonic() - w0) * 100  # our own clock agrees
    assert second.cpu_percent is not None and second.cpu_percent > 0
    assert abs(second.cpu_percent - expected) < max(5.0, 0.25 * expected), (second.cpu_percent, expected)
    assert mon.processes([999_999_999]) == {}  # a pid that does not exist is left out


def test_children_count_toward_their_parent():
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(40 << 20); time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        mon = Monitor(children_every_s=0.0)
        while True:
            sample = mon.processes([os.getpid()])[os.getpid()]
            alone = mon.processes([child.pid])[child.pid]
            if alone.rss_bytes > 40 << 20 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        sample = mon.processes([os.getpid()])[os.getpid()]
        assert sample.children >= 1
        me_only = Monitor().processes([os.getpid()])  # a fresh monitor, same numbers with children
        assert sample.rss_bytes >= alone.rss_bytes + (10 << 20)
        assert me_only[os.getpid()].rss_bytes == pytest.approx(sample.rss_bytes, rel=0.2)
    finally:
        child.kill()
        child.wait()


def test_no_gpu_means_none_everywhere():
    nv = gpu.Nvml()
    nv._tried, nv._nv = True, None  # as on a machine without NVML
    mon = Monitor(nvml=nv)
    s = mon.processes([os.getpid()])[os.getpid()]
    assert s.gpu_memory_bytes is None and s.gpu_util_percent is None
    assert mon.system().gpus == ()


def _fake_pynvml(pid: int) -> types.ModuleType:
    m = types.ModuleType("pynvml")
    P = types.SimpleNamespace
    m.nvmlInit = lambda: None
    m.nvmlShutdown = lambda: None
    m.nvmlDeviceGetCount = lambda: 2
    m.nvmlDeviceGetHandleByIndex = lambda i: f"gpu{i}"
    m.nvmlDeviceGetName = lambda h: b"Fake H100"
    m.nvmlDeviceGetUUID = lambda h: f"GPU-{h}"
    m.nvmlDeviceGetMemoryInfo = lambda h: P(total=80 << 30, used=(3 << 30) if h == "gpu0" else 0)
    m.nvmlDeviceGetUtilizationRates = lambda h: P(gpu=57 if h == "gpu0" else 0)
    m.nvmlDeviceGetComputeRunningProcesses = lambda h: (
        [P(pid=pid, usedGpuMemory=2 << 30), P(pid=1, usedGpuMemory=5 << 30)] if h == "gpu0"
        else [P(pid=2, usedGpuMemory=None)])  # another process whose memory NVML does not know
    m.nvmlDeviceGetGraphicsRunningProcesses = lambda h: []
    m.nvmlDeviceGetProcessUtilization = lambda h, since: [P(pid=pid, smUtil=41)] if h == "gpu0" else []
    return m


def test_per_process_gpu_numbers_from_nvml(monkeypatch):
    me = os.getpid()
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(me))
    mon = Monitor(nvml=gpu.Nvml())
    s = mon.processes([me])[me]
    assert s.gpu_memory_bytes == 2 << 30 and s.gpu_util_percent == 41.0
    gpus = mon.system().gpus
    assert [(g.index, g.name, g.memory_used_bytes, g.util_percent) for g in gpus] == [
        (0, "Fake H100", 3 << 30, 57.0), (1, "Fake H100", 0, 0.0)]


def test_unreachable_server_is_reported_not_raised():
    mon = Monitor(http_timeout=0.3)
    ep = Endpoint("127.0.0.1", free_port())
    assert mon.servers([ep])[ep].reachable is False
    assert health("127.0.0.1", ep.port, timeout=0.3) is None


@pytest.mark.integration
def test_server_slots_metrics_and_tok_s_from_a_real_llama_server(llama_server):
    url = llama_server(parallel=3)
    port = int(url.rsplit(":", 1)[1])
    ep = Endpoint("127.0.0.1", port)
    mon = Monitor()
    first = mon.servers([ep])[ep]
    assert first.reachable and first.slots_total == 3 and first.slots_busy == 0
    assert first.requests_processing == 0 and first.server_tok_s is None  # no previous sample yet
    r = httpx.post(f"{url}/completion", json={"prompt": "hi", "n_predict": 200, "ignore_eos": True}, timeout=30)
    predicted = r.json()["timings"]["predicted_n"]
    second = mon.servers([ep])[ep]
    assert second.tokens_predicted_total - first.tokens_predicted_total == predicted
    assert second.server_tok_s and second.server_tok_s > 0
    assert health("127.0.0.1", port) == 200


def test_tree_cpu_seconds_counts_children_and_knows_a_gone_pid():
    from llama_tui.core.fleet.process_stats import tree_cpu_seconds

    burn = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                             "while time.process_time() - t < 0.3: pass\ntime.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while (tree_cpu_seconds(burn.pid) or 0) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        child = tree_cpu_seconds(burn.pid)
        assert child is not None and child >= 0.3
        # the parent's tree total holds its own CPU and the live child's
        assert tree_cpu_seconds(os.getpid()) >= sum(os.times()[:2]) + child - 0.05
    finally:
        burn.kill()
        burn.wait()
    assert tree_cpu_seconds(burn.pid) is None
