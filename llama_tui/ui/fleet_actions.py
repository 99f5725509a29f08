"""The fleet's actions in the TUI: start, stop, scale, restart an instance, switch the policy, edit and
replace the fleet. Each runs one blocking controller call in a thread worker (`do`); the status line
says what happens, and a notification says how it ended. Mixed into `app.LlamaTui`."""

from __future__ import annotations

from typing import Callable

from textual import work

from llama_tui.core.errors import UserError
from llama_tui.ui import messages as msg
from llama_tui.ui.controller import FleetForm, next_policy
from llama_tui.ui.screens.confirm import ConfirmScreen
from llama_tui.ui.screens.fleet_form import FleetFormScreen
from llama_tui.ui.widgets.fleet_table import FleetTable


class FleetActions:
    """Key actions on the fleet, and the one-at-a-time blocking call behind each (`do`, also used by
    `RunActions.action_apply_best`)."""

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
