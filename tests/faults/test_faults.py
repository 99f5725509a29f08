"""Faults against a real supervised fleet (tiny model, llama-server + NGINX started by llama-tui itself).

- an instance SIGKILLed mid-benchmark: only its in-flight requests fail, they are attributed to it,
  NGINX routes around it, the supervisor restarts it, the benchmark carries on and traffic comes back;
- the disk under the state dir fills up: instances and NGINX keep serving, status still answers,
  `fleet down` still stops everything.
(Supervisor killed, NGINX killed, a corrupt model: tests/integration/test_fleet_integration.py. A damaged
results file: tests/integration/test_sweep_integration.py.)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from llama_tui.core import bench, fleet
from llama_tui.core.fleet import instances, processes, state
from llama_tui.core.bench import BenchConfig

from conftest import wait_for, free_port, free_port_block, reap_owned, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def start_fleet(state_dir: Path, tiny_model: Path, instances: int = 2) -> fleet.FleetState:
    spec = fleet.FleetSpec(model=tiny_model, instances=instances, parallel=2, ctx_per_slot=2048, threads=1,
                           base_port=free_port_block(instances + 1), nginx_port=free_port(), ready_timeout=60,
                           policy="least_conn")
    fleet.up(spec, state_dir=state_dir)
    return fleet.load_state(state_dir)


def instance(state_dir: Path, index: int) -> Any:
    s = fleet.load_state(state_dir)
    return next(i for i in s.instances if i.index == index) if s else None


def test_instance_killed_mid_benchmark(isolated_dirs, tiny_model):
    try:
        st = start_fleet(isolated_dirs, tiny_model)
        victim = instance(isolated_dirs, 0)
        victim_addr = f"127.0.0.1:{victim.port}"
        samples = []
        box: dict[str, Any] = {}
        config = BenchConfig(url=st.nginx_url(), concurrency=(8,), duration=8.0, warmup=0.0, n_predict=400,
                             prompt_tokens=8, workers=1, timeout=30, state_dir=str(isolated_dirs))
        t = threading.Thread(target=lambda: box.setdefault("step", bench.run_step(config, on_sample=samples.append)))
        t.start()
        wait_for(lambda: samples and samples[-1].tok_s > 0 and samples[-1].inflight >= 6, 20, "load in flight")
        killed_at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        t.join(timeout=90)
        assert not t.is_alive()
        step = box["step"]

        # Only the killed instance's in-flight requests failed, and they are attributed to it: streams cut
        # short, and requests it had received but not answered yet (queued for a slot): NGINX never re-sends
        # a request an instance received (it might be the one that killed it), so those get 502.
        assert step["errors"] >= 1, "the kill hit no stream: the test proved nothing"
        assert set(step["errors_by_class"]) <= {"truncated", "http_502"}, step["errors_by_class"]
        assert step["errors"] <= 8  # at most what was in flight (concurrency 8)
        others = {a: u for a, u in step["per_upstream"].items() if a != victim_addr}
        assert others and all(u["errors"] == 0 for u in others.values()), step["per_upstream"]
        assert step["per_upstream"][victim_addr]["errors"] == step["errors"]
        # The benchmark carried on: far more requests finished than were lost.
        assert step["requests_ok"] > 4 * step["errors"], (step["requests_ok"], step["errors"])

        # The supervisor restarted it on the same port, and NGINX sends it traffic again.
        back = wait_for(lambda: (lambda i: i if i and i.state == "ready" and i.restarts == 1 else None)(
            instance(isolated_dirs, 0)), 20, "the instance ready again with restarts == 1")
        assert back.port == victim.port and back.pid != victim.pid
        seen: set[str] = set()

        def served_by_victim() -> bool:
            r = httpx.post(f"{st.nginx_url()}/completion", timeout=30,
                           json={"prompt": "x", "n_predict": 4, "ignore_eos": True})
            assert r.status_code == 200
            seen.add(r.headers["x-upstream"])
            return victim_addr in seen

        wait_for(served_by_victim, 20, "NGINX to route to the restarted instance")
        recovery_s = time.monotonic() - killed_at
        assert recovery_s < 40
    finally:
        fleet.down(isolated_dirs, timeout=5)


def _owner(p: psutil.Process) -> str | None:
    try:
        return p.environ().get("LLAMA_TUI_OWNER")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _mount_tmpfs(where: Path, size: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def _fill(where: Path) -> None:
    with open(where / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError:
            pass


@pytest.mark.parametrize("how", ["tmpfs", "dev_full"])
def test_a_full_disk_does_not_stop_the_fleet(how, tmp_path, tiny_model, monkeypatch):
    """tmpfs: the state dir on a small tmpfs filled to the last byte (needs root to mount; falls back to
    dev_full otherwise). dev_full: every instance log is /dev/full, which fails every write with ENOSPC."""
    sd = tmp_path / "full"
    mounted = how == "tmpfs" and _mount_tmpfs(sd, "16m")
    monkeypatch.setenv("LLAMA_TUI_STATE_DIR", str(sd))
    try:
        st = start_fleet(sd, tiny_model)
        if mounted:
            _fill(sd)
            assert shutil.disk_usage(sd).free < 64 * 1024
        else:
            for inst in st.instances:
                log = Path(inst.log_path)
                log.unlink()
                log.symlink_to("/dev/full")
        # Restarting on the full disk (as after a crash) works: the logs are best-effort.
        old_pids = {i.pid for i in st.instances}
        fleet.restart(state_dir=sd)
        # The state file cannot be rewritten on a full disk, so look the instances up by their owner marker.
        running = {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "llama-server"
                   and _owner(p) == str(sd)}
        assert len(running) == 2 and running.isdisjoint(old_pids), (running, old_pids)

        # Serving goes on: every request through NGINX succeeds, with logs that cannot be written.
        for _ in range(30):
            r = httpx.post(f"{st.nginx_url()}/completion", timeout=30,
                           json={"prompt": "hello", "n_predict": 32, "ignore_eos": True, "cache_prompt": False})
            assert r.status_code == 200 and r.json()["timings"]["predicted_n"] == 32
        time.sleep(2.5)  # a few supervisor ticks (state writes, log rotation) on the full disk
        assert all(processes.alive(p) for p in running)
        status = run_cli("fleet", "status", "--json", env={"LLAMA_TUI_STATE_DIR": str(sd)})
        assert status.returncode == 0, status.stderr
        assert '"supervisor_alive": true' in status.stdout
        down = run_cli("fleet", "down", env={"LLAMA_TUI_STATE_DIR": str(sd)})
        assert down.returncode == 0, down.stderr
        assert not any(processes.alive(p) for p in running)
    finally:
        fleet.down(sd, timeout=5)
        leftovers = reap_owned(str(sd))  # this state dir is outside the per-test safety net
        if mounted:
            subprocess.run(["umount", "-l", str(sd)], capture_output=True)
    assert not leftovers, f"processes left running: {leftovers}"


def test_a_hung_instance_is_killed_and_restarted_a_busy_one_is_not(isolated_dirs, tiny_model, monkeypatch):
    """SIGSTOP freezes a real llama-server: its port still accepts connections (the kernel does that) but
    nothing answers. The supervisor must see no /health answer and no CPU use, kill it and restart it,
    while the other instance, under load, is left alone with the same short hang window."""
    monkeypatch.setenv("LLAMA_TUI_HANG_S", "2")  # the supervisor reads it at start (default 30 s)
    try:
        st = start_fleet(isolated_dirs, tiny_model)
        victim = instance(isolated_dirs, 1)
        os.kill(victim.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        back = wait_for(lambda: (lambda i: i if i and i.state == "ready" and i.pid != victim.pid else None)(
            instance(isolated_dirs, 1)), 30, "the hung instance to be killed and ready again")
        assert time.monotonic() - stopped_at < 15
        assert back.port == victim.port and back.restarts == 1
        assert back.last_error.startswith("hung (no /health answer for"), back.last_error
        assert not processes.alive(victim.pid, victim.pid_started)  # the frozen process is gone, not left stopped
        # Busy is not hung: 8 streams through NGINX for 6 s, three times the hang window; nobody is killed.
        config = BenchConfig(url=st.nginx_url(), concurrency=(8,), duration=6.0, warmup=0.0, n_predict=400,
                             prompt_tokens=8, workers=1, timeout=30, state_dir=str(isolated_dirs))
        step = bench.run_step(config)
        assert step["errors"] == 0 and step["requests_ok"] > 0
        after = fleet.load_state(isolated_dirs)
        assert [i.restarts for i in sorted(after.instances, key=lambda i: i.index)] == [0, 1]
        assert [i.pid for i in sorted(after.instances, key=lambda i: i.index)] == [st.instances[0].pid, back.pid]
    finally:
        fleet.down(isolated_dirs, timeout=5)


def _kill_each_new_pid(sd: Path, index: int, times: int, ready_first: bool, timeout: float = 60) -> list[str]:
    """SIGKILL instance `index` `times` times, each time once a new process of it runs (and, with
    `ready_first`, once it is ready: a crash while it serves). Returns the states seen meanwhile."""
    seen: list[str] = []
    killed: set[int] = set()
    for _ in range(times):
        def target() -> Any:
            i = instance(sd, index)
            seen.append(i.state if i else "gone")
            ok = i and i.pid and i.pid not in killed and i.state != "failed" and (i.state == "ready" or not ready_first)
            return i if ok and processes.alive(i.pid, i.pid_started) else None

        victim = wait_for(target, timeout, f"instance {index} to run again")
        killed.add(victim.pid)
        os.kill(victim.pid, signal.SIGKILL)
    return seen


def test_the_last_serving_instance_is_never_failed_for_crashes(isolated_dirs, tiny_model):
    """Crashes while serving (as a request that crashes llama-server causes) never fail the last serving
    instance: the model itself starts, so it is restarted however often it crashes."""
    try:
        st = start_fleet(isolated_dirs, tiny_model, instances=1)
        n = instances.CRASH_LIMIT  # (enough to fail an instance that others could stand in for)
        seen = _kill_each_new_pid(isolated_dirs, 0, n, ready_first=True)
        back = wait_for(lambda: (lambda i: i if i and (i.state == "failed" or i.state == "ready" and i.restarts == n)
                                 else None)(instance(isolated_dirs, 0)), 40, "the instance to come back")
        assert back.state == "ready", back
        assert "failed" not in seen
        assert httpx.get(f"{st.nginx_url()}/health", timeout=10).status_code == 200
        log = state.supervisor_log_path(isolated_dirs).read_text()
        assert "last serving instance: restarting it, not failing it" in log
    finally:
        fleet.down(isolated_dirs, timeout=5)


def test_a_failed_instance_is_tried_again_after_its_cool_down(isolated_dirs, tiny_model, monkeypatch):
    monkeypatch.setenv("LLAMA_TUI_FAILED_COOLDOWN_S", "4")  # the supervisor reads it at start (default 60 s)
    try:
        st = start_fleet(isolated_dirs, tiny_model)
        port = instance(isolated_dirs, 1).port
        conf = Path(st.nginx.config_path)
        _kill_each_new_pid(isolated_dirs, 1, instances.CRASH_LIMIT, ready_first=False)
        failed = wait_for(lambda: (lambda i: i if i.state == "failed" else None)(instance(isolated_dirs, 1)), 20,
                          "the crash-looping instance to be failed (the other one serves)")
        assert "killed by SIGKILL" in failed.last_error and failed.retry_at
        out = run_cli("fleet", "status")
        line = next(ln for ln in out.stdout.splitlines() if ln.strip().startswith("instance 1:"))
        assert "killed by SIGKILL" in line and "next try in" in line, out.stdout
        assert f"127.0.0.1:{port}" not in conf.read_text()  # out of NGINX meanwhile
        assert instance(isolated_dirs, 0).state == "ready"

        back = wait_for(lambda: (lambda i: i if i.state == "ready" else None)(instance(isolated_dirs, 1)), 30,
                        "the failed instance to be tried again after its cool-down and get ready")
        assert back.pid != failed.pid and back.in_upstream and back.retry_at is None
        wait_for(lambda: f"127.0.0.1:{port}" in conf.read_text(), 10, "NGINX to route to it again")
        assert "trying it again after its cool-down" in state.supervisor_log_path(isolated_dirs).read_text()
    finally:
        fleet.down(isolated_dirs, timeout=5)


def test_a_model_that_cannot_start_still_ends_failed_even_alone(isolated_dirs, tiny_model, tmp_path):
    model = tmp_path / "model.gguf"
    shutil.copy(tiny_model, model)
    try:
        start_fleet(isolated_dirs, model, instances=1)
        model.write_bytes(model.read_bytes()[:100])  # the model cannot load any more
        _kill_each_new_pid(isolated_dirs, 0, 1, ready_first=True)
        failed = wait_for(lambda: (lambda i: i if i.state == "failed" else None)(instance(isolated_dirs, 0)), 60,
                          "the instance that cannot start to be failed")
        assert "exiting due to model loading error" in failed.last_error  # with its log's tail
    finally:
        fleet.down(isolated_dirs, timeout=5)


def test_a_process_squatting_a_crashed_instances_port_gets_no_requests(isolated_dirs, tiny_model):
    """While a crashed instance waits out its backoff its port is free: any local process may bind it
    (this one answers everything with 200, /health included). NGINX must not send it requests (they
    would carry the fleet's internal key), and the supervisor must not take it for the instance."""
    import socket

    try:
        st = start_fleet(isolated_dirs, tiny_model)
        victim = instance(isolated_dirs, 1)
        os.kill(victim.pid, signal.SIGKILL)
        squatter = socket.socket()
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (closed connections linger in TIME_WAIT)
        deadline = time.monotonic() + 5
        while True:
            try:
                squatter.bind(("127.0.0.1", victim.port))
                break
            except OSError:
                assert time.monotonic() < deadline, "the killed instance's port stayed taken"
                time.sleep(0.005)
        squatter.listen(64)
        hits: list[bytes] = []

        def serve() -> None:
            while True:
                try:
                    conn, _ = squatter.accept()
                except OSError:
                    return
                with conn:
                    conn.settimeout(2)
                    try:
                        hits.append(conn.recv(65536))
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                    except OSError:
                        pass

        threading.Thread(target=serve, daemon=True).start()
        wait_for(lambda: instance(isolated_dirs, 1).state != "ready", 10, "the supervisor to see the crash")
        for _ in range(20):
            r = httpx.post(f"{st.nginx_url()}/completion", timeout=30,
                           json={"prompt": "hi", "n_predict": 4, "cache_prompt": False})
            assert r.status_code == 200 and "timings" in r.json(), r.text
        assert instance(isolated_dirs, 1).state != "ready"  # its port answers, but not from the instance
        assert not [h for h in hits if not h.startswith(b"GET /health")], f"the squatter got requests: {hits}"
        squatter.close()
    finally:
        fleet.down(isolated_dirs, timeout=5)
