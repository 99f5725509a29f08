"""The Upstream pane: NGINX's policy, port and config state, per-backend numbers, stub_status counters.

Per-backend numbers come from NGINX's own access log (open-source NGINX has no live upstream API);
stub_status gives the connection counters.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from llama_tui.core.snapshots import UpstreamSnapshot
from llama_tui.ui import units
from llama_tui.ui.widgets.stable_table import StableTable, show_text

BACKEND_COLUMNS = (("backend", "backend", 7), ("requests", "req", 6), ("rps", "req/s", 5),
                   ("inflight", "in-fl", 5), ("errors", "err", 4), ("p50", "p50", 6), ("p95", "p95", 6))
STUB_KEYS = ("active", "reading", "writing", "waiting", "accepts", "handled", "requests")


def stub_line(stub: dict[str, int] | None) -> str:
    """NGINX's stub_status counters: connections now (reading/writing/waiting), totals since start."""
    if not stub:
        return "stub_status n/a"
    g = {k: f"{stub[k]:,}" if k in stub else "n/a" for k in STUB_KEYS}
    return (f"active {g['active']} (rd {g['reading']} wr {g['writing']} wait {g['waiting']}) · "
            f"accepts {g['accepts']} handled {g['handled']} requests {g['requests']}")


def short_address(address: str) -> str:
    """Loopback backends show as ":port" (they all are loopback here); anything else in full."""
    return address[len("127.0.0.1"):] if address.startswith("127.0.0.1:") else address


class BackendTable(StableTable):
    """Backends keyed by address, updated in place."""

    COMPONENT_CLASSES = {"backend-table--error"}

    def __init__(self, **kw: Any) -> None:
        super().__init__(show_cursor=False, **kw)
        self.can_focus = False
        self._cells: dict[tuple[str, str], str] = {}
        self._rows: tuple[str, ...] = ()

    def on_mount(self) -> None:
        for key, label, width in BACKEND_COLUMNS:
            self.add_column(label, key=key, width=width)

    def show(self, up: UpstreamSnapshot | None) -> None:
        stats = up.upstreams if up else ()
        rows = tuple(s.address for s in stats)
        if rows != self._rows:
            self.clear()
            self._cells.clear()
            for addr in rows:
                self.add_row(*[Text("")] * len(BACKEND_COLUMNS), key=addr)
            self._rows = rows
        err_style = self.get_component_rich_style("backend-table--error", partial=True)
        for s in stats:
            values = {"backend": short_address(s.address), "requests": units.num(s.requests), "rps": units.num(s.rps, 1),
                      "inflight": str(s.inflight), "errors": str(s.errors), "p50": units.ms(s.p50_ms),
                      "p95": units.ms(s.p95_ms)}
            for key, value in values.items():
                if self._cells.get((s.address, key)) != value:
                    self._cells[(s.address, key)] = value
                    bad = key == "errors" and s.errors > 0
                    self.update_cell(s.address, key, Text(value, style=err_style if bad else ""))


class UpstreamPane(Vertical):
    def compose(self) -> ComposeResult:
        yield Static(id="nginx-line")
        yield Static(id="nginx-error")
        yield BackendTable(id="backend-table")
        yield Static(id="backend-summary")
        yield Static(id="stub-line")

    def on_mount(self) -> None:
        self.border_title = "Upstream · NGINX"

    def show(self, up: UpstreamSnapshot | None) -> None:
        self.set_class(up is None, "-empty")
        self.set_class(up is not None and up.config_valid is False, "-degraded")
        if up is None:
            show_text(self.query_one("#nginx-line", Static), "NGINX not running")
            show_text(self.query_one("#nginx-error", Static), "")
            show_text(self.query_one("#backend-summary", Static), "")
            show_text(self.query_one("#stub-line", Static), "")
            self.query_one(BackendTable).show(None)
            return
        config = {True: "config valid", False: "config INVALID", None: "config n/a"}[up.config_valid]
        where = f"{up.listen or '127.0.0.1'}:{up.port}" if up.port else "port n/a"
        pid = f"pid {up.pid}" if up.pid else "pid n/a"
        show_text(self.query_one("#nginx-line", Static), 
            f"{where} {pid} · [b]{up.policy or 'n/a'}[/b] · {config}")
        show_text(self.query_one("#nginx-error", Static), Text(up.config_error or ""))
        self.query_one(BackendTable).show(up)
        reqs = sum(s.requests for s in up.upstreams)
        errs = sum(s.errors for s in up.upstreams)
        rps = sum(s.rps for s in up.upstreams)
        show_text(self.query_one("#backend-summary", Static), 
            f"{len(up.upstreams)} backends  {reqs:,} req  {rps:.1f} req/s  {errs} err")
        show_text(self.query_one("#stub-line", Static), stub_line(up.stub_status))
