"""Runs in their own processes, followed by the TUI: the benchmark (b) and the sweep (w, then s),
their live events, stopping one early (it keeps what it measured), and applying the sweep's best shape
(the core's rule, `best_point`, as `sweep report --apply` uses it). Mixed into `app.LlamaTui`."""

from __future__ import annotations

from textual import work

from llama_tui.core.errors import UserError
from llama_tui.core.snapshots import BenchSample, StepVerdict
from llama_tui.core.sweep import best_point
from llama_tui.ui import messages as msg
from llama_tui.ui.controller import RunHandle
from llama_tui.ui.leaving import RUN_NAMES
from llama_tui.ui.screens.confirm import ConfirmScreen
from llama_tui.ui.screens.sweep import SweepScreen

MAX_SAMPLES = 2400  # 20 minutes of 0.5 s samples


class RunActions:
    """The benchmark and sweep runs: start, follow, stop, cancel; apply the best shape (through
    `FleetActions.do`)."""

    def _cancel(self, kind: str, run: RunHandle) -> None:
        try:
            run.cancel()
        except Exception:  # noqa: BLE001 - leaving anyway; the run's process group is the core's to reap
            pass

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
