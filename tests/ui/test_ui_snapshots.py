"""SVG snapshots of the main states at 120x40 and 80x24, from fixed scripted content.

Regenerate after a deliberate change with `pytest tests/ui/test_ui_snapshots.py --snapshot-update` and look
at the SVGs under tests/ui/__snapshots__/test_ui_snapshots/ before committing them.
"""

from __future__ import annotations

import pytest

from llama_tui.ui.app import make_app
from llama_tui.ui.screens.sweep import SweepScreen
from tests.support import scripted

SIZES = [(120, 40), (80, 24)]
wait_for = scripted.wait_for


def _controller(state: str) -> scripted.ScriptedController:
    if state == "empty":
        return scripted.ScriptedController()
    if state == "running":
        return scripted.ScriptedController(scripted.running_fleet(4, parallel=4, gpus=1))
    if state == "degraded":
        return scripted.ScriptedController(scripted.degraded_fleet())
    if state == "bench":
        samples = scripted.bench_ramp(until_t=17.0)
        return scripted.ScriptedController(scripted.running_fleet(), bench=scripted.bench_events(samples))
    if state == "sweep":
        return scripted.ScriptedController(scripted.running_fleet(),
                                           sweep=(scripted.sweep_progress(3), scripted.sweep_progress(7)))
    raise AssertionError(state)


async def _prepare(state: str, pilot) -> None:
    app = pilot.app
    await wait_for(pilot, lambda: app.polls >= 1, what="first poll")
    if state == "bench":
        await pilot.press("b")
        await wait_for(pilot, lambda: len(app.bench_samples) == 34, what="the scripted samples")
    if state == "sweep":
        await pilot.press("w")
        await wait_for(pilot, lambda: isinstance(app.screen, SweepScreen))
        await pilot.press("w", "y")
        await wait_for(pilot, lambda: app.sweep_progress is not None and app.sweep_progress.cell == 8)
    await pilot.pause(0.1)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("state", ["empty", "running", "degraded", "bench", "sweep"])
def test_snapshot(snap_compare, state, size):
    app = make_app(_controller(state), refresh_s=60.0)  # one poll; the content is fixed anyway
    assert snap_compare(app, terminal_size=size, run_before=lambda pilot: _prepare(state, pilot))
