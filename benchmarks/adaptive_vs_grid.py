"""The adaptive sweep (successive halving) against the full grid, on the same grid, rounds alternating.

Target (issue 15): the adaptive best lies within 5% of the grid's best, or inside the grid best's 95%
interval, in at most 30% of the grid's wall time.

Both sweeps run real llama-server instances behind real NGINX with streamed native /completion
requests and the thread budget (physical cores // instances). They alternate: grid round 0, adaptive
rung 0, grid round 1, adaptive rung 1, ... so that machine drift (other work on a shared box, thermal
state) hits both. Each sweep's wall time counts only its own rounds (its clock is paused while the
other runs); where it went is printed (fleet starts, warm-ups, windows, the rest).

Real-model requests last seconds, so warm-up and window are sized from the request lifetime unless
given: with S busy slots a slot decodes at min(slot_rate, aggregate_rate / S) tok/s, a request lives
n_predict / that, the warm-up is one lifetime at the largest slot count and the window three.

    .venv/bin/python benchmarks/adaptive_vs_grid.py --model ~/.cache/llama-tui/models/gemma-3-270m-q4_k_m.gguf
    .venv/bin/python benchmarks/adaptive_vs_grid.py --model tiny --duration 2 --warmup 1    # minutes

Prints each sweep's best cell with its interval, wall time, cells, fleet starts and time account, the
two ratios and whether the target is met; the output directories are kept for `llama-tui sweep report`
(and `--html`). OUT/summary.json holds the figures.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llama_tui.core import config, fleet, hardware, model  # noqa: E402
from llama_tui.core.sweep import FleetRunner, Sweep, SweepConfig, cells, ledger, results  # noqa: E402


def lifetime_s(n_predict: int, slots: int, slot_rate: float, aggregate_rate: float) -> float:
    """How long a request of `n_predict` tokens lives when `slots` slots are busy."""
    return n_predict / min(slot_rate, aggregate_rate / max(1, slots))


def sized(args: argparse.Namespace, instances: tuple[int, ...], parallel: tuple[int, ...]) -> tuple[float, float, str]:
    """(warm-up, window, how they were chosen)."""
    life = lifetime_s(args.n_predict, max(instances) * max(parallel), args.slot_rate, args.aggregate_rate)
    warm = args.warmup if args.warmup is not None else math.ceil(life)
    window = args.duration if args.duration is not None else math.ceil(3 * life)
    how = (f"request lifetime at {max(instances) * max(parallel)} busy slots ~{life:.1f} s (n_predict "
           f"{args.n_predict}, {args.slot_rate:g} tok/s per slot, {args.aggregate_rate:g} tok/s in all)")
    return float(warm), float(window), how


def cell_line(r: dict[str, Any] | None) -> str:
    if not r:
        return "no good cell"
    ci = r.get("output_tok_s_ci95")
    spread = f"95% CI {ci[0]:,.1f} to {ci[1]:,.1f}" if ci else "no interval"
    return (f"{r['output_tok_s']:,.1f} tok/s ({spread}, {r.get('repeats', 1)} repeats) at {r['instances']}x"
            f"{r['parallel']} t{r['threads']} c={r['concurrency']}")


def run_alternating(grid: Sweep, adaptive: Sweep) -> None:
    live = {"grid": grid.rounds(), "adaptive": adaptive.rounds()}
    while live:
        for name in list(live):
            try:
                n = next(live[name])
                print(f"  [{name} round {n} done]", flush=True)
            except StopIteration:
                del live[name]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="GGUF path, or 'tiny' (default)")
    ap.add_argument("--instances", default="1,2")
    ap.add_argument("--parallel", default="1,2,4")
    ap.add_argument("--concurrency", default="2,4,8,16")
    ap.add_argument("--repeats", type=int, default=2, help="repeats of every grid cell (the adaptive sweep gives "
                    "its last two shapes max(2, R))")
    ap.add_argument("--duration", type=float, help="window seconds (default: three request lifetimes)")
    ap.add_argument("--warmup", type=float, help="warm-up seconds (default: one request lifetime)")
    ap.add_argument("--n-predict", dest="n_predict", type=int, default=32)
    ap.add_argument("--prompt-tokens", dest="prompt_tokens", type=int, default=16)
    ap.add_argument("--ctx-per-slot", dest="ctx_per_slot", type=int, default=512)
    ap.add_argument("--slot-rate", dest="slot_rate", type=float, help="tok/s of one slot alone (default 30 for a "
                    "real model on 2 cores, 2000 for tiny)")
    ap.add_argument("--aggregate-rate", dest="aggregate_rate", type=float,
                    help="tok/s of the whole machine with many slots busy (default: twice --slot-rate)")
    ap.add_argument("--extra-args", dest="extra_args", default="",
                    help="extra llama-server arguments (e.g. --no-repack where the CPU advertises AMX it lacks)")
    ap.add_argument("--out", help="directory for both sweeps (default: a new temp dir)")
    args = ap.parse_args()

    tiny = args.model == "tiny"
    path = model.ensure_tiny_model() if tiny else model.resolve_model(args.model)
    args.slot_rate = args.slot_rate or (2000.0 if tiny else 30.0)
    args.aggregate_rate = args.aggregate_rate or 2 * args.slot_rate
    inst = config.parse_int_list(args.instances, "--instances")
    par = config.parse_int_list(args.parallel, "--parallel")
    conc = config.parse_int_list(args.concurrency, "--concurrency")
    warm, window, how = sized(args, inst, par)
    root = Path(args.out or tempfile.mkdtemp(prefix="adaptive-vs-grid-")).expanduser().absolute()
    block = max(inst) + 1
    common = dict(model=path, instances=inst, parallel=par, concurrency=conc, ctx_per_slot=args.ctx_per_slot,
                  duration=window, warmup=warm, n_predict=(args.n_predict,), prompt_tokens=args.prompt_tokens,
                  repeats=args.repeats, extra_args=args.extra_args)
    configs = {}
    for name, adaptive in (("grid", False), ("adaptive", True)):
        # below Linux's ephemeral range (32768-60999): the load generators' own connections take ports
        # there, and a port free now can be taken by one of them before a later round starts its fleet
        base = fleet.free_port_block(block)  # below the ephemeral range
        configs[name] = SweepConfig(out_dir=root / name, adaptive=adaptive, nginx_port=base, base_port=base + 1,
                                    command=("benchmarks/adaptive_vs_grid.py", *sys.argv[1:]), **common)
    print(f"machine: {hardware.cpu_model()}, {hardware.physical_cores()} physical cores")
    print(f"model: {path}; streamed /completion, n_predict {args.n_predict}, ~{args.prompt_tokens} prompt tokens")
    print(f"grid: instances {args.instances} x parallel {args.parallel} x concurrency {args.concurrency}, "
          f"{args.repeats} repeats ({len(inst) * len(par)} shapes, {len(inst) * len(par) * len(conc)} cells)")
    print(f"each cell: {warm:g} s warm-up + {window:g} s window ({'given' if args.duration else how})")
    sweeps = {name: Sweep(cfg, FleetRunner(cfg)) for name, cfg in configs.items()}
    run_alternating(sweeps["grid"], sweeps["adaptive"])

    figures: dict[str, Any] = {}
    for name, sw in sweeps.items():
        res = sw.result
        assert res is not None
        rows = results.read_rows(res.out_dir / results.RESULTS).rows
        figures[name] = {"best": res.best, "wall_s": res.wall_s, "time": res.time, "out": str(res.out_dir),
                         "cells": sum(1 for r in rows if results.is_measured(r)), "status": res.status}
    print()
    for name, f in figures.items():
        print(f"{name:9s} best {cell_line(f['best'])}")
        print(f"{'':9s} wall {f['wall_s']:.1f} s, {f['cells']} cells, {f['time']['counts']['fleet_starts']} fleet "
              f"starts; {ledger.summary_line(f['time'])}")
        print(f"{'':9s} {f['out']}")
    g, a = figures["grid"]["best"], figures["adaptive"]["best"]
    verdict: dict[str, Any] = {}
    if g and a:
        share = a["output_tok_s"] / g["output_tok_s"]
        ratio = figures["adaptive"]["wall_s"] / figures["grid"]["wall_s"]
        ci = g.get("output_tok_s_ci95")
        inside = bool(ci and ci[0] <= a["output_tok_s"] <= ci[1])
        met = (share >= 0.95 or inside) and ratio <= 0.30
        print(f"adaptive/grid: best tok/s {share:.1%} (target >= 95%, or inside the grid best's interval: "
              f"{'yes' if inside else 'no'}), wall time {ratio:.1%} (target <= 30%): {'MET' if met else 'NOT MET'}")
        # The grid's own measurement of the cell the adaptive search picked (same machine, same rounds).
        grid_rows = results.read_rows(Path(figures["grid"]["out"]) / results.RESULTS).rows
        same = [c for c in cells.from_rows(grid_rows) if c.members[0].get("instances") == a["instances"]
                and c.members[0].get("parallel") == a["parallel"] and c.members[0].get("threads") == a["threads"]
                and c.members[0].get("concurrency") == a["concurrency"]]
        if same:
            s = same[0].summary()
            print(f"the grid's own measurement of the adaptive pick: {cell_line(s)} "
                  f"({s['output_tok_s'] / g['output_tok_s']:.1%} of the grid's best)")
        verdict = {"best_share": share, "wall_ratio": ratio, "inside_grid_interval": inside, "met": met}
    (root / "summary.json").write_bytes(orjson.dumps({"figures": figures, "verdict": verdict, "sizing": how,
                                                      "warmup_s": warm, "window_s": window},
                                                     option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
