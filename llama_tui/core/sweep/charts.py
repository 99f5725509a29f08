"""Inline SVG charts for the sweep's HTML page: no scripts, no fonts or styles from elsewhere.

Each function returns one `<svg>` element as text (well-formed XML, so a test can parse it). Every data
series is a `<g class="series" data-series="NAME">`, so a reader (or a test) can count them.

    heatmap      best mean tok/s by instances x parallel, the best shape outlined, intervals in the cells
    lines        tok/s against concurrency, one line per shape, the 95% intervals as error bars
    scatter      TTFT p95 against tok/s for every good cell, the Pareto frontier drawn through
    stacked_bar  where the time went, one bar split by category
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Sequence

from llama_tui.core.sweep.best import ShapeGrid

PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac")
LOW, HIGH = (0xe8, 0xef, 0xf7), (0x1f, 0x4e, 0x8c)  # heatmap shades: light blue to deep blue
FONT = 'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif"'


def _a(text: object) -> str:
    return escape(str(text), quote=True)


def _num(v: float) -> str:
    if abs(v) >= 10_000:
        return f"{v / 1000:,.1f}k"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.1f}" if abs(v) >= 10 else f"{v:,.2f}"


def _tick(v: float, ticks: Sequence[float]) -> str:
    """A tick label with as many decimals as the step needs; thousands as "k" on an axis that reaches 10k."""
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    unit, scale = ("k", 1000.0) if ticks and ticks[-1] >= 10_000 else ("", 1.0)
    step /= scale
    decimals = 0 if step >= 1 else max(1, -math.floor(math.log10(step)))
    return f"{v / scale:,.{decimals}f}{unit if v else ''}"


def nice_ticks(top: float, n: int = 5) -> list[float]:
    """0 and round steps up to at least `top` (1, 2, 2.5 or 5 times a power of ten)."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(math.ceil(top / step - 1e-9)) + 1)]


def _blend(t: float) -> str:
    t = max(0.0, min(1.0, t))
    r, g, b = (round(lo + (hi - lo) * t) for lo, hi in zip(LOW, HIGH))
    return f"#{r:02x}{g:02x}{b:02x}"


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="{_a(title)}" {FONT} font-size="12">\n<title>{escape(title)}</title>\n'
            + "\n".join(body) + "\n</svg>")


# --------------------------------------------------------------------------------------------- heatmap


def heatmap(grid: ShapeGrid, title: str = "best tok/s by instances x parallel") -> str:
    cw, ch, left, top = 140, 60, 90, 44
    width, height = left + cw * max(1, len(grid.parallel)) + 20, top + ch * max(1, len(grid.instances)) + 10
    top_v = grid.top or 0.0
    body = [f'<text x="{left}" y="22" font-weight="600">parallel (slots per instance)</text>',
            f'<text x="{left - 10}" y="{top - 6}" text-anchor="end" font-weight="600">instances</text>']
    for j, p in enumerate(grid.parallel):
        body.append(f'<text x="{left + j * cw + cw / 2}" y="{top - 6}" text-anchor="middle">{_a(p)}</text>')
    for i, inst in enumerate(grid.instances):
        y = top + i * ch
        body.append(f'<text x="{left - 10}" y="{y + ch / 2 + 4}" text-anchor="end">{_a(inst)}</text>')
        for j, p in enumerate(grid.parallel):
            x = left + j * cw
            cell = grid.cell(inst, p)
            if cell is None or cell.tok_s is None:
                note = (cell.note if cell is not None else None) or "not measured"
                body.append(f'<g class="empty"><rect x="{x + 2}" y="{y + 2}" width="{cw - 4}" height="{ch - 4}" '
                            f'fill="#f4f4f4" stroke="#ddd"/><text x="{x + cw / 2}" y="{y + ch / 2 + 4}" '
                            f'text-anchor="middle" fill="#888">{_a(note)}</text></g>')
                continue
            share = cell.tok_s / top_v if top_v > 0 else 0.0
            fill = _blend(share)
            ink = "#ffffff" if share > 0.55 else "#1a1a1a"
            stroke = ' stroke="#e15759" stroke-width="4"' if cell.best else ' stroke="#ffffff"'
            ci = f"{_num(cell.ci95[0])} to {_num(cell.ci95[1])}" if cell.ci95 else "single repeat"
            body.append(
                f'<g class="series" data-series="{_a(inst)}x{_a(p)}"><rect x="{x + 2}" y="{y + 2}" width="{cw - 4}" '
                f'height="{ch - 4}" fill="{fill}"{stroke}><title>{_a(inst)} x {_a(p)}: {_num(cell.tok_s)} tok/s '
                f'({_a(ci)})</title></rect><text x="{x + cw / 2}" y="{y + ch / 2}" text-anchor="middle" '
                f'fill="{ink}" font-weight="600">{"★ " if cell.best else ""}{_num(cell.tok_s)}</text>'
                f'<text x="{x + cw / 2}" y="{y + ch / 2 + 15}" text-anchor="middle" fill="{ink}" '
                f'font-size="10">{_a(ci)}</text></g>')
    return _svg(width, height, title, body)


# --------------------------------------------------------------------------------------------- lines


@dataclass(frozen=True)
class Series:
    name: str
    points: tuple[tuple[float, float, tuple[float, float] | None], ...]  # (x, y, interval)


def _frame(width: int, height: int, m: tuple[int, int, int, int], y_top: float, x_label: str,
           y_label: str) -> tuple[list[str], float, float]:
    """Axes with y grid lines; returns the body, the plot's height and width."""
    left, right, top, bottom = m
    ph, pw = height - top - bottom, width - left - right
    body = []
    ticks = nice_ticks(y_top)
    for t in ticks:
        y = top + ph - ph * t / y_top
        body.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>'
                    f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{_tick(t, ticks)}</text>')
    body.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" stroke="#999"/>'
                f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="#999"/>')
    body.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle" fill="#333">{_a(x_label)}</text>')
    body.append(f'<text transform="translate(14 {top + ph / 2}) rotate(-90)" text-anchor="middle" '
                f'fill="#333">{_a(y_label)}</text>')
    return body, ph, pw


def lines(series: Sequence[Series], title: str = "output tok/s against concurrency",
          x_label: str = "concurrency (log scale)", y_label: str = "output tok/s") -> str:
    """One polyline per series over the x values as evenly spaced categories (concurrency doubles)."""
    width, height = 760, 380
    xs = sorted({x for s in series for x, _, _ in s.points}) or [1.0]
    # scaled to the means (an interval over two noisy repeats can dwarf them); longer bars are cut at
    # the top, without their cap
    means = [y for s in series for _, y, _ in s.points]
    his = [ci[1] for s in series for _, _, ci in s.points if ci]
    reach = min(max(his), 1.5 * max(means)) if his and means else 0.0
    y_top = nice_ticks(max([1.0, reach] + means) * 1.08)[-1]
    m = (70, 170, 20, 50)
    body, ph, pw = _frame(width, height, m, y_top, x_label, y_label)
    left, top = m[0], m[2]

    def px(x: float, k: int | None = None) -> float:  # series k sits beside the others: bars do not hide
        dodge = 0.0 if k is None else 6 * (k - (len(series) - 1) / 2)
        return left + (pw * (xs.index(x) + 0.5) / len(xs)) + dodge

    def py(y: float) -> float:
        return top + ph - ph * y / y_top

    for x in xs:
        body.append(f'<text x="{px(x):.1f}" y="{top + ph + 16}" text-anchor="middle" fill="#555">{x:g}</text>')
    for k, s in enumerate(series):
        color = PALETTE[k % len(PALETTE)]
        pts = sorted(s.points)

        def at(x: float, k: int = k) -> float:
            return px(x, k)
        parts = [f'<g class="series" data-series="{_a(s.name)}">']
        if len(pts) > 1:
            path = " ".join(f"{at(x):.1f},{py(y):.1f}" for x, y, _ in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y, ci in pts:
            if ci:  # drawn inside the plot: a t interval over few repeats can reach below zero
                lo, hi = max(0.0, ci[0]), min(y_top, ci[1])
                parts.append(f'<line class="ci" x1="{at(x):.1f}" x2="{at(x):.1f}" y1="{py(lo):.1f}" '
                             f'y2="{py(hi):.1f}" stroke="{color}" stroke-width="1.5"/>')
                for b, inside in ((lo, lo == ci[0]), (hi, hi == ci[1])):
                    if inside:
                        parts.append(f'<line x1="{at(x) - 4:.1f}" x2="{at(x) + 4:.1f}" y1="{py(b):.1f}" '
                                     f'y2="{py(b):.1f}" stroke="{color}" stroke-width="1.5"/>')
            ci_t = f", 95% CI up to {_num(ci[1])}" if ci else ""
            parts.append(f'<circle cx="{at(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{color}"><title>{_a(s.name)} '
                         f'c={_num(x)}: {_num(y)} tok/s{_a(ci_t)}</title></circle>')
        ly = top + 14 + 18 * k
        parts.append(f'<line x1="{width - m[1] + 16}" x2="{width - m[1] + 36}" y1="{ly - 4}" y2="{ly - 4}" '
                     f'stroke="{color}" stroke-width="3"/><text x="{width - m[1] + 42}" y="{ly}">{_a(s.name)}</text>')
        parts.append("</g>")
        body.append("".join(parts))
    return _svg(width, height, title, body)


# --------------------------------------------------------------------------------------------- scatter


def scatter(points: Sequence[tuple[float, float, str]], frontier: Sequence[tuple[float, float, str]],
            title: str = "TTFT p95 against output tok/s") -> str:
    """Every good cell as a dot (x = mean TTFT p95 ms, y = mean tok/s), the frontier as a line."""
    width, height = 760, 380
    m = (70, 30, 20, 50)
    y_top = nice_ticks(max([1.0] + [y for _, y, _ in points]) * 1.08)[-1]
    x_top = nice_ticks(max([1.0] + [x for x, _, _ in points]) * 1.05)[-1]
    body, ph, pw = _frame(width, height, m, y_top, "TTFT p95 (ms): lower is better", "output tok/s: higher is better")
    left, top = m[0], m[2]

    def px(x: float) -> float:
        return left + pw * x / x_top

    def py(y: float) -> float:
        return top + ph - ph * y / y_top

    ticks = nice_ticks(x_top)
    for t in ticks:
        body.append(f'<text x="{px(t):.1f}" y="{top + ph + 16}" text-anchor="middle" fill="#555">'
                    f'{_tick(t, ticks)}</text>')
    dots = ['<g class="series" data-series="cells">']
    for x, y, label in points:
        dots.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="#4e79a7" fill-opacity="0.55">'
                    f'<title>{_a(label)}: {_num(y)} tok/s, TTFT p95 {_num(x)} ms</title></circle>')
    dots.append("</g>")
    body.append("".join(dots))
    front = ['<g class="series" data-series="frontier">']
    if frontier:
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y, _ in frontier)
        front.append(f'<polyline points="{path}" fill="none" stroke="#e15759" stroke-width="2"/>')
        for x, y, label in frontier:
            front.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="4.5" fill="#e15759"><title>{_a(label)}'
                         f'</title></circle><text x="{px(x) + 7:.1f}" y="{py(y) - 6:.1f}" font-size="10" '
                         f'fill="#a33">{_a(label)}</text>')
    front.append("</g>")
    body.append("".join(front))
    return _svg(width, height, title, body)


# --------------------------------------------------------------------------------------------- time


def stacked_bar(parts: Sequence[tuple[str, float]], title: str = "where the time went") -> str:
    """One horizontal bar of `parts` (label, seconds), each a series, with a legend below."""
    width, height, left, bar_w = 760, 110, 10, 740
    total = sum(s for _, s in parts) or 1.0
    body, x = [], float(left)
    for k, (label, secs) in enumerate(parts):
        w = bar_w * secs / total
        color = PALETTE[k % len(PALETTE)]
        lx, ly = left + (k % 4) * 185, 62 + 20 * (k // 4)
        body.append(f'<g class="series" data-series="{_a(label)}"><rect x="{x:.1f}" y="14" width="{w:.1f}" '
                    f'height="30" fill="{color}"><title>{_a(label)}: {secs:,.1f} s ({secs / total:.0%})</title></rect>'
                    f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="{color}"/><text x="{lx + 17}" '
                    f'y="{ly}">{_a(label)} {secs / total:.0%}</text></g>')
        x += w
    return _svg(width, height, title, body)
