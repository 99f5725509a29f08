"""Steady state: when a step's measured window opens, and whether the window was long enough.

Warm-up lasts at least --warmup seconds, and (unless --warmup is 0: the window opens with the load) until
- the requests in flight have reached the step's target (closed loop: its concurrency), and
- at least one request lifetime has passed: as many requests have ended as the target (closed loop:
  every stream's first request, the ones that started together; open loop: one), and the load has
  run for at least the median lifetime (E2E) of the requests ended so far.
A warm-up that has not got there after `WARMUP_CAP_S` more seconds opens the window anyway and says
why (`warmup_note`). The window is sized from the request lifetime: --duration seconds, stretched to
hold `MIN_LIFETIMES` lifetimes of the warm-up's median E2E, up to --max-window (default
`STRETCH_MAX` x --duration; `window_note` says when it stretched). A window that still held fewer
than `MIN_LIFETIMES` request lifetimes (the window's E2E p50) is too short: the step is not valid,
with the reason.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from llama_tui.core.bench.step import LiveCounters

if TYPE_CHECKING:
    from llama_tui.core.bench.live import LiveSamples
    from llama_tui.core.bench.servers import CounterReader

WARMUP_CAP_S = 60.0  # beyond --warmup
MIN_LIFETIMES = 3.0
STRETCH_MAX = 4.0  # default --max-window: this many times --duration


class WarmupGate:
    """Fed the workers' live counters; says when the window opens (`decide`)."""

    def __init__(self, mode: str, target_inflight: int, t_start: float, warmup: float, duration: float,
                 lead: float, max_window: float | None = None) -> None:
        self.mode = mode
        self.target = target_inflight if mode == "closed" else 0
        self.t_start = t_start
        self.t_min = t_start + warmup
        self.t_cap = self.t_min + WARMUP_CAP_S
        self.duration = duration
        self.max_window = max(duration, max_window if max_window is not None else STRETCH_MAX * duration)
        self.lead = lead  # how far ahead of now a window may open (the workers must hear of it first)
        self.peaks: dict[int, int] = {}
        self.e2e: list[float] = []
        self.window: tuple[float, float] | None = None
        self.note: str | None = None
        self.window_note: str | None = None

    def update(self, c: LiveCounters) -> None:
        self.peaks[c.worker] = max(self.peaks.get(c.worker, 0), c.peak_inflight)
        self.e2e.extend(c.e2e_new)

    def _steady_from(self) -> float | None:
        """The earliest time the warm-up conditions allow, or None while they do not hold yet."""
        if sum(self.peaks.values()) < self.target or len(self.e2e) < max(1, self.target):
            return None
        return max(self.t_min, self.t_start + statistics.median(self.e2e))

    def decide(self, now: float) -> tuple[float, float] | None:
        """(t_window, t_end) once, when the window may open; None until then (and afterwards)."""
        if self.window is not None:
            return None
        at = self._steady_from()
        if at is None and now + self.lead >= self.t_cap:
            at = self.t_cap
            self.note = self._why_not()
        if at is None:
            return None
        t_window = max(at, now + self.lead)
        self.window = (t_window, t_window + self._length())
        return self.window

    def _length(self) -> float:
        """The window: --duration, or long enough for MIN_LIFETIMES request lifetimes, up to max_window."""
        if not self.e2e:
            return self.duration
        lifetime = statistics.median(self.e2e)
        length = min(self.max_window, max(self.duration, MIN_LIFETIMES * lifetime))
        if length > self.duration:
            self.window_note = (f"window stretched from {self.duration:g} s to {length:.1f} s to hold "
                                f"{MIN_LIFETIMES:.0f} request lifetimes of about {lifetime:.1f} s")
        return length

    def _why_not(self) -> str:
        reasons = []
        if sum(self.peaks.values()) < self.target:
            reasons.append(f"in flight reached {sum(self.peaks.values())} of {self.target}")
        if len(self.e2e) < max(1, self.target):
            reasons.append(f"{len(self.e2e)} of the first {max(1, self.target)} requests ended")
        return (f"warm-up ended at its cap ({self.t_cap - self.t_start:.0f} s) before a steady state: "
                + ", ".join(reasons or ["a request lifetime had not passed"]))

    def fields(self) -> dict[str, Any]:
        """The step's record of its warm-up."""
        warm = round(self.window[0] - self.t_start, 2) if self.window else None
        return {"warmup_s": warm, "warmup_note": self.note, "window_note": self.window_note}


def window_verdict(window_s: float, e2e_p50_ms: float | None, requests_ok: int, errors: int) -> str | None:
    """Why the window was too short to stand for a steady state (None: it was long enough)."""
    if window_s <= 0 or errors:
        return None
    if not requests_ok or e2e_p50_ms is None:
        return (f"window too short: no request completed inside its {window_s:.1f} s "
                f"(allow a longer --max-window)")
    lifetime = e2e_p50_ms / 1000.0
    held = window_s / lifetime if lifetime > 0 else float("inf")
    if held < MIN_LIFETIMES:
        return (f"window too short: {window_s:.1f} s held {held:.1f} request lifetimes (E2E p50 {lifetime:.1f} s), "
                f"fewer than {MIN_LIFETIMES:.0f}: allow --max-window {MIN_LIFETIMES * lifetime:.0f} or more")
    return None


class StepWindow:
    """One step's window as it is decided: the workers' live counters reach the gate, which opens the
    window; the live samples and the servers' reader hear of it; `released` is set once the reader has
    read the servers at the window's end (then the load may stop)."""

    def __init__(self, gate: WarmupGate, live: "LiveSamples", reader: "CounterReader | None") -> None:
        self.gate, self.live, self.reader = gate, live, reader
        self.released = threading.Event()
        self._on_release: list[Callable[[], None]] = []
        if reader is None:
            self.released.set()
        else:
            reader.on_end = self.release

    def on_release(self, fn: Callable[[], None]) -> None:
        self._on_release.append(fn)
        if self.released.is_set():
            fn()

    def release(self) -> None:
        self.released.set()
        for fn in self._on_release:
            fn()

    def observe(self, c: LiveCounters) -> tuple[float, float] | None:
        """A worker's counters; the window (t_window, t_end) when this report opens it."""
        self.live.update(c)
        self.gate.update(c)
        window = self.gate.decide(time.monotonic())
        if window is not None:
            self.live.set_window(*window)
            if self.reader is not None:
                self.reader.set_window(*window)
        return window
