"""A cell over its repeats: the mean output tok/s, its 95% interval, and whether the best cell can be
told apart from the runner-up. The one rule behind best.json, the text and HTML reports and the TUI.

- A cell is one shape at one concurrency (and n_predict) under one set of measurement parameters; each
  of its rows is one repeat (`repeat` 0, 1, ...). A row without a `repeat` index is a cell of its own.
- Repeats are rounds over the shapes (each on its own fleet start), so machine drift spreads over every
  shape instead of favouring the one measured last.
- Interval (Student t): with n >= 2 repeats of mean m and sample standard deviation s, the 95% interval
  is m +- t(0.975, n - 1) * s / sqrt(n). One repeat has no interval (None).
- A cell is good when every repeat is good (measured, error-free, valid, within the SLO). The best is
  the good cell with the highest mean output tok/s; ties go to the lower mean TTFT p95, then to the
  cell measured first (`results.rank`).
- The runner-up is the best good cell of another shape (instances, parallel, threads, batch, ubatch):
  the question a user asks is whether the winning shape beats the next shape. The two are
  distinguishable when both have intervals and the intervals do not overlap (a conservative test:
  non-overlapping 95% intervals mean a difference well beyond the 5% level). `distinguishable` is
  None when there is no runner-up.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping, Sequence

from llama_tui.core.snapshots import SweepCellResult
from llama_tui.core.sweep import results

CI_METHOD = "Student t, 95%, over the repeats of a cell (mean +- t(0.975, n-1) * s / sqrt(n)); none for one repeat"

# t(0.975, df) for df = 1..30 (two-sided 95%); beyond 30 the Cornish-Fisher expansion is within 1e-4.
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788,
         2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639,
         2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
_Z975 = 1.959964

# Row fields a cell reports as the mean over its repeats, and the counts it sums.
MEAN_FIELDS = ("output_tok_s", "server_output_tok_s", "ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms", "itl_p50_ms",
               "itl_p95_ms", "tpot_p50_ms", "e2e_p95_ms", "client_cpu_percent", "rss_peak_total_bytes")
SUM_FIELDS = ("errors", "requests_ok")


def t975(df: int) -> float:
    """The 97.5th percentile of Student's t with `df` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def interval(values: Sequence[float]) -> tuple[float, float] | None:
    """The 95% Student-t interval of the mean of `values`; None for fewer than two."""
    n = len(values)
    if n < 2:
        return None
    m = statistics.fmean(values)
    half = t975(n - 1) * statistics.stdev(values) / math.sqrt(n)
    return (m - half, m + half)


def overlap(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool | None:
    """Do two intervals overlap? None when either is missing."""
    if a is None or b is None:
        return None
    return a[0] <= b[1] and b[0] <= a[1]


# --------------------------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    key: tuple  # what identifies the cell across its repeats
    shape: tuple  # the shape it belongs to (the runner-up is another shape)
    samples: tuple[float | None, ...]  # output tok/s of each repeat, in measurement order
    ttfts: tuple[float | None, ...]  # TTFT p95 of each repeat
    good: bool  # every repeat good
    first: int  # position of its first repeat among all rows (ties go to the earlier cell)
    members: tuple[Any, ...]  # the rows (or TUI points) of its repeats

    @property
    def repeats(self) -> int:
        return len(self.samples)

    @property
    def tok_s(self) -> float | None:
        vals = [v for v in self.samples if v is not None]
        return statistics.fmean(vals) if vals else None

    @property
    def ttft_p95_ms(self) -> float | None:
        vals = [v for v in self.ttfts if v is not None]
        return statistics.fmean(vals) if vals else None

    @property
    def ci95(self) -> tuple[float, float] | None:
        if any(v is None for v in self.samples):
            return None
        return interval([float(v) for v in self.samples])  # type: ignore[arg-type]

    def rank(self) -> tuple[float, float, int]:
        return (*results.rank(self.tok_s or 0.0, self.ttft_p95_ms), -self.first)

    def summary(self) -> dict[str, Any]:
        """The cell as one row: its last repeat's fields, with the means, sums and interval over all."""
        rows = [m for m in self.members if isinstance(m, Mapping)]
        out = dict(rows[-1]) if rows else {}
        for name in MEAN_FIELDS:
            vals = [v for v in (_num(r.get(name)) for r in rows) if v is not None]
            if vals:
                out[name] = round(statistics.fmean(vals), 3)
        for name in SUM_FIELDS:
            if any(name in r for r in rows):
                out[name] = sum(int(r.get(name) or 0) for r in rows)
        valid = [r.get("valid") is True for r in rows]
        if len(valid) > 1:
            out.update(valid=all(valid), valid_repeats=sum(valid))
        ci = self.ci95
        out.update(repeats=self.repeats, output_tok_s_ci95=[round(ci[0], 3), round(ci[1], 3)] if ci else None,
                   output_tok_s_samples=list(self.samples), cell_ids=[r.get("cell_id") for r in rows])
        return out


def cell_group(row: Mapping[str, Any], position: int) -> tuple:
    """Rows with the same group are repeats of one cell."""
    if row.get("repeat") is None:
        return ("row", position)
    coords = tuple(row.get(k) for k in results.CELL_COORDS if k != "repeat")
    return (row.get("params_id"), row.get("fingerprint"), *coords)


def _group(items: Iterable[tuple[tuple, tuple, float | None, float | None, bool, Any]]) -> list[Cell]:
    """Cells from (key, shape, tok/s, ttft p95, good, member) items, in order of first appearance."""
    acc: dict[tuple, dict[str, Any]] = {}
    for pos, (key, shape, tok, ttft, good, member) in enumerate(items):
        c = acc.setdefault(key, {"shape": shape, "samples": [], "ttfts": [], "good": True, "first": pos,
                                 "members": []})
        c["samples"].append(tok)
        c["ttfts"].append(ttft)
        c["good"] = c["good"] and good
        c["members"].append(member)
    return [Cell(key, c["shape"], tuple(c["samples"]), tuple(c["ttfts"]), c["good"], c["first"], tuple(c["members"]))
            for key, c in acc.items()]


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def from_rows(rows: Iterable[Mapping[str, Any]], slo: Mapping[str, float] | None = None) -> list[Cell]:
    """The cells of a sweep directory's measured rows."""
    return _group(
        (cell_group(r, pos), results.shape_key(r), _num(r.get("output_tok_s")), _num(r.get("ttft_p95_ms")),
         results.is_good(r) and results.within_slo(r, slo), r)
        for pos, r in enumerate(rows) if results.is_measured(r))


def point_key(p: SweepCellResult, position: int) -> tuple:
    return ("point", p.cell) if p.cell else ("row", position)


def from_points(points: Iterable[SweepCellResult]) -> list[Cell]:
    """The cells of the TUI's points (each point already judged by `best.point`)."""
    return _group((point_key(p, pos), (p.shape or f"{p.instances}x{p.parallel}",), p.tok_s, p.ttft_p95_ms, p.good, p)
                  for pos, p in enumerate(points))


# --------------------------------------------------------------------------------------------- the verdict


@dataclass(frozen=True)
class Verdict:
    best: Cell | None
    runner_up: Cell | None  # the best good cell of another shape
    distinguishable: bool | None  # None: no runner-up
    reason: str  # one line: why (for the reports)


def _fmt_ci(ci: tuple[float, float] | None) -> str:
    return "no interval" if ci is None else f"[{ci[0]:,.1f}, {ci[1]:,.1f}]"


def verdict(cells: Iterable[Cell]) -> Verdict:
    ranked = sorted((c for c in cells if c.good and c.tok_s is not None), key=Cell.rank, reverse=True)
    if not ranked:
        return Verdict(None, None, None, "no good cell")
    top = ranked[0]
    other = next((c for c in ranked[1:] if c.shape != top.shape), None)
    if other is None:
        return Verdict(top, None, None, "no other shape has a good cell to compare with")
    a, b = top.ci95, other.ci95
    if a is None or b is None:
        few = "the best" if a is None else "the runner-up"
        return Verdict(top, other, False, f"not distinguishable: {few} has a single measurement and so no interval "
                                          "(run with --repeats 2 or more)")
    if overlap(a, b):
        return Verdict(top, other, False, f"statistically tied: the 95% intervals overlap (best {_fmt_ci(a)}, "
                                          f"runner-up {_fmt_ci(b)})")
    return Verdict(top, other, True, f"distinguishable: the best's 95% interval {_fmt_ci(a)} lies above the "
                                     f"runner-up's {_fmt_ci(b)}")


def best_json(rows: Sequence[Mapping[str, Any]], slo: Mapping[str, float] | None = None) -> dict[str, Any]:
    """best.json's content: the best cell, the runner-up and whether they are distinguishable."""
    v = verdict(from_rows(rows, slo))
    return {"slo": dict(slo) if slo else None, "best": v.best.summary() if v.best else None,
            "runner_up": v.runner_up.summary() if v.runner_up else None, "distinguishable": v.distinguishable,
            "comparison": v.reason, "ci_method": CI_METHOD}


def best_of_points(points: Sequence[SweepCellResult]) -> SweepCellResult | None:
    """The TUI's best: the latest point of the best cell, carrying the cell's mean tok/s and TTFT p95."""
    top = verdict(from_points(points)).best
    if top is None:
        return None
    last = top.members[-1]
    return replace(last, tok_s=top.tok_s, ttft_p95_ms=top.ttft_p95_ms) if top.repeats > 1 else last
