#!/usr/bin/env python3
"""Aggregate tok/s of a fleet with and without `--pin-cpus`.

Each round brings the same fleet up twice, unpinned and pinned (each instance on physical cores of its
own), in alternating order so drift hits both arms alike, and measures the same closed-loop streaming
load through NGINX with the bench engine. Prints every step (tok/s, the server's own count, errors,
client CPU, validity), then the mean tok/s of each arm and the ratio pinned / unpinned.

Pinning needs instances x threads <= physical cores; on a small machine the load generator shares the
cores with the pinned instances (they only keep the instances off each other's cores).

    .venv/bin/python benchmarks/pinning.py --instances 2 --parallel 4 --concurrency 16 --duration 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nginx_vs_client import add_load_options, measure_bench  # noqa: E402  (benchmarks/ is this script's own directory)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--instances", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None, help="threads per instance (default: the budget)")
    add_load_options(ap)
    args = ap.parse_args()

    from llama_tui.core import fleet, hardware, model
    from llama_tui.core.errors import UserError

    base = fleet.free_port_block(args.instances + 1)
    specs = {pin: fleet.FleetSpec(model=model.resolve_model(args.model), instances=args.instances,
                                  parallel=args.parallel, ctx_per_slot=512 if args.model == "tiny" else 2048,
                                  threads=args.threads, base_port=base + 1, nginx_port=base, pin_cpus=pin,
                                  max_concurrency=max(64, args.concurrency))
             for pin in (False, True)}
    try:
        specs[True].validate()
    except UserError as exc:
        print(f"error: {exc.cause} (fix: {exc.fix})", file=sys.stderr)
        return 2
    state = Path(tempfile.mkdtemp(prefix="llama-tui-pinning-"))
    args.state_dir = str(state)
    os.environ["LLAMA_TUI_STATE_DIR"] = str(state)
    threads = specs[True].threads_for(args.instances)
    print(f"fleet: {args.instances} x {args.parallel} slots, -t {threads}, model {specs[True].model.name}; load: "
          f"closed loop c={args.concurrency}, n_predict={args.n_predict}, {args.duration:.0f}s steps after "
          f"{args.warmup:.0f}s warm-up, {args.rounds} rounds; {len(hardware.core_groups())} physical cores "
          f"({hardware.logical_cores()} logical) shared by fleet, NGINX and load generator")
    arms: dict[str, list[dict]] = {"unpinned": [], "pinned": []}
    for r in range(args.rounds):
        for pin in ((False, True) if r % 2 == 0 else (True, False)):
            arm = "pinned" if pin else "unpinned"
            try:
                fleet.up(specs[pin], state_dir=state)
                st = fleet.load_state(state)
                cpus = ", ".join(hardware.format_cpus(i.cpus) for i in st.instances) if pin else "any"
                m = measure_bench(st.nginx_url(), args)
            finally:
                fleet.down(state_dir=state)
            arms[arm].append(m)
            server = f", server {m['server_tok_s']:.0f}" if m.get("server_tok_s") else ""
            valid = "" if m.get("valid") in (None, True) else f"  INVALID: {m['why']}"
            print(f"  round {r + 1} {arm:>8}: {m['tok_s']:8.0f} tok/s{server}, ok {m['ok']}, errors {m['errors']}; "
                  f"client CPU {m['cpu'] or 0:.0f}% of a core; CPUs per instance: {cpus}{valid}")
            time.sleep(0.5)
    a = statistics.mean(m["tok_s"] for m in arms["pinned"])
    b = statistics.mean(m["tok_s"] for m in arms["unpinned"])
    paired = [x["tok_s"] / y["tok_s"] for x, y in zip(arms["pinned"], arms["unpinned"]) if y["tok_s"]]
    errors = sum((m["errors"] or 0) for ms in arms.values() for m in ms)
    print(f"per-round ratios pinned / unpinned: {', '.join(f'{p:.3f}' for p in paired)}"
          + (f" (median {statistics.median(paired):.3f})" if paired else ""))
    print(f"pinned: {a:.0f} tok/s   unpinned: {b:.0f} tok/s   ratio {a / b if b else float('nan'):.3f}; "
          f"errors in all steps: {errors}")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
