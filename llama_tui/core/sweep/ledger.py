"""Where a sweep's time went, for metadata.json and the reports.

    page_cache     reading the model file once before the first fleet start, so that every shape (the
                   first one included) starts from a warm page cache
    fleet_start    bringing fleets up: llama-server instances loading the model, NGINX; failed starts too
    fleet_stop     tearing fleets down (and stopping one that an interrupted sweep left behind)
    warmup         each cell's warm-up (excluded from its numbers)
    window         each cell's measured steady-state window
    cell_overhead  the rest of each cell: connections, requests draining, counters read, the row written
    other          what is left of the wall time: planning, fit checks, metadata, events

Only the sweep's own time counts: while a caller holds it between rounds (`Sweep.rounds()`, e.g. to
alternate with another sweep), the clock is paused and that time is `paused_s`, not `wall_s`.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

CATEGORIES = ("page_cache", "fleet_start", "fleet_stop", "warmup", "window", "cell_overhead")
LABELS = {"page_cache": "page cache", "fleet_start": "fleet starts", "fleet_stop": "fleet stops",
          "warmup": "warm-ups", "window": "windows", "cell_overhead": "cell overhead", "other": "idle/other"}
COUNTS = ("fleet_starts", "cells")


class TimeLedger:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.t0 = clock()
        self.seconds = dict.fromkeys(CATEGORIES, 0.0)
        self.counts = dict.fromkeys(COUNTS, 0)
        self.paused_s = 0.0
        self._paused_at: float | None = None

    def start(self) -> None:
        """Start the clock now (a sweep's time begins when it runs, not when it is made)."""
        self.t0 = self.clock()

    def add(self, category: str, seconds: float) -> None:
        self.seconds[category] += max(0.0, seconds)

    @contextmanager
    def timing(self, category: str) -> Iterator[None]:
        t = self.clock()
        try:
            yield
        finally:
            self.add(category, self.clock() - t)

    def cell(self, wall_s: float, warmup_s: float, window_s: float) -> None:
        """One measured cell of `wall_s` seconds: its warm-up, its window, and the rest."""
        warm = min(max(0.0, warmup_s), wall_s)
        win = min(max(0.0, window_s), wall_s - warm)
        self.add("warmup", warm)
        self.add("window", win)
        self.add("cell_overhead", wall_s - warm - win)
        self.counts["cells"] += 1

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = self.clock()

    def resume(self) -> None:
        if self._paused_at is not None:
            self.paused_s += self.clock() - self._paused_at
            self._paused_at = None

    def wall(self) -> float:
        now = self._paused_at if self._paused_at is not None else self.clock()
        return now - self.t0 - self.paused_s

    def to_json(self) -> dict[str, Any]:
        wall = self.wall()
        secs = {k: round(v, 3) for k, v in self.seconds.items()}
        secs["other"] = round(max(0.0, wall - sum(self.seconds.values())), 3)
        return {"wall_s": round(wall, 3), "seconds": secs, "counts": dict(self.counts),
                "paused_s": round(self.paused_s, 3)}


def total(times: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The sum of several runs' accounts (a resumed directory has one per run); None when there are none."""
    times = [t for t in times if isinstance(t, Mapping) and "wall_s" in t]
    if not times:
        return None
    secs = {k: round(sum(float((t.get("seconds") or {}).get(k) or 0.0) for t in times), 3)
            for k in (*CATEGORIES, "other")}
    counts = {k: sum(int((t.get("counts") or {}).get(k) or 0) for t in times) for k in COUNTS}
    return {"wall_s": round(sum(float(t["wall_s"]) for t in times), 3), "seconds": secs, "counts": counts,
            "paused_s": round(sum(float(t.get("paused_s") or 0.0) for t in times), 3), "runs": len(times)}


def duration(s: float) -> str:
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    return f"{m}m{sec:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


def breakdown(t: Mapping[str, Any]) -> list[tuple[str, float, float, str]]:
    """(label, seconds, share of the wall time, count note) for each category, in order."""
    wall = float(t.get("wall_s") or 0.0)
    counts = t.get("counts") or {}
    notes = {"fleet_start": f"{counts.get('fleet_starts', 0)} starts", "window": f"{counts.get('cells', 0)} cells"}
    return [(LABELS[k], float((t.get("seconds") or {}).get(k) or 0.0),
             float((t.get("seconds") or {}).get(k) or 0.0) / wall if wall > 0 else 0.0, notes.get(k, ""))
            for k in (*CATEGORIES, "other")]


def summary_line(t: Mapping[str, Any]) -> str:
    """One line: "12m30s in all: fleet starts 1m02s (8%, 11 starts), warm-ups ..."."""
    parts = [f"{label} {duration(s)} ({share:.0%}{', ' + note if note else ''})"
             for label, s, share, note in breakdown(t) if s > 0 or label in ("windows", "fleet starts")]
    runs = t.get("runs")
    head = f"{duration(float(t.get('wall_s') or 0.0))} in all" + (f" over {runs} runs" if runs and runs > 1 else "")
    return head + ": " + ", ".join(parts)
