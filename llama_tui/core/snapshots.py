"""Frozen, timestamped snapshots: the only things that cross from the core to the UI.

Widgets render these and nothing else; nothing mutable is shared across threads. `None` means
"not known / not available" and renders as "n/a".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# "draining": out of NGINX's upstream, finishing its open streams before it stops (scale down, restart).
INSTANCE_STATES = ("starting", "ready", "restarting", "failed", "stopped", "draining")


@dataclass(frozen=True)
class GpuSample:
    index: int
    name: str | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    util_percent: float | None


@dataclass(frozen=True)
class SystemSample:
    cpu_percent: float | None
    cores: int
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    gpus: tuple[GpuSample, ...] = ()


@dataclass(frozen=True)
class NodeSample:
    """One node of a fleet spread over machines (a Ray node): its id, its IP and its own numbers."""

    node: str
    host: str
    system: SystemSample | None = None


@dataclass(frozen=True)
class InstanceSnapshot:
    index: int
    port: int
    pid: int | None
    state: str  # one of INSTANCE_STATES
    restarts: int = 0
    uptime_s: float | None = None
    threads: int | None = None
    slots_busy: int | None = None
    slots_total: int | None = None
    requests_processing: float | None = None
    requests_deferred: float | None = None
    server_tok_s: float | None = None
    cpu_percent: float | None = None
    rss_bytes: int | None = None
    gpu_memory_bytes: int | None = None
    gpu_util_percent: float | None = None
    cpus: list[int] | None = None  # pinned CPUs (--pin-cpus), else None
    log_path: str | None = None
    last_error: str | None = None
    host: str | None = None  # where it serves (its endpoint: host:port on node)
    node: str | None = None  # the node it runs on ("local": this machine)


@dataclass(frozen=True)
class UpstreamStat:
    address: str
    requests: int = 0
    errors: int = 0
    errors_by_status: dict[str, int] = field(default_factory=dict)
    inflight: int = 0
    rps: float = 0.0
    p50_ms: float | None = None  # upstream response time
    p95_ms: float | None = None
    header_p50_ms: float | None = None  # upstream header time (about time to first byte)
    header_p95_ms: float | None = None
    inflight_estimate: float | None = None  # unrounded `inflight` (see core/fleet/accesslog.py)
    aborted: int = 0  # responses the client closed before the end (not errors)


@dataclass(frozen=True)
class UpstreamSnapshot:
    port: int | None
    pid: int | None
    policy: str | None
    listen: str | None = None
    config_path: str | None = None
    config_valid: bool | None = None
    config_error: str | None = None
    upstreams: tuple[UpstreamStat, ...] = ()
    stub_status: dict[str, int] | None = None


@dataclass(frozen=True)
class FleetSnapshot:
    taken_at: float
    running: bool
    supervisor_pid: int | None = None
    supervisor_alive: bool | None = None
    model: str | None = None
    parallel: int | None = None
    instances: tuple[InstanceSnapshot, ...] = ()
    nginx: UpstreamSnapshot | None = None
    system: SystemSample | None = None
    warnings: tuple[str, ...] = ()
    nodes: tuple[NodeSample, ...] = ()  # a multi-host fleet's nodes, each with its own numbers

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BenchSample:
    """One live sample from a running benchmark (emitted every ~0.5 s)."""

    t: float  # seconds since the benchmark started
    step: int
    concurrency: int | None
    rate: float | None
    tok_s: float
    inflight: int
    requests_done: int
    ttft_p50_ms: float | None
    errors: int
    phase: str = "measure"  # "warmup" or "measure"
    # Added for the TUI's throughput pane (None = the producer does not know):
    ttft_p95_ms: float | None = None
    valid: bool | None = None  # False when the step's numbers cannot be trusted (client saturated, errors)
    steps_total: int | None = None  # steps in the ramp, for "step 2/4"
    step_elapsed_s: float | None = None  # time into the current step (warm-up included)
    step_duration_s: float | None = None  # planned length of the current step (warm-up included)


@dataclass(frozen=True)
class SweepCellResult:
    """One measured point of a sweep: a fleet shape (instances x parallel) at one concurrency."""

    instances: int
    parallel: int
    concurrency: int
    tok_s: float
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None
    errors: int = 0
    valid: bool = True
    good: bool = False  # the core's verdict: error-free, valid and within the SLO (core/sweep/best.py)


@dataclass(frozen=True)
class SweepProgress:
    """Where a running sweep stands; a sweep streams one of these per change (the TUI renders them)."""

    t: float  # seconds since the sweep started
    cell: int  # 1-based index of the cell being measured (== cells_total when done)
    cells_total: int
    eta_s: float | None = None
    instances: int | None = None  # the shape and concurrency being measured now
    parallel: int | None = None
    concurrency: int | None = None
    phase: str = "measure"  # "fleet", "warmup", "measure", "done", "failed", "cancelled"
    results: tuple[SweepCellResult, ...] = ()  # every finished point so far
    message: str | None = None  # error text, or where the results were written
    done: bool = False
    row: dict[str, Any] | None = None  # the full results.jsonl row of a cell that just finished (sweep)
    out_dir: str | None = None  # the sweep's output directory (results.jsonl, best.json, metadata.json)
