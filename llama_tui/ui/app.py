"""The llama-tui Textual app: fleet, upstream and live throughput on one screen; sweeps and logs.

`make_app(controller)` builds it (the CLI passes a `CoreController`, tests a `ScriptedController`);
`run(args)` is what `llama-tui` with no command calls.

Threads: the controller's calls block, so they run in thread workers. A worker hands back frozen
data (snapshots, tuples of samples) with `post_message`, and nothing else crosses threads. The
poll schedules the next poll only once it has finished, so a slow core never piles polls up.
Nothing on the event loop touches the disk, a lock or a process: reading the fleet's state (the log
list), writing a screenshot, stopping or cancelling a run and closing the controller (its monitor's
lock) all happen in thread workers too.
"""

from __future__ import annotations

import argparse
import signal
from datetime import datetime
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import App
from textual.binding import Binding
from textual.timer import Timer
from textual.widgets import Static
from textual.worker import Worker, WorkerState

from llama_tui.core.errors import UserError
from llama_tui.core.snapshots import BenchSample, FleetSnapshot, StepVerdict, SweepProgress
from llama_tui.ui import messages as msg
from llama_tui.ui.commands import FleetCommands
from llama_tui.ui.controller import Controller, RunHandle
from llama_tui.ui.fleet_actions import FleetActions
from llama_tui.ui.keymap import KEYMAP_FILE, bound_keys, load_keymap
from llama_tui.ui.leaving import HangUpWatch, farewell_text
from llama_tui.ui.runs import RunActions
from llama_tui.ui.screens.confirm import ConfirmScreen
from llama_tui.ui.screens.help import HelpScreen
from llama_tui.ui.screens.logs import LogsScreen
from llama_tui.ui.screens.main import MainScreen
from llama_tui.ui.screens.sweep import SweepScreen
from llama_tui.ui.widgets.fleet_table import FleetPane
from llama_tui.ui.widgets.redraw import show_text
from llama_tui.ui.widgets.throughput_chart import ThroughputPane
from llama_tui.ui.widgets.upstream_panel import UpstreamPane


class LlamaTui(FleetActions, RunActions, App[int]):
    """The app: its lifecycle, the fleet poll, rendering, logs, help, screenshots and leaving. The fleet's
    actions (`fleet_actions.FleetActions`) and the benchmark and sweep runs (`runs.RunActions`) are mixed in."""

    TITLE = "llama-tui"
    CSS_PATH = Path(__file__).with_name("llama_tui.tcss")  # absolute: subclasses elsewhere find it too
    COMMANDS = App.COMMANDS | {FleetCommands}
    BINDINGS = [
        Binding("w", "sweep", "Sweep", tooltip="the sweep screen: progress, heatmap, results", id="sweep.screen"),
        Binding("l", "logs", "Logs", tooltip="follow an instance's log or NGINX's error log", id="logs.screen"),
        Binding("ctrl+s", "screenshot_svg", "SVG", tooltip="save an SVG screenshot", id="app.screenshot"),
        Binding("question_mark", "help", "Help", key_display="?", tooltip="this help", id="app.help"),
        Binding("q", "quit", "Quit", tooltip="leave; the fleet keeps running", id="app.quit"),
    ]

    def __init__(self, controller: Controller, refresh_s: float = 1.0, keymap: dict[str, str] | None = None,
                 screenshot_dir: Path | None = None, keymap_file: str = KEYMAP_FILE) -> None:
        super().__init__()
        self.animation_level = "none"  # calm over SSH; nothing slides or fades
        self.controller = controller
        self.refresh_s = refresh_s
        self.screenshot_dir = screenshot_dir
        self.keymap_file = keymap_file
        if keymap:
            self.set_keymap(keymap)
        self.fleet: FleetSnapshot | None = None
        self.poll_error: str | None = None
        self.polls = 0  # snapshots rendered so far (tests wait on it)
        self.busy: str | None = None  # the action in progress
        self.status = ""
        self.autostarted = False
        self.bench_samples: tuple[BenchSample, ...] = ()
        self.bench_verdicts: tuple[StepVerdict, ...] = ()
        self.bench_running = False
        self.bench_summary = ""
        self.sweep_progress: SweepProgress | None = None
        self.sweep_running = False
        self.runs: dict[str, RunHandle] = {}
        self._cancel_asked: set[str] = set()
        self._poll_timer: Timer | None = None
        self._poll_worker: Worker | None = None
        self.leaving = False
        self.released = False  # our runs are cancelled and the controller closed (the last step of leaving)
        self.farewell = ""
        self.hung_up = False
        self._hang_up_watch: HangUpWatch | None = None

    # ------------------------------------------------------------------------------------------ lifecycle

    def on_mount(self) -> None:
        self.push_screen(MainScreen())
        if not self.is_headless and hasattr(signal, "SIGHUP"):
            self._hang_up_watch = HangUpWatch(self, self.hang_up)
        self.poll()

    def on_unmount(self) -> None:
        if not self.released:  # ended without `q` (a hang-up, an error, a test): the runs end with the app all
            for kind, run in list(self.runs.items()):  # the same, here, where nothing is drawn any more
                self._cancel(kind, run)
            if self.leaving:
                self.controller.close()
        if self._hang_up_watch is not None:
            self._hang_up_watch.remove()

    def hang_up(self) -> None:
        """The terminal went away (SSH dropped): stop our own runs, leave the fleet, exit quietly.

        At once: every frame drawn after a hang-up goes to a terminal that is gone, and Textual's
        output thread can block on it. `on_unmount` then ends the runs and closes the controller."""
        self.hung_up = True
        if not self.leaving:
            self.leaving = True
            self.farewell = farewell_text(self.fleet, self.busy, list(self.runs))
        self.exit(0)

    def _leave(self) -> None:
        if self.leaving:
            return
        self.leaving = True
        runs = list(self.runs.items())
        self.farewell = farewell_text(self.fleet, self.busy, [kind for kind, _ in runs])
        self._release(runs)

    @work(thread=True, exit_on_error=False, group="leave")
    def _release(self, runs: list[tuple[str, RunHandle]]) -> None:
        """Cancel our runs (each waits for its process group to go) and close the controller, then exit."""
        try:
            for kind, run in runs:
                self._cancel(kind, run)
            self.controller.close()
        finally:
            self.post_message(msg.Released())

    def on_released(self, message: msg.Released) -> None:
        self.released = True
        self.exit(0)

    # ------------------------------------------------------------------------------------------ polling

    def poll(self) -> None:
        self._poll_timer = None
        if not self.leaving:
            self._poll_worker = self.run_worker(self._poll_once, thread=True, exclusive=True, exit_on_error=False,
                                                group="poll", name="poll")

    def _poll_once(self) -> None:
        try:
            snap = self.controller.snapshot()
        except UserError as exc:
            self.post_message(msg.PollFailed(exc.one_line()))
            return
        except Exception as exc:  # noqa: BLE001 - shown on screen; the next poll tries again
            self.post_message(msg.PollFailed(f"{type(exc).__name__}: {exc}"))
            return
        self.post_message(msg.FleetPolled(snap))

    def poll_now(self) -> None:
        if self._poll_timer is not None:
            self._poll_timer.stop()
        self.poll()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        w = event.worker
        if w.group == "poll" and w is self._poll_worker and event.state in (WorkerState.SUCCESS, WorkerState.ERROR):
            if not self.leaving:
                self._poll_timer = self.set_timer(self.refresh_s, self.poll)

    def on_fleet_polled(self, message: msg.FleetPolled) -> None:
        self.fleet = message.snapshot
        self.poll_error = None
        self.polls += 1
        if self.controller.autostart and not self.autostarted:
            self.autostarted = True
            if not message.snapshot.running:
                self.action_start()
        self.render_main()

    def on_poll_failed(self, message: msg.PollFailed) -> None:
        self.poll_error = message.error
        self.polls += 1
        self.render_status()

    # ------------------------------------------------------------------------------------------ rendering

    def main_screen(self) -> MainScreen | None:
        """The main screen once its panes exist (it sits at the bottom of the stack)."""
        for screen in self.screen_stack:
            if isinstance(screen, MainScreen) and screen.query(FleetPane):
                return screen
        return None

    def render_all(self) -> None:
        self.render_main()
        self.render_bench()
        self.render_sweep()

    def render_main(self) -> None:
        screen = self.main_screen()
        if screen is None:
            return
        snap = self.fleet or FleetSnapshot(taken_at=0.0, running=False)
        hint = ""
        if not snap.running:
            if self.busy:
                hint = f"{self.busy}…"
            elif self.fleet is None:
                hint = "looking for a running fleet…"
            else:
                hint = (f"No fleet running. s starts {self.controller.form().describe()}; "
                        "e edits it first.")
        with self.batch_update():
            screen.query_one(FleetPane).show(snap, hint)
            screen.query_one(UpstreamPane).show(snap.nginx if snap.running else None)
        self.sub_title = self._subtitle(snap)
        self.render_status()

    def _subtitle(self, snap: FleetSnapshot) -> str:
        if not snap.running:
            return "no fleet"
        door = f" · NGINX :{snap.nginx.port} {snap.nginx.policy}" if snap.nginx else ""
        return f"{len(snap.instances)} x {snap.parallel or 'n/a'} slots{door}"

    def render_status(self) -> None:
        screen = self.main_screen()
        if screen is None:
            return
        if self.poll_error:
            text, cls = f"cannot read the fleet: {self.poll_error}", "-error"
        elif self.busy:
            text, cls = f"{self.busy}…", "-busy"
        else:
            text, cls = self.status, ""
        line = screen.query_one("#status-line", Static)
        show_text(line, Text(text))  # errors quote logs: never markup
        for c in ("-error", "-busy"):
            line.set_class(c == cls, c)

    def render_bench(self) -> None:
        screen = self.main_screen()
        if screen is None:
            return
        hint = ("The benchmark process is starting (it checks the targets first)…" if self.bench_running else
                "No benchmark yet. b runs the preset's concurrency ramp through NGINX (in its own process).")
        screen.query_one(ThroughputPane).show(self.bench_samples, self.bench_verdicts, self.bench_running, hint,
                                              self.bench_summary)

    def render_sweep(self) -> None:
        if isinstance(self.screen, SweepScreen):
            self.screen.show(self.sweep_progress, self.sweep_running)

    # ------------------------------------------------------------------------------------------ logs, help, leaving

    def action_logs(self) -> None:
        if isinstance(self.screen, LogsScreen):
            return
        self._find_logs(self.fleet or FleetSnapshot(taken_at=0.0, running=False))

    @work(thread=True, exclusive=True, exit_on_error=False, group="logs")
    def _find_logs(self, snap: FleetSnapshot) -> None:
        """The log list: the controller reads the fleet's state file for NGINX's error log."""
        try:
            sources = tuple(self.controller.log_sources(snap))
        except UserError as exc:
            self.post_message(msg.Notice(exc.one_line(), ok=False, timeout=10))
        except Exception as exc:  # noqa: BLE001 - shown; the app keeps going
            self.post_message(msg.Notice(f"cannot list the logs: {type(exc).__name__}: {exc}", ok=False, timeout=10))
        else:
            self.post_message(msg.LogSourcesFound(sources))

    def on_log_sources_found(self, message: msg.LogSourcesFound) -> None:
        if not isinstance(self.screen, LogsScreen):
            self.push_screen(LogsScreen(list(message.sources)))

    def on_notice(self, message: msg.Notice) -> None:
        self.notify(message.text, severity="information" if message.ok else "error", timeout=message.timeout)

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        self.push_screen(HelpScreen(self.key_list(), str(self.keymap_path())))

    def keymap_path(self) -> Path:
        from llama_tui.core import paths

        return paths.config_dir() / self.keymap_file

    def key_list(self) -> list[tuple[str, str]]:
        return bound_keys((("", (*MainScreen.BINDINGS, *self.BINDINGS)),
                           ("on the sweep screen", SweepScreen.BINDINGS)), self._keymap)

    def action_screenshot_svg(self) -> None:
        stamp = datetime.now().isoformat()
        name = "".join("_" if c in ' <>:"/\\|?*.' else c for c in f"{self.title} {stamp}") + ".svg"
        self._write_screenshot(self.export_screenshot(), name)  # rendering is the loop's; writing is not

    @work(thread=True, exit_on_error=False, group="screenshot")
    def _write_screenshot(self, svg: str, name: str) -> None:
        path = (self.screenshot_dir or Path.cwd()) / name
        try:
            path.write_text(svg, encoding="utf-8")
        except OSError as exc:
            self.post_message(msg.Notice(f"cannot save the screenshot to {path}: {exc.strerror}", ok=False, timeout=10))
        else:
            self.post_message(msg.Notice(f"screenshot saved to {path}", ok=True))

    def action_quit(self) -> None:  # q and ctrl+q
        if self.sweep_running:
            def answered(yes: bool | None) -> None:
                if yes:
                    self._leave()

            self.push_screen(ConfirmScreen("A sweep is running; quitting stops it (the fleet keeps running). Quit?",
                                           yes="Quit"), answered)
            return
        self._leave()

# ---------------------------------------------------------------------------------------------- entry points
# ---------------------------------------------------------------------------------------------- entry points


def make_app(controller: Controller | None = None, refresh_s: float = 1.0, keymap: dict[str, str] | None = None,
             screenshot_dir: Path | None = None) -> LlamaTui:
    if controller is None:
        from llama_tui.ui.controller import CoreController

        controller = CoreController()
    return LlamaTui(controller, refresh_s=refresh_s, keymap=keymap, screenshot_dir=screenshot_dir)


def run(args: argparse.Namespace) -> int:
    from llama_tui.core import paths
    from llama_tui.ui.controller import CoreController

    controller = CoreController.from_args(args)  # bad options fail here, before the screen changes
    keymap = load_keymap(paths.config_dir() / KEYMAP_FILE)
    app = make_app(controller, keymap=keymap)
    app.run()
    if app.farewell and not app.hung_up:
        try:
            print(app.farewell)
        except OSError:
            pass
    return 0 if app.return_code is None else app.return_code


__all__ = ["LlamaTui", "make_app", "run"]
