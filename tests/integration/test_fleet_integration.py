"""A real fleet (llama-server x N + nginx, tiny model, one thread each) driven through the CLI and the API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import pytest

from llama_tui.core import fleet
from llama_tui.core.fleet import keys, processes, state
from llama_tui.core.errors import UserError

from conftest import wait_for, REPO, free_port, free_port_block, run_cli

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet_dir(isolated_dirs: Path):
    """The test's state dir; whatever fleet runs there is brought down before the leak check."""
    yield isolated_dirs
    fleet.down(isolated_dirs, timeout=5)


def cli_up(base: int, nginx_port: int, *extra: str, instances: int = 2) -> subprocess.CompletedProcess[str]:
    return run_cli("fleet", "up", "--model", "tiny", "--instances", str(instances), "--parallel", "2",
                   "--threads", "1", "--ctx-per-slot", "512", "--base-port", str(base),
                   "--nginx-port", str(nginx_port), "--detach", *extra)


def status() -> dict[str, Any]:
    proc = run_cli("fleet", "status", "--json")
    assert proc.returncode == 0, proc.stderr
    return orjson.loads(proc.stdout)


def api_spec(tiny_model: Path, instances: int = 2, ctx_per_slot: int = 512, **kw: Any) -> fleet.FleetSpec:
    return fleet.FleetSpec(model=tiny_model, instances=instances, parallel=2, ctx_per_slot=ctx_per_slot, threads=1,
                           base_port=free_port_block(instances + 2), nginx_port=free_port(), ready_timeout=60, **kw)


def complete(url: str, n: int = 8, key: str | None = None) -> httpx.Response:
    """A completion at `url`; straight at an instance it needs the fleet's internal `key`."""
    return httpx.post(f"{url}/completion", json={"prompt": "hi", "n_predict": n, "ignore_eos": True}, timeout=30,
                      headers={"Authorization": f"Bearer {key}"} if key else None)


def all_gone(pids: list[int]) -> bool:
    return not any(processes.alive(p) for p in pids)


def assert_nothing_left(sd: Path, pids: list[int]) -> None:
    assert all_gone(pids), [p for p in pids if processes.alive(p)]
    assert processes.owned_processes(sd) == []
    assert not (sd / state.STATE_FILE).exists()


def test_lifecycle_through_the_cli(fleet_dir):
    base, nport = free_port_block(4), free_port()
    up = cli_up(base, nport, "--gpus", "0,1")
    assert up.returncode == 0, up.stderr
    assert "ready" in up.stderr

    data = status()  # a second process finds the fleet through the state file
    assert data["running"] and data["status"] == "running"
    assert data["supervisor"]["alive"] and processes.alive(data["supervisor"]["pid"])
    insts = data["instances"]
    assert [i["port"] for i in insts] == [base, base + 1]
    for i in insts:
        assert i["state"] == "ready" and i["restarts"] == 0 and i["threads"] == 1
        assert i["host"] == "127.0.0.1" and i["node"] == "local"  # its endpoint, from the placement
        assert i["url"] == f"http://127.0.0.1:{i['port']}"
        assert i["rss_bytes"] > 1 << 20 and i["cpu_percent"] is not None
        assert i["slots_total"] == 2 and i["slots_busy"] == 0 and i["requests_processing"] == 0
        assert i["gpu_memory_bytes"] is None and i["gpu_util_percent"] is None  # no GPU here
        assert "--metrics" in i["cmd"] and i["cmd"][i["cmd"].index("-t") + 1] == "1"
        assert i["cmd"][i["cmd"].index("--host") + 1] == "127.0.0.1"
        proc = psutil.Process(i["pid"])
        assert proc.environ()["LLAMA_TUI_OWNER"] == str(fleet_dir)
        assert proc.environ()["CUDA_VISIBLE_DEVICES"] == str(i["index"] % 2)  # --gpus 0,1 round-robin
        assert os.getpgid(i["pid"]) == i["pid"]  # its own process group
    nginx = data["nginx"]
    assert nginx["pid"] and nginx["port"] == nport and nginx["policy"] == "least_conn" and nginx["config_valid"]
    assert complete(data["nginx_url"]).status_code == 200
    first_pids = [i["pid"] for i in insts]

    again = cli_up(base, nport)
    assert again.returncode == 2
    assert "already running" in again.stderr and "fleet scale" in again.stderr and "fleet down" in again.stderr

    assert run_cli("fleet", "scale", "3").returncode == 0
    data = status()
    assert [(i["index"], i["state"]) for i in data["instances"]] == [(0, "ready"), (1, "ready"), (2, "ready")]
    assert [i["pid"] for i in data["instances"]][:2] == first_pids  # the others were not touched
    assert data["instances"][2]["port"] == base + 2 and data["instances"][2]["in_upstream"]
    seen = {complete(data["nginx_url"]).headers.get("x-upstream") for _ in range(6)}
    assert f"127.0.0.1:{base + 2}" in seen  # NGINX sends requests to the new instance

    leaving = [i["pid"] for i in data["instances"][1:]]
    assert run_cli("fleet", "scale", "1").returncode == 0
    data = status()
    assert [i["index"] for i in data["instances"]] == [0] and data["instances"][0]["pid"] == first_pids[0]
    assert all_gone(leaving)

    assert run_cli("fleet", "restart", "0").returncode == 0
    data = status()
    inst = data["instances"][0]
    assert inst["state"] == "ready" and inst["port"] == base and inst["pid"] != first_pids[0] and inst["restarts"] == 1

    assert run_cli("fleet", "policy", "round_robin").returncode == 0
    data = status()
    assert data["nginx"]["policy"] == "round_robin" and data["spec"]["policy"] == "round_robin"
    assert "round_robin" in Path(data["nginx"]["config_path"]).read_text().splitlines()[1]

    logs = run_cli("fleet", "logs", "0", "-n", "200")
    assert logs.returncode == 0 and "--- llama-tui: instance 0 restart" in logs.stdout
    assert run_cli("fleet", "logs", "supervisor").returncode == 0
    bad = run_cli("fleet", "logs", "7")
    assert bad.returncode == 2 and "no log for instance 7" in bad.stderr

    pids = [inst["pid"], data["nginx"]["pid"], data["supervisor"]["pid"]]
    down = run_cli("fleet", "down")
    assert down.returncode == 0 and "fleet stopped" in down.stderr
    assert_nothing_left(fleet_dir, pids)
    assert fleet.port_free("127.0.0.1", base) and fleet.port_free("127.0.0.1", nport)
    assert status()["running"] is False


def test_foreground_up_stops_the_fleet_on_ctrl_c(fleet_dir, tiny_model, tmp_path):
    base, nport = free_port_block(2), free_port()
    odd = tmp_path / "mödels with spaces" / "tiny ünïcode.gguf"  # such paths simply work
    odd.parent.mkdir()
    odd.write_bytes(tiny_model.read_bytes())
    cmd = [sys.executable, "-m", "llama_tui", "fleet", "up", "--model", str(odd), "--instances", "1", "--threads", "1",
           "--ctx-per-slot", "512", "--base-port", str(base), "--nginx-port", str(nport)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("Ctrl-C stops the fleet" in ln for ln in lines), 60, "the foreground message")
        st = state.read_state(fleet_dir)
        assert st is not None and st.status == "running" and st.instances[0].cmd[2] == str(odd)
        pids = [p.pid for p in st.refs()] + [st.supervisor_pid]
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        reader.join(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(lines)
    assert proc.returncode == 0, err
    assert "fleet stopped" in err
    assert_nothing_left(fleet_dir, pids)


def test_scale_down_lets_open_streams_finish(fleet_dir, tiny_model):
    """Two long streams, one per instance; scaling 2 -> 1 mid-stream must not cut either."""
    spec = api_spec(tiny_model, instances=2, ctx_per_slot=4096)
    snap = fleet.up(spec, state_dir=fleet_dir)
    url = fleet.load_state(fleet_dir).nginx_url()
    n_predict = 3500
    results: list[dict[str, Any]] = []
    started = threading.Barrier(3)

    def stream() -> None:
        body = {"prompt": "go", "n_predict": n_predict, "ignore_eos": True, "stream": True}
        out: dict[str, Any] = {"events": 0}
        try:
            with httpx.stream("POST", f"{url}/completion", json=body, timeout=60) as r:
                out["status"], out["upstream"] = r.status_code, r.headers.get("x-upstream")
                first = True
                for line in r.iter_lines():
                    if first:
                        first = False
                        started.wait(timeout=30)
                    if line.startswith("data: "):
                        event = orjson.loads(line[6:])
                        out["events"] += 1
                        if event.get("stop"):
                            out["predicted_n"] = event["timings"]["predicted_n"]
        except Exception as exc:  # recorded, asserted below
            out["error"] = repr(exc)
        results.append(out)

    threads = [threading.Thread(target=stream) for _ in range(2)]
    for t in threads:
        t.start()
    started.wait(timeout=30)  # both streams are producing tokens
    leaving_pid = next(i.pid for i in snap.instances if i.index == 1)
    after = fleet.scale(1, state_dir=fleet_dir)
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 2
    assert {r.get("upstream") for r in results} == {f"127.0.0.1:{spec.base_port}", f"127.0.0.1:{spec.base_port + 1}"}
    for r in results:
        assert "error" not in r and r["status"] == 200 and r.get("predicted_n") == n_predict, r
    assert [i.index for i in after.instances] == [0] and not processes.alive(leaving_pid)


@pytest.mark.faults
def test_a_sigkilled_instance_comes_back_on_its_port(fleet_dir, tiny_model, monkeypatch):
    monkeypatch.setenv("LLAMA_TUI_LOG_MAX_BYTES", "1500")  # the supervisor caps each instance log at this
    spec = api_spec(tiny_model, instances=2)
    snap = fleet.up(spec, state_dir=fleet_dir)
    victim = snap.instances[1]
    assert victim.state == "ready" and victim.restarts == 0
    os.kill(victim.pid, signal.SIGKILL)
    t0 = time.monotonic()

    def back() -> Any:
        s = fleet.load_state(fleet_dir)
        inst = s.instances[1]
        return inst.state == "ready" and inst.pid != victim.pid and inst

    inst = wait_for(back, 20, "the killed instance to be ready again")
    assert time.monotonic() - t0 < 20
    assert inst.port == victim.port and inst.restarts == 1 and "SIGKILL" in (inst.last_error or "")
    snap = fleet.snapshot(fleet_dir)
    assert snap.instances[1].restarts == 1 and snap.instances[1].slots_total == 2
    assert complete(f"http://127.0.0.1:{victim.port}", key=keys.read_internal_key(fleet_dir)).status_code == 200
    assert snap.instances[0].pid == fleet.load_state(fleet_dir).instances[0].pid  # the other one untouched
    log = Path(inst.log_path)  # two starts' worth of log went over the cap: rotated, both parts capped
    wait_for(lambda: log.with_name(log.name + ".1").exists(), 10, "the instance log to be rotated")
    assert log.with_name(log.name + ".1").stat().st_size <= 1500 and log.stat().st_size <= 1500


@pytest.fixture(scope="module")
def corrupt_models(tmp_path_factory, tiny_model):
    d = tmp_path_factory.mktemp("corrupt models")  # a space in the path, on purpose
    data = tiny_model.read_bytes()
    garbage = d / "garbage after magic.gguf"
    garbage.write_bytes(data[:8] + os.urandom(len(data) - 8))
    truncated = d / "truncated.gguf"
    truncated.write_bytes(data[: len(data) // 2])
    return {"garbage": garbage, "truncated": truncated}


@pytest.mark.faults
@pytest.mark.parametrize("kind, cause", [("garbage", "failed to read header"), ("truncated", "not within the file bounds")])
def test_a_corrupt_gguf_fails_with_its_log_tail_and_leaves_nothing(fleet_dir, corrupt_models, kind, cause):
    base, nport = free_port_block(2), free_port()
    proc = run_cli("fleet", "up", "--model", str(corrupt_models[kind]), "--instances", "2", "--threads", "1",
                   "--base-port", str(base), "--nginx-port", str(nport), "--detach")
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("error: instance ") and "failed to start" in err and cause in err
    assert "fleet logs" in err  # the fix points at the full log
    assert processes.owned_processes(fleet_dir) == [] and not (fleet_dir / state.STATE_FILE).exists()
    assert fleet.port_free("127.0.0.1", base) and fleet.port_free("127.0.0.1", nport)
    assert cause in (fleet_dir / "logs" / "instance-0.log").read_text()


@pytest.mark.faults
def test_corrupt_gguf_reports_failed_state_through_the_api(fleet_dir, corrupt_models):
    spec = api_spec(corrupt_models["garbage"], instances=1)
    seen: list[str] = []
    with pytest.raises(UserError) as exc:
        fleet.up(spec, state_dir=fleet_dir, on_progress=seen.append)
    assert any(m.endswith(": failed") for m in seen), seen
    assert "failed to read header" in exc.value.cause
    assert fleet.load_state(fleet_dir) is None and processes.owned_processes(fleet_dir) == []


@pytest.mark.faults
def test_supervisor_killed_fleet_serves_is_adopted_and_nginx_comes_back(fleet_dir, tiny_model):
    spec = api_spec(tiny_model, instances=2)
    base, nport = spec.base_port, spec.nginx_port
    fleet.up(spec, state_dir=fleet_dir)
    st = fleet.load_state(fleet_dir)
    inst_pids = [i.pid for i in st.instances]
    old_sup = st.supervisor_pid
    os.kill(old_sup, signal.SIGKILL)
    wait_for(lambda: not processes.alive(old_sup), 10, "the supervisor to die")

    # Instances and NGINX keep serving; status says the supervisor is gone.
    assert complete(st.nginx_url()).status_code == 200
    assert all(complete(u, key=keys.read_internal_key(fleet_dir)).status_code == 200 for u in st.instance_urls())
    data = status()
    assert data["running"] and data["supervisor"] == {"pid": old_sup, "alive": False}
    assert any("supervisor" in w and "fleet up" in w for w in data["warnings"])
    assert [i["state"] for i in data["instances"]] == ["ready", "ready"]

    # `fleet up` adopts the running fleet: a new supervisor, the same processes.
    up = cli_up(base, nport)
    assert up.returncode == 0, up.stderr
    assert "adopting" in up.stderr
    st = fleet.load_state(fleet_dir)
    assert st.supervisor_alive and st.supervisor_pid != old_sup
    assert [i.pid for i in st.instances] == inst_pids and st.status == "running"

    # The adopting supervisor restarts an instance it did not start...
    os.kill(inst_pids[0], signal.SIGKILL)
    inst = wait_for(lambda: (i := fleet.load_state(fleet_dir).instances[0]).state == "ready"
                    and i.pid != inst_pids[0] and i, 20, "the adopted instance to come back")
    assert inst.restarts == 1 and inst.port == base

    # ... and NGINX, killed with SIGKILL, is started again with the last valid config.
    old_nginx = st.nginx.pid
    os.kill(old_nginx, signal.SIGKILL)
    ng = wait_for(lambda: (n := fleet.load_state(fleet_dir).nginx).pid and n.pid != old_nginx and n.alive() and n,
                  15, "nginx to be restarted")
    assert ng.restarts == 1 and ng.port == nport
    assert complete(st.nginx_url()).status_code == 200

    # Supervisor gone again: `fleet down` still stops everything.
    st = fleet.load_state(fleet_dir)
    pids = [p.pid for p in st.refs()] + [st.supervisor_pid]
    os.kill(st.supervisor_pid, signal.SIGKILL)
    wait_for(lambda: not processes.alive(pids[-1]), 10, "the supervisor to die")
    down = run_cli("fleet", "down")
    assert down.returncode == 0 and "fleet stopped" in down.stderr
    assert_nothing_left(fleet_dir, pids)
    assert not [p for p in psutil.process_iter() if _pgid(p.pid) == ng.pid and processes.alive(p.pid)]  # nor workers


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def test_a_failed_policy_reload_keeps_the_old_config_and_shows_the_error(fleet_dir, tmp_path):
    key = tmp_path / "api.key"
    key.write_text("sekrit-key-0123456789\n")
    base, nport = free_port_block(2), free_port()
    up = cli_up(base, nport, "--api-key-file", str(key), instances=1)
    assert up.returncode == 0, up.stderr
    url = fleet.load_state(fleet_dir).nginx_url()
    auth = {"Authorization": "Bearer sekrit-key-0123456789"}
    assert httpx.get(f"{url}/health", headers=auth).status_code == 200
    assert httpx.get(f"{url}/health").status_code == 401  # the key is enforced at NGINX

    key.unlink()  # a botched key rotation: the next render cannot read the key
    bad = run_cli("fleet", "policy", "round_robin")
    assert bad.returncode == 2 and "kept its previous config" in bad.stderr and str(key) in bad.stderr
    data = status()
    assert data["nginx"]["policy"] == "least_conn" and data["nginx"]["config_valid"] is False
    assert str(key) in data["nginx"]["config_error"]
    assert any("kept its previous config" in w for w in data["warnings"])
    assert httpx.get(f"{url}/health", headers=auth).status_code == 200  # still serving the old config

    key.write_text("sekrit-key-0123456789\n")
    assert run_cli("fleet", "policy", "round_robin").returncode == 0
    data = status()
    assert data["nginx"]["policy"] == "round_robin" and data["nginx"]["config_valid"] is True
    assert data["nginx"]["config_error"] is None and data["warnings"] == []


def _affinities(pid: int) -> set[tuple[int, ...]]:
    """The CPU affinity of every thread of `pid`, as a set of distinct masks."""
    return {tuple(sorted(os.sched_getaffinity(int(tid)))) for tid in os.listdir(f"/proc/{pid}/task")}


def test_pinned_instances_keep_their_own_cores_across_restarts(fleet_dir, tiny_model):
    from llama_tui.core import hardware

    n = min(3, len(hardware.core_groups()))
    spec = api_spec(tiny_model, instances=n, pin_cpus=True)
    snap = fleet.up(spec, state_dir=fleet_dir)
    pinned = [i.cpus for i in snap.instances]
    assert all(pinned) and len({c for cpus in pinned for c in cpus}) == sum(len(c) for c in pinned)  # disjoint
    for inst in snap.instances:  # every thread of the real llama-server, the main one included
        assert _affinities(inst.pid) == {tuple(sorted(inst.cpus))}, inst.index
        assert complete(f"http://127.0.0.1:{inst.port}", key=keys.read_internal_key(fleet_dir)).status_code == 200
    victim = snap.instances[-1]
    os.kill(victim.pid, signal.SIGKILL)
    back = wait_for(lambda: (i := fleet.load_state(fleet_dir).instances[-1]).state == "ready"
                    and i.pid != victim.pid and i, 20, "the killed pinned instance to be ready again")
    assert tuple(back.cpus) == victim.cpus and _affinities(back.pid) == {tuple(sorted(victim.cpus))}  # (state: list)
    # More instances than this machine has cores: refused before any starts; the fleet is as it was.
    cores = len(hardware.core_groups())
    with pytest.raises(UserError) as exc:
        fleet.scale(cores + 1, state_dir=fleet_dir)
    assert "--pin-cpus" in exc.value.cause and f"0 of {cores} are free" in exc.value.cause
    after = fleet.snapshot(fleet_dir)
    assert len(after.instances) == n and all(i.state == "ready" for i in after.instances)
    assert [i.pid for i in after.instances] == [i.pid for i in snap.instances[:-1]] + [back.pid]
    assert status()["instances"][0]["cpus"] == list(pinned[0])  # JSON list; the snapshot holds a tuple
