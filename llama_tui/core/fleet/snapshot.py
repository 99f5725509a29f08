"""The fleet now, as frozen snapshots: `snapshot` (what the TUI renders every second), `status_json`
(what `fleet status --json` prints) and `doctor_check` (the fleet's part of `llama-tui doctor`)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import orjson

from llama_tui.core import hardware
from llama_tui.core.errors import UserError
from llama_tui.core.fleet import frontdoor_nginx
from llama_tui.core.fleet import state as st_mod
from llama_tui.core.fleet.monitor import Monitor
from llama_tui.core.fleet.placement import PlacementError, endpoint_of
from llama_tui.core.fleet.processes import NGINX_DIR
from llama_tui.core.fleet.spec import FleetSpec, exposure_warning, metrics_url
from llama_tui.core.fleet.state import load_state, read_state
from llama_tui.core.snapshots import FleetSnapshot, InstanceSnapshot, UpstreamSnapshot, UpstreamStat


def _read_upstreams(sd: Path) -> tuple[UpstreamStat, ...]:
    try:
        data = orjson.loads((sd / st_mod.UPSTREAM_FILE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return ()
    rows = data.get("upstreams", data) if isinstance(data, dict) else data
    names = {f.name for f in dataclasses.fields(UpstreamStat)}
    out = []
    for row in rows if isinstance(rows, list) else ():
        if isinstance(row, dict) and "address" in row:
            out.append(UpstreamStat(**{k: v for k, v in row.items() if k in names}))
    return tuple(out)


def _stub_status(prefix: str | None) -> dict[str, int] | None:
    if not prefix:
        return None
    try:
        return frontdoor_nginx.read_stub_status(Path(prefix))
    except Exception:  # a status reader must never break `fleet status`
        return None


def snapshot(state_dir: Path | None = None, monitor: Any = None, interval: float = 0.5) -> FleetSnapshot:
    """The fleet now: per-instance state, slots, tok/s, CPU, memory, GPU; NGINX; the machine.

    Pass the same `monitor` (fleet/monitor.Monitor) on every call to get rates between calls (the TUI
    does, once a second). Without one, a fresh monitor samples twice, `interval` seconds apart.

    Raises StateDamaged for a damaged state file, and UserError when processes of a fleet run in the
    state dir without one: neither is "no fleet running"."""
    sd = st_mod.resolve_dir(state_dir)
    s = load_state(sd)
    if s is None and sd.is_dir():
        st_mod.refuse_strays(sd)
    own = monitor is None
    mon = Monitor() if own else monitor
    try:
        if s is None:
            if own:
                mon.system()
                time.sleep(min(interval, 0.2))
            return FleetSnapshot(taken_at=time.time(), running=False, system=mon.system())
        host = s.spec.get("host", "127.0.0.1")
        warnings = []
        try:
            fleet_spec: FleetSpec | None = FleetSpec.from_dict(s.spec)
        except (TypeError, KeyError, ValueError):
            fleet_spec = None
        try:
            # Through its engine's placement (local: the state dir's owner; Ray: the fleet's namespace), with
            # its internal key. None: not running, or its pid names a process that is not the fleet's any more.
            mon.use_fleet(fleet_spec, sd)
            handles = {i.index: mon.placement.attach(i) for i in s.instances}
        except (UserError, PlacementError) as exc:  # e.g. the Ray cluster cannot be reached from here
            warnings.append(exc.one_line().removeprefix("error: ") if isinstance(exc, UserError) else str(exc))
            handles = {i.index: None for i in s.instances}
        endpoints = {i.index: endpoint_of(i, host) for i in s.instances}
        live = [h for h in handles.values() if h is not None]
        eps = [endpoints[h.index] for h in live]
        if own:
            mon.sample(live, eps)
            time.sleep(interval)
        sample = mon.sample(live, eps)
        now = time.time()
        instances = []
        threads_total = 0
        for i in sorted(s.instances, key=lambda x: x.index):
            handle, ep = handles[i.index], endpoints[i.index]
            up_ = handle is not None
            proc = sample.process(handle)
            srv = sample.server(ep) if up_ else None
            state = i.state
            error = i.last_error
            if not up_ and state in ("ready", "starting", "draining"):
                state = "restarting" if s.supervisor_alive else "stopped"
                if not s.supervisor_alive:
                    error = error or "process gone and no supervisor to restart it (run `llama-tui fleet up`)"
            if up_ or state not in ("failed", "stopped"):
                threads_total += i.threads
            instances.append(InstanceSnapshot(
                index=i.index, port=i.port, pid=i.pid if up_ else None, state=state, restarts=i.restarts,
                uptime_s=round(now - i.started_at, 1) if up_ and i.started_at else None, threads=i.threads,
                slots_busy=srv.slots_busy if srv else None, slots_total=srv.slots_total if srv else None,
                requests_processing=srv.requests_processing if srv else None,
                requests_deferred=srv.requests_deferred if srv else None,
                server_tok_s=srv.server_tok_s if srv else None,
                cpu_percent=proc.cpu_percent if proc else None, rss_bytes=proc.rss_bytes if proc else None,
                gpu_memory_bytes=proc.gpu_memory_bytes if proc else None,
                gpu_util_percent=proc.gpu_util_percent if proc else None, cpus=i.cpus,
                log_path=str(st_mod.instance_log_path(sd, i.index)), last_error=error, host=ep.host, node=ep.node,
                retry_in_s=max(0.0, round(i.retry_at - now, 1)) if state == "failed" and i.retry_at else None,
            ))
        ng = None
        if s.nginx is not None:
            n = s.nginx
            prefix = sd / NGINX_DIR  # computed, never the prefix the file names
            ng = UpstreamSnapshot(
                port=n.port, pid=n.pid if n.alive(s.owner) else None, policy=n.policy, listen=n.listen,
                config_path=str(prefix / "nginx.conf"), config_valid=n.config_valid, config_error=n.config_error,
                upstreams=_read_upstreams(sd), stub_status=_stub_status(str(prefix)),
            )
        if not s.supervisor_alive:
            warnings.append(f"the fleet supervisor (pid {s.supervisor_pid}) is gone: instances and NGINX keep "
                            "serving but nothing restarts them (fix: `llama-tui fleet up` adopts the fleet)")
        if threads_total > hardware.physical_cores() and (fleet_spec is None or fleet_spec.engine == "local"):
            n_inst = sum(1 for x in instances if x.state not in ("failed", "stopped"))
            warnings.append(f"{n_inst} instances use {threads_total} threads on {hardware.physical_cores()} "
                            "physical cores: llama.cpp's spinning threads collapse throughput when oversubscribed "
                            "(fix: restart the fleet with fewer --threads)")
        if s.nginx is not None and s.nginx.config_error:
            warnings.append(f"nginx kept its previous config: {s.nginx.config_error}")
        expo = exposure_warning(fleet_spec) if fleet_spec is not None else None
        if expo:
            warnings.append(expo)
        return FleetSnapshot(
            taken_at=now, running=True, supervisor_pid=s.supervisor_pid, supervisor_alive=s.supervisor_alive,
            model=s.spec.get("model"), parallel=s.spec.get("parallel"), instances=tuple(instances),
            nginx=ng, system=sample.system, warnings=tuple(warnings), nodes=sample.nodes,
        )
    finally:
        if own:
            mon.close()


def status_json(snap: FleetSnapshot, state_dir: Path | None = None) -> dict[str, Any]:
    """`FleetSnapshot.to_json()` plus what a script wants next to it: the supervisor, URLs, commands."""
    from llama_tui.core.probe import base_url

    sd = st_mod.resolve_dir(state_dir)
    data = snap.to_json()
    s = read_state(sd) if snap.running else None
    data["state_dir"] = str(sd)
    data["status"] = s.status if s else None
    data["supervisor"] = {"pid": snap.supervisor_pid, "alive": snap.supervisor_alive}
    data["nginx_url"] = s.nginx_url() if s else None
    data["metrics_url"] = metrics_url(s.spec["metrics_listen"]) if s and s.spec.get("metrics_listen") else None
    data["spec"] = FleetSpec.from_dict(s.spec).public_dict() if s else None
    data["engine"] = s.spec.get("engine", "local") if s else None
    if s is not None and data["engine"] == "ray":
        data["ray"] = {"address": s.spec.get("ray_address"), "namespace": s.spec.get("ray_namespace")}
    by_index = {i.index: i for i in (s.instances if s else [])}
    host = s.spec.get("host", "127.0.0.1") if s else "127.0.0.1"
    for inst in data["instances"]:
        rec = by_index.get(inst["index"])
        inst["url"] = base_url(inst.get("host") or host, inst["port"])
        inst["node_id"] = inst.get("node")  # the node it runs on ("local", or a Ray node id)
        inst["cmd"] = rec.cmd if rec else None
        inst["in_upstream"] = rec.in_upstream if rec else None
        inst["gpu"] = rec.gpu if rec else None
    if data.get("nginx") is not None and s is not None and s.nginx is not None:
        data["nginx"]["restarts"] = s.nginx.restarts
    data["cores"] = {"physical": hardware.physical_cores(), "logical": hardware.logical_cores()}
    return data


def doctor_check(data: dict[str, Any]) -> None:
    """For `llama-tui doctor`: the running fleet (if any) and its thread budget."""
    try:
        s = load_state()
    except UserError as exc:  # damaged state, a state dir we cannot trust
        data["fleet"] = {"running": None, "error": exc.cause}
        data["warnings"].append(exc.one_line().removeprefix("error: "))
        return
    if s is None:
        data["fleet"] = {"running": False}
        return
    members = [i for i in s.instances if i.state not in ("failed", "stopped")]
    threads = sum(i.threads for i in members)
    cores = hardware.physical_cores()
    data["fleet"] = {"running": True, "instances": len(members), "threads": threads, "physical_cores": cores,
                     "supervisor_alive": s.supervisor_alive, "state_dir": s.state_dir}
    if threads > cores and s.spec.get("engine", "local") == "local":  # (a Ray fleet's threads are on its nodes)
        data["warnings"].append(
            f"the running fleet uses {len(members)} instances x their threads = {threads} threads on {cores} "
            "physical cores: throughput collapses when oversubscribed (fix: `llama-tui fleet down`, then "
            "`fleet up` without --threads, which budgets physical cores // instances)")
    if not s.supervisor_alive:
        data["warnings"].append("a fleet runs without its supervisor (fix: `llama-tui fleet up` adopts it)")
