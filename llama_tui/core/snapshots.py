"""Frozen, timestamped snapshots: the only things that cross from the core to the UI.

Widgets render these and nothing else; nothing mutable is shared across threads. `None` means
"not known / not available" and renders as "n/a".

Every class here is a frozen dataclass whose fields hold no mutable container either: on
construction, lists (and tuples of them) become tuples and dicts become `FrozenMap`s, all the way
down. `to_json()` gives plain, mutable JSON data back.
"""

from __future__ import annotations

import functools
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, TypeVar

# "draining": out of NGINX's upstream, finishing its open streams before it stops (scale down, restart).
INSTANCE_STATES = ("starting", "ready", "restarting", "failed", "stopped", "draining")


class FrozenMap(dict):
    """A read-only dict. Still a `dict` for `dataclasses.asdict`, `json` and `orjson` (the accesslog's
    upstream.json and the sweep's child protocol serialize snapshots that hold one), but every method
    that would change it raises TypeError. Hashable when its values are."""

    __slots__ = ()

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{type(self).__name__} is read-only")

    __setitem__ = __delitem__ = __ior__ = _read_only  # type: ignore[assignment]
    clear = pop = popitem = setdefault = update = _read_only  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __reduce__(self) -> tuple[Any, ...]:  # copy, deepcopy and pickle rebuild it whole
        return (type(self), (dict(self),))


def freeze(value: Any) -> Any:
    """`value` with every list and tuple made a tuple and every mapping a FrozenMap, recursively."""
    if isinstance(value, Mapping):
        return FrozenMap({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The opposite, for JSON: mappings become dicts and tuples lists, recursively (fresh, mutable copies)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class _Snapshot:
    """Base of every snapshot: freezes the container fields it was given (see `freeze`)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (list, tuple, Mapping)):
                object.__setattr__(self, f.name, freeze(value))

    def to_json(self) -> dict[str, Any]:
        return thaw(asdict(self))

    @classmethod
    def from_json(cls: type[S], data: Mapping[str, Any]) -> S:
        """Back from `to_json()` data (a child process's event): nested snapshots are rebuilt and keys
        the class does not know are dropped, so a field added to a class needs no code here."""
        nested = _nested_fields(cls)
        kw = {}
        for f in fields(cls):
            if f.name in data:
                value, inner = data[f.name], nested.get(f.name)
                if inner is not None and value is not None:
                    kind, many = inner
                    value = tuple(kind.from_json(v) for v in value) if many else kind.from_json(value)
                kw[f.name] = value
        return cls(**kw)


S = TypeVar("S", bound=_Snapshot)


@functools.cache
def _nested_fields(cls: type) -> dict[str, tuple[type[_Snapshot], bool]]:
    """The fields of `cls` that hold a snapshot (`X`, `X | None`) or a tuple of them (`tuple[X, ...]`)."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            given = [a for a in typing.get_args(hint) if a is not type(None)]
            hint = given[0] if len(given) == 1 else hint
        many = typing.get_origin(hint) is tuple
        kind = typing.get_args(hint)[0] if many else hint
        if isinstance(kind, type) and issubclass(kind, _Snapshot):
            out[name] = (kind, many)
    return out


@dataclass(frozen=True)
class GpuSample(_Snapshot):
    index: int
    name: str | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    util_percent: float | None


@dataclass(frozen=True)
class SystemSample(_Snapshot):
    cpu_percent: float | None
    cores: int
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    gpus: tuple[GpuSample, ...] = ()


@dataclass(frozen=True)
class NodeSample(_Snapshot):
    """One node of a fleet spread over machines (a Ray node): its id, its IP and its own numbers."""

    node: str
    host: str
    system: SystemSample | None = None


@dataclass(frozen=True)
class InstanceSnapshot(_Snapshot):
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
    cpus: tuple[int, ...] | None = None  # pinned CPUs (--pin-cpus), else None
    log_path: str | None = None
    last_error: str | None = None
    host: str | None = None  # where it serves (its endpoint: host:port on node)
    node: str | None = None  # the node it runs on ("local": this machine)
    retry_in_s: float | None = None  # a failed instance: seconds until the supervisor tries it again


@dataclass(frozen=True)
class UpstreamStat(_Snapshot):
    address: str
    requests: int = 0
    errors: int = 0
    errors_by_status: Mapping[str, int] = field(default_factory=FrozenMap)
    inflight: int = 0
    rps: float = 0.0
    p50_ms: float | None = None  # upstream response time
    p95_ms: float | None = None
    header_p50_ms: float | None = None  # upstream header time (about time to first byte)
    header_p95_ms: float | None = None
    inflight_estimate: float | None = None  # unrounded `inflight` (see core/fleet/accesslog.py)
    aborted: int = 0  # responses the client closed before the end (not errors)


@dataclass(frozen=True)
class UpstreamSnapshot(_Snapshot):
    port: int | None
    pid: int | None
    policy: str | None
    listen: str | None = None
    config_path: str | None = None
    config_valid: bool | None = None
    config_error: str | None = None
    upstreams: tuple[UpstreamStat, ...] = ()
    stub_status: Mapping[str, int] | None = None


@dataclass(frozen=True)
class FleetSnapshot(_Snapshot):
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


@dataclass(frozen=True)
class BenchSample(_Snapshot):
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
class StepVerdict(_Snapshot):
    """A finished benchmark step as the benchmark judged it (from its step result, not live samples).

    A benchmark run streams these between its `BenchSample`s, one as each step ends."""

    step: int  # 0-based, as BenchSample.step
    load: str  # "c=4" or "rate 2.0/s"
    tok_s: float | None
    valid: bool | None
    reason: str | None = None

    @classmethod
    def from_step(cls, d: Mapping[str, Any]) -> "StepVerdict":
        """From one step of a benchmark result (`steps` in bench.json; the bench child sends each as it ends)."""
        load = f"c={d['concurrency']}" if d.get("concurrency") is not None else f"rate {d.get('rate')}/s"
        return cls(int(d.get("step", 0)), load, d.get("output_tok_s"), d.get("valid"), d.get("invalid_reason"))


@dataclass(frozen=True)
class SweepCellResult(_Snapshot):
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
    cell: str | None = None  # the same for every repeat of one cell (None: a cell of its own)
    shape: str | None = None  # the shape's label ("2x4 t1"); None: instances x parallel


@dataclass(frozen=True)
class SweepProgress(_Snapshot):
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
    row: Mapping[str, Any] | None = None  # the full results.jsonl row of a cell that just finished (sweep)
    out_dir: str | None = None  # the sweep's output directory (results.jsonl, best.json, metadata.json)
