"""Pilot tests for every action of the TUI, against the scripted controller (which records core calls)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from textual.widgets import Input, Log

from llama_tui.core.errors import UserError
from llama_tui.ui.app import make_app
from llama_tui.ui.controller import LogSource
from llama_tui.ui.screens.confirm import ConfirmScreen
from llama_tui.ui.screens.fleet_form import FleetFormScreen
from llama_tui.ui.screens.help import HelpScreen
from llama_tui.ui.screens.logs import LogsScreen
from llama_tui.ui.screens.sweep import ResultsTable, SweepScreen
from llama_tui.ui.widgets.fleet_table import FleetTable
from llama_tui.ui.widgets.sweep_heatmap import SweepHeatmap
from llama_tui.ui.widgets.throughput_chart import ThroughputChart
from tests.support import scripted

wait_for = scripted.wait_for


def drive(controller, scenario, size=(120, 40), **kw):
    """Run `scenario(app, pilot)` in a headless app once the first snapshot is on screen."""
    app = make_app(controller, **kw)

    async def main():
        async with app.run_test(size=size) as pilot:
            await wait_for(pilot, lambda: app.polls >= 1, what="first poll")
            await scenario(app, pilot)
        return app

    return asyncio.run(main())


def table_text(app) -> str:
    table = app.screen.query_one(FleetTable)
    return "\n".join(" ".join(str(c) for c in table.get_row_at(r)) for r in range(table.row_count))


def running(n=2, **kw):
    return scripted.ScriptedController(scripted.running_fleet(n), **kw)


# ------------------------------------------------------------------------------------------------ fleet keys


def test_start_key_starts_the_configured_fleet_and_shows_its_rows():
    ctrl = scripted.ScriptedController()

    async def scenario(app, pilot):
        assert app.screen.query_one(FleetTable).row_count == 0
        await pilot.press("s")
        await wait_for(pilot, lambda: ctrl.called("start"), what="start call")
        await wait_for(pilot, lambda: "18081" in table_text(app), what="rows of the new fleet")
        assert "ready" in table_text(app)
        assert "fleet started" in app.status

    drive(ctrl, scenario)
    assert ctrl.called("start") == [("start", ctrl.form())]


@pytest.mark.parametrize("make, keys", [
    (lambda: running(), ("s",)),  # a fleet runs already
    (lambda: running(1), ("minus",)),  # one instance is the least
    (lambda: scripted.ScriptedController(), ("x", "plus", "r", "p", "b")),  # no fleet to act on
], ids=["start-while-running", "scale-below-one", "no-fleet"])
def test_keys_that_cannot_apply_call_nothing(make, keys):
    ctrl = make()

    async def scenario(app, pilot):
        await pilot.press(*keys)
        await pilot.pause(0.2)
        assert not isinstance(app.screen, ConfirmScreen)

    drive(ctrl, scenario)
    assert ctrl.calls == []


def test_start_error_is_shown_not_raised():
    ctrl = scripted.ScriptedController(start_error=UserError("port 18080 is in use", "pass --base-port"))

    async def scenario(app, pilot):
        await pilot.press("s")
        await wait_for(pilot, lambda: app.busy is None and app.status, what="start to fail")
        assert app.status == "error: port 18080 is in use (fix: pass --base-port)"

    drive(ctrl, scenario)
    assert len(ctrl.called("start")) == 1


def test_stop_asks_first_and_only_stops_on_yes():
    ctrl = running()

    async def scenario(app, pilot):
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
        assert "Stop the fleet?" in str(app.screen.query_one("#confirm-question").render())
        await pilot.press("n")
        await pilot.pause(0.2)
        assert ctrl.called("stop") == []
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: ctrl.called("stop"), what="stop call")
        await wait_for(pilot, lambda: app.fleet is not None and not app.fleet.running, what="empty fleet")

    drive(ctrl, scenario)
    assert ctrl.called("stop") == [("stop",)]


@pytest.mark.parametrize("key, expected", [("plus", 3), ("minus", 1)])
def test_scale_keys(key, expected):
    ctrl = running(2)

    async def scenario(app, pilot):
        await pilot.press(key)
        await wait_for(pilot, lambda: ctrl.called("scale"))
        await wait_for(pilot, lambda: app.fleet is not None and len(app.fleet.instances) == expected)

    drive(ctrl, scenario)
    assert ctrl.called("scale") == [("scale", expected)]


def test_restart_restarts_the_instance_under_the_cursor_not_the_totals_row():
    ctrl = running(3)

    async def scenario(app, pilot):
        await pilot.press("down")  # row of instance 1
        await pilot.press("r")
        await wait_for(pilot, lambda: ctrl.called("restart"))
        await wait_for(pilot, lambda: app.busy is None)
        await pilot.press("down", "down")  # the totals row
        await pilot.press("r")
        await pilot.pause(0.2)

    drive(ctrl, scenario)
    assert ctrl.called("restart") == [("restart", 1)]


def test_policy_key_cycles_to_the_next_policy():
    ctrl = running()

    async def scenario(app, pilot):
        await pilot.press("p")
        await wait_for(pilot, lambda: ctrl.called("set_policy"))
        await wait_for(pilot, lambda: app.fleet.nginx.policy == "random_two_least_conn")
        await wait_for(pilot, lambda: app.busy is None)
        await pilot.press("p")
        await wait_for(pilot, lambda: len(ctrl.called("set_policy")) == 2)

    drive(ctrl, scenario)
    assert ctrl.called("set_policy") == [("set_policy", "random_two_least_conn"), ("set_policy", "hash")]


# ------------------------------------------------------------------------------------------------ benchmark


def test_bench_key_runs_the_ramp_and_shows_live_samples_then_b_stops_it():
    ctrl = running()

    async def scenario(app, pilot):
        await pilot.press("b")
        await wait_for(pilot, lambda: len(app.bench_samples) == 48, what="every scripted sample")
        chart = app.screen.query_one(ThroughputChart)
        assert chart.samples == app.bench_samples and chart.samples[-1].concurrency == 8
        stats = str(app.screen.query_one("#throughput-stats").render())
        assert "tok/s" in stats and "TTFT p50" in stats
        assert "step 3 valid" in str(app.screen.query_one("#validity-line").render())
        assert app.bench_running
        await pilot.press("b")  # again: stop it
        await wait_for(pilot, lambda: not app.bench_running, what="the run to end")
        assert "ended at step 4/4 c=8" in str(app.screen.query_one("#ramp-line").render())

    drive(ctrl, scenario)
    assert ctrl.called("start_bench") == [("start_bench",)]
    assert ctrl.runs[0].cancelled.is_set()


def test_invalid_step_marks_the_pane():
    samples = scripted.bench_ramp(until_t=13.0)
    ctrl = running(bench=scripted.bench_events(samples, invalid=[1]))

    async def scenario(app, pilot):
        await pilot.press("b")
        await wait_for(pilot, lambda: len(app.bench_verdicts) == 2)
        line = str(app.screen.query_one("#validity-line").render())
        assert "step 2 INVALID: client CPU at 97% of a core" in line
        assert app.screen.query_one("#throughput-pane").has_class("-degraded")
        assert app.screen.query_one(ThroughputChart).invalid_steps == frozenset({1})

    drive(ctrl, scenario)


def test_bench_failure_is_reported():
    ctrl = running()
    ctrl.hold_runs = False

    def failing():
        ctrl._record("start_bench")
        run = scripted.ScriptedRun(scripted.bench_ramp(until_t=2.0), fail="benchmark target refused connections")
        ctrl.runs.append(run)
        return run

    ctrl.start_bench = failing  # type: ignore[method-assign]

    async def scenario(app, pilot):
        await pilot.press("b")
        await wait_for(pilot, lambda: not app.bench_running)
        assert "refused connections" in app.bench_summary

    drive(ctrl, scenario)


# ------------------------------------------------------------------------------------------------ sweep


def test_sweep_screen_starts_a_sweep_after_asking_and_applies_the_best():
    ctrl = running()

    async def scenario(app, pilot):
        await pilot.press("w")
        await wait_for(pilot, lambda: isinstance(app.screen, SweepScreen))
        await pilot.press("w")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: app.sweep_progress is not None and app.sweep_progress.cell == 8)
        assert "cell 8/12" in str(app.screen.query_one("#sweep-progress").render())
        assert "ETA" in str(app.screen.query_one("#sweep-progress").render())
        heat = str(app.screen.query_one(SweepHeatmap).render())
        assert "★ 4,396" in heat  # best shape 2 x 4
        table = app.screen.query_one(ResultsTable)
        assert table.row_count == 21
        assert str(table.get_row_at(0)[0]).startswith("★")  # sorted by tok/s: best first
        await pilot.press("o")  # sort by the next column: TTFT p50, lowest first
        assert table.sort_column == "ttft_p50"
        p50s = [int(str(table.get_row_at(r)[5]).removesuffix("ms")) for r in range(table.row_count)]
        assert p50s == sorted(p50s) and p50s[0] == 26
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "2 instances x 4 slots" in str(app.screen.query_one("#confirm-question").render())
        await pilot.press("y")
        await wait_for(pilot, lambda: ctrl.called("apply_shape"))
        await pilot.press("c")  # cancel the (held) sweep
        await wait_for(pilot, lambda: not app.sweep_running)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, SweepScreen))

    drive(ctrl, scenario)
    assert ctrl.called("start_sweep") == [("start_sweep",)]
    assert ctrl.called("apply_shape") == [("apply_shape", 2, 4)]


# ------------------------------------------------------------------------------------------------ logs


def test_logs_screen_follows_the_selected_log(tmp_path):
    a, b = tmp_path / "instance-0.log", tmp_path / "error.log"
    a.write_text("".join(f"line {i}\n" for i in range(5)))
    b.write_text("nginx started\n")
    ctrl = running(logs=[LogSource("instance 0 :18080", a), LogSource("NGINX error log", b)])

    def log_lines(app):
        return list(app.screen.query_one(Log).lines)

    async def scenario(app, pilot):
        await pilot.press("l")
        await wait_for(pilot, lambda: isinstance(app.screen, LogsScreen))
        await wait_for(pilot, lambda: "line 4" in log_lines(app), what="the first log")
        with a.open("a") as f:
            f.write("a new line\n")
        await wait_for(pilot, lambda: "a new line" in log_lines(app), what="the appended line")
        app.screen.query_one("#log-sources").focus()
        await pilot.press("down")
        await wait_for(pilot, lambda: "nginx started" in log_lines(app), what="the NGINX log")
        assert "line 4" not in log_lines(app)
        await pilot.press("escape")

    drive(ctrl, scenario)


PROMPT_TAIL = "exited with code 1: prompt '<s>[INST] hi [/INST]' [b]"  # log text that looks like markup


def test_log_text_is_shown_as_text_never_as_markup(tmp_path):
    """A prompt quoted in a log ("[/INST]") is no markup tag: the problems line, the logs screen, the
    status line and the toast show it as written, and nothing raises MarkupError."""
    snap = scripted.degraded_fleet()
    failed = replace(snap.instances[1], last_error=PROMPT_TAIL)
    snap = replace(snap, instances=(snap.instances[0], failed, snap.instances[2]))
    log = tmp_path / "instance-1.log"
    log.write_text(f"{PROMPT_TAIL}\n")
    ctrl = scripted.ScriptedController(snap, logs=[LogSource("instance 1 :18081", log)])

    async def scenario(app, pilot):
        problems = app.screen.query_one("#fleet-problems")
        await wait_for(pilot, lambda: "[/INST]" in str(problems.render()), what="the error as written")
        assert "[b]" in str(problems.render())
        await pilot.press("l")
        await wait_for(pilot, lambda: isinstance(app.screen, LogsScreen))
        await wait_for(pilot, lambda: PROMPT_TAIL in list(app.screen.query_one(Log).lines), what="the log line")
        await pilot.press("escape")

    drive(ctrl, scenario)

    ctrl = scripted.ScriptedController(start_error=UserError(f"instance 0 failed: {PROMPT_TAIL}", "see its log"))

    async def start_fails(app, pilot):
        await pilot.press("s")
        await wait_for(pilot, lambda: app.busy is None and app.status, what="start to fail")
        await pilot.pause(0.3)  # the toast and the status line are drawn
        assert "[/INST]" in str(app.screen.query_one("#status-line").render())

    drive(ctrl, start_fails)


# ------------------------------------------------------------------------------------------------ form


async def open_form(app, pilot) -> None:
    """Press `e` and wait for the fleet form."""
    await pilot.press("e")
    await wait_for(pilot, lambda: isinstance(app.screen, FleetFormScreen))


def test_edit_form_starts_the_edited_fleet():
    ctrl = scripted.ScriptedController(models=[Path("/models/qwen2.5-7b-q4_k_m.gguf")])

    async def scenario(app, pilot):
        await open_form(app, pilot)
        form = app.screen
        await wait_for(pilot, lambda: "1 GGUF models found" in str(form.query_one("#form-box").border_subtitle))
        form.query_one("#instances", Input).value = "3"
        form.query_one("#parallel", Input).value = "4"
        form.query_one("#gpus", Input).value = "0,1"
        form.query_one("#model-path", Input).value = "/models/qwen2.5-7b-q4_k_m.gguf"
        await pilot.click("#submit")
        await wait_for(pilot, lambda: ctrl.called("start"))

    drive(ctrl, scenario)
    form = ctrl.called("start")[0][1]
    assert (form.instances, form.parallel, form.gpus, form.model) == (3, 4, (0, 1), "/models/qwen2.5-7b-q4_k_m.gguf")


def test_edit_form_rejects_bad_numbers_in_place():
    ctrl = scripted.ScriptedController()

    async def scenario(app, pilot):
        await open_form(app, pilot)
        app.screen.query_one("#instances", Input).value = "two"
        await pilot.click("#submit")
        await pilot.pause(0.1)
        assert isinstance(app.screen, FleetFormScreen)
        assert "instances must be a whole number" in str(app.screen.query_one("#form-error").render())

    drive(ctrl, scenario)
    assert ctrl.called("start") == []


def test_edit_form_on_a_running_fleet_asks_then_replaces_it():
    ctrl = running()

    async def scenario(app, pilot):
        await open_form(app, pilot)
        app.screen.query_one("#instances", Input).value = "4"
        await pilot.click("#submit")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: ctrl.called("start"))

    drive(ctrl, scenario)
    assert [c[0] for c in ctrl.calls] == ["stop", "start"]
    assert ctrl.calls[1][1].instances == 4


def test_form_saves_a_user_preset():
    ctrl = scripted.ScriptedController()

    async def scenario(app, pilot):
        await open_form(app, pilot)
        app.screen.query_one("#parallel", Input).value = "8"
        app.screen.query_one("#preset-name", Input).value = "my-box"
        await pilot.click("#save")
        await wait_for(pilot, lambda: ctrl.called("save_preset"))
        assert isinstance(app.screen, FleetFormScreen)  # the form stays open
        app.screen.query_one("#preset-name", Input).value = "bad name!"
        app.screen.query_one("#save").press()  # (a toast may cover the button now)
        await wait_for(pilot, lambda: "bad preset name" in str(app.screen.query_one("#form-error").render()))

    drive(ctrl, scenario)
    assert [(c[1], c[2].parallel) for c in ctrl.called("save_preset")] == [("my-box", 8)]


def test_form_save_through_the_core_round_trips_quotes_and_newlines(isolated_dirs):
    from llama_tui.core import config
    from llama_tui.ui.controller import CoreController

    model = '/models/a "quoted" dir\\with\\backslashes/it\'s "q4"\nsecond line.gguf'
    ctrl = CoreController(preset="demo")  # the real save: core.presets, in the form's thread worker

    async def scenario(app, pilot):
        await open_form(app, pilot)
        app.screen.query_one("#model-path", Input).value = model
        app.screen.query_one("#parallel", Input).value = "3"
        app.screen.query_one("#preset-name", Input).value = "odd"
        await pilot.click("#save")
        await wait_for(pilot, lambda: any(p.name == "odd" for p in config.list_presets()), timeout=20,
                       what="the saved preset")
        assert str(app.screen.query_one("#form-error").render()) == ""

    try:
        drive(ctrl, scenario)
    finally:
        ctrl.close()
    loaded = config.load_settings(preset="odd")
    assert (loaded.get("fleet.model"), loaded.get("fleet.parallel")) == (model, 3)  # newline, quotes and all
    assert loaded.section("bench") == config.load_settings(preset="demo").section("bench")
    description = next(p for p in config.list_presets() if p.name == "odd").description
    assert description.endswith('it\'s "q4"\nsecond line.gguf, least_conn')


# ------------------------------------------------------------------------------------------------ app keys


def test_ctrl_s_saves_an_svg_screenshot(tmp_path):
    ctrl = running()

    async def scenario(app, pilot):
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: list(tmp_path.glob("*.svg")))

    drive(ctrl, scenario, screenshot_dir=tmp_path)
    svg = next(tmp_path.glob("*.svg")).read_text()
    assert svg.startswith("<svg") and "18081" in svg


def test_help_lists_every_key_as_bound_including_the_keymap():
    ctrl = running()

    async def scenario(app, pilot):
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        keys = dict((what.split(":")[0], key) for key, what in app.screen.keys if key)
        assert keys["Start"] == "S" and keys["Stop"] == "x" and keys["Quit"] == "q"
        assert {"Scale up", "Restart", "Bench", "Sweep", "Policy", "Logs", "Edit", "SVG", "Help"} <= set(keys)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen))

    drive(ctrl, scenario, keymap={"fleet.start": "S"})


def test_keymap_rebinds_a_key():
    ctrl = scripted.ScriptedController()

    async def scenario(app, pilot):
        await pilot.press("s")
        await pilot.pause(0.2)
        assert ctrl.called("start") == []
        await pilot.press("S")
        await wait_for(pilot, lambda: ctrl.called("start"))

    drive(ctrl, scenario, keymap={"fleet.start": "S"})


def test_quit_leaves_the_fleet_running_and_says_so():
    ctrl = running()

    async def scenario(app, pilot):
        await pilot.press("b")
        await wait_for(pilot, lambda: "bench" in app.runs)
        await pilot.press("q")
        await wait_for(pilot, lambda: app.farewell != "")

    app = drive(ctrl, scenario)
    assert "the fleet keeps running (2 instances on :18080-18081, NGINX on 127.0.0.1:18000)" in app.farewell
    assert "`llama-tui fleet down` stops it" in app.farewell
    assert "benchmark started from the TUI was stopped" in app.farewell
    assert ctrl.called("stop") == []
    assert ctrl.runs[0].cancelled.is_set()


def test_sweep_starts_only_on_yes_and_quitting_during_it_asks_first():
    ctrl = running()

    async def scenario(app, pilot):
        await pilot.press("w", "w")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await pilot.pause(0.2)
        assert ctrl.called("start_sweep") == []
        await pilot.press("w")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: "sweep" in app.runs)
        await pilot.press("q")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await pilot.pause(0.1)
        assert app.farewell == ""
        await pilot.press("q")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: app.farewell != "")

    app = drive(ctrl, scenario)
    assert "the sweep started from the TUI was stopped" in app.farewell


def test_blocking_calls_never_run_on_the_event_loop(tmp_path, monkeypatch):
    """Disk, locks and processes stay off the loop: the controller's calls, a run's stop/cancel, the
    screenshot file, closing the controller on the way out all happen in thread workers."""
    loop_thread = threading.current_thread()  # asyncio.run (in `drive`) runs the app's loop in this thread
    seen: list[tuple[str, threading.Thread]] = []

    def record(name):
        seen.append((name, threading.current_thread()))

    class Recording(scripted.ScriptedController):
        def snapshot(self):
            record("snapshot")
            return super().snapshot()

        def log_sources(self, snap):
            record("log_sources")
            return super().log_sources(snap)

        def close(self):
            record("close")

    for method in ("stop", "cancel"):
        original = getattr(scripted.ScriptedRun, method)
        monkeypatch.setattr(scripted.ScriptedRun, method,
                            lambda run, _m=method, _o=original: (record(f"run.{_m}"), _o(run))[1])
    write_text = Path.write_text
    monkeypatch.setattr(Path, "write_text", lambda path, *a, **kw: (record("write " + path.suffix),
                                                                     write_text(path, *a, **kw))[1])
    ctrl = Recording(scripted.running_fleet())

    async def scenario(app, pilot):
        await pilot.press("l")
        await wait_for(pilot, lambda: isinstance(app.screen, LogsScreen))
        await pilot.press("escape")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: list(tmp_path.glob("*.svg")), what="the screenshot")
        await pilot.press("b")
        await wait_for(pilot, lambda: "bench" in app.runs)
        await pilot.press("b")  # stop: it keeps what it measured
        await wait_for(pilot, lambda: not app.bench_running)
        await pilot.press("b")
        await wait_for(pilot, lambda: "bench" in app.runs)
        await pilot.press("q")  # cancels the second run and closes the controller, then exits
        await wait_for(pilot, lambda: app.released, what="leaving")

    drive(ctrl, scenario, screenshot_dir=tmp_path)
    names = {name for name, _ in seen}
    assert {"snapshot", "log_sources", "close", "run.stop", "run.cancel", "write .svg"} <= names, names
    assert [name for name, thread in seen if thread is loop_thread] == []
    assert ctrl.runs[1].cancelled.is_set()


@pytest.mark.parametrize("query, call", [("scale up", ("scale", 3)), ("cycle balancing", ("set_policy", "random_two_least_conn")),
                                         ("restart selected", ("restart", 0))])
def test_command_palette_offers_the_same_actions(query, call):
    ctrl = running()

    async def scenario(app, pilot):
        await pilot.press("ctrl+p")
        await pilot.pause(0.2)
        await pilot.press(*query)
        await pilot.pause(0.5)
        await pilot.press("enter")
        await wait_for(pilot, lambda: ctrl.calls, what=f"palette command {query!r}")

    drive(ctrl, scenario)
    assert ctrl.calls == [call]


# ------------------------------------------------------------------------------------------------ start-up, polling, layout


def test_autostart_starts_once_when_no_fleet_runs():
    ctrl = scripted.ScriptedController(autostart=True)

    async def scenario(app, pilot):
        await wait_for(pilot, lambda: app.fleet is not None and app.fleet.running)
        await wait_for(pilot, lambda: app.polls >= 3, what="more polls")

    drive(ctrl, scenario, refresh_s=0.05)
    assert len(ctrl.called("start")) == 1


def test_reattaches_to_a_running_fleet_without_starting_one():
    ctrl = running(autostart=True)

    async def scenario(app, pilot):
        await wait_for(pilot, lambda: "18081" in table_text(app))

    drive(ctrl, scenario)
    assert ctrl.calls == []


def test_rows_update_in_place_and_the_cursor_stays():
    source = scripted.ChangingFleet(instances=4, parallel=2, gpus=0)
    ctrl = scripted.ScriptedController(source)

    async def scenario(app, pilot):
        await pilot.press("down", "down")
        before = app.polls
        first = table_text(app)
        await wait_for(pilot, lambda: app.polls >= before + 3, what="three more polls")
        table = app.screen.query_one(FleetTable)
        assert table.cursor_row == 2 and table.selected_port() == 18082
        assert table_text(app) != first  # the numbers moved
        assert table.row_count == 5  # 4 instances + totals

    drive(ctrl, scenario, refresh_s=0.05)


def test_poll_errors_show_and_polling_goes_on():
    calls = {"n": 0}
    seen = threading.Event()  # the poll after the failure waits until the test has seen the error

    def flaky():
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("state file unreadable")
        if calls["n"] >= 3:
            seen.wait(30)
        return scripted.running_fleet()

    ctrl = scripted.ScriptedController(flaky)

    async def scenario(app, pilot):
        await wait_for(pilot, lambda: app.poll_error is not None, what="the failed poll")
        assert "OSError: state file unreadable" in str(app.screen.query_one("#status-line").render())
        seen.set()
        await wait_for(pilot, lambda: app.poll_error is None and calls["n"] >= 3, what="recovery")

    drive(ctrl, scenario, refresh_s=0.05)


def test_narrow_terminal_stacks_panes_and_drops_columns():
    ctrl = running()

    async def scenario(app, pilot):
        table = app.screen.query_one(FleetTable)
        assert app.screen.has_class("-narrow") and app.screen.has_class("-short")
        assert [c.key for c in table.columns_shown()][:3] == ["index", "port", "state"]
        assert "18081" in table_text(app)  # the rebuilt table was filled again
        lower = app.screen.query_one("#lower")
        up, thr = app.screen.query_one("#upstream-pane"), app.screen.query_one("#throughput-pane")
        assert up.region.x == thr.region.x and thr.region.y > up.region.y  # stacked
        assert lower.region.width == 80
        assert thr.region.bottom <= 23  # the throughput pane is on screen above the footer

    drive(ctrl, scenario, size=(80, 24))


def test_wide_terminal_puts_upstream_and_throughput_side_by_side():
    ctrl = running()

    async def scenario(app, pilot):
        up, thr = app.screen.query_one("#upstream-pane"), app.screen.query_one("#throughput-pane")
        assert up.region.y == thr.region.y and thr.region.x > up.region.x
        assert "pid" in [c.key for c in app.screen.query_one(FleetTable).columns_shown()]

    drive(ctrl, scenario, size=(120, 40))


def test_many_instances_at_80x24_keep_the_totals_row_and_scroll_under_the_cursor():
    ctrl = scripted.ScriptedController(scripted.running_fleet(16, 4))

    def shown(app) -> list[str]:
        table = app.screen.query_one(FleetTable)
        return [table.render_line(y).text.split()[0] for y in range(1, table.size.height)]

    async def scenario(app, pilot):
        table = app.screen.query_one(FleetTable)
        assert table.row_count == 17 and table.size.height < 18  # it does not all fit
        first = shown(app)
        assert first[0] == "0" and first[-1] == "Σ"  # totals pinned to the bottom line
        await pilot.press("pagedown")
        assert table.selected_port() == 18090
        now = shown(app)
        assert now[-1] == "Σ" and "10" in now and "0" not in now  # rows scrolled, totals still there
        await pilot.press("end")
        assert table.cursor_key() == "total" and table.selected_port() is None

    drive(ctrl, scenario, size=(80, 24))
