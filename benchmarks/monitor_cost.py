"""What watching a fleet costs: the monitor's own CPU time at 1 Hz against a 16-instance tiny fleet.

    .venv/bin/python benchmarks/monitor_cost.py [--instances 16] [--seconds 20]

Target (issue 3): at most 1% of one core for 16 instances at 1 Hz. Three figures, each the CPU time
this process spent (all threads) divided by the wall time, in percent of one core:
- monitor: psutil per process (+ children) and NVML, through the placement (`Monitor.instances` +
  `Monitor.system`), the part the target is about;
- + probes: the same plus /slots and /metrics of every instance (`Monitor.sample` with handles and
  endpoints);
- snapshot: `fleet.snapshot(monitor=...)`, what the TUI calls every second (state file, liveness,
  NGINX stub_status and upstream statistics on top).
Then the supervisor's own CPU while it watches the idle fleet.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llama_tui.core import fleet, hardware, model  # noqa: E402
from llama_tui.core.fleet.monitor import Monitor  # noqa: E402
from llama_tui.core.fleet.placement import endpoint_of  # noqa: E402


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(label: str, seconds: float, tick: Callable[[], object]) -> float:
    tick()  # warm: first sample, imports, NVML init
    cpu0, t0 = _cpu(), time.monotonic()
    n = 0
    next_at = t0
    while time.monotonic() - t0 < seconds:
        tick()
        n += 1
        next_at += 1.0
        time.sleep(max(0.0, next_at - time.monotonic()))
    wall = time.monotonic() - t0
    pct = (_cpu() - cpu0) / wall * 100
    print(f"{label:<10} {pct:6.2f}% of one core ({n} samples in {wall:.1f}s, {(_cpu() - cpu0) / n * 1000:.1f} ms CPU each)")
    return pct


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", type=int, default=16)
    p.add_argument("--seconds", type=float, default=20.0, help="seconds per measurement (1 sample/s)")
    p.add_argument("--model", default="tiny")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="llama-tui-bench-monitor-") as d:
        sd = Path(d)
        base = fleet.free_port_block(args.instances + 1)
        spec = fleet.FleetSpec(model=model.resolve_model(args.model), instances=args.instances, parallel=1,
                               ctx_per_slot=256, threads=1, base_port=base, nginx_port=base + args.instances)
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"starting {args.instances} instances ({hardware.logical_cores()} logical cores, load average {load}) ...")
        try:
            fleet.up(spec, state_dir=sd)
            st = fleet.load_state(sd)
            assert st is not None
            mon = Monitor()
            handles = [h for h in (mon.placement.attach(i) for i in st.instances) if h is not None]
            eps = [endpoint_of(i) for i in st.instances]
            a = measure("monitor", args.seconds, lambda: (mon.instances(handles), mon.system()))
            mon2 = Monitor()
            b = measure("+ probes", args.seconds, lambda: mon2.sample(handles, eps))
            mon3 = Monitor()
            c = measure("snapshot", args.seconds, lambda: fleet.snapshot(sd, monitor=mon3))
            sup = psutil.Process(st.supervisor_pid)
            t0, c0 = time.monotonic(), sum(sup.cpu_times()[:2])
            time.sleep(args.seconds)
            s_pct = (sum(sup.cpu_times()[:2]) - c0) / (time.monotonic() - t0) * 100
            print(f"{'supervisor':<10} {s_pct:6.2f}% of one core (its own CPU while watching the idle fleet)")
            print(f"target <= 1% of one core for {args.instances} instances at 1 Hz: monitor "
                  f"{'PASS' if a <= 1.0 else 'MISS'} ({a:.2f}%); with probes {b:.2f}%; full snapshot {c:.2f}%")
        finally:
            fleet.down(sd, timeout=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
