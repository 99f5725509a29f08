"""How one step's load is shared among load workers: how many workers, and each one's `StepPlan`."""

from __future__ import annotations

import math
import time

from llama_tui.core import hardware
from llama_tui.core.bench.step import StepPlan


def split(total: int, parts: int) -> list[int]:
    """`total` in `parts` shares that differ by at most one, the larger first."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def auto_workers(mode: str, concurrency: int, rate: float, n_predict: int, ceiling: float | None) -> int:
    """Worker processes for a step: one per 128 streams (closed) or per half a ceiling of expected events
    (open), at most half the logical cores, so the servers on the same machine keep theirs."""
    cap = max(1, hardware.logical_cores() // 2)
    if mode == "open":
        expected = rate * n_predict
        want = math.ceil(expected / (0.5 * ceiling)) if ceiling else 1
    else:
        want = math.ceil(concurrency / 128)
    return max(1, min(cap, want))


def lead_s(n_workers: int) -> float:
    """How far ahead a time must be planned so every worker hears of it first (over a pipe, for processes)."""
    return 0.05 if n_workers == 1 else 0.4


def worker_plans(mode: str, concurrency: int | None, rate: float | None, n_workers: int, *, warmup: float,
                 duration: float, drain: float, seed: int, index: int, gate_s: float | None = None,
                 hold_s: float = 0.0) -> list[StepPlan]:
    """Each worker's share of step `index`, all on one clock: load starts shortly (later with worker
    processes, which get their plans over a pipe), `warmup` seconds are thrown away, then `duration`
    seconds are measured. With `gate_s` the window opens when the parent says (core/bench/steady.py),
    at the latest `gate_s` after the warm-up; with `hold_s` the load stays on after the window until the
    parent releases it. Concurrency is split exactly, a rate evenly; each worker and step gets its own
    arrival seed."""
    t_start = time.monotonic() + lead_s(n_workers)
    t_window = t_start + warmup + (gate_s or 0.0)
    t_end = t_window + duration
    common = dict(drain_s=drain, workers=n_workers, gated=gate_s is not None, hold_s=hold_s)
    plans = []
    for w in range(n_workers):
        worker_seed = (seed * 1000003 + index * 1009 + w) & 0xFFFFFFFF
        if mode == "closed":
            share = split(concurrency or 0, n_workers)[w]
            if share == 0:
                continue
            plans.append(StepPlan("closed", t_start, t_window, t_end, concurrency=share, seed=worker_seed, worker=w,
                                  target_offset=w, **common))  # type: ignore[arg-type]
        else:
            plans.append(StepPlan("open", t_start, t_window, t_end, rate=(rate or 0.0) / n_workers, seed=worker_seed,
                                  worker=w, target_offset=w, **common))  # type: ignore[arg-type]
    return plans
