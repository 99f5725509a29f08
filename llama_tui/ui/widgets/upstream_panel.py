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
from llama_tui.ui.widgets.keyed_table import Col, KeyedTable
from llama_tui.ui.widgets.redraw import show_text

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


class BackendTable(KeyedTable):
    """Backends keyed by address, updated in place."""

    COMPONENT_CLASSES = {"backend-table--error"}

    def __init__(self, **kw: Any) -> None:
        super().__init__([Col(k, label, w, right=k not in ("backend",)) for k, label, w in BACKEND_COLUMNS],
                         show_cursor=False, **kw)
        self.can_focus = False

    def show(self, up: UpstreamSnapshot | None) -> None:
        rows = []
        for s in up.upstreams if up else ():
            err = "backend-table--error" if s.errors else None
            rows.append((s.address, [(short_address(s.address), None), (units.num(s.requests), None),
                                     (units.num(s.rps, 1), None), (str(s.inflight), None), (str(s.errors), err),
                                     (units.ms(s.p50_ms), None), (units.ms(s.p95_ms), None)]))
        self.set_rows(rows)


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
