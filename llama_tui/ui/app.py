"""The llama-tui Textual app (first screen: the fleet's instances)."""

from __future__ import annotations

import argparse
import time
from typing import Callable

from textual.app import App, ComposeResult
from textual.widgets import DataTable, Footer, Header, Static

from llama_tui.core.snapshots import FleetSnapshot

SnapshotSource = Callable[[], FleetSnapshot]


def empty_snapshot() -> FleetSnapshot:
    return FleetSnapshot(taken_at=time.time(), running=False)


class LlamaTui(App):
    TITLE = "llama-tui"
    BINDINGS = [("q", "quit", "Quit")]

    def __init__(self, source: SnapshotSource = empty_snapshot, refresh_s: float = 1.0) -> None:
        super().__init__()
        self.source = source
        self.refresh_s = refresh_s

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="summary")
        yield DataTable(id="instances", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("#", "port", "pid", "state", "slots")
        self.refresh_snapshot()
        self.set_interval(self.refresh_s, self.refresh_snapshot)

    def refresh_snapshot(self) -> None:
        snap = self.source()
        table = self.query_one(DataTable)
        table.clear()
        for inst in snap.instances:
            slots = f"{inst.slots_busy if inst.slots_busy is not None else 'n/a'}/{inst.slots_total or 'n/a'}"
            table.add_row(str(inst.index), str(inst.port), str(inst.pid or "n/a"), inst.state, slots,
                          key=str(inst.port))
        text = f"{len(snap.instances)} instances" if snap.running else "no fleet running"
        self.query_one("#summary", Static).update(text)


def make_app(source: SnapshotSource = empty_snapshot) -> LlamaTui:
    return LlamaTui(source)


def run(args: argparse.Namespace) -> int:
    make_app().run()
    return 0
