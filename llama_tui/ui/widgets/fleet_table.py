"""The Fleet pane: one row per instance (keyed by port, updated in place), a totals row, a system line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from llama_tui.core.snapshots import FleetSnapshot, InstanceSnapshot, SystemSample
from llama_tui.ui import units
from llama_tui.ui.widgets.stable_table import StableTable, show_text

TOTAL_KEY = "total"
EMPTY = Text("")
STATES = ("starting", "ready", "restarting", "failed", "stopped", "draining")


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int
    narrow: bool  # shown at 80 columns too
    cell: Callable[[InstanceSnapshot], str]
    narrow_width: int | None = None


def _gpu_mem(i: InstanceSnapshot) -> str:
    return units.size(i.gpu_memory_bytes)


COLUMNS: tuple[Column, ...] = (
    Column("index", "#", 2, True, lambda i: str(i.index)),
    Column("port", "port", 5, True, lambda i: str(i.port)),
    Column("pid", "pid", 7, False, lambda i: units.num(i.pid).replace(",", "")),
    Column("state", "state", 10, True, lambda i: i.state, 8),
    Column("slots", "slots", 5, True, lambda i: units.ratio(i.slots_busy, i.slots_total)),
    Column("req", "req p/d", 7, True, lambda i: units.ratio(i.requests_processing, i.requests_deferred), 5),
    Column("tok_s", "tok/s", 7, True, lambda i: units.num(i.server_tok_s)),
    Column("cpu", "CPU%", 5, True, lambda i: units.pct(i.cpu_percent)),
    Column("rss", "RSS", 5, True, lambda i: units.size(i.rss_bytes)),
    Column("gpu_mem", "GPU mem", 7, True, _gpu_mem, 5),
    Column("gpu_util", "GPU%", 4, False, lambda i: units.pct(i.gpu_util_percent)),
    Column("restarts", "rst", 3, True, lambda i: str(i.restarts)),
    Column("uptime", "uptime", 6, False, lambda i: units.age(i.uptime_s)),
)
NARROW_LABELS = {"gpu_mem": "GPU", "req": "req"}
NARROW_STATES = {"restarting": "restart", "starting": "start"}


def _sum(values: list[Any]) -> Any:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def totals(snap: FleetSnapshot) -> dict[str, str]:
    insts = snap.instances
    ready = sum(1 for i in insts if i.state == "ready")
    return {
        "index": "Σ", "port": "", "pid": "", "state": f"{ready}/{len(insts)} up",  # fits the narrow width too
        "slots": units.ratio(_sum([i.slots_busy for i in insts]), _sum([i.slots_total for i in insts])),
        "req": units.ratio(_sum([i.requests_processing for i in insts]), _sum([i.requests_deferred for i in insts])),
        "tok_s": units.num(_sum([i.server_tok_s for i in insts])),
        "cpu": units.pct(_sum([i.cpu_percent for i in insts])),
        "rss": units.size(_sum([i.rss_bytes for i in insts])),
        "gpu_mem": units.size(_sum([i.gpu_memory_bytes for i in insts])),
        "gpu_util": "", "restarts": str(sum(i.restarts for i in insts)), "uptime": "",
    }


def system_line(sysm: SystemSample | None) -> str:
    if sysm is None:
        return "system n/a"
    mem = "RAM n/a"
    if sysm.memory_total_bytes:
        used = sysm.memory_used_bytes
        share = f" ({100 * used / sysm.memory_total_bytes:.0f}%)" if used is not None else ""
        mem = f"RAM {units.size(used)}/{units.size(sysm.memory_total_bytes)}{share}"
    parts = [f"CPU {units.pct(sysm.cpu_percent)} of {sysm.cores} cores", mem]
    if not sysm.gpus:
        parts.append("GPU n/a")
    for g in sysm.gpus:
        parts.append(f"GPU{g.index} {units.size(g.memory_used_bytes)}/{units.size(g.memory_total_bytes)} "
                     f"{units.pct(g.util_percent)}")
    return "  ·  ".join(parts)


class FleetTable(StableTable):
    """Instances keyed by port. Cells change in place, so the cursor stays on its row."""

    COMPONENT_CLASSES = {f"fleet-table--{s}" for s in STATES} | {"fleet-table--total"}

    def __init__(self, **kw: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kw)
        self.narrow = False
        self._cells: dict[tuple[str, str], str] = {}
        self._ports: list[int] = []

    def on_mount(self) -> None:
        self._build_columns()

    def columns_shown(self) -> tuple[Column, ...]:
        return tuple(c for c in COLUMNS if c.narrow or not self.narrow)

    def _build_columns(self) -> None:
        self.clear(columns=True)
        self._cells.clear()
        self._ports = []
        for c in self.columns_shown():
            label = NARROW_LABELS.get(c.key, c.label) if self.narrow else c.label
            width = c.narrow_width if self.narrow and c.narrow_width else c.width
            self.add_column(label, key=c.key, width=width)

    def set_narrow(self, narrow: bool) -> bool:
        """Drop the less important columns below 100 columns; True when the table was rebuilt."""
        if narrow == self.narrow:
            return False
        self.narrow = narrow
        self._build_columns()
        return True

    def _styled(self, key: str, value: str, state: str | None) -> Text:
        if key == "state" and state:
            shown = NARROW_STATES.get(value, value) if self.narrow else value
            return Text(shown, style=self.get_component_rich_style(f"fleet-table--{state}", partial=True))
        return Text(value)  # a Text, not a str: DataTable parses str cells as markup on every redraw

    def selected_port(self) -> int | None:
        if self.row_count == 0:
            return None
        row_key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        return None if row_key.value in (None, TOTAL_KEY) else int(row_key.value)

    def show(self, snap: FleetSnapshot) -> None:
        cols = self.columns_shown()
        ports = [i.port for i in snap.instances]
        if ports != self._ports:  # rows come or go: keep existing rows, append new ones, totals stay last
            for key in [k for k in (*map(str, self._ports), TOTAL_KEY) if k in self.rows]:
                if key == TOTAL_KEY or int(key) not in ports:
                    self.remove_row(key)
                    self._cells = {ck: v for ck, v in self._cells.items() if ck[0] != key}
            for inst in snap.instances:
                if str(inst.port) not in self.rows:
                    self.add_row(*[EMPTY] * len(cols), key=str(inst.port))
            if snap.instances:
                self.add_row(*[EMPTY] * len(cols), key=TOTAL_KEY)
            self._ports = ports
        for inst in snap.instances:
            for c in cols:
                self._set(str(inst.port), c.key, c.cell(inst), inst.state)
        if snap.instances:
            tot = totals(snap)
            style = self.get_component_rich_style("fleet-table--total", partial=True)
            for c in cols:
                self._set(TOTAL_KEY, c.key, tot[c.key], None, style)

    def _set(self, row: str, col: str, value: str, state: str | None, style: Any = None) -> None:
        cache_key = (row, col)
        marker = f"{value}\x00{state}"
        if self._cells.get(cache_key) == marker:
            return
        self._cells[cache_key] = marker
        cell = Text(value, style=style) if style is not None else self._styled(col, value, state)
        self.update_cell(row, col, cell)


class FleetPane(Vertical):
    """Border title: the model and shape. Body: the instance table, the system line, problems."""

    def compose(self) -> ComposeResult:
        yield FleetTable(id="fleet-table")
        yield Static(id="fleet-empty", classes="empty-note")
        yield Static(id="system-line")
        yield Static(id="fleet-problems")

    def on_mount(self) -> None:
        self.border_title = "Fleet"

    def show(self, snap: FleetSnapshot, idle_hint: str = "") -> None:
        table = self.query_one(FleetTable)
        table.show(snap)
        self.set_class(not snap.running, "-empty")
        failed = [i for i in snap.instances if i.state == "failed"]
        self.set_class(bool(failed) or snap.supervisor_alive is False, "-degraded")
        if snap.running:
            model = Path(snap.model).name if snap.model else "model n/a"
            shape = f"{len(snap.instances)} x {units.num(snap.parallel)} slots"
            sup = f"supervisor {snap.supervisor_pid}" if snap.supervisor_pid else "supervisor n/a"
            if snap.supervisor_alive is False:
                sup += " (gone)"
            titles = (f"Fleet · {model} · {shape}", sup)
        else:
            titles = ("Fleet · none running", "")
        if titles != (self.border_title, self.border_subtitle):  # setting them repaints the pane, even unchanged
            self.border_title, self.border_subtitle = titles
        show_text(self.query_one("#fleet-empty", Static), idle_hint)
        show_text(self.query_one("#system-line", Static), system_line(snap.system))
        problems = [f"instance {i.index} :{i.port} {i.state}: {i.last_error or 'no error recorded'}" for i in failed]
        problems += list(snap.warnings)
        show_text(self.query_one("#fleet-problems", Static), "\n".join(problems))
        self.query_one("#fleet-problems", Static).display = bool(problems)
