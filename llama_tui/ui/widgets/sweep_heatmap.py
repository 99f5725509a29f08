"""The sweep's live heatmap: best tok/s by instances (rows) x parallel (columns), best cell starred."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.color import Color
from textual.reactive import reactive
from textual.widget import Widget

from llama_tui.core.snapshots import SweepCellResult, SweepProgress

CELL_W = 8
LABEL_W = 6


def best_by_shape(results: tuple[SweepCellResult, ...]) -> dict[tuple[int, int], SweepCellResult]:
    """The best valid point (highest tok/s over concurrency) of each instances x parallel shape."""
    best: dict[tuple[int, int], SweepCellResult] = {}
    for r in results:
        if not r.valid:
            continue
        key = (r.instances, r.parallel)
        if key not in best or r.tok_s > best[key].tok_s:
            best[key] = r
    return best


def best_result(results: tuple[SweepCellResult, ...]) -> SweepCellResult | None:
    valid = [r for r in results if r.valid]
    return max(valid, key=lambda r: r.tok_s) if valid else None


def cell_text(v: float) -> str:
    return f"{v / 1000:.1f}k" if v >= 10_000 else f"{v:,.0f}"


class SweepHeatmap(Widget):
    COMPONENT_CLASSES = {"sweep-heatmap--low", "sweep-heatmap--high", "sweep-heatmap--axis",
                         "sweep-heatmap--current", "sweep-heatmap--best"}

    progress: reactive[SweepProgress | None] = reactive(None, layout=True)

    def render(self) -> Text:
        p = self.progress
        if p is None:
            return Text("no sweep yet: press w to start one", style="dim")
        best = best_by_shape(p.results)
        inst = sorted({k[0] for k in best} | {r.instances for r in p.results} | ({p.instances} if p.instances else set()))
        par = sorted({k[1] for k in best} | {r.parallel for r in p.results} | ({p.parallel} if p.parallel else set()))
        top = best_result(p.results)
        top_v = top.tok_s if top else 1.0
        low = self.get_component_styles("sweep-heatmap--low").background
        high = self.get_component_styles("sweep-heatmap--high").background
        axis = self.get_component_rich_style("sweep-heatmap--axis", partial=True)
        current = self.get_component_rich_style("sweep-heatmap--current", partial=True)
        best_style = self.get_component_rich_style("sweep-heatmap--best", partial=True)
        out = Text(no_wrap=True, overflow="crop")
        out.append(f"{'inst':>{LABEL_W - 1}} " + "".join(f"{'p=' + str(x):>{CELL_W}}" for x in par) + "\n", axis)
        for i in inst:
            out.append(f"{i:>{LABEL_W - 1}} ", axis)
            for x in par:
                r = best.get((i, x))
                if r is None:
                    now = (i, x) == (p.instances, p.parallel) and not p.done
                    out.append(f"{'…' if now else '·':>{CELL_W}}", current if now else axis)
                    continue
                mark = "★" if top is not None and r is top else " "
                color = low.blend(high, max(0.0, min(1.0, r.tok_s / top_v))) if isinstance(low, Color) else None
                style = Style(bgcolor=color.rich_color, color=color.get_contrast_text(1.0).rich_color) if color else Style()
                if mark == "★":
                    style = style + best_style
                out.append(f"{mark}{cell_text(r.tok_s):>{CELL_W - 2}} ", style)
            out.append("\n")
        out.append(f"{'':>{LABEL_W}}★ best · … measuring now", axis)
        return out
