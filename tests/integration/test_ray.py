"""The Ray engine (`fleet up --engine ray`): its pure parts here, and the real-cluster tier.

The real tests (tests/integration/ray_cases.py: a 3-node cluster, a fleet spread over it, a node lost under load)
must not touch any network but loopback: `test_the_cluster_tier` runs them in a network namespace
that has only loopback (`unshare -n`, as root) and prints their output when they fail.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llama_tui.core.errors import UserError
from llama_tui.core.fleet import FleetSpec
from llama_tui.core.fleet import ray_cluster, state as st_mod
from llama_tui.core.fleet.frontdoor import Backend, FrontDoorSpec, render
from llama_tui.core.fleet.ray_actor import with_endpoint
from llama_tui.core.snapshots import FleetSnapshot, InstanceSnapshot, NodeSample, SystemSample

from conftest import REPO

TIER_TIMEOUT_S = 600


def _tier_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root for `unshare -n`"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare and ip (util-linux, iproute2)"
    try:
        import ray  # noqa: F401
    except ImportError:
        return "Ray is not installed (pip install 'llama-tui[ray]')"
    from llama_tui.core import binaries

    for inspect in (binaries.inspect_llama_server, binaries.inspect_nginx):
        if not inspect().works:
            return "llama-server or nginx is missing (make setup)"
    return None


@pytest.mark.integration
@pytest.mark.timeout(TIER_TIMEOUT_S + 30)
def test_the_cluster_tier():
    """tests/integration/ray_cases.py inside `unshare -n`: a real 3-node Ray cluster on loopback only."""
    missing = _tier_missing()
    if missing:
        pytest.skip(missing)
    inner = (f'ip link set lo up && exec "{sys.executable}" -m pytest tests/integration/ray_cases.py -q -x -s '
             f'-p no:cacheprovider -o addopts="" --timeout {TIER_TIMEOUT_S - 30}')
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(["unshare", "-n", "sh", "-c", inner], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=TIER_TIMEOUT_S)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and " passed" in out and "skipped" not in out.splitlines()[-1], out[-20000:]
    print(out[-3000:])


# --------------------------------------------------------------------------------------------- the spec


def _spec(**kw) -> FleetSpec:
    return FleetSpec(model=Path("/m.gguf"), **kw)


def test_engine_options_are_checked_before_anything_starts():
    with pytest.raises(UserError, match="--gpus-per-instance places instances on Ray nodes"):
        _spec(gpus_per_instance=1).validate()
    with pytest.raises(UserError, match="--node-resource places"):
        _spec(node_resource="node_a").validate()
    with pytest.raises(UserError, match="--pin-cpus pins local processes"):
        _spec(engine="ray", pin_cpus=True).check_engine()
    with pytest.raises(UserError, match="--gpus picks local GPUs") as e:
        _spec(engine="ray", gpus=(0,)).check_engine()
    assert e.value.fix == "use --gpus-per-instance G instead"
    with pytest.raises(UserError, match="unknown placement"):
        _spec(engine="ray", placement="scatter").check_engine()
    ray = _spec(engine="ray", ray_address="10.0.0.1:6379", ray_namespace="llama-tui-ab12", placement="pack",
                gpus_per_instance=1.0, node_resource="gpu_box")
    ray.validate()
    assert FleetSpec.from_dict(ray.to_dict()) == ray  # the state file keeps engine, address and namespace


def test_the_cluster_address_comes_from_the_option_or_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(UserError, match="needs the address of a Ray cluster") as e:
        ray_cluster.cluster_address(None)
    assert "RAY_ADDRESS" in e.value.fix
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    assert ray_cluster.cluster_address(None) == "10.1.2.3:6379"
    assert ray_cluster.cluster_address("10.9.9.9:7000") == "10.9.9.9:7000"
    with pytest.raises(UserError, match="Ray Client address"):
        ray_cluster.cluster_address("ray://10.1.2.3:10001")


def test_threads_and_room_come_from_the_nodes():
    nodes = [{"Resources": {"CPU": 8.0, "GPU": 1.0}}, {"Resources": {"CPU": 16.0, "GPU": 2.0}},
             {"Resources": {"CPU": 4.0}}]
    assert ray_cluster.default_threads(_spec(instances=3, placement="spread"), nodes) == 4  # smallest node, 1 each
    assert ray_cluster.default_threads(_spec(instances=6, placement="spread"), nodes) == 2
    assert ray_cluster.default_threads(_spec(instances=4, placement="pack"), nodes) == 1
    assert ray_cluster.capacity(nodes, threads=2, gpus=0) == 4 + 8 + 2
    assert ray_cluster.capacity(nodes, threads=2, gpus=1) == 1 + 2  # the GPUs are the limit


def test_the_actor_binds_llama_server_to_its_node():
    cmd = ["/head/llama-server", "-m", "/m.gguf", "--host", "127.0.0.1", "--port", "18080", "-np", "2"]
    assert with_endpoint(cmd, "10.0.0.7", 41234, "/node/llama-server") == [
        "/node/llama-server", "-m", "/m.gguf", "--host", "10.0.0.7", "--port", "41234", "-np", "2"]
    assert with_endpoint(["/bin/ls"], "10.0.0.7", 1, "/bin/ls")[-4:] == ["--host", "10.0.0.7", "--port", "1"]


# --------------------------------------------------------------------------------------------- state, NGINX, views


def test_a_remote_instance_is_never_signalled_or_judged_as_a_local_process():
    rec = st_mod.InstanceState(index=0, port=4000, threads=1, log_path="/x", pid=os.getpid(), node="3f2a9c")
    assert rec.ref("/s") is None and not rec.alive() and not rec.alive("/s")  # its pid names a process elsewhere
    rec.node = "local"
    assert rec.ref("/s") is not None and rec.alive()
    fs = st_mod.FleetState(state_dir="/s", spec={"engine": "ray"}, instances=[dataclasses.replace(rec, pid=None,
                                                                                                   state="ready")])
    assert fs.anything_alive()  # out of sight on the cluster: only `fleet down` ends it
    fs.spec = {"engine": "local"}
    assert not fs.anything_alive()


def test_nginx_sends_the_internal_key_in_place_of_the_clients(tmp_path):
    key = "k3y-0123456789abcdef"
    spec = FrontDoorSpec(port=18000, backends=(Backend("10.0.0.7", 41234, 2),), internal_key=key)
    text = render(spec, tmp_path, nofile=4096, as_root=False)
    assert f'proxy_set_header Authorization "Bearer {key}";' in text and "server 10.0.0.7:41234" in text
    assert "proxy_set_header Authorization" not in render(dataclasses.replace(spec, internal_key=None), tmp_path,
                                                          nofile=4096, as_root=False)
    with pytest.raises(UserError, match="API key must be"):
        render(dataclasses.replace(spec, internal_key='x"; evil-0123456789'), tmp_path, nofile=4096, as_root=False)


def _multi_host_snapshot() -> FleetSnapshot:
    sysm = SystemSample(50.0, 8, 1 << 30, 8 << 30)
    insts = tuple(InstanceSnapshot(index=i, port=40000 + i, pid=100 + i, state="ready", host=f"10.0.0.{i + 1}",
                                   node=f"node{i}") for i in range(3))
    nodes = tuple(NodeSample(f"node{i}", f"10.0.0.{i + 1}", sysm) for i in range(3))
    return FleetSnapshot(taken_at=0.0, running=True, supervisor_pid=1, supervisor_alive=True, model="/m.gguf",
                         parallel=2, instances=insts, system=sysm, nodes=nodes)


def test_status_shows_each_host_and_a_line_per_node():
    from llama_tui.commands.fleet import render_status

    text = render_status(_multi_host_snapshot())
    header = next(ln for ln in text.splitlines() if ln.strip().startswith("#"))
    assert header.split()[:3] == ["#", "port", "host"]
    assert all(f"10.0.0.{i} " in text for i in (1, 2, 3))
    assert [ln.split()[1] for ln in text.splitlines() if ln.startswith("node ")] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    local = dataclasses.replace(_multi_host_snapshot(), nodes=(), instances=tuple(
        dataclasses.replace(i, node="local", host="127.0.0.1") for i in _multi_host_snapshot().instances))
    assert " host " not in render_status(local) and "node " not in render_status(local)


def test_the_fleet_pane_gains_a_host_column_and_node_lines_for_a_multi_host_fleet():
    from llama_tui.ui.widgets.fleet_table import FleetTable, multi_host, system_lines

    snap = _multi_host_snapshot()
    table = FleetTable()
    assert "host" not in [c.key for c in table.columns_shown()]
    table.multi_host = multi_host(snap)
    assert [c.key for c in table.columns_shown()][:3] == ["index", "port", "host"]
    assert [table.row_key(i) for i in snap.instances] == ["10.0.0.1:40000", "10.0.0.2:40001", "10.0.0.3:40002"]
    assert table.row_key(dataclasses.replace(snap.instances[0], port=0)) == "#0"  # not placed yet
    lines = system_lines(snap).splitlines()
    assert lines[0].startswith("here ") and [ln.split()[0] for ln in lines[1:]] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert system_lines(dataclasses.replace(snap, nodes=())).count("\n") == 0


def test_prometheus_labels_instances_by_host_and_node_and_exports_each_nodes_numbers():
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from llama_tui.core.fleet.prometheus import FleetCollector, MetricsSample

    snap = _multi_host_snapshot()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(lambda: MetricsSample(taken_at=0.0, duration_s=0.1, snapshot=snap, access=None,
                                                           samples=1)))
    samples = [s for fam in text_string_to_metric_families(generate_latest(registry).decode()) for s in fam.samples]
    ready = [s.labels for s in samples if s.name == "llama_tui_instance_state" and s.labels["state"] == "ready"
             and s.value == 1]
    assert sorted((ls["host"], ls["node"]) for ls in ready) == [(f"10.0.0.{i + 1}", f"node{i}") for i in range(3)]
    cpu = {(s.labels["node"], s.labels["host"]): s.value for s in samples if s.name == "llama_tui_node_cpu_ratio"}
    assert cpu == {(f"node{i}", f"10.0.0.{i + 1}"): 0.5 for i in range(3)}
    assert [s.value for s in samples if s.name == "llama_tui_system_cpu_ratio"] == [0.5]
    local = dataclasses.replace(snap, nodes=())  # a local fleet: no node series at all
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(lambda: MetricsSample(taken_at=0.0, duration_s=0.1, snapshot=local, access=None,
                                                           samples=1)))
    assert b"llama_tui_node_" not in generate_latest(registry)


def test_identity_of_a_ray_instance_goes_through_its_placement(tmp_path):
    from llama_tui.core import paths
    from llama_tui.core.fleet import keys, placement
    from llama_tui.core.fleet.ray_placement import ray_owner_marker

    marker = ray_owner_marker("llama-tui-0a1b2c3d", tmp_path)
    # never a state dir: no local fleet's owner scan (on any node: the same path may exist on every box) claims it
    assert marker != paths.owner_marker(tmp_path) and not marker.startswith("/") and str(tmp_path) in marker
    assert placement.placed_remotely({"engine": "ray"}) and not placement.placed_remotely({"engine": "local"})
    assert not placement.placed_remotely({})  # state written before engines: local
    assert placement.clear_remote({"engine": "local"}) == 0
    # a namespace `fleet up` did not make is never cleared (nothing is asked of any cluster)
    assert placement.clear_remote({"engine": "ray", "ray_address": "127.0.0.1:1", "ray_namespace": "default"}) == 0
    assert ray_cluster.is_fleet_namespace(ray_cluster.new_namespace()) and not ray_cluster.is_fleet_namespace("x")
    env = keys.inherited_env({"PATH": "/bin", "LLAMA_ARG_PORT": "1", keys.INSTANCE_KEY_ENV: "old",
                              paths.OWNER_ENV: "/elsewhere"})
    assert env == {"PATH": "/bin"}  # the placement sets the key and the owner marker itself
