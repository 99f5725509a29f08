"""A real 3-node Ray cluster on loopback, and a fleet on it driven through the CLI as a user would.

Run by tests/integration/test_ray.py inside a network namespace that has only loopback (`unshare -n`); on its own
it skips. The nodes are 127.0.0.1 (head), 127.0.0.2 and 127.0.0.3, each in its own session with two
logical CPUs; 127.0.0.3 cannot see HIDDEN (a tmpfs over it), which holds a copy of the tiny model;
ALT holds another copy, which the shared fleet gives that node with `--model-dir node_c=ALT`.
The tests run in file order and share one fleet: spread over the nodes, benched, a node lost under
load, scaled, restarted, then brought down.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import orjson
import psutil
import pytest

from llama_tui.core import model
from llama_tui.core.fleet import keys, ray_cluster

from conftest import REPO, free_port, wait_for
from ray_support import LocalRayCluster, in_loopback_namespace

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not in_loopback_namespace(), reason="run by tests/integration/test_ray.py inside `unshare -n`")]

HIDDEN = Path("/tmp") / f"lt-ray-hidden-{os.getpid()}"
ALT = Path("/tmp") / f"lt-ray-alt-{os.getpid()}"  # node_c's --model-dir
PARALLEL = 2


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRayCluster]:
    tiny = model.ensure_tiny_model()
    HIDDEN.mkdir(exist_ok=True)
    link = HIDDEN / "tiny.gguf"
    shutil.copyfile(tiny, link)  # a copy: the model's path is resolved, a symlink would lead out of HIDDEN
    (ALT / "empty").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tiny, ALT / "tiny.gguf")
    c = LocalRayCluster(nodes=3, cpus=2, hide={2: HIDDEN})
    try:
        c.start()
        print(f"cluster of 3 nodes up in {c.started_in:.1f}s")
        yield c
    finally:
        c.stop()
        link.unlink(missing_ok=True)
        HIDDEN.rmdir()
        shutil.rmtree(ALT, ignore_errors=True)


def cli(*args: str, state_dir: Path | None = None, timeout: float = 240, env: dict | None = None,
        code: str | None = None) -> subprocess.CompletedProcess[str]:
    """`llama-tui ARGS` in a child process (`code`: a python -c prelude instead of -m)."""
    e = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    e.pop("RAY_ADDRESS", None)
    if state_dir is not None:
        e["LLAMA_TUI_STATE_DIR"] = str(state_dir)
    argv = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "llama_tui", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=e, cwd=REPO,
                          stdin=subprocess.DEVNULL)


def cluster_objects(address: str) -> tuple[list[Any], list[str]]:
    """Every named actor (all namespaces) and every placement group not removed, as Ray sees them."""
    ray = ray_cluster.connect(address, "llama-tui-test-observer")
    actors = ray.util.list_named_actors(all_namespaces=True)
    groups = [g["name"] for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED"]
    return actors, groups


def llama_servers() -> list[psutil.Process]:
    """This session's llama-servers (their owner marker names a state dir under its temp dir), wherever they run
    (a Ray instance's marker names its namespace and state dir, `ray_placement.ray_owner_marker`)."""
    out = []
    for p in psutil.process_iter(["name"]):
        try:
            if (p.info["name"] or "").startswith("llama-server") and p.status() != psutil.STATUS_ZOMBIE and \
                    BASE[0] in p.environ().get("LLAMA_TUI_OWNER", ""):
                out.append(p)
        except psutil.Error:
            continue
    return out


BASE = [""]  # this session's temp dir


@pytest.fixture(scope="module", autouse=True)
def base_temp(tmp_path_factory: pytest.TempPathFactory) -> None:
    BASE[0] = str(tmp_path_factory.getbasetemp())


def host_of(p: psutil.Process) -> str | None:
    cmd = p.cmdline()
    return cmd[cmd.index("--host") + 1] if "--host" in cmd else None


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stdout, proc.stderr)
    return lines[0]


def up_args(address: str, *extra: str) -> list[str]:
    return ["fleet", "up", "--engine", "ray", "--ray-address", address, "--parallel", str(PARALLEL), "--threads", "1",
            "--ctx-per-slot", "512", "--nginx-port", str(free_port()), "--detach", "--ready-timeout", "90", *extra]


# --------------------------------------------------------------------------------------------- bad input


def test_bad_input_is_one_line_exit_2_and_nothing_is_placed(cluster: LocalRayCluster, tmp_path: Path) -> None:
    sd = tmp_path / "state"
    closed = free_port()
    line = one_error_line(cli(*up_args(f"127.0.0.1:{closed}", "--model", "tiny"), state_dir=sd))
    assert f"cannot reach the Ray cluster at 127.0.0.1:{closed}" in line and "ray start --head" in line

    line = one_error_line(cli(*up_args(cluster.address, "--model", "tiny", "--gpus-per-instance", "1"), state_dir=sd))
    assert "has 1 GPU(s)" in line and "--gpus-per-instance" in line

    line = one_error_line(cli(*up_args(cluster.address, "--model", str(HIDDEN / "tiny.gguf"), "--instances", "3"),
                              state_dir=sd))
    assert "is missing on Ray node 127.0.0.3" in line and "same path on every node" in line

    # --model-dir: each node's path is checked where it would load it, one line naming the node
    hidden = ["--model", str(HIDDEN / "tiny.gguf"), "--instances", "3"]
    line = one_error_line(cli(*up_args(cluster.address, *hidden, "--model-dir", f"node_c={ALT}/nowhere"), state_dir=sd))
    assert f"the directory {ALT}/nowhere of --model-dir node_c={ALT}/nowhere is missing on Ray node 127.0.0.3" in line
    line = one_error_line(cli(*up_args(cluster.address, *hidden, "--model-dir", f"node_c={ALT}/empty"), state_dir=sd))
    assert f"the model tiny.gguf is missing in {ALT}/empty (--model-dir node_c={ALT}/empty) on Ray node 127.0.0.3" in line
    line = one_error_line(cli(*up_args(cluster.address, *hidden, "--model-dir", f"node_z={ALT}"), state_dir=sd))
    assert "no node of the Ray cluster" in line and "has the resource 'node_z'" in line

    no_ray = "import sys; sys.modules['ray'] = None; sys.argv[0] = 'llama-tui'; from llama_tui.cli import main; sys.exit(main(sys.argv[1:]))"
    line = one_error_line(cli(*up_args(cluster.address, "--model", "tiny"), state_dir=sd, code=no_ray))
    assert "needs Ray, which is not installed" in line and "llama-tui[ray]" in line


    actors, groups = cluster_objects(cluster.address)
    assert actors == [] and groups == []
    assert llama_servers() == []
    assert not (sd / "fleet.json").exists()


def test_a_sweep_runs_its_fleets_on_ray(cluster: LocalRayCluster, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    proc = cli("sweep", "--engine", "ray", "--ray-address", cluster.address, "--model", "tiny", "--instances", "2",
               "--parallel", "1", "--concurrency", "2", "--duration", "2", "--warmup", "0.5", "--n-predict", "16",
               "--ctx-per-slot", "512", "--nginx-port", str(free_port()), "--out", str(out), state_dir=tmp_path / "sd",
               timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [orjson.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines() if ln.strip()]
    assert len(rows) == 1 and rows[0]["errors"] == 0 and rows[0]["output_tok_s"] > 0, rows
    assert cluster_objects(cluster.address) == ([], [])


# --------------------------------------------------------------------------------------------- one fleet


@pytest.fixture(scope="module")
def fleet(cluster: LocalRayCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    sd = tmp_path_factory.mktemp("ray-fleet") / "state"
    t0 = time.monotonic()
    # the model where 127.0.0.3 cannot see it, and there (node_c) the copy in ALT
    proc = cli(*up_args(cluster.address, "--model", str(HIDDEN / "tiny.gguf"), "--model-dir", f"node_c={ALT}",
                        "--instances", "3", "--placement", "spread", "--metrics-listen", f"127.0.0.1:{free_port()}"),
               state_dir=sd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(f"fleet of 3 up in {time.monotonic() - t0:.1f}s")
    try:
        yield sd
    finally:
        cli("fleet", "down", state_dir=sd)


def status(sd: Path) -> dict[str, Any]:
    proc = cli("fleet", "status", "--json", state_dir=sd)
    assert proc.returncode == 0, proc.stderr
    return orjson.loads(proc.stdout)


def model_of(inst: dict[str, Any]) -> str:
    """The model file the instance's llama-server loads (its command line on its node)."""
    return inst["cmd"][inst["cmd"].index("-m") + 1]


def loaded_models() -> dict[str, str]:
    """Each running llama-server's model, by the address it is bound to (what really runs on the nodes)."""
    out = {}
    for p in llama_servers():
        cmd = p.cmdline()
        out[host_of(p)] = cmd[cmd.index("-m") + 1]
    return out


def upstreams(sd: Path) -> list[str]:
    conf = (sd / "nginx" / "nginx.conf").read_text()
    return sorted(ln.split()[1] for ln in conf.splitlines() if ln.strip().startswith("server ") and ":" in ln)


def bench(sd: Path, out: Path, *extra: str, timeout: float = 120) -> dict[str, Any]:
    proc = cli("bench", "--n-predict", "24", "--warmup", "0", "--json", str(out), *extra, state_dir=sd, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return orjson.loads(out.read_bytes())["steps"][0]


def test_spread_puts_one_instance_on_each_node(fleet: Path, cluster: LocalRayCluster) -> None:
    data = status(fleet)
    insts = data["instances"]
    assert data["engine"] == "ray" and data["ray"]["address"] == cluster.address
    assert sorted(i["host"] for i in insts) == cluster.ips  # 127.0.0.1, .2, .3
    assert len({i["node_id"] for i in insts}) == 3 and all(i["state"] == "ready" for i in insts)
    assert upstreams(fleet) == sorted(f"{i['host']}:{i['port']}" for i in insts)  # NGINX balances the actors
    assert {n["host"] for n in data["nodes"]} == set(cluster.ips)  # each node's own numbers
    # --model-dir node_c=ALT: node_c loads ALT/tiny.gguf, the others --model as given
    want = {ip: str(ALT / "tiny.gguf") if ip == cluster.ips[2] else str(HIDDEN / "tiny.gguf") for ip in cluster.ips}
    assert {i["host"]: model_of(i) for i in insts} == want
    wait_for(lambda: loaded_models() == want, 20, "the llama-servers on the nodes to load those files")
    text = cli("fleet", "status", state_dir=fleet).stdout
    assert all(f"node {ip}" in text for ip in cluster.ips) and " host " in text.splitlines()[3]


def test_the_tui_shows_the_three_hosts_and_a_line_per_node(fleet: Path, cluster: LocalRayCluster,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from llama_tui import cli as cli_mod
    from llama_tui.ui.app import make_app
    from llama_tui.ui.controller import CoreController
    from tests.support.scripted import wait_for as ui_wait_for
    from llama_tui.ui.widgets.fleet_table import FleetTable

    monkeypatch.setenv("LLAMA_TUI_STATE_DIR", str(fleet))
    app = make_app(CoreController.from_args(cli_mod.build_parser().parse_args([])))

    async def scenario() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            await ui_wait_for(pilot, lambda: bool(app.fleet and len(app.fleet.instances) == 3 and len(app.fleet.nodes) == 3
                                                  and all(i.state == "ready" for i in app.fleet.instances)),
                              timeout=60, what="the Ray fleet and its nodes in the TUI")
            await pilot.pause(0.5)
            table = app.screen.query_one(FleetTable)
            keys = [c.key for c in table.columns]
            hosts = {table.get_row_at(r)[keys.index("host")].strip() for r in range(table.row_count - 1)}
            assert hosts == set(cluster.ips)
            lines = str(getattr(app.screen.query_one("#system-line"), "_shown_key", "")).splitlines()
            assert [ln.split()[0] for ln in lines[1:]] == cluster.ips

    asyncio.run(scenario())


def test_a_streamed_bench_through_nginx_has_no_errors(fleet: Path, tmp_path: Path) -> None:
    step = bench(fleet, tmp_path / "b.json", "--concurrency", "6", "--duration", "4")
    assert step["errors"] == 0 and step["errors_outside_window"] == 0 and step["requests_ok"] > 20, step
    assert len(step["per_upstream"]) == 3  # every node served
    # the servers' own count: bench found the instances on the nodes and sent them the fleet's internal key
    assert step["server_output_tok_s"] and step["server_output_tok_s"] > 0, step


def test_prometheus_metrics_label_each_instance_with_its_host_and_node(fleet: Path, cluster: LocalRayCluster) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    url = status(fleet)["metrics_url"]

    def scraped() -> dict[str, list[Any]] | None:
        text = httpx.get(url, timeout=10).text
        out: dict[str, list[Any]] = {}
        for fam in text_string_to_metric_families(text):
            for smp in fam.samples:
                out.setdefault(smp.name, []).append((smp.labels, smp.value))
        ready = [ls for ls, v in out.get("llama_tui_instance_state", []) if ls["state"] == "ready" and v == 1]
        return out if len(ready) == 3 and len(out.get("llama_tui_node_cpu_ratio", [])) == 3 else None

    m = wait_for(scraped, 30, "the metrics of 3 ready instances on 3 nodes")
    insts = {i["index"]: i for i in status(fleet)["instances"]}
    ready = [ls for ls, v in m["llama_tui_instance_state"] if ls["state"] == "ready" and v == 1]
    assert sorted((ls["host"], ls["node"], ls["port"]) for ls in ready) == sorted(
        (i["host"], i["node_id"], str(i["port"])) for i in insts.values())
    assert sorted(ls["host"] for ls in ready) == cluster.ips
    assert {ls["host"] for ls, _ in m["llama_tui_node_memory_total_bytes"]} == set(cluster.ips)
    slots = {ls["host"]: v for ls, v in m["llama_tui_instance_slots_total"]}  # read with the internal key
    assert slots == {ip: PARALLEL for ip in cluster.ips}


def test_an_instance_answers_only_with_the_internal_key(fleet: Path) -> None:
    key = keys.read_internal_key(fleet)
    inst = status(fleet)["instances"][0]
    body = {"prompt": "hi", "n_predict": 4}
    assert httpx.post(f"{inst['url']}/completion", json=body, timeout=30).status_code == 401
    assert httpx.post(f"{inst['url']}/completion", json=body, timeout=30,
                      headers={"Authorization": "Bearer wrong-key-123"}).status_code == 401
    assert httpx.post(f"{inst['url']}/completion", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {key}"}).status_code == 200
    for p in llama_servers():  # in the environment, never on a command line
        assert key not in " ".join(p.cmdline()) and p.environ()[keys.INSTANCE_KEY_ENV] == key


def test_no_connection_leaves_loopback(fleet: Path, cluster: LocalRayCluster) -> None:
    procs = cluster.processes() + llama_servers() + [
        p for p in psutil.process_iter() if p.name().startswith("nginx") and str(fleet) in " ".join(p.cmdline())]
    sup = status(fleet)["supervisor"]["pid"]
    procs.append(psutil.Process(sup))
    seen = 0
    for p in procs:
        try:
            conns = p.net_connections(kind="inet")
        except psutil.Error:
            continue
        for c in conns:
            for addr in (c.laddr, c.raddr):
                if addr:
                    seen += 1
                    ip = ipaddress.ip_address(addr.ip.split("%")[0])
                    ip = getattr(ip, "ipv4_mapped", None) or ip  # ::ffff:127.0.0.1
                    assert ip.is_loopback or (ip.is_unspecified and not c.raddr), (p.pid, p.name(), c)
    assert seen > 20  # it looked at real sockets


def test_a_lost_node_only_fails_its_streams_and_its_instance_comes_back(fleet: Path, cluster: LocalRayCluster,
                                                                        tmp_path: Path) -> None:
    dead = cluster.ips[2]
    before = {i["index"]: i for i in status(fleet)["instances"]}
    victim = next(i for i in before.values() if i["host"] == dead)
    result: dict[str, Any] = {}
    load = threading.Thread(target=lambda: result.update(bench(fleet, tmp_path / "load.json", "--concurrency", "6",
                                                               "--duration", "14")))
    load.start()
    time.sleep(4)
    cluster.kill_node(dead)
    t0 = time.monotonic()

    def recovered() -> dict[str, Any] | None:
        data = status(fleet)
        insts = data["instances"]
        ok = (len(insts) == 3 and all(i["state"] == "ready" for i in insts)
              and dead not in {i["host"] for i in insts})
        return data if ok else None

    data = wait_for(recovered, 120, "the lost node's instance to come back on the others")
    print(f"instance {victim['index']} back on {next(i['host'] for i in data['instances'] if i['index'] == victim['index'])} "
          f"{time.monotonic() - t0:.1f}s after its node was lost")
    load.join(timeout=120)
    step = result
    lost = f"{victim['host']}:{victim['port']}"
    errors = step["errors"] + step["errors_outside_window"]
    others = {a: u["errors"] for a, u in step["per_upstream"].items() if a != lost and u["errors"]}
    assert others == {} and errors <= PARALLEL + 1 and step["requests_ok"] > 20, step  # only its in-flight streams
    back = next(i for i in data["instances"] if i["index"] == victim["index"])
    assert back["restarts"] >= 1
    # it had loaded node_c's ALT copy; on a node without that label it loads --model as given
    assert model_of(victim) == str(ALT / "tiny.gguf") and model_of(back) == str(HIDDEN / "tiny.gguf")
    assert all(i["host"] in cluster.ips[:2] for i in data["instances"])
    wait_for(lambda: upstreams(fleet) == sorted(f"{i['host']}:{i['port']}" for i in status(fleet)["instances"]),
             20, "NGINX to follow")
    # nothing is left on the dead node: no llama-server bound to it, none of its Ray processes
    wait_for(lambda: not [p for p in llama_servers() if host_of(p) == dead], 30, "the dead node's llama-server to die")
    wait_for(lambda: not cluster.node_processes(dead), 30, "the dead node's processes to go")
    again = bench(fleet, tmp_path / "after.json", "--concurrency", "4", "--duration", "3")
    assert again["errors"] == 0 and again["requests_ok"] > 10, again


def test_scale_and_restart_work_as_locally(fleet: Path, cluster: LocalRayCluster) -> None:
    proc = cli("fleet", "scale", "2", state_dir=fleet)
    assert proc.returncode == 0, proc.stderr
    data = status(fleet)
    assert [i["index"] for i in data["instances"]] == [0, 1] and len(upstreams(fleet)) == 2
    ns = data["ray"]["namespace"]
    actors, groups = cluster_objects(cluster.address)
    assert sorted(a["name"].split("-")[0] for a in actors if a["namespace"] == ns) == ["i0", "i1"]
    old = next(i for i in data["instances"] if i["index"] == 1)
    proc = cli("fleet", "restart", "1", state_dir=fleet)
    assert proc.returncode == 0, proc.stderr
    new = next(i for i in status(fleet)["instances"] if i["index"] == 1)
    assert new["state"] == "ready" and new["restarts"] == old["restarts"] + 1 and new["pid"] != old["pid"]
    assert upstreams(fleet) == sorted(f"{i['host']}:{i['port']}" for i in status(fleet)["instances"])


def test_a_new_supervisor_finds_the_fleet_again_from_another_shell(fleet: Path) -> None:
    before = status(fleet)
    os.kill(before["supervisor"]["pid"], 9)
    wait_for(lambda: not status(fleet)["supervisor"]["alive"], 20, "the supervisor to be gone")
    orphan = status(fleet)
    assert [i["pid"] for i in orphan["instances"]] == [i["pid"] for i in before["instances"]]  # still serving
    assert httpx.post(f"{orphan['nginx_url']}/completion", json={"prompt": "hi", "n_predict": 4}, timeout=30).status_code == 200
    proc = cli("fleet", "up", "--detach", state_dir=fleet)  # adopts it: the state names the cluster and the namespace
    assert proc.returncode == 0 and "adopting" in proc.stderr, proc.stderr
    after = status(fleet)
    assert after["supervisor"]["alive"] and after["supervisor"]["pid"] != before["supervisor"]["pid"]
    assert [(i["pid"], i["host"], i["port"], i["state"]) for i in after["instances"]] == [
        (i["pid"], i["host"], i["port"], "ready") for i in before["instances"]]


def test_down_leaves_no_llama_server_no_actor_and_no_nginx(fleet: Path, cluster: LocalRayCluster) -> None:
    proc = cli("fleet", "down", state_dir=fleet)
    assert proc.returncode == 0 and "fleet stopped" in proc.stderr, proc.stderr
    assert cluster_objects(cluster.address) == ([], [])
    wait_for(lambda: not llama_servers(), 20, "every llama-server to exit")
    assert not [p for p in psutil.process_iter() if p.name().startswith("nginx") and str(fleet) in " ".join(p.cmdline())]
    assert not (fleet / "fleet.json").exists()
