"""The placement seam: where an instance runs, and the one way to start, watch and stop it.

A `Placement` starts an instance from its record (`state.InstanceState`: the command line, port,
threads, CPUs, GPU, log path) and returns an `InstanceHandle` whose `Endpoint` (host, port, node) is
where it serves. It says whether the instance still runs (`poll`), stops it (`stop`, `kill`), finds
it again from its record after the supervisor or the client restarted (`attach`), and reports its
process stats (`stats`: CPU, RSS, GPU memory and utilisation).

Everything above the seam (the supervisor, the monitor, NGINX rendering, the snapshots) speaks of
handles and endpoints. A pid in a handle is informational (it is what `fleet.json` records and
`fleet status` shows): it names a process on the handle's node, not necessarily on this machine.

`local.LocalPlacement` (local processes) is the first implementation; `ray_placement.RayPlacement`
(detached Ray actors on the nodes of a cluster) the second. `for_fleet` picks one for a fleet's
engine. A placement whose `start` is slow (remote) sets `starts_in_background`: the supervisor then
calls `start` in a worker thread, off its lock, and `cancel(index)` aborts one in progress.
`reserve` and `release` tell it which instances join the fleet and which left it for good (Ray
reserves room for them in placement groups; locally they are no-ops).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

from llama_tui.core.probe import base_url

if TYPE_CHECKING:
    from llama_tui.core.fleet.spec import FleetSpec
    from llama_tui.core.fleet.state import InstanceState

LOCAL_NODE = "local"  # the node name of an instance on this machine


@dataclass(frozen=True)
class Endpoint:
    """Where an instance serves: `host`:`port` on node `node`."""

    host: str
    port: int
    node: str = LOCAL_NODE

    @property
    def url(self) -> str:
        return base_url(self.host, self.port)


@dataclass(frozen=True)
class ProcessStats:
    """One instance's process and its descendants, on its node."""

    pid: int
    cpu_percent: float | None  # percent of one core (can exceed 100); None on the first sample
    rss_bytes: int | None
    gpu_memory_bytes: int | None  # None when unknown: no NVML, or NVML does not list or measure the process
    gpu_util_percent: float | None
    children: int = 0
    cpu_seconds: float | None = None  # user + system CPU seconds of the process tree so far


@dataclass(frozen=True)
class InstanceHandle:
    """A started (or re-attached) instance. A value: equal handles name the same process."""

    index: int
    endpoint: Endpoint
    pid: int | None = None  # its process id on its node
    started: float | None = None  # the process's start time (guards against pid reuse)


@dataclass(frozen=True)
class ExitStatus:
    """An instance that no longer runs. `code` is None when it is not known (a process this placement
    did not start itself, e.g. one adopted from an earlier supervisor)."""

    code: int | None


class PlacementError(Exception):
    """The instance could not be started; the message says why."""


class Placement(Protocol):
    starts_in_background: bool  # start() may take seconds: call it off the supervisor's lock

    def reserve(self, indices: Sequence[int]) -> None:
        """Instances `indices` join the fleet (room is reserved for them before they start)."""
        ...

    def release(self, indices: Sequence[int]) -> None:
        """Instances `indices` left the fleet for good (their room is given back)."""
        ...

    def start(self, rec: "InstanceState", restart: bool = False) -> InstanceHandle:
        """Start the instance that `rec` describes; raises PlacementError when it cannot start."""
        ...

    def attach(self, rec: "InstanceState") -> InstanceHandle | None:
        """The handle of the running instance `rec` records (pid, start time, endpoint), else None."""
        ...

    def poll(self, handle: InstanceHandle) -> ExitStatus | None:
        """None while the instance runs, its exit status once it has stopped."""
        ...

    def stop(self, handles: Sequence[InstanceHandle], timeout: float) -> None:
        """Stop the instances (SIGTERM or its like, then a hard kill after `timeout`) and release what
        they hold. Stopping an instance that already exited only releases it."""
        ...

    def kill(self, handle: InstanceHandle) -> None:
        """Kill the instance at once (a hung one); `poll` then reports its exit."""
        ...

    def listens(self, handle: InstanceHandle) -> bool:
        """Whether the instance itself serves its endpoint, not another process that took its port
        while it was down (checked before an answer from the endpoint makes it ready)."""
        ...

    def stats(self, handles: Sequence[InstanceHandle]) -> dict[InstanceHandle, ProcessStats]:
        """Process stats of each running instance (CPU percent since the previous call). Instances that
        are gone are left out."""
        ...

    def close(self) -> None:
        ...


def endpoint_of(rec: "InstanceState", default_host: str = "127.0.0.1") -> Endpoint:
    """The endpoint an instance record names (records written before endpoints were recorded have
    only a port: the fleet's host and this machine)."""
    return Endpoint(rec.host or default_host, rec.port, rec.node or LOCAL_NODE)


def for_fleet(spec: "FleetSpec", state_dir: Path | None = None, key: str | None = None) -> Placement:
    """The placement of a fleet's engine: local processes, or Ray actors (`key`: the fleet's internal
    key, which every instance gets in its environment; None: a placement that only reads)."""
    if spec.engine == "ray":
        from llama_tui.core.fleet.ray_placement import RayPlacement

        return RayPlacement(spec, state_dir, key)
    from llama_tui.core.fleet.local import LocalPlacement

    return LocalPlacement(state_dir, spec.host, internal_key=key)


def placed_remotely(spec: Mapping[str, Any]) -> bool:
    """Whether a fleet (its recorded spec) runs its instances where this machine's process table does not
    see them (Ray actors, on any node): their pids are never signalled or judged here; the placement
    (the actors in the fleet's namespace) is their identity."""
    return spec.get("engine", "local") != "local"


def clear_remote(spec: Mapping[str, Any]) -> int:
    """Remove whatever a remotely placed fleet left out of this machine's sight (a Ray fleet: every actor
    in its namespace, with its llama-server, and its placement groups). Returns how many instances were
    removed; 0 for local processes (an owner scan finds those). Raises UserError when the cluster
    cannot be reached."""
    if not placed_remotely(spec):
        return 0
    from llama_tui.core.fleet import ray_cluster

    address, namespace = spec.get("ray_address"), spec.get("ray_namespace")
    if not isinstance(address, str) or not ray_cluster.is_fleet_namespace(namespace):
        return 0
    return ray_cluster.clear(address, namespace)
