"""The fleet: N llama-server instances behind NGINX, owned by a detached supervisor process.

What commands/ and ui/ call, through `from llama_tui.core import fleet`:

    fleet.FleetSpec, fleet.up, fleet.adopt, fleet.scale, fleet.restart, fleet.set_policy, fleet.down,
    fleet.snapshot, fleet.status_json, fleet.Monitor, fleet.load_state, fleet.free_port_block ...

The modules, one job each:

    spec.py            FleetSpec and its validation (extra args, loopback, exposure, oversubscription)
    ports.py           free ports, checked before anything starts
    control.py         the client side: up / adopt / scale / restart / set_policy / down
    snapshot.py        the fleet now as frozen snapshots; `fleet status --json`; doctor's fleet check
    state.py           fleet.json (damaged state refused, paths computed), locks, logs
    processes.py       which processes are the fleet's (owner marker, start time), signals, the owner scan
    placement.py       the placement seam: start/stop an instance, its Endpoint (host, port, node), its process stats
    local.py           LocalPlacement: instances as local processes (the first placement)
    ray_placement.py   RayPlacement: instances as detached Ray actors across a cluster (--engine ray)
    ray_actor.py       the Ray engine's node side: the actor that runs one llama-server on its node
    ray_cluster.py     the Ray cluster: connect, the check before anything is placed, clearing a fleet's namespace
    model_dirs.py      where the model is on each Ray node (--model-dir LABEL=DIR)
    published.py       what a remote fleet's supervisor publishes for clients (placement.json)
    keys.py            the per-fleet internal key the instances require
    process_stats.py   CPU, RSS, GPU of local processes (psutil, NVML)
    monitor.py         per-instance process and server numbers, the machine
    frontdoor.py       the front door's config: FrontDoorSpec, rendered from the templates into nginx.conf
    frontdoor_rules.py what a front door accepts: keys, listen addresses, nginx.conf paths, policies, limits
    frontdoor_nginx.py the NGINX process: nginx -t, start, adopt, reload, log rotation, stop; stub_status
    accesslog.py       per-backend statistics from NGINX's access and error logs
    supervisor.py      the supervisor process: setup, watch loop (`python -m llama_tui.core.fleet.supervisor`)
    instances.py       the supervisor's instances: spawn, crash backoff, hang check, stop, drain
    door_keeper.py     the supervisor's NGINX: start, adopt, reload, restart, access-log following
    operations.py      the supervisor's operations: scale, restart, policy, down
    control_server.py  the supervisor's control socket
    metrics_server.py  the supervisor's Prometheus listener (--metrics-listen): its sampler and HTTP server
    prometheus.py      the fleet as Prometheus metrics: a collector over the sampler's latest sample
"""

from __future__ import annotations

from llama_tui.core.fleet.control import adopt, down, restart, scale, set_policy, up
from llama_tui.core.fleet.monitor import Monitor
from llama_tui.core.fleet.ports import check_ports, free_port_block, port_free
from llama_tui.core.fleet.snapshot import doctor_check, snapshot, status_json
from llama_tui.core.fleet.spec import (DRAIN_TIMEOUT, FleetSpec, check_loopback, exposure_warning, oversubscription,
                                       parse_extra_args, unsafe_args_warning, validate_extra_args)
from llama_tui.core.fleet.state import FleetState, load_state, read_state

__all__ = [
    "DRAIN_TIMEOUT", "FleetSpec", "FleetState", "Monitor", "adopt", "check_loopback", "check_ports", "doctor_check",
    "down", "exposure_warning", "free_port_block", "load_state", "oversubscription", "parse_extra_args", "port_free",
    "read_state", "restart", "scale", "set_policy", "snapshot", "status_json", "unsafe_args_warning", "up",
    "validate_extra_args",
]
