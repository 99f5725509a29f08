"""What the TUI itself costs: its CPU while it shows a 16-instance fleet at the default 1 s refresh.

    .venv/bin/python benchmarks/tui_cost.py [--instances 16] [--seconds 30] [--real]

The TUI runs as a user runs it: its own process, drawing into a 120x40 pseudo-terminal that this script
drains. After a warm-up, the figure is the process's CPU time (user + system, all its threads) divided by
the wall time, in percent of one core. Target (issue 7): at most 3% of one core.

- scripted (always): a 16-instance fleet whose numbers change every poll (tests/support/scripted.ChangingFleet),
  so every cell is redrawn each second: the cost of rendering alone. Then the same while a benchmark
  streams two samples a second into the throughput chart (for information; the target is about the
  fleet view).
- --real: a real fleet of tiny-model llama-server instances (one thread each) started in a temporary
  state dir on free ports; the TUI's cost then includes reading it (core/fleet.snapshot: psutil, NVML,
  /slots and /metrics of every instance, NGINX stub_status and upstream statistics). Stopped afterwards.

Also printed: bytes drawn per second (what an SSH link carries) and the load average (a busy machine
inflates every figure).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.terminal_harness import Terminal  # noqa: E402

SCRIPTED = ("from tests.support import scripted; from llama_tui.ui.app import make_app; "
            "bench = scripted.bench_events(scripted.bench_ramp((1, 2, 4, 8, 16, 32), step_s=60.0)); "
            "make_app(scripted.ScriptedController(scripted.ChangingFleet({n}, 4, 2), bench=bench, run_interval=0.5), "
            "refresh_s={r}).run()")


def cpu_seconds(proc: psutil.Process) -> float:
    from llama_tui.core.fleet.process_stats import tree_cpu_seconds

    return tree_cpu_seconds(proc.pid) or 0.0


def measure(label: str, term: Terminal, ready: str, warmup: float, seconds: float, keys: bytes = b"") -> float:
    term.wait_text(ready, timeout=120)
    term.keep = False
    if keys:
        term.send(keys)
    time.sleep(warmup)
    proc = psutil.Process(term.pid)
    c0, b0, t0 = cpu_seconds(proc), term.bytes_read, time.monotonic()
    time.sleep(seconds)
    c1, b1, t1 = cpu_seconds(proc), term.bytes_read, time.monotonic()
    pct = (c1 - c0) / (t1 - t0) * 100
    print(f"{label:<34} {pct:6.2f}% of one core  ({c1 - c0:.2f} s CPU in {t1 - t0:.1f} s; "
          f"{(b1 - b0) / (t1 - t0) / 1024:.1f} KiB/s drawn)")
    return pct


def run_scripted(n: int, seconds: float, warmup: float, refresh: float, bench: bool = False) -> float:
    term = Terminal([], python_code=SCRIPTED.format(n=n, r=refresh))
    label = f"scripted {n} instances" + (" + live bench" if bench else "")
    try:
        return measure(label, term, str(18080 + n - 1), warmup, seconds, keys=b"b" if bench else b"")
    finally:
        term.send(b"q")
        term.wait_exit(timeout=30)


def run_real(n: int, seconds: float, warmup: float) -> float:
    tmp = Path(tempfile.mkdtemp(prefix="llama-tui-cost-"))
    env = {"LLAMA_TUI_STATE_DIR": str(tmp / "state"), "LLAMA_TUI_CONFIG_DIR": str(tmp / "config")}
    os.environ.update(env)
    from llama_tui.core import config, fleet

    base = fleet.free_port_block(n + 1)
    settings = config.load_settings(preset="demo", cli={"fleet.instances": n, "fleet.parallel": 2, "fleet.threads": 1,
                                                        "fleet.base_port": base, "fleet.nginx_port": base + n})
    t = time.monotonic()
    fleet.up(fleet.FleetSpec.from_settings(settings))
    print(f"(real fleet of {n} tiny instances up in {time.monotonic() - t:.1f} s)")
    term = Terminal([], env=env)
    try:
        return measure(f"real {n}-instance fleet", term, str(base + n - 1), warmup, seconds)
    finally:
        term.send(b"q")
        term.wait_exit(timeout=30)
        fleet.down()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", type=int, default=16)
    p.add_argument("--seconds", type=float, default=30.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds after the first frame before measuring")
    p.add_argument("--refresh", type=float, default=1.0, help="refresh interval of the scripted run")
    p.add_argument("--real", action="store_true", help="also measure against a real fleet (starts and stops one)")
    args = p.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; target <= 3% of one core")
    results = [run_scripted(args.instances, args.seconds, args.warmup, args.refresh)]
    run_scripted(args.instances, args.seconds, args.warmup, args.refresh, bench=True)  # informative, not the target
    if args.real:
        results.append(run_real(args.instances, args.seconds, args.warmup))
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0 if all(r <= 3.0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
