"""Live samples: the workers' running counters, merged every ~0.5 s into `BenchSample`s (tok/s, in
flight, TTFT percentiles so far) for the CLI's live line and the TUI's chart."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any, Callable, Mapping

from llama_tui.core.bench.step import LiveCounters
from llama_tui.core.snapshots import BenchSample
from llama_tui.core.stats import percentile

Sample = Callable[[BenchSample], None]


class LiveSamples:
    """Merges workers' live counters into BenchSamples."""

    def __init__(self, emit: Sample | None, t0: float, index: int, steps_total: int | None,
                 concurrency: int | None, rate: float | None, t_start: float, t_window: float, t_end: float) -> None:
        self.emit_to = emit
        self.t0 = t0
        self.index, self.steps_total = index, steps_total
        self.concurrency, self.rate = concurrency, rate
        self.t_start, self.t_window, self.t_end = t_start, t_window, t_end
        self.opened = True  # False while a gated step's window is not decided yet (`set_window`)
        self.latest: dict[int, LiveCounters] = {}
        self.ttfts: list[float] = []
        self.last_tokens = 0
        self.last_t = t_start
        self.lock = threading.Lock()
        self.last: BenchSample | None = None

    def set_window(self, t_window: float, t_end: float) -> None:
        with self.lock:
            self.t_window, self.t_end, self.opened = t_window, t_end, True

    def update(self, c: LiveCounters) -> None:
        with self.lock:
            self.latest[c.worker] = c
            self.ttfts.extend(c.ttft_new)

    def update_and_emit(self, c: LiveCounters) -> None:
        self.update(c)
        self.emit(c.t)

    def emit(self, now: float) -> None:
        with self.lock:
            counters = list(self.latest.values())
            self.ttfts.sort()
            p50 = percentile(self.ttfts, 50)
            p95 = percentile(self.ttfts, 95)
        tokens = sum(c.tokens for c in counters)
        dt = now - self.last_t
        tok_s = (tokens - self.last_tokens) / dt if dt > 0 else 0.0
        self.last_tokens, self.last_t = tokens, now
        sample = BenchSample(
            t=round(now - self.t0, 3), step=self.index, concurrency=self.concurrency, rate=self.rate,
            tok_s=round(max(0.0, tok_s), 1), inflight=sum(c.inflight for c in counters),
            requests_done=sum(c.done for c in counters),
            ttft_p50_ms=round(p50 * 1000, 2) if p50 is not None else None,
            errors=sum(c.errors for c in counters),
            phase="warmup" if not self.opened or now < self.t_window else "measure",
            ttft_p95_ms=round(p95 * 1000, 2) if p95 is not None else None, steps_total=self.steps_total,
            step_elapsed_s=round(max(0.0, now - self.t_start), 2),
            step_duration_s=round(self.t_end - self.t_start, 2))
        self.last = sample
        if self.emit_to is not None:
            self.emit_to(sample)

    def final(self, step: Mapping[str, Any]) -> None:
        """One last sample carrying the step's own figures and whether they are valid."""
        if self.emit_to is None:
            return
        now = time.monotonic()
        base = self.last or BenchSample(t=0.0, step=self.index, concurrency=self.concurrency, rate=self.rate,
                                        tok_s=0.0, inflight=0, requests_done=0, ttft_p50_ms=None, errors=0,
                                        steps_total=self.steps_total, step_duration_s=round(self.t_end - self.t_start, 2))
        self.emit_to(replace(base, t=round(now - self.t0, 3), tok_s=step["output_tok_s"] or 0.0, inflight=0,
                             ttft_p50_ms=step["ttft_p50_ms"], ttft_p95_ms=step["ttft_p95_ms"], valid=step["valid"],
                             phase="measure", step_elapsed_s=round(now - self.t_start, 2)))
