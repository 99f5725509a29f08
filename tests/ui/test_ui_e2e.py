"""The TUI against the real demo fleet (real llama-server + NGINX), and in a real terminal (a pty).

Every fleet a test starts is stopped in its `finally`; the conftest safety net fails the test if anything
carrying its owner marker is left.
"""

from __future__ import annotations

import asyncio
import os
import re

import httpx
import pytest

from llama_tui import cli
from llama_tui.core import fleet, sweep
from llama_tui.ui.app import make_app
from llama_tui.ui.controller import CoreController
from llama_tui.ui.screens.logs import LogsScreen
from llama_tui.ui.widgets.fleet_table import FleetTable
from tests.support.scripted import wait_for
from tests.support.terminal_harness import Terminal

import conftest
from conftest import free_port_block


def demo_args(base: int) -> list[str]:
    return ["--preset", "demo", "--base-port", str(base), "--nginx-port", str(base + 2)]


def nginx_health(port: int) -> int | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code
    except httpx.HTTPError:
        return None


def hang_up_when(term: Terminal, text: str, exit_timeout: float) -> Terminal:
    """Wait for `text` on screen, hang the terminal up, and expect the TUI to exit 0; kill it in any case."""
    try:
        term.wait_text(text, timeout=60)
        term.hang_up()
        assert term.wait_exit(timeout=exit_timeout) == 0
    finally:
        term.kill()
    return term


def test_terminal_hangup_exits_cleanly_without_a_fleet():
    term = hang_up_when(Terminal([]), r"No fleet running", exit_timeout=20)
    assert "Traceback" not in term.text()


@pytest.mark.integration
def test_pilot_against_the_real_demo_fleet(tiny_model):
    base = free_port_block(3)
    args = cli.build_parser().parse_args(demo_args(base))
    app = make_app(CoreController.from_args(args))

    async def scenario() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            def ready() -> bool:
                snap = app.fleet
                return bool(snap and snap.running and len(snap.instances) == 2
                            and all(i.state == "ready" for i in snap.instances))

            await wait_for(pilot, ready, timeout=120, what="the demo fleet to start")
            table = app.screen.query_one(FleetTable)
            ports = {str(table.get_row_at(r)[1]) for r in range(table.row_count)}
            assert {str(base), str(base + 1)} <= ports
            await wait_for(pilot, lambda: app.fleet.nginx is not None and app.fleet.nginx.config_valid is True,
                           timeout=30, what="NGINX's config state")

            await pilot.press("b")
            await wait_for(pilot, lambda: any(s.tok_s > 0 for s in app.bench_samples), timeout=60,
                           what="a live tok/s above zero")
            await pilot.press("b")  # stop it: the step ends, results are kept
            await wait_for(pilot, lambda: not app.bench_running, timeout=60, what="the benchmark to end")
            assert "results in" in app.bench_summary, app.bench_summary

            await pilot.press("p")  # least_conn -> random_two_least_conn; NGINX reloads
            await wait_for(pilot, lambda: app.fleet.nginx.policy == "random_two_least_conn", timeout=60,
                           what="the new policy")

            await pilot.press("l")
            await wait_for(pilot, lambda: isinstance(app.screen, LogsScreen))
            await wait_for(pilot, lambda: app.screen.query_one("Log").line_count > 3, timeout=20,
                           what="instance 0's log")
            await pilot.press("escape")

            await pilot.press("q")
            await wait_for(pilot, lambda: app.farewell != "")

    try:
        asyncio.run(scenario())
        assert f"2 instances on :{base}-{base + 1}" in app.farewell
        state = fleet.load_state()
        assert state is not None and state.supervisor_alive  # q left it running
        assert nginx_health(base + 2) == 200
    finally:
        fleet.down()


@pytest.mark.integration
def test_cli_starts_the_demo_fleet_quits_leaving_it_and_reattaches_after_a_hangup(tiny_model):
    base = free_port_block(3)
    term = Terminal(demo_args(base))
    try:
        term.wait_text(rf"{base + 1}\s+\d+\s+ready", timeout=120)  # instance 1's row: port, pid, ready
        assert re.search(rf"{base}\s+\d+\s+ready", term.text())
        term.send(b"q")
        assert term.wait_exit(timeout=30) == 0
        out = term.text()
        assert "Traceback" not in out
        assert "the fleet keeps running (2 instances" in out
        assert nginx_health(base + 2) == 200  # the fleet keeps serving

        again = hang_up_when(Terminal(demo_args(base)), rf"{base + 1}\s+\d+\s+ready", exit_timeout=30)  # reattach
        assert "Traceback" not in again.text()
        assert "already running" not in again.text()
        assert nginx_health(base + 2) == 200
        state = fleet.load_state()
        assert state is not None and len(state.instances) == 2
    finally:
        term.kill()
        fleet.down()


TINY_SWEEP = """description = "a 1 x (1, 2) x (1, 2) sweep of the tiny model that ends in seconds"
[fleet]
model = "tiny"
threads = 1
ctx_per_slot = 256
[bench]
n_predict = 16
prompt_tokens = 8
[sweep]
instances = [1]
parallel = [1, 2]
concurrency = [1, 2]
duration = 1.0
warmup = 0.5
"""


@pytest.mark.integration
def test_sweep_from_the_tui_runs_in_its_own_process_and_apply_best_starts_that_shape(tiny_model):
    from llama_tui.core import paths
    from llama_tui.ui.screens.confirm import ConfirmScreen
    from llama_tui.ui.screens.sweep import ResultsTable, SweepScreen

    presets = paths.user_presets_dir()
    presets.mkdir(parents=True)
    (presets / "tinysweep.toml").write_text(TINY_SWEEP)
    base = free_port_block(3)
    ctrl = CoreController(preset="tinysweep", cli={"fleet.base_port": base, "fleet.nginx_port": base + 2})
    app = make_app(ctrl)

    async def scenario() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: app.polls >= 1)
            await pilot.press("w")
            await wait_for(pilot, lambda: isinstance(app.screen, SweepScreen))
            await pilot.press("w")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await wait_for(pilot, lambda: "sweep" in app.runs, timeout=30, what="the sweep process")
            pid = app.runs["sweep"].proc.pid  # type: ignore[attr-defined]
            assert pid != os.getpid()
            await wait_for(pilot, lambda: not app.sweep_running, timeout=180, what="the sweep to finish")
            p = app.sweep_progress
            # (whether every cell measured is the sweep's business; on a loaded box one may fail)
            assert p is not None and p.done and p.cells_total == 4 and len(p.results) >= 2, p
            assert app.screen.query_one(ResultsTable).row_count == len(p.results)
            assert "sweep done" in str(app.screen.query_one("#sweep-progress").render())
            # the best cell by the core's one rule, as `sweep report --apply` picks it from the directory,
            # and the same rule over the TUI's live points agrees with it
            best = sweep.best_shape(p.out_dir).row
            live = sweep.best_point(p.results)
            assert live is not None and (live.instances, live.parallel) == (best["instances"], best["parallel"])
            await pilot.press("a")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await wait_for(pilot, lambda: app.fleet is not None and app.fleet.running
                           and app.fleet.parallel == best["parallel"] and len(app.fleet.instances) == best["instances"]
                           and all(i.state == "ready" for i in app.fleet.instances), timeout=120,
                           what="the best shape's fleet")
            await pilot.press("q")

    try:
        asyncio.run(scenario())
    finally:
        fleet.down()


@pytest.mark.integration
@pytest.mark.faults
def test_opening_the_tui_adopts_a_fleet_whose_supervisor_died(tiny_model, isolated_dirs):
    base = free_port_block(3)
    spec = fleet.FleetSpec(model=tiny_model, instances=2, parallel=1, ctx_per_slot=256, threads=1,
                           base_port=base, nginx_port=base + 2, ready_timeout=60)
    fleet.up(spec, state_dir=isolated_dirs)
    try:
        before = fleet.load_state(isolated_dirs)
        os.kill(before.supervisor_pid, 9)
        conftest.wait_for(lambda: not fleet.load_state(isolated_dirs).supervisor_alive, 10, "the supervisor to die")
        app = make_app(CoreController(state_dir=isolated_dirs))

        async def scenario() -> None:
            async with app.run_test(size=(120, 40)) as pilot:
                await wait_for(pilot, lambda: app.fleet is not None and app.fleet.supervisor_alive is True,
                               timeout=60, what="the TUI to adopt the orphaned fleet")
                await pilot.press("q")

        asyncio.run(scenario())
        after = fleet.load_state(isolated_dirs)
        assert after.supervisor_pid != before.supervisor_pid and after.supervisor_alive
        assert [i.pid for i in after.instances] == [i.pid for i in before.instances]  # taken over, not restarted
        assert nginx_health(base + 2) == 200
    finally:
        fleet.down(isolated_dirs, timeout=5)
