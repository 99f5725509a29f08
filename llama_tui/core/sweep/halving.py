"""The adaptive sweep: successive halving over the shapes, each concurrency ramp stopped at its knee.

Successive halving with a reduction factor of 3 (Jamieson & Talwalkar's non-stochastic best-arm
identification; Hyperband's inner loop):

    rung 0   every shape, briefly: one fleet start and one step, at the concurrency where the shape's
             slots are all busy (the smallest candidate not below instances x parallel); the order spans
             the grid first (centre, corners, then the rest) so that a budget cut short still saw its extent
    halve    keep the best third (at least two), ranked by the mean of each shape's best good cell;
             shapes with no good cell rank last
    rung 1   the survivors again, longer: each ramp goes on from where rung 0 left it up to its knee
             (the step that gains less than 3%, or breaks), one fleet start per shape for every step;
             when only two are left, the same start then measures the best cell again if an earlier
             start measured it (a repeat on another start, without a start of its own)
    rung 2+  cut again and measure each survivor's best cell once more, best shape first; when two
             shapes are left, top up their best cells to max(2, repeats) samples so that the best and
             the runner-up carry 95% intervals, then stop

Every sample of a cell has the same window (the sweep's --duration), so the repeats of a cell pool into
its interval. Each rung is a round over its shapes: drift spreads over the shapes that are compared.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from llama_tui.core.sweep.planner import Plan, Ramp, Visit, coarse_order, fill_start, grid_indices

MAX_RUNGS = 8  # a bound for cells whose lead keeps changing
ETA = 3  # keep the best third after each rung (simulated: about as safe as halves, ~15% cheaper)


def spanning_order(axes: list[list[Any]]) -> list[tuple[int, ...]]:
    """The grid's centre and corners first, then every other shape in grid order."""
    first = coarse_order(axes)
    return first + [i for i in grid_indices(axes) if i not in first]


class ThenBest:
    """A ramp that goes on to its knee, then steps once more onto the shape's best cell when that cell
    still lacks samples and was measured on an earlier fleet start (never twice on one start: repeats on
    one start would miss the start-to-start variance). Saves a fleet start per finalist."""

    def __init__(self, ramp: Ramp, plan: "HalvingPlan", idx: tuple[int, ...], n_predict: int) -> None:
        self.ramp, self.plan, self.idx, self.n = ramp, plan, idx, n_predict
        self.seen: set[int] = set()  # concurrencies measured on this start
        self.best: int | None = None  # the extra step, once the ramp is done
        self.state = "ramp"  # "ramp", "best", "done"

    def next(self) -> int | None:
        if self.state == "ramp":
            c = self.ramp.next()
            if c is not None:
                return c
            top = self.plan.top_cell(self.idx)
            if (top is not None and top[0] == self.n and top[1] not in self.seen
                    and self.plan.repeat_of(self.idx, *top) < self.plan.target):
                self.state, self.best = "best", top[1]
            else:
                self.state = "done"
        return self.best if self.state == "best" else None

    def record(self, tok_s: float | None, good: bool) -> None:
        if self.state == "ramp":
            c = self.ramp.next()
            assert c is not None
            self.seen.add(c)
            self.ramp.record(tok_s, good)
        else:
            self.state = "done"


class HalvingPlan(Plan):
    """Successive halving (see the module docstring). `slots(idx)` is a shape's instances x parallel."""

    def __init__(self, axes: list[list[Any]], candidates: Sequence[int], n_predicts: Sequence[int], repeats: int,
                 slots: Callable[[tuple[int, ...]], int]) -> None:
        super().__init__(axes, candidates, n_predicts, repeats)
        self.target = max(2, repeats)
        self.alive = spanning_order(axes)
        self._queue = list(self.alive)
        self._ramps = {(idx, n): Ramp(self.candidates, fill_start(self.candidates, slots(idx)))
                       for idx in self.alive for n in self.n_predicts}

    # ----------------------------------------------------------------------------------- visits

    def next_visit(self) -> Visit | None:
        while True:
            while self._queue:
                idx = self._queue.pop(0)
                if idx in self.dropped:
                    continue
                visit = self._visit(idx)
                if visit is not None:
                    return visit
            if not self._next_rung():
                return None

    def _visit(self, idx: tuple[int, ...]) -> Visit | None:
        ramps = {n: self._ramps[(idx, n)] for n in self.n_predicts}
        if self.rung == 0:
            return Visit(idx, 0, ramps, limit=1)
        going = {n: r for n, r in ramps.items() if r.next() is not None}
        if going:  # the ramp has not reached its knee yet
            if self._final():  # and then, on the same start, the best cell again if an earlier start measured it
                going = {n: ThenBest(r, self, idx, n) for n, r in going.items()}
            return Visit(idx, self.rung, going)
        top = self.top_cell(idx)
        if top is None:
            return None
        n, c = top
        if self._final() and self.repeat_of(idx, n, c) >= self.target:
            return None
        return Visit(idx, self.rung, {n: Ramp([c], 0, full=True)})

    # ----------------------------------------------------------------------------------- rungs

    def _final(self) -> bool:
        return len(self.alive) <= 2

    def _ranked(self) -> list[tuple[int, ...]]:
        live = [i for i in self.alive if i not in self.dropped]
        scored = sorted((i for i in live if self.shape_score(i) is not None),
                        key=lambda i: -(self.shape_score(i) or 0.0))
        return scored + [i for i in live if self.shape_score(i) is None]

    def _settled(self) -> bool:
        """Every survivor's ramp is at its knee and its best cell has its samples."""
        for idx in self.alive:
            if any(self._ramps[(idx, n)].next() is not None for n in self.n_predicts):
                return False
            top = self.top_cell(idx)
            if top is not None and self.repeat_of(idx, *top) < self.target:
                return False
        return True

    def _next_rung(self) -> bool:
        """Keep the best third of the survivors and queue the next rung; False when the search is done."""
        ranked = self._ranked()
        keep = min(len(ranked), max(2, math.ceil(len(ranked) / ETA)))
        self.alive = ranked[:keep]
        if not self.alive or self.rung + 1 >= MAX_RUNGS:
            return False
        if self.rung >= 1 and self._final() and self._settled():
            return False
        self.rung += 1
        self._queue = list(self.alive)
        return True

    def planned_cells(self) -> int:
        """Rung 0 over every shape, then about 1.5 steps per survivor and rung until two are left, and
        the top-up of the last two."""
        n = len([i for i in grid_indices(self.axes) if i not in self.dropped])
        total, alive = float(n), n
        while alive > 2:
            alive = max(2, math.ceil(alive / 2))
            total += 1.5 * alive
        total += 2 * (self.target - 1)
        return int(math.ceil(total)) * len(self.n_predicts)
