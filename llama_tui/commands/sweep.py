"""`llama-tui sweep`: measure fleet shapes and name the best; `llama-tui sweep report DIR`."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any

from llama_tui.commands.fleet import add_engine_options
from llama_tui.commands.output import info, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="measure fleet shapes (instances x parallel x concurrency) and name the best",
        description="Run a fleet of each shape in its own state dir, load it with streaming requests, and "
        "record one row per cell in OUT/results.jsonl (+ results.csv, best.json, frontier.json, metadata.json). "
        "`llama-tui sweep report DIR` prints the table, a heatmap, the frontier and the command to run.")
    p.add_argument("--preset", help="preset name (its [sweep], [fleet], [bench] tables are the defaults)")
    p.add_argument("--model", help="GGUF model path, or 'tiny' for the generated demo model")
    p.add_argument("--instances", metavar="LIST", help="instance counts, e.g. 1,2,4")
    p.add_argument("--parallel", metavar="LIST", help="slots per instance, e.g. 1,2,4,8")
    p.add_argument("--concurrency", metavar="LIST|auto",
                   help="concurrency steps, or auto (double until gains < 3%% or the SLO breaks)")
    p.add_argument("--ctx-per-slot", dest="ctx_per_slot", metavar="C", help="context tokens per slot")
    p.add_argument("--duration", metavar="S", help="measured seconds per cell (steady-state window)")
    p.add_argument("--warmup", metavar="S", help="warm-up seconds per cell, excluded from the numbers")
    p.add_argument("--repeats", metavar="R",
                   help="measurements per cell (default 1), taken in rounds over the shapes (each on its own fleet "
                   "start), not back to back; with 2 or more every cell gets a 95%% interval (Student t) and "
                   "best.json says whether the best is distinguishable from the runner-up")
    p.add_argument("--max-concurrency", dest="max_concurrency", metavar="N", help="where an auto ramp stops")
    p.add_argument("--slo", metavar="K=V,...", help="e.g. ttft_p95_ms=500,e2e_p95_ms=4000: best.json and the "
                   "report only consider cells within it; auto ramps stop when it breaks")
    p.add_argument("--policy", help="NGINX balancing policy: round_robin, least_conn, random_two_least_conn, hash, "
                   "prefix; a list (least_conn,hash) sweeps once per policy into OUT/POLICY and compares their bests")
    p.add_argument("--base-port", dest="base_port", type=int, metavar="PORT",
                   help="port of the sweep fleet's instance 0 (default 18180)")
    p.add_argument("--nginx-port", dest="nginx_port", type=int, metavar="PORT",
                   help="port of the sweep fleet's NGINX (default 18100)")
    p.add_argument("--threads", metavar="LIST", help="threads per instance to sweep (default: the budget, "
                   "physical cores // instances, recorded per cell)")
    p.add_argument("--batch", metavar="LIST", help="llama-server --batch-size values to sweep")
    p.add_argument("--ubatch", metavar="LIST", help="llama-server --ubatch-size values to sweep")
    p.add_argument("--n-predict", dest="n_predict", metavar="LIST", help="tokens per request to sweep")
    p.add_argument("--prompt-tokens", dest="prompt_tokens", metavar="N", help="approximate prompt length")
    p.add_argument("--api", help="completion (native /completion, default) or chat")
    p.add_argument("--workload", metavar="NAME", help="unique (default), shared-prefix, sessions or dataset:FILE "
                   "(as in `llama-tui bench --help`)")
    p.add_argument("--prefix-tokens", dest="prefix_tokens", metavar="S", help="shared-prefix: system prompt tokens")
    p.add_argument("--prefix-groups", dest="prefix_groups", metavar="G", help="shared-prefix: distinct system prompts")
    p.add_argument("--sessions", metavar="N", help="sessions: conversations (at least the concurrency)")
    p.add_argument("--turns", metavar="T", help="sessions: turns per conversation")
    p.add_argument("--gpu-layers", dest="gpu_layers", metavar="L", help="--n-gpu-layers for every instance")
    p.add_argument("--gpus", metavar="0,1,...", help="pin instances to GPUs round-robin")
    p.add_argument("--extra-args", dest="extra_args", metavar="ARGS", help="extra llama-server arguments")
    p.add_argument("--out", metavar="DIR", help="output directory (default: STATE_DIR/sweeps/DATE-TIME)")
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep in --out (default: the latest): cells that stand are not measured again. "
                   "A directory from an earlier llama-tui version or made with other --repeats is continued: its "
                   "cells stand and only the missing repeats are measured; one written by a newer version is refused")
    p.add_argument("--adaptive", action="store_true",
                   help="successive halving (needs two shapes or more): every shape briefly at its slot count, keep "
                   "the best third, run their ramps to the knee, measure the best cells again until two shapes are "
                   "left with max(2, R) repeats each; one fleet start per shape and rung")
    p.add_argument("--budget", metavar="MINUTES", type=float,
                   help="stop after this many minutes of sweeping with the best found so far")
    p.add_argument("--apply", action="store_true", help="afterwards, start the fleet with the best shape")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    add_engine_options(p)
    p.set_defaults(func=run_sweep)
    ssub = p.add_subparsers(dest="sweep_command", metavar="report")
    r = ssub.add_parser("report", help="print a sweep's table, heatmap, frontier and recommended command")
    r.add_argument("dir", metavar="DIR", help="a sweep's output directory")
    r.add_argument("--json", action="store_true", help="print best, frontier and rows as JSON")
    r.add_argument("--apply", action="store_true", help="start the fleet with the best shape")
    r.add_argument("--html", metavar="FILE", help="also write the report as one self-contained HTML page (inline "
                   "SVG charts, nothing fetched from the network)")
    r.set_defaults(func=run_report)


def build_config(args: argparse.Namespace):
    """The sweep config and settings for the command line (the core's sweep.build_config)."""
    from llama_tui.core import sweep

    options = {name: getattr(args, name, None) for name in sweep.OPTIONS}
    cfg, settings = sweep.build_config(options, preset=args.preset, command=["llama-tui", *sys.argv[1:]])
    if args.resume and not args.out:
        info(f"resuming {cfg.out_dir}")
    return cfg, settings


def _ms(v: Any) -> str:
    return "n/a" if v is None else f"{v:,.1f} ms"


def _print_event(ev) -> None:
    if ev.row is not None:
        r = ev.row
        eta = f", ETA {ev.eta_s / 60:.1f} min" if ev.eta_s else ""
        info(f"[{ev.cell}/{ev.cells_total}{eta}] {r['instances']}x{r['parallel']} t{r.get('threads')} "
             f"c={r['concurrency']}: {r.get('output_tok_s') or 0:,.0f} tok/s, TTFT p95 "
             f"{_ms(r.get('ttft_p95_ms'))}, {r.get('errors')} errors"
             f"{'' if r.get('valid') else ' (invalid: ' + str(r.get('invalid_reason')) + ')'}")
    elif ev.message:
        info(ev.message)


def run_sweep(args: argparse.Namespace) -> int:
    from llama_tui.core import sweep
    from llama_tui.core.childproc import stop_on_signals

    if getattr(args, "sweep_command", None) == "report":
        return run_report(args)
    if args.policy and "," in args.policy:
        return run_policies(args)
    cfg, settings = build_config(args)
    stop = threading.Event()
    with sweep.out_lock(cfg.out_dir):
        pass  # another sweep there: one line now, before any output (run() holds the lock itself)
    info(f"sweep -> {cfg.out_dir}")
    with stop_on_signals(stop, lambda: info("stopping: the cell in progress is dropped and the fleet torn down "
                                            "(Ctrl-C again to force)")):
        res = sweep.run(cfg, on_event=_print_event, stop=stop)
        if args.json:
            print_json(sweep.summary(res))
        else:
            sys.stdout.write(sweep.report(cfg.out_dir))
        if res.status == "stopped":
            info(f"stopped; continue with: llama-tui sweep --resume --out {cfg.out_dir} (and the same options)")
            return 130
        if args.apply:
            apply_best(cfg.out_dir, args)
    return 0


def run_policies(args: argparse.Namespace) -> int:
    """`--policy A,B`: one sweep per policy, into OUT/A and OUT/B, then their bests side by side."""
    from llama_tui.core import sweep
    from llama_tui.core.bench.policy_ab import parse_policies
    from llama_tui.core.childproc import stop_on_signals
    from llama_tui.core.errors import UserError
    from llama_tui.core.sweep.config import out_dir_for

    policies = parse_policies(args.policy)
    if args.apply:
        raise UserError("--apply takes one policy's sweep", "sweep, then `llama-tui sweep report OUT/POLICY --apply`")
    if args.resume and not args.out:
        raise UserError("--resume with a list of policies needs the sweep's --out", "pass --out DIR as before")
    root = Path(args.out).expanduser() if args.out else out_dir_for(None, False)
    configs = []
    for p in policies:  # every sweep's options checked before the first one starts
        resume = bool(args.resume and (root / p / "results.jsonl").is_file())  # a policy not reached yet starts
        configs.append(build_config(argparse.Namespace(**{**vars(args), "policy": p, "out": str(root / p),
                                                          "resume": resume}))[0])
    stop = threading.Event()
    bests = []
    with stop_on_signals(stop, lambda: info("stopping: the cell in progress is dropped (Ctrl-C again to force)")):
        for p, cfg in zip(policies, configs):
            info(f"sweep with policy {p} -> {cfg.out_dir}")
            res = sweep.run(cfg, on_event=_print_event, stop=stop)
            bests.append((p, res.best))
            if res.status == "stopped":
                info(f"stopped; continue with: llama-tui sweep --resume --out {root} (and the same options)")
                return 130
    if args.json:
        print_json({"out_dir": str(root), "policies": {p: b for p, b in bests}})
        return 0
    for p, cfg in zip(policies, configs):
        sys.stdout.write(f"== policy {p}\n" + sweep.report(cfg.out_dir))
    sys.stdout.write("best per policy:\n")
    for p, b in bests:
        sys.stdout.write(f"  {p:<22} " + (f"{b['instances']}x{b['parallel']} c={b['concurrency']}: "
                                           f"{b.get('output_tok_s') or 0:,.0f} tok/s, TTFT p95 "
                                           f"{_ms(b.get('ttft_p95_ms'))}" if b else "no good cell") + "\n")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from llama_tui.core import sweep
    from llama_tui.core.sweep import cells, results

    out = Path(args.dir).expanduser()
    text = sweep.report(out)  # raises UserError for a directory without results
    if getattr(args, "html", None):
        page = Path(args.html).expanduser()
        sweep.write_page(out, page)
        info(f"wrote {page}")
    if args.json:
        loaded = results.read_rows(out / results.RESULTS)
        meta = results.read_json(out / results.METADATA) or {}
        print_json({"out_dir": str(out), **cells.best_json(loaded.rows, meta.get("slo")),
                    "frontier": results.pareto_frontier(loaded.rows), "damaged": loaded.damaged,
                    "rows": loaded.rows, "metadata": meta})
    else:
        sys.stdout.write(text)
    if args.apply:
        apply_best(out, args)
    return 0


def apply_best(out: Path, args: argparse.Namespace) -> None:
    """Start the user's fleet (default state dir, the settings' ports) with the sweep's best shape
    (sweep.best_shape: the rule and the full fleet settings the TUI's apply-best uses too)."""
    from llama_tui.core import fleet, sweep
    from llama_tui.core.errors import UserError

    best = sweep.best_shape(out)
    settings = best.settings(preset=getattr(args, "preset", None))
    if fleet.load_state() is not None:
        raise UserError("a fleet is already running", "stop it with `llama-tui fleet down`, then apply again with "
                        f"`llama-tui sweep report {out} --apply`")
    row = best.row
    info(f"starting the best shape: {row['instances']} instances x {row['parallel']} slots, "
         f"{row['threads']} threads")
    snap = fleet.up(fleet.FleetSpec.from_settings(settings))
    nginx = snap.nginx
    info(f"fleet up: {len(snap.instances)} instances" + (f", NGINX on port {nginx.port}" if nginx else ""))
