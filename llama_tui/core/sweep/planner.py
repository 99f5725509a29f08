"""Which shape next, and which concurrency steps of it: the grid, its rounds and the knee.

- Threads: each shape gets the fleet's thread budget (physical cores // instances) unless a threads
  list is swept; the threads used are recorded in every row.
- `concurrency="auto"` doubles concurrency until throughput gains less than 3%, or the SLO breaks.
- A `Plan` hands the orchestrator one `Visit` (one fleet start) at a time. `GridPlan`: every shape,
  `repeats` rounds over the shapes. The adaptive plan (successive halving) is in halving.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

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


CellKey = tuple[tuple[int, ...], int, int]  # (shape index, n_predict, concurrency)


class Steps(Protocol):
    """The concurrency steps of one n_predict on one visit: a `Ramp`, or halving's `ThenBest`."""

    def next(self) -> int | None: ...
    def record(self, tok_s: float | None, good: bool) -> None: ...


@dataclass
class Visit:
    """One fleet start: a shape and the concurrency steps to measure on it, per n_predict."""

    idx: tuple[int, ...]  # the shape's index in the axes
    rung: int  # grid: the round (repeat); adaptive: the halving rung
    ramps: dict[int, Steps]  # n_predict -> its concurrency steps
    limit: int | None = None  # at most this many steps per n_predict on this visit (a brief look)
    done: dict[int, int] = field(default_factory=dict)

    def next(self, n_predict: int) -> int | None:
        if self.limit is not None and self.done.get(n_predict, 0) >= self.limit:
            return None
        return self.ramps[n_predict].next()


class Plan:
    """Which shapes to start, in which order, and what to measure on each.

    The orchestrator asks `next_visit()`, then `record()`s every step of the visit (cells that already
    stand included, so that a resumed sweep replays the same decisions) and `drop()`s a shape that
    cannot start. Every fleet start measures all its concurrency steps (fleet starts are the expensive
    part); repeats of a cell come from later rounds over the shapes, never back to back, so that machine
    drift spreads over every shape. The repeat index of a step is the number of samples its cell has."""

    def __init__(self, axes: list[list[Any]], candidates: Sequence[int], n_predicts: Sequence[int],
                 repeats: int) -> None:
        self.axes = axes
        self.candidates = list(candidates)
        self.n_predicts = list(n_predicts)
        self.repeats = repeats
        self.samples: dict[CellKey, list[tuple[float | None, bool]]] = {}
        self.dropped: set[tuple[int, ...]] = set()
        self.rung = 0

    def next_visit(self) -> Visit | None:
        raise NotImplementedError

    def planned_cells(self) -> int:
        """A guess at how many cells this plan measures in all (for progress and ETA)."""
        raise NotImplementedError

    def repeat_of(self, idx: tuple[int, ...], n_predict: int, concurrency: int) -> int:
        return len(self.samples.get((idx, n_predict, concurrency), ()))

    def record(self, visit: Visit, n_predict: int, concurrency: int, tok_s: float | None, good: bool) -> None:
        """One sample of a step of `visit`; its ramp sees the cell's mean over every sample so far."""
        key = (visit.idx, n_predict, concurrency)
        self.samples.setdefault(key, []).append((tok_s, good))
        visit.done[n_predict] = visit.done.get(n_predict, 0) + 1
        visit.ramps[n_predict].record(self.cell_mean(key), self.cell_good(key))

    def drop(self, idx: tuple[int, ...]) -> None:
        """The shape cannot start (no fit, out of memory, launch failure): no more visits."""
        self.dropped.add(idx)

    def cell_good(self, key: CellKey) -> bool:
        s = self.samples.get(key, ())
        return bool(s) and all(good and tok is not None for tok, good in s)

    def cell_mean(self, key: CellKey) -> float | None:
        s = self.samples.get(key, ())
        vals = [tok for tok, _ in s if tok is not None]
        return sum(vals) / len(vals) if vals and len(vals) == len(s) else None

    def top_cell(self, idx: tuple[int, ...]) -> tuple[int, int] | None:
        """(n_predict, concurrency) of the shape's best good cell by mean (ties: the lower concurrency)."""
        good = [(self.cell_mean(k), -k[2], k) for k in self.samples if k[0] == idx and self.cell_good(k)]
        if not good:
            return None
        _, _, key = max(good)
        return key[1], key[2]

    def shape_score(self, idx: tuple[int, ...]) -> float | None:
        top = self.top_cell(idx)
        return None if top is None else self.cell_mean((idx, *top))


class GridPlan(Plan):
    """Every shape, every concurrency step: `repeats` rounds over the shapes in grid order. Round 0 runs
    each shape's ramp (every candidate, or up to the knee with `concurrency="auto"`); later rounds measure
    the steps round 0 measured once more."""

    def __init__(self, axes: list[list[Any]], candidates: Sequence[int], n_predicts: Sequence[int], repeats: int,
                 auto: bool) -> None:
        super().__init__(axes, candidates, n_predicts, repeats)
        self.auto = auto
        self.order = grid_indices(axes)
        self._queue = list(self.order)

    def next_visit(self) -> Visit | None:
        while True:
            while self._queue:
                idx = self._queue.pop(0)
                if idx not in self.dropped:
                    return Visit(idx, self.rung, {n: self._ramp(idx, n) for n in self.n_predicts})
            if self.rung + 1 >= self.repeats:
                return None
            self.rung += 1
            self._queue = list(self.order)

    def _ramp(self, idx: tuple[int, ...], n_predict: int) -> "Ramp":
        if self.rung == 0:
            return Ramp(self.candidates, 0, full=not self.auto)
        return Ramp(sorted(c for i, n, c in self.samples if i == idx and n == n_predict), 0, full=True)

    def planned_cells(self) -> int:
        per_shape = len(self.candidates) if not self.auto else max(2, int(math.log2(max(2, max(self.axes[1])))) + 2)
        shapes = len([i for i in self.order if i not in self.dropped])
        return shapes * per_shape * len(self.n_predicts) * self.repeats


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


def fill_start(candidates: Sequence[int], slots: int) -> int:
    """Index of the smallest candidate that fills every slot (at least the shape's slot count), or the
    last: where a closed loop first keeps the whole fleet busy."""
    return next((i for i, c in enumerate(candidates) if c >= slots), len(candidates) - 1)
