"""The placement seam: LocalPlacement starts, watches, measures and stops instances; the monitor and
NGINX rendering go through handles and endpoints, not local pids."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from llama_tui.core.fleet import FleetSpec
from llama_tui.core.fleet import processes
from llama_tui.core.fleet import state as st_mod
from llama_tui.core.fleet.frontdoor import FrontDoorSpec, render
from llama_tui.core.fleet.local import LocalPlacement
from llama_tui.core.fleet.monitor import Monitor
from llama_tui.core.fleet.placement import (Endpoint, ExitStatus, InstanceHandle, PlacementError, ProcessStats,
                                            endpoint_of)
from llama_tui.core.probe import base_url

from conftest import free_port, wait_for


def _record(state_dir: Path, cmd: list[str], index: int = 0, port: int = 0) -> st_mod.InstanceState:
    return st_mod.InstanceState(index=index, port=port or free_port(), threads=1, cmd=cmd,
                                log_path=str(st_mod.instance_log_path(state_dir, index)))


def _sleeper() -> list[str]:
    return [sys.executable, "-c", "import time; time.sleep(60)"]


def test_a_started_process_has_an_endpoint_a_log_banner_and_the_owner_marker(isolated_dirs):
    pl = LocalPlacement(isolated_dirs, host="127.0.0.1")
    rec = _record(isolated_dirs, _sleeper(), index=3)
    rec.gpu = 1
    h = pl.start(rec)
    try:
        assert h.endpoint == Endpoint("127.0.0.1", rec.port, "local") and h.index == 3
        assert h.pid and h.started == pytest.approx(psutil.Process(h.pid).create_time())
        env = psutil.Process(h.pid).environ()
        assert env["LLAMA_TUI_OWNER"] == str(isolated_dirs) and env["CUDA_VISIBLE_DEVICES"] == "1"
        assert os.getpgid(h.pid) == h.pid  # its own process group: stop reaches the whole group
        assert Path(rec.log_path).read_text().startswith("--- llama-tui: instance 3 start at ")
        assert pl.poll(h) is None
    finally:
        pl.stop([h], timeout=2)
    assert pl.poll(h) is not None and not processes.alive(h.pid, h.started)
    assert processes.owned_processes(isolated_dirs) == []


def test_a_killed_instance_reports_its_exit_and_a_stopped_one_leaves_nothing(isolated_dirs):
    pl = LocalPlacement(isolated_dirs)
    h = pl.start(_record(isolated_dirs, _sleeper()))
    pl.kill(h)
    status = wait_for(lambda: pl.poll(h), 10, "the killed instance's exit")
    assert status == ExitStatus(-signal.SIGKILL)
    pl.stop([h], timeout=1)  # releasing an exited instance is harmless
    assert not processes.alive(h.pid, h.started)


def test_attach_finds_an_instance_it_did_not_start_and_sees_it_go(isolated_dirs):
    starter = LocalPlacement(isolated_dirs)
    rec = _record(isolated_dirs, _sleeper())
    h = starter.start(rec)
    rec.pid, rec.pid_started, rec.host, rec.node = h.pid, h.started, h.endpoint.host, h.endpoint.node
    other = LocalPlacement(isolated_dirs)  # e.g. an adopting supervisor, or `fleet status`
    again = other.attach(rec)
    assert again == h and other.poll(again) is None
    other.stop([again], timeout=2)
    assert other.poll(again) == ExitStatus(None)  # not its child: the code is not known
    assert other.attach(rec) is None
    starter.stop([h], timeout=1)  # reaps its child


def test_a_binary_that_cannot_start_is_a_placement_error(isolated_dirs):
    pl = LocalPlacement(isolated_dirs)
    with pytest.raises(PlacementError, match="cannot start llama-server"):
        pl.start(_record(isolated_dirs, [str(isolated_dirs / "no-such-llama-server")]))


def test_old_records_without_an_endpoint_get_the_fleets_host():
    rec = st_mod.InstanceState(index=0, port=18080, threads=1, log_path="x")
    assert endpoint_of(rec, "::1") == Endpoint("::1", 18080, "local")
    rec.host, rec.node = "10.0.0.7", "node-b"
    assert endpoint_of(rec, "::1") == Endpoint("10.0.0.7", 18080, "node-b")
    assert Endpoint("::1", 80).url == "http://[::1]:80"


class _FakePlacement:
    """A placement on another node: its pids mean nothing here, its stats come from 'there'."""

    def __init__(self) -> None:
        self.asked: list[tuple[InstanceHandle, ...]] = []

    def stats(self, handles):
        self.asked.append(tuple(handles))
        return {h: ProcessStats(h.pid, 12.5, 3 << 30, 5 << 30, 40.0, 0, 99.0) for h in handles}

    def close(self) -> None:
        pass


def test_the_monitor_samples_instances_through_their_placement():
    fake = _FakePlacement()
    mon = Monitor(placement=fake)
    h = InstanceHandle(0, Endpoint("10.0.0.7", 18080, "node-b"), pid=999_999_999)  # no such local pid
    sample = mon.sample([h], http=False)
    assert fake.asked == [(h,)]
    got = sample.process(h)
    assert got is not None and got.cpu_percent == 12.5 and got.gpu_memory_bytes == 5 << 30
    assert sample.process(None) is None
    mon.close()


def test_nginx_renders_the_endpoints_it_is_given(tmp_path):
    spec = FleetSpec(model=Path("m.gguf"), parallel=3, nginx_port=18000)
    eps = [Endpoint("127.0.0.1", 18080), Endpoint("127.0.0.2", 18081, "node-b")]
    door = FrontDoorSpec.for_fleet(spec, eps)
    assert [(b.host, b.port, b.slots) for b in door.backends] == [("127.0.0.1", 18080, 3), ("127.0.0.2", 18081, 3)]
    text = render(door, tmp_path, nofile=65536, as_root=False)
    assert "server 127.0.0.1:18080 " in text and "server 127.0.0.2:18081 " in text


@pytest.mark.integration
def test_local_placement_runs_a_real_llama_server(isolated_dirs, llama_server_bin, tiny_model):
    from llama_tui.core.probe import Probe

    spec = FleetSpec(model=tiny_model, parallel=2, ctx_per_slot=256, threads=1, base_port=free_port())
    rec = _record(isolated_dirs, spec.command(llama_server_bin, 0, 1), port=spec.port_of(0))
    pl = LocalPlacement(isolated_dirs, host=spec.host)
    h = pl.start(rec)
    try:
        assert h.endpoint == Endpoint("127.0.0.1", spec.port_of(0), "local")
        url = h.endpoint.url
        assert url == base_url("127.0.0.1", spec.port_of(0))
        with Probe(timeout=2.0) as pr:
            wait_for(lambda: pr.ready(url), 60, "llama-server ready")
            assert pr.slots(url).total == 2
        first = pl.stats([h])[h]
        time.sleep(0.3)
        second = pl.stats([h])[h]
        assert first.cpu_percent is None and second.cpu_percent is not None and second.cpu_percent >= 0
        assert second.rss_bytes > 1 << 20
        with Probe(timeout=2.0) as pr:  # CPU time moves in clock ticks: give the server work until it shows
            wait_for(lambda: pr.slots(url) is not None and pl.stats([h])[h].cpu_seconds > 0, 15, "CPU time counted")
        assert second.gpu_memory_bytes is None  # no GPU here
        assert pl.poll(h) is None
    finally:
        pl.stop([h], timeout=5)
    assert pl.poll(h) is not None and not processes.alive(h.pid, h.started)
    assert pl.stats([h]) == {}
    assert processes.owned_processes(isolated_dirs) == []
