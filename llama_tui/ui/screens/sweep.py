"""The sweep screen: progress (cell i/N, ETA), the live heatmap, sortable results, "apply best"."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.events import Resize
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from llama_tui.core.snapshots import SweepCellResult, SweepProgress
from llama_tui.ui import units
from llama_tui.ui.widgets.sweep_heatmap import SweepHeatmap, best_result
from llama_tui.ui.widgets.throughput_chart import bar

RESULT_COLUMNS = (("instances", "inst", 4), ("parallel", "par", 4), ("concurrency", "conc", 5),
                  ("tok_s", "tok/s", 7), ("ttft_p50", "TTFT p50", 8), ("ttft_p95", "p95", 7),
                  ("errors", "err", 4), ("valid", "valid", 5))
SORT_KEYS = {
    "instances": lambda r: (r.instances, r.parallel, r.concurrency),
    "parallel": lambda r: (r.parallel, r.instances, r.concurrency),
    "concurrency": lambda r: (r.concurrency, r.instances, r.parallel),
    "tok_s": lambda r: r.tok_s,
    "ttft_p50": lambda r: r.ttft_p50_ms if r.ttft_p50_ms is not None else float("inf"),
    "ttft_p95": lambda r: r.ttft_p95_ms if r.ttft_p95_ms is not None else float("inf"),
    "errors": lambda r: r.errors,
    "valid": lambda r: r.valid,
}
DESCENDING = {"tok_s", "valid"}


def row_key(r: SweepCellResult) -> str:
    return f"{r.instances}x{r.parallel}@{r.concurrency}"


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


class ResultsTable(DataTable):
    COMPONENT_CLASSES = {"results-table--best", "results-table--invalid"}

    def __init__(self, **kw) -> None:
        super().__init__(cursor_type="row", **kw)
        self.sort_column = "tok_s"
        self._shown: dict[str, SweepCellResult] = {}
        self._best: str | None = None

    def on_mount(self) -> None:
        for key, label, width in RESULT_COLUMNS:
            self.add_column(label, key=key, width=width)

    def _cells(self, r: SweepCellResult, best: bool) -> list[Text | str]:
        style = None
        if best:
            style = self.get_component_rich_style("results-table--best", partial=True)
        elif not r.valid:
            style = self.get_component_rich_style("results-table--invalid", partial=True)
        values = [("★" if best else " ") + str(r.instances), str(r.parallel), str(r.concurrency), units.num(r.tok_s),
                  units.ms(r.ttft_p50_ms), units.ms(r.ttft_p95_ms), str(r.errors), "yes" if r.valid else "NO"]
        return [Text(v, style=style) if style else v for v in values]

    def show(self, results: tuple[SweepCellResult, ...]) -> None:
        best = best_result(results)
        best_key = row_key(best) if best else None
        changed = False
        for r in results:
            key = row_key(r)
            if key not in self._shown:
                self.add_row(*self._cells(r, key == best_key), key=key)
                self._shown[key] = r
                changed = True
        if best_key != self._best:
            for key in (self._best, best_key):
                if key and key in self._shown:
                    for (col, _, _), cell in zip(RESULT_COLUMNS, self._cells(self._shown[key], key == best_key)):
                        self.update_cell(key, col, cell)
            self._best = best_key
        if changed:
            self.resort()

    def resort(self) -> None:
        get = SORT_KEYS[self.sort_column]

        def by(values: tuple) -> object:  # a row's cells name its point: "★2", "4", "16" -> 2x4@16
            key = f"{str(values[0]).lstrip('★ ')}x{values[1]}@{values[2]}"
            return get(self._shown[key])

        self.sort(key=by, reverse=self.sort_column in DESCENDING)

    def sort_by(self, column: str) -> None:
        self.sort_column = column
        self.resort()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        self.sort_by(str(event.column_key.value))


class SweepScreen(Screen):
    BINDINGS = [
        Binding("w", "app.sweep_start", "Start sweep", id="sweep.start"),
        Binding("c", "app.sweep_cancel", "Cancel", id="sweep.cancel"),
        Binding("a", "app.apply_best", "Apply best", id="sweep.apply_best"),
        Binding("o", "cycle_sort", "Sort", id="sweep.sort"),
        Binding("escape", "app.pop_screen", "Back", id="sweep.back"),
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
        self.query_one("#sweep-progress", Static).update(progress_line(progress, running))
        self.query_one(SweepHeatmap).progress = progress
        if progress is not None:
            self.query_one(ResultsTable).show(progress.results)

    def action_cycle_sort(self) -> None:
        table = self.query_one(ResultsTable)
        keys = [k for k, _, _ in RESULT_COLUMNS]
        table.sort_by(keys[(keys.index(table.sort_column) + 1) % len(keys)])
        label = dict((k, lbl) for k, lbl, _ in RESULT_COLUMNS)[table.sort_column]
        self.query_one("#results-pane").border_title = f"Results · sorted by {label}"
