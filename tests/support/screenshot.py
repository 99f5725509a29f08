"""Write the README screenshot: the demo fleet running with a benchmark ramp under way, 120x40.

    .venv/bin/python -m tests.support.screenshot docs/screenshot.svg            # real demo fleet
    .venv/bin/python -m tests.support.screenshot docs/screenshot.svg --scripted # fixed content, no processes

The real run starts the demo preset's fleet (llama-server + NGINX, tiny model) in a temporary state
dir, on the preset's ports when they are free (else free ones), opens the TUI headless at 120x40,
presses b, waits until the ramp is in its third step, saves the SVG, quits, and stops the fleet. The
numbers in the picture are what this machine measured.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

from tests.support.scripted import wait_for

SIZE = (120, 40)


async def _shoot(app, out: Path, press_bench: bool, step: int, timeout: float) -> None:
    async with app.run_test(size=SIZE) as pilot:
        def ready() -> bool:
            snap = app.fleet
            return bool(snap and snap.running and snap.instances and all(i.state == "ready" for i in snap.instances))

        await wait_for(pilot, ready, timeout=timeout, what="the fleet to be ready")
        if press_bench:
            await pilot.press("b")
            await wait_for(pilot, lambda: any(s.step >= step for s in app.bench_samples), timeout=timeout,
                           what=f"benchmark step {step + 1}")
            await wait_for(pilot, lambda: sum(1 for s in app.bench_samples if s.step == step) >= 6, timeout=timeout)
        await pilot.pause(0.3)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(app.export_screenshot(title="llama-tui"))
        await pilot.press("q")


def scripted_app():
    from tests.support import scripted
    from llama_tui.ui.app import make_app

    samples = scripted.bench_ramp(until_t=17.0)
    return make_app(scripted.ScriptedController(scripted.running_fleet(), bench=scripted.bench_events(samples)))


def real(out: Path, timeout: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="llama-tui-screenshot-"))
    os.environ["LLAMA_TUI_STATE_DIR"] = str(tmp / "state")
    os.environ.setdefault("LLAMA_TUI_CONFIG_DIR", str(tmp / "config"))
    from llama_tui import cli
    from llama_tui.core import config, fleet
    from llama_tui.ui.app import make_app
    from llama_tui.ui.controller import CoreController

    demo = config.load_settings(preset="demo")
    base, door = demo.get("fleet.base_port"), demo.get("fleet.nginx_port")
    if not all(fleet.port_free("127.0.0.1", p) for p in (base, base + 1, door)):
        base = fleet.free_port_block(3)
        door = base + 2
    args = cli.build_parser().parse_args(["--preset", "demo", "--base-port", str(base), "--nginx-port", str(door)])
    app = make_app(CoreController.from_args(args))
    try:
        asyncio.run(_shoot(app, out, press_bench=True, step=2, timeout=timeout))
    finally:
        fleet.down()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", default="docs/screenshot.svg")
    p.add_argument("--scripted", action="store_true", help="fixed content instead of a real fleet")
    p.add_argument("--timeout", type=float, default=180.0)
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.scripted:
        asyncio.run(_shoot(scripted_app(), out, press_bench=True, step=2, timeout=args.timeout))
    else:
        real(out, args.timeout)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
