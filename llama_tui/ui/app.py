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
from typing import Callable

from rich.text import Text
from textual import work
from textual.app import App
from textual.binding import Binding
from textual.timer import Timer
from textual.widgets import Static
from textual.worker import Worker, WorkerState

from llama_tui.core.errors import UserError
from llama_tui.core.snapshots import BenchSample, FleetSnapshot, StepVerdict, SweepProgress
from llama_tui.core.sweep import best_point
from llama_tui.ui import messages as msg
from llama_tui.ui.commands import FleetCommands
from llama_tui.ui.controller import Controller, FleetForm, RunHandle, next_policy
from llama_tui.ui.keymap import KEYMAP_FILE, bound_keys, load_keymap
from llama_tui.ui.leaving import RUN_NAMES, HangUpWatch, farewell_text
from llama_tui.ui.screens.confirm import ConfirmScreen
from llama_tui.ui.screens.fleet_form import FleetFormScreen
from llama_tui.ui.screens.help import HelpScreen
from llama_tui.ui.screens.logs import LogsScreen
from llama_tui.ui.screens.main import MainScreen
from llama_tui.ui.screens.sweep import SweepScreen
from llama_tui.ui.widgets.fleet_table import FleetPane, FleetTable
from llama_tui.ui.widgets.redraw import show_text
from llama_tui.ui.widgets.throughput_chart import ThroughputPane
from llama_tui.ui.widgets.upstream_panel import UpstreamPane

MAX_SAMPLES = 2400  # 20 minutes of 0.5 s samples


class LlamaTui(App[int]):
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

    def _cancel(self, kind: str, run: RunHandle) -> None:
        try:
            run.cancel()
        except Exception:  # noqa: BLE001 - leaving anyway; the run's process group is the core's to reap
            pass

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

    # ------------------------------------------------------------------------------------------ actions

    def _busy_refuses(self) -> bool:
        if self.busy:
            self.notify(f"wait: {self.busy}", severity="warning", timeout=3)
            return True
        return False

    def fleet_running(self) -> bool:
        return self.fleet is not None and self.fleet.running

    def _need_fleet(self) -> bool:
        if not self.fleet_running():
            self.notify("no fleet is running: s starts one", severity="warning", timeout=3)
            return False
        return True

    def do(self, label: str, job: Callable[[Callable[[str], None]], object], done: str) -> None:
        """Run one blocking controller call in a thread; the status line says what happens."""
        self.busy = label
        self.status = ""
        self.render_main()
        self._action(label, job, done)

    @work(thread=True, exit_on_error=False, group="action")
    def _action(self, label: str, job: Callable[[Callable[[str], None]], object], done: str) -> None:
        def progress(text: str) -> None:
            self.post_message(msg.ActionProgress(f"{label}: {text}"))

        try:
            job(progress)
        except UserError as exc:
            self.post_message(msg.ActionDone(exc.one_line(), ok=False))
        except Exception as exc:  # noqa: BLE001 - reported on screen, the app keeps going
            self.post_message(msg.ActionDone(f"{label} failed: {type(exc).__name__}: {exc}", ok=False))
        else:
            self.post_message(msg.ActionDone(done, ok=True))

    def on_action_progress(self, message: msg.ActionProgress) -> None:
        if self.busy:
            self.busy = message.text
            self.render_main()

    def on_action_done(self, message: msg.ActionDone) -> None:
        self.busy = None
        self.status = message.text
        self.notify(message.text, severity="information" if message.ok else "error",
                    timeout=4 if message.ok else 10, markup=False)
        self.render_main()
        self.poll_now()

    def action_start(self) -> None:
        if self._busy_refuses():
            return
        if self.fleet_running():
            self.notify("a fleet is already running (x stops it, e replaces it)", timeout=3)
            return
        form = self.controller.form()
        self.do(f"starting {form.instances} instances", lambda p: self.controller.start(None, p),
                f"fleet started: {form.describe()}")

    def action_stop(self) -> None:
        if self._busy_refuses() or not self._need_fleet():
            return
        snap = self.fleet
        assert snap is not None
        door = f" and NGINX on :{snap.nginx.port}" if snap.nginx else ""

        def answered(yes: bool | None) -> None:
            if yes:
                self.do("stopping the fleet", lambda p: self.controller.stop(), "fleet stopped")

        self.push_screen(ConfirmScreen(f"Stop the fleet? {len(snap.instances)} llama-server instances{door} "
                                       "will stop; requests in flight fail.", yes="Stop"), answered)

    def action_scale(self, delta: int) -> None:
        if self._busy_refuses() or not self._need_fleet():
            return
        assert self.fleet is not None
        n = len(self.fleet.instances) + delta
        if n < 1:
            self.notify("a fleet has at least one instance (x stops it)", severity="warning", timeout=3)
            return
        self.do(f"scaling to {n} instances", lambda p: self.controller.scale(n), f"scaled to {n} instances")

    def action_restart(self) -> None:
        if self._busy_refuses() or not self._need_fleet():
            return
        assert self.fleet is not None
        screen = self.main_screen()
        port = screen.query_one(FleetTable).selected_port() if screen else None
        inst = next((i for i in self.fleet.instances if i.port == port), None)
        if inst is None:
            self.notify("select an instance row first (arrow keys)", severity="warning", timeout=3)
            return
        self.do(f"restarting instance {inst.index} (:{inst.port})", lambda p: self.controller.restart(inst.index),
                f"instance {inst.index} restarted")

    def action_policy(self) -> None:
        if self._busy_refuses() or not self._need_fleet():
            return
        assert self.fleet is not None
        new = next_policy(self.fleet.nginx.policy if self.fleet.nginx else None)
        self.do(f"switching NGINX to {new}", lambda p: self.controller.set_policy(new),
                f"policy {new}: NGINX reloaded")

    def action_edit(self) -> None:
        if self._busy_refuses():
            return
        running = self.fleet_running()

        def submitted(form: FleetForm | None) -> None:
            if form is None:
                return
            if not running:
                self.do(f"starting {form.instances} instances", lambda p: self.controller.start(form, p),
                        f"fleet started: {form.describe()}")
                return

            def answered(yes: bool | None) -> None:
                if yes:
                    self.do("replacing the fleet", lambda p: self._replace(form, p),
                            f"fleet replaced: {form.describe()}")

            self.push_screen(ConfirmScreen(f"Replace the running fleet with {form.describe()}? "
                                           "Every instance restarts; requests in flight fail.", yes="Replace"),
                             answered)

        self.push_screen(FleetFormScreen(self.controller, self.controller.form(), running), submitted)

    def _replace(self, form: FleetForm, progress: Callable[[str], None]) -> None:
        self.controller.stop()
        self.controller.start(form, progress)

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

    # ------------------------------------------------------------------------------------------ benchmark

    def action_bench(self) -> None:
        if self.bench_running:
            self.action_bench_cancel()
            return
        if not self._need_fleet():
            return
        self.bench_running = True
        self.bench_samples = ()
        self.bench_verdicts = ()
        self.bench_summary = ""
        self.render_bench()
        self._bench_worker()

    def action_bench_cancel(self) -> None:
        self._stop_run("bench", "benchmark")

    def _stop_run(self, kind: str, name: str) -> None:
        """End a run early, keeping what it measured (its process writes its results and exits)."""
        run = self.runs.get(kind)
        if run is not None:
            self._stop_in_thread(run, name)
        elif (self.bench_running if kind == "bench" else self.sweep_running):
            self._cancel_asked.add(kind)  # it is still starting: stop it as soon as it has
        else:
            self.notify(f"no {name} running", timeout=3)

    @work(thread=True, exit_on_error=False, group="run-stop")
    def _stop_in_thread(self, run: RunHandle, name: str) -> None:
        """`stop()` writes to the run's process or signals it."""
        try:
            run.stop()
        except Exception as exc:  # noqa: BLE001 - shown; the run ends on its own or at quit
            self.post_message(msg.Notice(f"could not stop the {name}: {exc}", ok=False, timeout=6))
        else:
            self.post_message(msg.Notice(f"stopping the {name}: it finishes the current step and keeps its results",
                                         ok=True))

    @work(thread=True, exit_on_error=False, group="run-stop")
    def _cancel_in_thread(self, kind: str, run: RunHandle) -> None:
        self._cancel(kind, run)

    @work(thread=True, exclusive=True, exit_on_error=False, group="bench")
    def _bench_worker(self) -> None:
        samples: tuple[BenchSample, ...] = ()
        verdicts: tuple[StepVerdict, ...] = ()
        try:
            run = self.controller.start_bench()
            self.post_message(msg.RunStarted("bench", run))
            for item in run.events():
                if isinstance(item, StepVerdict):
                    verdicts = (*verdicts, item)
                else:
                    samples = (*samples[-(MAX_SAMPLES - 1):], item)
                self.post_message(msg.BenchUpdated(samples, verdicts))
            self.post_message(msg.RunEnded("bench", True, run.summary()))
        except UserError as exc:
            self.post_message(msg.RunEnded("bench", False, exc.one_line()))
        except Exception as exc:  # noqa: BLE001 - shown in the pane
            self.post_message(msg.RunEnded("bench", False, f"benchmark failed: {type(exc).__name__}: {exc}"))

    def on_run_started(self, message: msg.RunStarted) -> None:
        self.runs[message.kind] = message.handle  # type: ignore[assignment]
        if self.leaving:
            self._cancel_in_thread(message.kind, message.handle)  # type: ignore[arg-type]
        elif message.kind in self._cancel_asked:
            self._cancel_asked.discard(message.kind)
            self._stop_in_thread(message.handle, RUN_NAMES.get(message.kind, message.kind))  # type: ignore[arg-type]

    def on_bench_updated(self, message: msg.BenchUpdated) -> None:
        self.bench_samples = message.samples
        self.bench_verdicts = message.verdicts
        self.bench_summary = ""
        self.render_bench()

    def on_run_ended(self, message: msg.RunEnded) -> None:
        self.runs.pop(message.kind, None)
        self._cancel_asked.discard(message.kind)
        if message.kind == "bench":
            self.bench_running = False
            self.bench_summary = message.text or ""
            self.render_bench()
            if not message.ok:
                self.notify(message.text or "benchmark failed", severity="error", timeout=10, markup=False)
        else:
            self.sweep_running = False
            if not message.ok:
                self.notify(message.text or "sweep failed", severity="error", timeout=10, markup=False)
            self.render_sweep()

    # ------------------------------------------------------------------------------------------ sweep

    def action_sweep(self) -> None:
        if not isinstance(self.screen, SweepScreen):
            self.push_screen(SweepScreen())

    def action_sweep_start(self) -> None:
        if self.sweep_running:
            self.notify("a sweep is already running (c cancels it)", timeout=3)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.sweep_running = True
                self.sweep_progress = None
                self.render_sweep()
                self._sweep_worker()

        self.push_screen(ConfirmScreen("Start a sweep? It starts and stops its own fleets, one shape at a time, "
                                       "and loads every core until it ends (the running fleet is left alone).",
                                       yes="Start"), answered)

    def action_sweep_cancel(self) -> None:
        self._stop_run("sweep", "sweep")

    @work(thread=True, exclusive=True, exit_on_error=False, group="sweep")
    def _sweep_worker(self) -> None:
        try:
            run = self.controller.start_sweep()
            self.post_message(msg.RunStarted("sweep", run))
            for progress in run.events():
                self.post_message(msg.SweepUpdated(progress))
            self.post_message(msg.RunEnded("sweep", True, run.summary()))
        except UserError as exc:
            self.post_message(msg.RunEnded("sweep", False, exc.one_line()))
        except Exception as exc:  # noqa: BLE001 - shown on the sweep screen
            self.post_message(msg.RunEnded("sweep", False, f"sweep failed: {type(exc).__name__}: {exc}"))

    def on_sweep_updated(self, message: msg.SweepUpdated) -> None:
        self.sweep_progress = message.progress
        self.render_sweep()

    def action_apply_best(self) -> None:
        if self._busy_refuses():
            return
        sweep = self.sweep_progress
        best = best_point(sweep.results) if sweep else None  # the core's rule, as the controller applies it
        if sweep is None or best is None or not sweep.out_dir:
            self.notify("no sweep result to apply yet", severity="warning", timeout=3)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.do(f"applying {best.instances} x {best.parallel}",
                        lambda p: self.controller.apply_shape(sweep.out_dir, p),
                        f"fleet is now {best.instances} instances x {best.parallel} slots")

        what = (f"{best.instances} instances x {best.parallel} slots "
                f"(best: {best.tok_s:,.0f} tok/s at concurrency {best.concurrency})")
        verb = "Replace the running fleet with" if self.fleet_running() else "Start"
        self.push_screen(ConfirmScreen(f"{verb} {what}?", yes="Apply"), answered)


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
