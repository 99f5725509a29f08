"""The sweep screen: progress (cell i/N, ETA), the live heatmap, sortable results with each cell's 95%
interval over its repeats, "apply best"."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.events import Resize
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from llama_tui.core.snapshots import SweepCellResult, SweepProgress
from llama_tui.core.sweep import cells
from llama_tui.ui import units
from llama_tui.ui.widgets.redraw import show_text
from llama_tui.ui.widgets.sweep_heatmap import SweepHeatmap
from llama_tui.ui.widgets.throughput_chart import bar

RESULT_COLUMNS = (("n", "#", 3), ("instances", "inst", 4), ("parallel", "par", 4), ("concurrency", "conc", 5),
                  ("tok_s", "tok/s", 7), ("ttft_p50", "TTFT p50", 8), ("ttft_p95", "p95", 7),
                  ("errors", "err", 4), ("valid", "valid", 5), ("ci95", "±95%", 5))
SORT_KEYS = {
    "n": lambda r: 0,  # replaced by the finishing order itself (see ResultsTable.resort)
    "instances": lambda r: (r.instances, r.parallel, r.concurrency),
    "parallel": lambda r: (r.parallel, r.instances, r.concurrency),
    "concurrency": lambda r: (r.concurrency, r.instances, r.parallel),
    "tok_s": lambda r: r.tok_s,
    "ttft_p50": lambda r: r.ttft_p50_ms if r.ttft_p50_ms is not None else float("inf"),
    "ttft_p95": lambda r: r.ttft_p95_ms if r.ttft_p95_ms is not None else float("inf"),
    "errors": lambda r: r.errors,
    "valid": lambda r: r.valid,
    "ci95": lambda r: r.tok_s,  # rows of one cell share its interval: by tok/s
}
DESCENDING = {"tok_s", "valid"}


def progress_line(p: SweepProgress | None, running: bool) -> str:
    if p is None:
        return "No sweep yet. w starts one with the preset's [sweep] grid (it runs its own fleets, one at a time)."
    frac = p.cell / p.cells_total if p.cells_total else 0.0
    if p.done or not running:
        state = {"done": "done", "failed": "FAILED", "cancelled": "cancelled"}.get(p.phase, "stopped")
        return f"sweep {state}: {p.cell}/{p.cells_total} cells in {units.duration(p.t)}" + (
            f"  ·  {p.message}" if p.message else "")
    shape = f"{p.instances} x {p.parallel}" if p.instances else "n/a"
    conc = f" c={p.concurrency}" if p.concurrency is not None else ""
    eta = units.duration(p.eta_s) if p.eta_s is not None else "n/a"
    return (f"cell {p.cell}/{p.cells_total} {bar(frac, 16)}  shape {shape}{conc}  {p.phase}  "
            f"elapsed {units.duration(p.t)}  ETA {eta}")


def interval_text(ci: tuple[float, float] | None) -> str:
    """A cell's 95% interval as its half-width around the mean ("±57", "±1.2k"; Student-t intervals are
    symmetric); empty for a single repeat."""
    if ci is None:
        return ""
    half = (ci[1] - ci[0]) / 2
    return "±" + (f"{half / 1000:.1f}k" if half >= 1000 else f"{half:,.0f}")


class ResultsTable(DataTable):
    COMPONENT_CLASSES = {"results-table--best", "results-table--invalid"}

    def __init__(self, **kw) -> None:
        super().__init__(cursor_type="row", **kw)
        self.sort_column = "tok_s"
        self._shown: list[SweepCellResult] = []  # in the order the sweep finished them; row key = position
        self._best: int | None = None
        self._ci: dict[int, str] = {}  # row -> the interval shown (a cell's changes as its repeats arrive)

    def on_mount(self) -> None:
        for key, label, width in RESULT_COLUMNS:
            self.add_column(label, key=key, width=width)

    def _cells(self, n: int, r: SweepCellResult, best: bool, ci: str = "") -> list[Text | str]:
        style = None
        if best:
            style = self.get_component_rich_style("results-table--best", partial=True)
        elif not r.valid:
            style = self.get_component_rich_style("results-table--invalid", partial=True)
        values = [("★" if best else " ") + str(n + 1), str(r.instances), str(r.parallel), str(r.concurrency),
                  units.num(r.tok_s), units.ms(r.ttft_p50_ms), units.ms(r.ttft_p95_ms), str(r.errors),
                  "yes" if r.valid else "NO", ci]
        return [Text(v, style=style or "") for v in values]  # Text: no markup parsing per redraw

    def show(self, results: tuple[SweepCellResult, ...]) -> None:
        if len(results) < len(self._shown):  # a new sweep: start over
            self.clear()
            self._shown, self._best, self._ci = [], None, {}
        found = cells.from_points(results)
        top = cells.verdict(found).best  # the core's rule: the star is the shape that apply-best starts
        best_n = next((n for n, r in enumerate(results) if top is not None and r is top.members[-1]), None)
        position = {id(r): n for n, r in enumerate(results)}
        ci = {position[id(m)]: interval_text(c.ci95) for c in found for m in c.members}
        for n in range(len(self._shown), len(results)):
            self._ci[n] = ci.get(n, "")
            self.add_row(*self._cells(n, results[n], n == best_n, self._ci[n]), key=str(n))
            self._shown.append(results[n])
        changed = {n for n in range(len(self._shown)) if ci.get(n, "") != self._ci[n]}
        if best_n != self._best:
            changed |= {n for n in (self._best, best_n) if n is not None and n < len(self._shown)}
            self._best = best_n
        for n in sorted(changed):
            self._ci[n] = ci.get(n, "")
            for (col, _, _), cell in zip(RESULT_COLUMNS, self._cells(n, self._shown[n], n == best_n, self._ci[n])):
                self.update_cell(str(n), col, cell)
        self.resort()

    def resort(self) -> None:
        get = SORT_KEYS[self.sort_column]

        def by(values: tuple) -> object:  # the first cell is the row's finishing number: "★3" -> results[2]
            n = int(str(values[0]).lstrip("★ ")) - 1
            return n if self.sort_column == "n" else (get(self._shown[n]), n)

        self.sort(key=by, reverse=self.sort_column in DESCENDING)

    def sort_by(self, column: str) -> None:
        self.sort_column = column
        self.resort()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        self.sort_by(str(event.column_key.value))


class SweepScreen(Screen):
    BINDINGS = [
        Binding("w", "app.sweep_start", "Start sweep", tooltip="the preset's sweep grid, in its own process (asks first)",
                id="sweep.start"),
        Binding("c", "app.sweep_cancel", "Cancel", tooltip="stop the sweep after its current step (resumable)",
                id="sweep.cancel"),
        Binding("a", "app.apply_best", "Apply best", tooltip="restart the fleet as the best shape (asks first)",
                id="sweep.apply_best"),
        Binding("o", "cycle_sort", "Sort", tooltip="sort the results by the next column (or click a header)",
                id="sweep.sort"),
        Binding("escape", "app.pop_screen", "Back", tooltip="back to the main screen", id="sweep.back"),
    ]

    def compose(self) -> ComposeResult:
        yield Header(icon="≡")
        yield Static(id="sweep-progress")
        with Horizontal(id="sweep-body"):
            with Vertical(id="heatmap-pane", classes="pane"):
                yield SweepHeatmap(id="sweep-heatmap")
            with Vertical(id="results-pane", classes="pane"):
                yield ResultsTable(id="results-table")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#heatmap-pane").border_title = "Best tok/s · instances x parallel"
        self.query_one("#results-pane").border_title = "Results · sorted by tok/s"
        self.show(self.app.sweep_progress, self.app.sweep_running)

    def on_resize(self, event: Resize) -> None:
        self.set_class(event.size.width < 100, "-narrow")

    def show(self, progress: SweepProgress | None, running: bool) -> None:
        show_text(self.query_one("#sweep-progress", Static), progress_line(progress, running))
        self.query_one(SweepHeatmap).progress = progress
        if progress is not None:
            self.query_one(ResultsTable).show(progress.results)

    def action_cycle_sort(self) -> None:
        table = self.query_one(ResultsTable)
        keys = [k for k, _, _ in RESULT_COLUMNS]
        table.sort_by(keys[(keys.index(table.sort_column) + 1) % len(keys)])
        label = dict((k, lbl) for k, lbl, _ in RESULT_COLUMNS)[table.sort_column]
        self.query_one("#results-pane").border_title = f"Results · sorted by {label}"
