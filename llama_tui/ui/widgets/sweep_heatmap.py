"""The sweep's live heatmap: best tok/s by instances (rows) x parallel (columns), best cell starred, and
whether the best stands apart from the runner-up (their 95% intervals).

It renders the core's grid (`sweep.shape_grid`: the rule the report's heatmap and apply-best use)."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.color import Color
from textual.reactive import reactive
from textual.widget import Widget

from llama_tui.core.snapshots import SweepProgress
from llama_tui.core.sweep import cells, shape_grid

CELL_W = 8
LABEL_W = 6


def cell_text(v: float) -> str:
    return f"{v / 1000:.1f}k" if v >= 10_000 else f"{v:,.0f}"


def runner_up_line(p: SweepProgress) -> str:
    """The best against the runner-up (another shape), as the core judges it: "" without a runner-up or
    without intervals to compare."""
    v = cells.verdict(cells.from_points(p.results))
    if v.best is None or v.runner_up is None:
        return ""
    other = v.runner_up.members[-1]
    name = other.shape or f"{other.instances}x{other.parallel}"
    if v.best.ci95 is None or v.runner_up.ci95 is None:
        return ""  # single repeats: no intervals to compare
    return f"apart from {name} (95% CI)" if v.distinguishable else f"statistically tied with {name}"


class SweepHeatmap(Widget):
    COMPONENT_CLASSES = {"sweep-heatmap--low", "sweep-heatmap--high", "sweep-heatmap--axis",
                         "sweep-heatmap--current", "sweep-heatmap--best"}

    progress: reactive[SweepProgress | None] = reactive(None, layout=True)

    def render(self) -> Text:
        p = self.progress
        if p is None:
            return Text("no sweep yet: press w to start one", style="dim")
        now_at = (p.instances, p.parallel) if p.instances and p.parallel and not p.done else None
        grid = shape_grid(p.results, shapes=[now_at] if now_at else ())
        top_v = grid.top or 1.0
        low = self.get_component_styles("sweep-heatmap--low").background
        high = self.get_component_styles("sweep-heatmap--high").background
        axis = self.get_component_rich_style("sweep-heatmap--axis", partial=True)
        current = self.get_component_rich_style("sweep-heatmap--current", partial=True)
        best_style = self.get_component_rich_style("sweep-heatmap--best", partial=True)
        out = Text(no_wrap=True, overflow="crop")
        out.append(f"{'inst':>{LABEL_W - 1}} " + "".join(f"{'p=' + str(x):>{CELL_W}}" for x in grid.parallel) + "\n",
                   axis)
        for i in grid.instances:
            out.append(f"{i:>{LABEL_W - 1}} ", axis)
            for x in grid.parallel:
                cell = grid.cell(i, x)
                if cell is None or cell.tok_s is None:
                    now = (i, x) == now_at
                    text = "…" if now else (cell.note if cell is not None else None) or "·"
                    out.append(f"{text:>{CELL_W}}", current if now else axis)
                    continue
                color = low.blend(high, max(0.0, min(1.0, cell.tok_s / top_v))) if isinstance(low, Color) else None
                style = Style(bgcolor=color.rich_color, color=color.get_contrast_text(1.0).rich_color) if color else Style()
                if cell.best:
                    style = style + best_style
                out.append(f"{'★' if cell.best else ' '}{cell_text(cell.tok_s):>{CELL_W - 2}} ", style)
            out.append("\n")
        out.append(f"{'':>{LABEL_W}}★ best · … measuring now", axis)
        versus = runner_up_line(p)
        if versus:
            out.append(f"\n{'':>{LABEL_W}}{versus}", axis)
        return out
