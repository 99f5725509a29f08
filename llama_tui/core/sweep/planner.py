"""Which shape next, and which concurrency steps of it: the grid, the adaptive order and the knee.

- Threads: each shape gets the fleet's thread budget (physical cores // instances) unless a threads
  list is swept; the threads used are recorded in every row.
- `concurrency="auto"` doubles concurrency until throughput gains less than 3%, or the SLO breaks.
- Adaptive: shapes are visited coarse-first (the grid's centre and corners), then around the leaders;
  a shape's concurrency ramp starts near its slot count and stops at the knee.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from llama_tui.core import hardware
from llama_tui.core.sweep.config import SweepConfig

GAIN = 0.03  # a step that adds less than 3% throughput is past the knee
EXTRA_AXES = ("threads", "batch", "ubatch")
SHAPE_AXES = ("instances", "parallel") + EXTRA_AXES


@dataclass(frozen=True)
class Shape:
    instances: int
    parallel: int
    threads: int  # resolved: the budget when not swept
    batch: int | None = None
    ubatch: int | None = None

    @property
    def slots(self) -> int:
        return self.instances * self.parallel

    def coords(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in SHAPE_AXES}

    def label(self) -> str:
        s = f"{self.instances}x{self.parallel} t{self.threads}"
        if self.batch is not None:
            s += f" b{self.batch}"
        if self.ubatch is not None:
            s += f" ub{self.ubatch}"
        return s

    def server_args(self) -> tuple[str, ...]:
        out: list[str] = []
        if self.batch is not None:
            out += ["--batch-size", str(self.batch)]
        if self.ubatch is not None:
            out += ["--ubatch-size", str(self.ubatch)]
        return tuple(out)


# --------------------------------------------------------------------------------------------- the grid


def shape_axes(cfg: SweepConfig) -> list[list[Any]]:
    """Value lists of the shape axes; threads None means "the budget" (resolved per shape)."""
    return [list(cfg.instances), list(cfg.parallel), list(cfg.threads) if cfg.threads else [None],
            list(cfg.batch) if cfg.batch else [None], list(cfg.ubatch) if cfg.ubatch else [None]]


def make_shape(cfg: SweepConfig, idx: Sequence[int], axes: list[list[Any]] | None = None) -> Shape:
    axes = axes or shape_axes(cfg)
    inst, par, thr, b, ub = (axes[a][i] for a, i in enumerate(idx))
    if thr is None:
        thr = hardware.thread_budget(inst, cfg.cores)
    return Shape(inst, par, thr, b, ub)


def grid_indices(axes: list[list[Any]]) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = [()]
    for ax in axes:
        out = [i + (j,) for i in out for j in range(len(ax))]
    return out


def concurrency_candidates(cfg: SweepConfig) -> list[int]:
    if cfg.concurrency == "auto":
        out, c = [], 1
        while c <= cfg.max_concurrency:
            out.append(c)
            c *= 2
        return out
    return sorted(set(int(c) for c in cfg.concurrency))  # type: ignore[union-attr]


def coarse_order(axes: list[list[Any]]) -> list[tuple[int, ...]]:
    """The centre of the grid, then its instances x parallel corners (extra axes at their centre),
    largest slot count first: the first pass spans the grid so the best region shows early."""
    centre = tuple(len(a) // 2 for a in axes)
    corners = []
    for i in {0, len(axes[0]) - 1}:
        for p in {0, len(axes[1]) - 1}:
            corners.append((i, p) + centre[2:])
    corners.sort(key=lambda ix: -(axes[0][ix[0]] * axes[1][ix[1]]))
    out = [centre]
    for c in corners:
        if c not in out:
            out.append(c)
    return out


def neighbours(idx: tuple[int, ...], axes: list[list[Any]]) -> list[tuple[int, ...]]:
    out = []
    for a in range(len(axes)):
        for d in (1, -1):
            j = idx[a] + d
            if 0 <= j < len(axes[a]):
                out.append(idx[:a] + (j,) + idx[a + 1:])
    return out


class ShapePlanner:
    """Which shape to measure next, given each measured shape's score (best good tok/s, or None).

    Grid mode: every shape in order. Adaptive mode: the coarse pass, then the untried neighbours of
    the leaders (the top `leaders` shapes scoring at least `leader_share` of the best), best leader
    first, until no leader has an untried neighbour: a climb from the best region, not a grid."""

    def __init__(self, axes: list[list[Any]], adaptive: bool, leaders: int = 2, leader_share: float = 0.9) -> None:
        self.axes = axes
        self.adaptive = adaptive
        self.leaders = leaders
        self.leader_share = leader_share
        self.scores: dict[tuple[int, ...], float | None] = {}
        self._queue = coarse_order(axes) if adaptive else grid_indices(axes)

    def record(self, idx: tuple[int, ...], score: float | None) -> None:
        self.scores[idx] = score

    def next(self) -> tuple[int, ...] | None:
        while self._queue:
            idx = self._queue.pop(0)
            if idx not in self.scores:
                return idx
        if not self.adaptive:
            return None
        ranked = sorted((s, i) for i, s in self.scores.items() if s is not None)
        top = ranked[-1][0] if ranked else 0.0
        for score, leader in reversed(ranked[-self.leaders:]):
            if score < self.leader_share * top:
                break
            for n in neighbours(leader, self.axes):
                if n not in self.scores:
                    return n
        return None

    def planned(self) -> int:
        """A guess at how many shapes will be measured in all (for progress and ETA)."""
        total = len(grid_indices(self.axes))
        if not self.adaptive:
            return total
        return min(total, max(len(self.scores) + len(self._queue), len(coarse_order(self.axes)) + 2 * len(self.axes)))


class Ramp:
    """The concurrency steps of one shape.

    `full`: every candidate, ascending. Otherwise ascend from `start` while each step gains at least
    3% over the best so far and stays error-free and within the SLO (the knee); when the start point
    was not beaten (or failed), look below it until a point is good and no longer improving."""

    def __init__(self, candidates: Sequence[int], start: int = 0, full: bool = False, gain: float = GAIN) -> None:
        self.c = list(candidates)
        self.start = max(0, min(start, len(self.c) - 1))
        self.full = full
        self.gain = gain
        self.seen: dict[int, tuple[float | None, bool]] = {}  # index -> (tok/s, good)
        self._i: int | None = self.start if not full else 0
        self._dir = 1

    def best(self) -> float | None:
        good = [t for t, ok in self.seen.values() if ok and t is not None]
        return max(good) if good else None

    def next(self) -> int | None:
        return None if self._i is None else self.c[self._i]

    def record(self, tok_s: float | None, good: bool) -> None:
        i = self._i
        assert i is not None
        before = self.best()
        self.seen[i] = (tok_s, good)
        if self.full:
            self._i = i + 1 if i + 1 < len(self.c) else None
            return
        improved = good and tok_s is not None and (before is None or tok_s >= before * (1 + self.gain))
        if self._dir == 1:
            if good and (improved or i == self.start) and i + 1 < len(self.c):
                self._i = i + 1
                return
            # The knee (or a failure) going up. Look below the start only when the start failed, or
            # when the step just above it fell by more than the gain threshold (the start is already
            # past the peak). A plateau above the start means the knee is at or below the start.
            start_tok, start_ok = self.seen.get(self.start, (None, False))
            up_tok, up_ok = self.seen.get(self.start + 1, (None, False))
            fell = (start_ok and up_ok and start_tok is not None and up_tok is not None
                    and up_tok < start_tok * (1 - self.gain))
            if self.start > 0 and (not start_ok or fell):
                self._dir, self._i = -1, self.start - 1
            else:
                self._i = None
            return
        # going down: past failures, and while a good point still beats the best good one above it
        if (not good or (improved and before is not None)) and i > 0:
            self._i = i - 1
        else:
            self._i = None


def ramp_start(candidates: Sequence[int], slots: int) -> int:
    """Index of the largest candidate not above the shape's slot count (where throughput usually
    stops growing), or 0."""
    start = 0
    for i, c in enumerate(candidates):
        if c <= slots:
            start = i
    return start
