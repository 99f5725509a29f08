"""The main screen: Fleet on top, Upstream and Throughput below (stacked when narrow)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.events import Resize
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from llama_tui.ui.widgets.fleet_table import FleetPane, FleetTable
from llama_tui.ui.widgets.throughput_chart import ThroughputPane
from llama_tui.ui.widgets.upstream_panel import UpstreamPane

SCALE = Binding.Group("Scale")
NARROW_BELOW = 100  # columns: below this the lower panes stack and the fleet table drops columns
SHORT_BELOW = 32  # rows: below this the panes collapse to their summary lines


class MainScreen(Screen):
    BINDINGS = [
        Binding("s", "app.start", "Start", tooltip="start the configured fleet (e edits it first)", id="fleet.start"),
        Binding("x", "app.stop", "Stop", tooltip="stop every instance and NGINX (asks first)", id="fleet.stop"),
        Binding("plus", "app.scale(1)", "Scale up", key_display="+", tooltip="add one instance",
                id="fleet.scale_up", group=SCALE),
        Binding("minus", "app.scale(-1)", "Scale down", key_display="-",
                tooltip="remove one instance (it drains first)", id="fleet.scale_down", group=SCALE),
        Binding("r", "app.restart", "Restart", tooltip="restart the instance under the cursor", id="fleet.restart"),
        Binding("b", "app.bench", "Bench",
                tooltip="benchmark ramp through NGINX in its own process; again: stop it", id="bench.ramp"),
        Binding("p", "app.policy", "Policy", tooltip="next NGINX balancing policy (NGINX reloads)", id="nginx.policy"),
        Binding("e", "app.edit", "Edit", tooltip="fleet form: model, shape, GPUs, policy; presets", id="fleet.edit"),
    ]

    def compose(self) -> ComposeResult:
        yield Header(icon="≡")
        with VerticalScroll(id="main"):
            yield FleetPane(id="fleet-pane", classes="pane")
            with Horizontal(id="lower"):
                yield UpstreamPane(id="upstream-pane", classes="pane")
                yield ThroughputPane(id="throughput-pane", classes="pane")
        yield Static(id="status-line")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one(FleetTable).focus()
        self.app.render_all()  # type: ignore[attr-defined]

    def on_resize(self, event: Resize) -> None:
        self.fit(event.size.width, event.size.height)

    def fit(self, width: int, height: int) -> None:
        narrow, short = width < NARROW_BELOW, height < SHORT_BELOW
        self.set_class(narrow, "-narrow")
        self.set_class(short, "-short")
        self.query_one(Footer).show_command_palette = not narrow  # ctrl+p still works; room for keys
        if self.query_one(FleetTable).set_narrow(narrow):
            self.app.call_later(self.app.render_all)  # type: ignore[attr-defined]  # the table was rebuilt: fill it from the last snapshot
