"""A step's records: the plan a worker runs (`StepPlan`), the counters it reports while running
(`LiveCounters`), and what it measured (`StepPartial`), which merges exactly across workers because it
keeps raw samples (nothing is averaged). All three cross the pipes between bench processes as JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from llama_tui.core.stats import Samples


@dataclass
class StepPlan:
    """One worker's share of a step, on the machine-wide monotonic clock."""

    mode: str  # "closed" or "open"
    t_start: float  # load starts (warm-up begins)
    t_window: float  # warm-up ends, the measured window begins
    t_end: float  # the window ends
    concurrency: int = 0  # closed loop: streams this worker keeps in flight
    rate: float = 0.0  # open loop: this worker's arrivals per second
    drain_s: float = 60.0  # open loop: how long requests sent inside the window may still finish
    seed: int = 0
    worker: int = 0
    target_offset: int = 0
    max_inflight: int = 10000  # open loop: beyond this, arrivals queue in the client (latency still counts)
    workers: int = 1  # how many workers share the step (a workload's conversations are split among them)
    gated: bool = False  # the parent opens the window (`StepRunner.set_window`); t_window/t_end: the latest
    hold_s: float = 0.0  # after the window: keep the load on until released (the servers' end read), at most this


@dataclass
class LiveCounters:
    """What a worker reports every ~0.5 s while a step runs (cumulative within the step)."""

    worker: int
    t: float
    tokens: int
    inflight: int
    done: int
    errors: int
    ttft_new: list[float] = field(default_factory=list)
    peak_inflight: int = 0  # most requests in flight at once so far in the step
    e2e_new: list[float] = field(default_factory=list)  # lifetimes of the requests ended since the last report


def upstream_entry() -> dict[str, Any]:
    return {"requests_ok": 0, "errors": 0, "output_tokens": 0.0}


@dataclass
class StepPartial:
    """What one worker measured in one step. `merge` adds another worker's; nothing is averaged."""

    window_s: float = 0.0
    requests_started: int = 0
    requests_ok: int = 0
    errors_by_class: dict[str, int] = field(default_factory=dict)
    error_examples: dict[str, str] = field(default_factory=dict)
    errors_outside_window: int = 0
    reconnects: int = 0
    cancelled: int = 0
    output_tokens: float = 0.0
    prompt_tokens: int = 0
    cache_n: int = 0
    cache_reports: int = 0  # requests whose timings reported cache_n
    window_events: int = 0
    window_reads: int = 0
    tokens_received: int = 0  # every token every request received during the whole step
    ttft: Samples = field(default_factory=Samples)
    itl: Samples = field(default_factory=Samples)
    tpot: Samples = field(default_factory=Samples)
    e2e: Samples = field(default_factory=Samples)
    loop_lag: Samples = field(default_factory=Samples)
    per_upstream: dict[str, dict[str, Any]] = field(default_factory=dict)
    worker_cpu_s: list[float] = field(default_factory=list)
    worker_events: list[int] = field(default_factory=list)

    SAMPLE_FIELDS = ("ttft", "itl", "tpot", "e2e", "loop_lag")

    @property
    def errors(self) -> int:
        return sum(self.errors_by_class.values())

    def error(self, cls: str, detail: str | None) -> None:
        self.errors_by_class[cls] = self.errors_by_class.get(cls, 0) + 1
        if detail and cls not in self.error_examples:
            self.error_examples[cls] = detail

    def merge(self, other: "StepPartial") -> "StepPartial":
        self.window_s = max(self.window_s, other.window_s)
        for name in ("requests_started", "requests_ok", "errors_outside_window", "reconnects", "cancelled",
                     "output_tokens", "prompt_tokens", "cache_n", "cache_reports", "window_events", "window_reads", "tokens_received"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for cls, n in other.errors_by_class.items():
            self.errors_by_class[cls] = self.errors_by_class.get(cls, 0) + n
        for cls, d in other.error_examples.items():
            self.error_examples.setdefault(cls, d)
        for name in self.SAMPLE_FIELDS:
            getattr(self, name).merge(getattr(other, name))
        for addr, entry in other.per_upstream.items():
            mine = self.per_upstream.setdefault(addr, upstream_entry())
            for k, v in entry.items():
                mine[k] = mine.get(k, 0) + v
        self.worker_cpu_s.extend(other.worker_cpu_s)
        self.worker_events.extend(other.worker_events)
        return self

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in self.SAMPLE_FIELDS}
        for name in self.SAMPLE_FIELDS:
            out[name] = getattr(self, name).encode()
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "StepPartial":
        kw = {k: v for k, v in d.items() if k not in cls.SAMPLE_FIELDS}
        part = cls(**kw)
        for name in cls.SAMPLE_FIELDS:
            setattr(part, name, Samples.decode(d.get(name, "")))
        return part
