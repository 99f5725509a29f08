"""Leaving the TUI: what it says on the way out, and noticing that the terminal went away (SSH drop)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Callable, Iterable

from textual.app import App

from llama_tui.core.snapshots import FleetSnapshot

RUN_NAMES = {"bench": "benchmark", "sweep": "sweep"}


def farewell_text(snap: FleetSnapshot | None, busy: str | None, stopped: Iterable[str]) -> str:
    """The lines printed after the TUI closes: the fleet keeps running (where), and what was cut short."""
    lines = []
    if snap is not None and snap.running and snap.instances:
        ports = [i.port for i in snap.instances]
        span = f":{ports[0]}" if len(ports) == 1 else f":{min(ports)}-{max(ports)}"
        door = f", NGINX on {snap.nginx.listen or '127.0.0.1'}:{snap.nginx.port}" if snap.nginx else ""
        lines.append(f"llama-tui: the fleet keeps running ({len(ports)} instances on {span}{door}). "
                     "`llama-tui` reattaches; `llama-tui fleet down` stops it.")
    elif not busy:
        lines.append("llama-tui: no fleet running.")
    if busy:  # the core call goes on without us (the fleet's supervisor is its own process)
        lines.append(f"llama-tui: left while {busy}; `llama-tui fleet status` shows how it ended.")
    for kind in stopped:
        lines.append(f"llama-tui: the {RUN_NAMES.get(kind, kind)} started from the TUI was stopped.")
    return "\n".join(lines)


class HangUpWatch:
    """Calls `on_hang_up` on the app's event loop when the terminal goes away (SIGHUP).

    A plain signal handler, not the loop's: Python runs pending handlers in signal order, so it runs
    before Textual's SIGCONT handler. The kernel sends SIGHUP and then SIGCONT when a terminal hangs
    up, and on SIGCONT Textual restarts its application mode, whose new output thread dies on the dead
    terminal and then blocks the exit. This handler turns that restart off first.
    """

    def __init__(self, app: App, on_hang_up: Callable[[], None]) -> None:
        self.app = app
        self.on_hang_up = on_hang_up
        self.loop = asyncio.get_running_loop()
        self.before = signal.signal(signal.SIGHUP, self._handle)
        self.no_restart: contextlib.AbstractContextManager | None = None

    def _handle(self, signum: int, frame: object) -> None:
        driver = self.app._driver
        if driver is not None and self.no_restart is None:
            self.no_restart = driver.no_automatic_restart()
            self.no_restart.__enter__()  # for the rest of the app's life
        self.loop.call_soon_threadsafe(self.on_hang_up)

    def remove(self) -> None:
        signal.signal(signal.SIGHUP, self.before)
