"""`?`: every key (as currently bound, keymap included) and what the numbers on screen mean."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

MEANINGS = (
    ("tok/s (Fleet)", "the server's own count: llamacpp:tokens_predicted_total from /metrics, per second between polls"),
    ("tok/s (Throughput)", "client-side: streamed tokens (server-counted) completed per second, through NGINX"),
    ("slots", "busy/total from /slots; req p/d = requests processing/deferred from /metrics"),
    ("CPU%, RSS", "per llama-server process (psutil); GPU mem/GPU% per process via NVML, n/a without one"),
    ("Upstream", "per-backend numbers from NGINX's access log; stub_status = NGINX connection counters"),
    ("valid", "the benchmark's own verdict: INVALID when the client was the bottleneck or requests failed"),
    ("n/a", "not known or not available; never shown as 0"),
)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark", "app.pop_screen", "Close", id="help.close")]

    def __init__(self, keys: list[tuple[str, str]], keymap_file: str) -> None:
        super().__init__()
        self.keys = keys
        self.keymap_file = keymap_file

    def compose(self) -> ComposeResult:
        keys = Table.grid(padding=(0, 2))
        for key, what in self.keys:
            keys.add_row(f"[b]{key}[/b]", what) if key else keys.add_row("", f"[b]{what}[/b]")
        meanings = Table.grid(padding=(0, 2))
        for name, what in MEANINGS:
            meanings.add_row(f"[b]{name}[/b]", what)
        with VerticalScroll(id="help-box", classes="dialog"):
            yield Static("[b]Keys[/b] (also in the command palette, ctrl+p)")
            yield Static(keys)
            yield Static(f"\nRebind keys in {self.keymap_file}, e.g.  fleet.start = \"S\"\n")
            yield Static("[b]What the numbers mean[/b]")
            yield Static(meanings)
            yield Static("\nq leaves the fleet running; `llama-tui` reattaches, `llama-tui fleet down` stops it.")
