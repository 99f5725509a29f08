"""Time to ready: 1 instance vs N instances started in parallel by the fleet supervisor.

    .venv/bin/python benchmarks/fleet_start.py [--model tiny|PATH] [--instances 8] [--repeats 3]

Target (issue 3): N=8 ready in at most 1.5x the time of one instance. The anchor launcher starts
instances one after another, so its 8-instance time is about 8x one.

Two figures per run, medians over the repeats:
- instances: first llama-server spawned -> last one answering /health 200 (the supervisor's own
  timestamps in fleet.json), i.e. what parallel start buys;
- up(): the whole `fleet.up()` call (supervisor start, instances, NGINX, first snapshot).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llama_tui.core import fleet, hardware, model  # noqa: E402


def one_run(model_path: Path, instances: int, threads: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="llama-tui-bench-start-") as d:
        sd = Path(d)
        base = fleet.free_port_block(instances + 1)
        spec = fleet.FleetSpec(model=model_path, instances=instances, parallel=1, ctx_per_slot=512, threads=threads,
                               base_port=base, nginx_port=base + instances, ready_timeout=120)
        t0 = time.monotonic()
        try:
            fleet.up(spec, state_dir=sd)
            wall = time.monotonic() - t0
            st = fleet.load_state(sd)
            assert st is not None
            spawned = min(i.started_at for i in st.instances if i.started_at)
            ready = max(i.ready_at for i in st.instances if i.ready_at)
            return ready - spawned, wall
        finally:
            fleet.down(sd, timeout=5)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--instances", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="threads per instance (default 1)")
    args = p.parse_args()
    model_path = model.resolve_model(args.model)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"model {model_path.name}, {hardware.physical_cores()} physical cores (load average {load}), "
          f"threads {args.threads} per instance, {args.repeats} repeats (medians)")
    results: dict[int, tuple[list[float], list[float]]] = {}
    for n in (1, args.instances):
        inst, wall = [], []
        for _ in range(args.repeats):
            a, b = one_run(model_path, n, args.threads)
            inst.append(a)
            wall.append(b)
        results[n] = (inst, wall)
        print(f"{n:>2} instance(s): instances ready in {statistics.median(inst):.3f}s "
              f"(runs {', '.join(f'{x:.3f}' for x in inst)}); up() {statistics.median(wall):.3f}s "
              f"(runs {', '.join(f'{x:.3f}' for x in wall)})")
    one_i, one_w = (statistics.median(v) for v in results[1])
    n_i, n_w = (statistics.median(v) for v in results[args.instances])
    ratio_i, ratio_w = n_i / one_i, n_w / one_w
    target = 1.5
    print(f"ratio {args.instances}/1: instances {ratio_i:.2f}x, up() {ratio_w:.2f}x "
          f"(target <= {target}x; sequential start would be ~{args.instances}x) -> "
          f"{'PASS' if ratio_w <= target else 'MISS'} on up(), {'PASS' if ratio_i <= target else 'MISS'} on instances")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
