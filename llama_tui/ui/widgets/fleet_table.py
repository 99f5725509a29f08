"""The Fleet pane: one row per instance (keyed by port, updated in place), a totals row, a system line
(one per node too, when the instances run on several machines)."""

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
from llama_tui.ui.widgets.keyed_table import Cell, Col, KeyedTable
from llama_tui.ui.widgets.redraw import show_text

TOTAL_KEY = "total"
LEFT_ALIGNED = {"state", "slots", "req", "index", "port", "host", "pid", "uptime"}
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
    Column("port", "port", 5, True, lambda i: str(i.port) if i.port else "n/a"),  # 0: its node picks it
    Column("host", "host", 15, True, lambda i: i.host or "n/a", 11),  # only when instances run on other machines
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


def _sum_known(values: list[Any]) -> Any:
    """The sum, or None when any value is unknown (a GPU total missing an instance would read low)."""
    return None if not values or None in values else sum(values)


def totals(snap: FleetSnapshot) -> dict[str, str]:
    insts = snap.instances
    ready = sum(1 for i in insts if i.state == "ready")
    return {
        "index": "Σ", "port": "", "host": "", "pid": "", "state": f"{ready}/{len(insts)} up",  # fits the narrow width too
        "slots": units.ratio(_sum([i.slots_busy for i in insts]), _sum([i.slots_total for i in insts])),
        "req": units.ratio(_sum([i.requests_processing for i in insts]), _sum([i.requests_deferred for i in insts])),
        "tok_s": units.num(_sum([i.server_tok_s for i in insts])),
        "cpu": units.pct(_sum([i.cpu_percent for i in insts])),
        "rss": units.size(_sum([i.rss_bytes for i in insts])),
        "gpu_mem": units.size(_sum_known([i.gpu_memory_bytes for i in insts if i.pid])),
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


def multi_host(snap: FleetSnapshot) -> bool:
    """The fleet's instances run on other machines (Ray nodes), not only on this one."""
    return any(i.node not in (None, "local") for i in snap.instances)


def system_lines(snap: FleetSnapshot) -> str:
    """This machine's line; for a fleet on several machines, one line per node after it."""
    if not snap.nodes:
        return system_line(snap.system)
    lines = [f"here  {system_line(snap.system)}"]
    lines += [f"{n.host}  {system_line(n.system)}" for n in snap.nodes]
    return "\n".join(lines)


class FleetTable(KeyedTable):
    """Instances keyed by port (see `row_key`), then the totals row. Rows change in place; the cursor stays on
    its row."""

    COMPONENT_CLASSES = {f"fleet-table--{s}" for s in STATES} | {"fleet-table--total"}

    def __init__(self, **kw: Any) -> None:
        super().__init__(pin_last=True, **kw)
        self.narrow = False
        self.multi_host = False  # show the host column
        self._last: FleetSnapshot | None = None

    def on_mount(self) -> None:
        self.set_columns(self._cols())

    def columns_shown(self) -> tuple[Column, ...]:
        return tuple(c for c in COLUMNS if (c.narrow or not self.narrow) and (c.key != "host" or self.multi_host))

    def _cols(self) -> list[Col]:
        out = []
        for c in self.columns_shown():
            label = NARROW_LABELS.get(c.key, c.label) if self.narrow else c.label
            width = c.narrow_width if self.narrow and c.narrow_width else c.width
            out.append(Col(c.key, label, width, right=c.key not in LEFT_ALIGNED))
        return out

    def set_narrow(self, narrow: bool) -> bool:
        """Drop the less important columns below 100 columns; True when the table was rebuilt."""
        if narrow == self.narrow:
            return False
        self.narrow = narrow
        self.set_columns(self._cols())
        if self._last is not None:
            self.show(self._last)
        return True

    def selected_port(self) -> int | None:
        key = self.cursor_key()
        port = key.rsplit(":", 1)[-1] if key not in (None, TOTAL_KEY) else ""
        return int(port) if port.isdigit() else None

    def row_key(self, i: InstanceSnapshot) -> str:
        """The port; on several machines HOST:PORT (ports repeat across nodes), or #INDEX before it has one."""
        if not self.multi_host:
            return str(i.port)
        return f"{i.host}:{i.port}" if i.port else f"#{i.index}"

    def _cell(self, key: str, value: str, state: str | None) -> Cell:
        if key == "state" and state:
            return (NARROW_STATES.get(value, value) if self.narrow else value), f"fleet-table--{state}"
        return value, None

    def show(self, snap: FleetSnapshot) -> None:
        self._last = snap
        if multi_host(snap) != self.multi_host:
            self.multi_host = not self.multi_host
            self.set_columns(self._cols())
        cols = self.columns_shown()
        rows: list[tuple[str, list[Cell]]] = [
            (self.row_key(i), [self._cell(c.key, c.cell(i), i.state) for c in cols]) for i in snap.instances]
        if snap.instances:
            tot = totals(snap)
            rows.append((TOTAL_KEY, [(tot[c.key], "fleet-table--total") for c in cols]))
        self.set_rows(rows)


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
        show_text(self.query_one("#system-line", Static), system_lines(snap))
        problems = [f"instance {i.index} :{i.port} {i.state}: {i.last_error or 'no error recorded'}" for i in failed]
        problems += list(snap.warnings)
        # Text, not markup: an instance's error quotes its log (a prompt's "[/INST]" is no markup tag)
        show_text(self.query_one("#fleet-problems", Static), Text("\n".join(problems)))
        self.query_one("#fleet-problems", Static).display = bool(problems)
