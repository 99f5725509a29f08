"""The Throughput pane: live tok/s of the running benchmark, each concurrency step marked.

One column per sample (the benchmark sends one every ~0.5 s), newest on the right. Steps alternate
colours and are labelled on the axis (c=4); warm-up samples, which the benchmark excludes from its
results, are drawn dim. The figures are the client's: tokens counted from the server's stream.
"""

from __future__ import annotations

import math
import textwrap

from rich.segment import Segment
from rich.style import Style
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Static

from llama_tui.core.snapshots import BenchSample, StepVerdict
from llama_tui.ui import units
from llama_tui.ui.widgets.redraw import show_text

BLOCKS = " ▁▂▃▄▅▆▇█"
AXIS_W = 6


def nice_ceiling(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if v <= m * exp:
            return m * exp
    return 10 * exp  # pragma: no cover


def short(v: float) -> str:
    if v >= 10_000:
        return f"{v / 1000:.0f}k"
    if v >= 1000:
        return f"{v / 1000:.1f}k"
    return f"{v:.0f}"


class ThroughputChart(Widget):
    """Drawn line by line (Line API) from a cache rebuilt only when the samples or the size change."""

    COMPONENT_CLASSES = {"throughput-chart--bar", "throughput-chart--bar-alt", "throughput-chart--warmup",
                         "throughput-chart--invalid", "throughput-chart--axis", "throughput-chart--empty"}

    samples: reactive[tuple[BenchSample, ...]] = reactive((), layout=False)
    invalid_steps: reactive[frozenset[int]] = reactive(frozenset())  # steps the benchmark judged invalid
    hint: reactive[str] = reactive("")

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self._cache_key: object = None
        self._strips: list[Strip] = []

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._cache_key = None

    def render_line(self, y: int) -> Strip:
        width, height = self.size.width, self.size.height
        key = (self.invalid_steps, self.hint, width, height)
        drawn = self._cache_key
        # samples: compared by identity (a fresh tuple arrives with every change; the key holds it alive)
        if drawn is None or drawn[0] is not self.samples or drawn[1] != key:  # type: ignore[index]
            self._cache_key = (self.samples, key)
            self._strips = self.draw(width, height)
        return self._strips[y] if y < len(self._strips) else Strip.blank(width, self.rich_style)

    def _style(self, name: str) -> Style:
        return self.rich_style + self.get_component_rich_style(f"throughput-chart--{name}", partial=True)

    def draw(self, width: int, height: int) -> list[Strip]:
        base = self.rich_style
        if not self.samples:
            empty = self._style("empty")
            return [Strip([Segment(line, empty)]).adjust_cell_length(width, base)
                    for line in textwrap.wrap(self.hint, max(1, width))[:height]]
        rows = max(1, height - 1)
        cols = max(1, width - AXIS_W)
        pts = self.samples[-cols:]
        vmax = nice_ceiling(max(s.tok_s for s in pts))
        style = {k: self._style(k) for k in ("bar", "bar-alt", "warmup", "invalid", "axis")}
        col_style = []
        for s in pts:
            if s.valid is False or s.step in self.invalid_steps:
                col_style.append(style["invalid"])
            elif s.phase == "warmup":
                col_style.append(style["warmup"])
            else:
                col_style.append(style["bar"] if s.step % 2 else style["bar-alt"])
        levels = [min(rows * 8, round(s.tok_s / vmax * rows * 8)) for s in pts]
        strips = []
        for r in range(rows - 1, -1, -1):
            label = short(vmax) if r == rows - 1 else ("0" if r == 0 else "")
            segments = [Segment(f"{label:>{AXIS_W - 1}}┤" if label else " " * (AXIS_W - 1) + "│", style["axis"])]
            run, run_style = "", None
            for x, lv in enumerate(levels):  # one segment per run of columns in the same style
                if col_style[x] is not run_style and run:
                    segments.append(Segment(run, run_style))
                    run = ""
                run_style = col_style[x]
                run += BLOCKS[max(0, min(8, lv - r * 8))]
            if run:
                segments.append(Segment(run, run_style))
            strips.append(Strip(segments).adjust_cell_length(width, base))
        axis = ["─"] * len(pts)
        x = 0
        prev = None
        while x < len(pts):
            if pts[x].step != prev:
                prev = pts[x].step
                c = pts[x].concurrency
                tag = f"┴c={c}" if c is not None else (f"┴r={pts[x].rate:g}" if pts[x].rate else "┴")
                for k, ch in enumerate(tag):
                    if x + k < len(axis):
                        axis[x + k] = ch
                x += len(tag)
                continue
            x += 1
        strips.append(Strip([Segment(" " * (AXIS_W - 1) + "└" + "".join(axis), style["axis"])])
                      .adjust_cell_length(width, base))
        return strips


def ramp_progress(s: BenchSample) -> float | None:
    if not s.steps_total:
        return None
    into = 0.0
    if s.step_elapsed_s is not None and s.step_duration_s:
        into = min(1.0, s.step_elapsed_s / s.step_duration_s)
    return min(1.0, (s.step + into) / s.steps_total)


def bar(fraction: float, width: int = 20) -> str:
    filled = round(fraction * width)
    return "█" * filled + "░" * (width - filled)


class ThroughputPane(Vertical):
    def compose(self) -> ComposeResult:
        yield ThroughputChart(id="throughput-chart")
        yield Static(id="throughput-stats")
        yield Static(id="ramp-line")
        yield Static(id="validity-line")

    def on_mount(self) -> None:
        self.border_title = "Throughput · benchmark via NGINX, streamed"

    def show(self, samples: tuple[BenchSample, ...], verdicts: tuple[StepVerdict, ...], running: bool,
             hint: str = "", summary: str = "") -> None:
        chart = self.query_one(ThroughputChart)
        chart.samples = samples
        chart.invalid_steps = frozenset(v.step for v in verdicts if v.valid is False)
        chart.hint = hint
        self.set_class(running, "-running")
        self.set_class(bool(chart.invalid_steps), "-degraded")
        stats = self.query_one("#throughput-stats", Static)
        ramp = self.query_one("#ramp-line", Static)
        verdict = self.query_one("#validity-line", Static)
        if not samples:
            show_text(stats, "")
            show_text(ramp, summary)
            show_text(verdict, "")
            return
        last = samples[-1]
        show_text(stats, f"[b]{units.num(last.tok_s)}[/b] tok/s · TTFT p50 {units.ms(last.ttft_p50_ms)} "
                     f"p95 {units.ms(last.ttft_p95_ms)} · errors {last.errors}"
                     + (" · warm-up" if last.phase == "warmup" else ""))
        show_text(verdict, validity(last, verdicts))
        frac = ramp_progress(last)
        steps = f"step {last.step + 1}/{last.steps_total}" if last.steps_total else f"step {last.step + 1}"
        load = load_label(last)
        if running:
            pct = f" {bar(frac, 12)} {frac * 100:.0f}%" if frac is not None else ""
            show_text(ramp, f"{steps} {load}{pct} · {last.inflight} in flight · {last.requests_done:,} req")
            return
        text = f"ended at {steps} {load}"
        finished = [v for v in verdicts if v.tok_s is not None]
        if finished:
            best = max(finished, key=lambda v: v.tok_s or 0.0)
            text += f" · best {units.num(best.tok_s)} tok/s at {best.load}"
        show_text(ramp, text + (f" · {summary}" if summary else ""))


def load_label(s: BenchSample) -> str:
    return f"c={s.concurrency}" if s.concurrency is not None else f"rate {units.num(s.rate, 1)}/s"


def validity(last: BenchSample, verdicts: tuple[StepVerdict, ...]) -> str:
    """The live sample's flag when it has one; else the verdict on the last finished step."""
    if last.valid is not None:
        return "[$success]valid[/]" if last.valid else "[$error]INVALID[/]"
    if not verdicts:
        return "valid: judged when step 1 ends"
    v = verdicts[-1]
    if v.valid is None:
        return f"step {v.step + 1} valid n/a"
    if v.valid:
        return f"step {v.step + 1} [$success]valid[/]"
    return f"step {v.step + 1} [$error]INVALID[/]: {v.reason or 'no reason given'}"
