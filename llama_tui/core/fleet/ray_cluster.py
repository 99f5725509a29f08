"""The Ray cluster a fleet runs on (`--engine ray`): connecting to it, checking before anything is placed
that it can host the fleet, and clearing what a fleet left on it.

A process talks to one fleet's namespace at a time (`connect`): the supervisor to its own, a client
(`fleet up`, `status`, `down`, the TUI, a sweep) to the fleet it works on, switching when it moves on.
Each fleet gets a namespace of its own (`llama-tui-<random>`, recorded in its spec), so two fleets,
from two machines or two state dirs, never see each other's actors.

`prepare` is the check `fleet up` makes: the address answers, Ray is installed, some node has the
GPUs and the resource asked for, the cluster has room for every instance, and every node that could
host one has the model file (at its path there: `--model-dir`) and a llama-server. Each failure is one line naming the cause (and the
node) and the fix, with nothing placed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import secrets
import socket
import threading
from typing import TYPE_CHECKING, Any

from llama_tui.core.errors import UserError
from llama_tui.core.fleet import model_dirs

if TYPE_CHECKING:
    from llama_tui.core.fleet.spec import FleetSpec

DEFAULT_GCS_PORT = 6379
NAMESPACE_PREFIX = "llama-tui-"
CHECK_TIMEOUT_S = float(os.environ.get("LLAMA_TUI_RAY_CHECK_TIMEOUT", "90"))
INSTALL_FIX = "pip install 'llama-tui[ray]' (the same Python and Ray version on every node)"

_lock = threading.RLock()
_connected: tuple[str, str] | None = None  # (address, namespace) this process's driver uses


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("--engine ray needs Ray, which is not installed", INSTALL_FIX) from None
    return ray


def cluster_address(address: str | None) -> str:
    """The cluster's address: `address` (--ray-address), else $RAY_ADDRESS."""
    addr = (address or os.environ.get("RAY_ADDRESS") or "").strip()
    if not addr:
        raise UserError("--engine ray needs the address of a Ray cluster",
                        "pass --ray-address HEAD_IP:6379 or set RAY_ADDRESS (start one with `ray start --head`)")
    if addr.startswith("ray://"):
        raise UserError(f"{addr} is a Ray Client address; llama-tui joins the cluster as a driver",
                        "run llama-tui on a node of the cluster and pass the head's HOST:6379")
    return addr


def _host_port(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep:
        return addr, DEFAULT_GCS_PORT
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise UserError(f"bad Ray address {addr!r}", "write it as HOST:PORT, e.g. 192.168.1.10:6379") from None


def check_reachable(addr: str, timeout: float = 3.0) -> None:
    """Fail fast, before Ray's own retries, when nothing listens at the cluster's address."""
    if addr in ("auto", "local"):
        return
    host, port = _host_port(addr)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise UserError(f"cannot reach the Ray cluster at {addr} ({why})",
                        "start it with `ray start --head` there, open its port, or pass the right --ray-address / "
                        "RAY_ADDRESS") from None


def new_namespace() -> str:
    return NAMESPACE_PREFIX + secrets.token_hex(4)


def is_fleet_namespace(namespace: Any) -> bool:
    """A namespace `new_namespace` made (`fleet down` clears no other)."""
    return isinstance(namespace, str) and re.fullmatch(re.escape(NAMESPACE_PREFIX) + "[0-9a-f]{8}", namespace) is not None


def connect(address: str, namespace: str) -> Any:
    """`ray`, connected to the cluster at `address` as a driver in `namespace`."""
    global _connected
    ray = import_ray()
    with _lock:
        if ray.is_initialized() and _connected == (address, namespace):
            return ray
        if ray.is_initialized():
            ray.shutdown()
        check_reachable(address)
        try:
            ray.init(address=address, namespace=namespace, logging_level=logging.ERROR, log_to_driver=False,
                     configure_logging=True)
        except (ConnectionError, RuntimeError, TimeoutError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"cannot join the Ray cluster at {address}: {first}",
                            "check that `ray status --address ADDR` works from this machine and that its Ray "
                            "version matches the cluster's") from None
        _connected = (address, namespace)
        return ray


def disconnect() -> None:
    global _connected
    with _lock:
        if _connected is not None:
            import ray

            ray.shutdown()
            _connected = None


# --------------------------------------------------------------------------------------------- the check


def _nodes(ray: Any, resource: str | None) -> list[dict[str, Any]]:
    alive = [n for n in ray.nodes() if n.get("Alive")]
    return [n for n in alive if not resource or n.get("Resources", {}).get(resource, 0) > 0]


def _describe(nodes: list[dict[str, Any]]) -> str:
    return ", ".join(f"{n['NodeManagerAddress']} CPU {n['Resources'].get('CPU', 0):g} GPU {n['Resources'].get('GPU', 0):g}"
                     for n in nodes)


def default_threads(spec: "FleetSpec", nodes: list[dict[str, Any]]) -> int:
    """Threads per instance when not given: the smallest node's CPUs over the instances it may get."""
    per_node = math.ceil(spec.instances / len(nodes)) if spec.placement == "spread" else spec.instances
    cpus = min(int(n["Resources"].get("CPU", 1)) for n in nodes)
    return max(1, cpus // max(1, per_node))


def capacity(nodes: list[dict[str, Any]], threads: int, gpus: float) -> int:
    """How many instances of `threads` CPUs and `gpus` GPUs the nodes hold in all."""
    total = 0
    for n in nodes:
        res = n["Resources"]
        fit = int(res.get("CPU", 0) // threads)
        if gpus:
            fit = min(fit, int(res.get("GPU", 0) // gpus))
        total += fit
    return total


def _check_nodes(ray: Any, nodes: list[dict[str, Any]], models: list[str], llama_server: str) -> list[dict[str, Any]]:
    """`ray_actor.check_node` on every node (with `models[i]`, the model's path on `nodes[i]`), each pinned to
    its node; a node that cannot run it fails."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from llama_tui.core.fleet import ray_actor

    task = ray.remote(ray_actor.check_node)
    refs = {n["NodeManagerAddress"]: task.options(
        num_cpus=0, max_retries=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(model, llama_server)
        for n, model in zip(nodes, models)}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=CHECK_TIMEOUT_S)
    out = []
    for ip, ref in refs.items():
        if ref not in ready:
            for r in refs.values():
                ray.cancel(r, force=True)
            raise UserError(f"Ray node {ip} did not run llama-tui's check within {CHECK_TIMEOUT_S:.0f}s",
                            f"see `ray status`; that node may be overloaded or unable to start workers ({INSTALL_FIX})")
        try:
            out.append(ray.get(ref))
        except Exception as exc:  # e.g. llama_tui cannot be imported there
            first = next((ln.strip() for ln in reversed(str(exc).splitlines()) if ln.strip()), type(exc).__name__)
            raise UserError(f"Ray node {ip} cannot run llama-tui: {first}", INSTALL_FIX) from None
    return out


def prepare(spec: "FleetSpec", llama_server: str) -> "FleetSpec":
    """Check that the cluster can host `spec` and return it with its address, a new namespace and its
    threads per instance. Raises UserError (nothing placed) when it cannot."""
    addr = cluster_address(spec.ray_address)
    namespace = new_namespace()
    ray = connect(addr, namespace)
    res = spec.node_resource
    nodes = _nodes(ray, res)
    if not nodes:
        if res:
            raise UserError(f"no node of the Ray cluster at {addr} has the resource {res!r}",
                            f"start nodes with `ray start ... --resources '{{\"{res}\": 1}}'`, or drop --node-resource")
        raise UserError(f"the Ray cluster at {addr} has no live node", "see `ray status`")
    gpus = spec.gpus_per_instance
    if gpus and not any(n["Resources"].get("GPU", 0) >= gpus for n in nodes):
        raise UserError(f"no node of the Ray cluster at {addr} has {gpus:g} GPU(s) for an instance "
                        f"(nodes: {_describe(nodes)})",
                        "lower --gpus-per-instance, or add a node with GPUs (`ray start --num-gpus N ...`)")
    threads = spec.threads or default_threads(spec, nodes)
    room = capacity(nodes, threads, gpus)
    if room < spec.instances:
        raise UserError(f"the Ray cluster at {addr} has room for {room} instance(s) of {threads} CPU(s)"
                        + (f" and {gpus:g} GPU(s)" if gpus else "") + f", not {spec.instances} "
                        f"(nodes: {_describe(nodes)})",
                        "lower --instances, --threads or --gpus-per-instance, or add nodes")
    check_model_dirs(spec, ray.nodes(), addr)
    models = [model_dirs.model_on_node(str(spec.model), spec.model_dirs, n["Resources"]) for n in nodes]
    for n, found in zip(nodes, _check_nodes(ray, nodes, models, llama_server)):
        check_found(spec, n["Resources"], found)
    return dataclasses.replace(spec, ray_address=addr, ray_namespace=namespace, threads=threads)


def check_model_dirs(spec: "FleetSpec", nodes: list[dict[str, Any]], addr: str) -> None:
    """Every --model-dir label is a custom resource of some live node (a label none has is a typo)."""
    alive = [n for n in nodes if n.get("Alive")]
    for label in model_dirs.unmatched(spec.model_dirs, alive):
        raise UserError(f"--model-dir {label}=...: no node of the Ray cluster at {addr} has the resource {label!r}",
                        f"start those nodes with `ray start ... --resources '{{\"{label}\": 1}}'`, or correct the "
                        "label (`ray status` lists the nodes' resources)")


def check_found(spec: "FleetSpec", resources: dict[str, Any], found: dict[str, Any]) -> None:
    """UserError when the node `check_node` `found` lacks the model (at its path there) or a llama-server."""
    where = f"Ray node {found['ip']} ({found['hostname']})"
    if not found["model"]:
        hit = model_dirs.match(spec.model_dirs, resources)
        if hit is None:
            raise UserError(f"the model {spec.model} is missing on {where}",
                            "copy it to the same path on every node, give that node's directory with "
                            "--model-dir LABEL=DIR, or pin the fleet to nodes that have it with --node-resource")
        label, directory = hit
        if not found.get("model_dir", True):
            raise UserError(f"the directory {directory} of --model-dir {label}={directory} is missing on {where}",
                            f"create it there and copy {spec.model.name} into it, or correct --model-dir {label}=DIR")
        raise UserError(f"the model {spec.model.name} is missing in {directory} (--model-dir {label}={directory}) "
                        f"on {where}", f"copy {spec.model.name} into {directory} there, or correct --model-dir "
                        f"{label}=DIR")
    if not found["llama_server"]:
        raise UserError(f"no llama-server on {where}",
                        "run `llama-tui doctor` there (it builds one), or set LLAMA_SERVER_BIN in the "
                        "environment of its `ray start`")


# --------------------------------------------------------------------------------------------- clearing


def clear(address: str, namespace: str) -> int:
    """Kill every actor in the fleet's namespace and remove its placement groups (their llama-servers
    die with them). Returns how many actors were killed."""
    ray = connect(address, namespace)
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    killed = 0
    for name in ray.util.list_named_actors():
        try:
            ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
            killed += 1
        except ValueError:
            pass  # gone meanwhile
    for pg_id, info in ray.util.placement_group_table().items():
        if str(info.get("name", "")).startswith(namespace + ":") and info.get("state") != "REMOVED":
            try:
                remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg_id)))
            except Exception:
                pass  # removed meanwhile
    return killed


def leftovers(address: str, namespace: str) -> list[str]:
    """Named actors still alive in the namespace (tests and `fleet down` check that none is left)."""
    ray = connect(address, namespace)
    return list(ray.util.list_named_actors())
