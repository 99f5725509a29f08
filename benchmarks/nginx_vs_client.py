#!/usr/bin/env python3
"""Aggregate tok/s through NGINX vs client-side round-robin straight to the instances.

Same fleet, same load, same run: one fleet (tiny model unless --model), then alternating measured
steps of the same closed-loop streaming load, A (through NGINX) and B (the client spreads requests
over the instances itself, round robin), `--rounds` times each, so drift hits both arms alike.
Prints every step, then the mean tok/s of each arm and the ratio NGINX / client-side (target >= 0.97).

The load comes from the bench engine (core/bench.run_step: native /completion streams, fresh
connection per request, tokens counted by the server's stream, client CPU and validity reported); if
it is not importable, from tests/support/frontdoor_load.py (one process). On a small machine the load
generator shares the cores with the fleet: its CPU is printed with every step.

    .venv/bin/python benchmarks/nginx_vs_client.py --instances 2 --parallel 4 --concurrency 16 --duration 10
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


def cpu_seconds(pids: list[int]) -> float:
    """CPU time used so far by `pids` and their children (NGINX's workers)."""
    from llama_tui.core.fleet.process_stats import tree_cpu_seconds

    return sum(tree_cpu_seconds(pid) or 0.0 for pid in pids)


def measure_bench(target: str | list[str], args: argparse.Namespace) -> dict:
    from llama_tui.core import bench

    urls = (target,) if isinstance(target, str) else tuple(target)
    cfg = bench.BenchConfig(urls=urls, concurrency=(args.concurrency,), duration=args.duration, warmup=args.warmup,
                            n_predict=args.n_predict, state_dir=args.state_dir, workers=args.workers)
    step = bench.run_step(cfg, concurrency=args.concurrency)
    return {"tok_s": step.get("output_tok_s") or 0.0, "ok": step.get("requests_ok"), "errors": step.get("errors"),
            "reconnects": step.get("reconnects"), "cpu": step.get("client_cpu_percent"),
            "server_tok_s": step.get("server_output_tok_s"), "valid": step.get("valid"),
            "why": step.get("invalid_reason")}


def measure_helper(target: str | list[str], args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(REPO))
    from tests.support.frontdoor_load import load

    from llama_tui.core.fleet import keys

    key = keys.read_internal_key(args.state_dir) if isinstance(target, list) else None  # straight at the instances
    headers = {"Authorization": f"Bearer {key}"} if key else None
    load(target, args.concurrency, duration=args.warmup, n_predict=args.n_predict, headers=headers)  # warm-up
    res = load(target, args.concurrency, duration=args.duration, n_predict=args.n_predict, headers=headers)
    return {"tok_s": res.tok_s, "ok": res.ok, "errors": res.failed, "reconnects": 0,
            "cpu": 100 * res.cpu_s / res.duration_s, "server_tok_s": None, "valid": None, "why": None}


def add_load_options(ap: argparse.ArgumentParser) -> None:
    """The closed-loop load of an A/B script's steps (what `measure_bench` reads)."""
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measured step")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3, help="steps per arm, alternating")
    ap.add_argument("--n-predict", dest="n_predict", type=int, default=128)
    ap.add_argument("--workers", type=int, default=None, help="bench worker processes (default: auto)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--instances", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="threads per instance")
    ap.add_argument("--policy", default="least_conn")
    add_load_options(ap)
    ap.add_argument("--engine", choices=("bench", "helper"), default="bench")
    args = ap.parse_args()

    from llama_tui.core import fleet, hardware, model

    measure = measure_bench
    if args.engine == "bench":
        try:
            from llama_tui.core import bench  # noqa: F401
        except ImportError:
            measure = measure_helper
            print("bench engine not importable: using tests/support/frontdoor_load.py")
    else:
        measure = measure_helper

    state = Path(tempfile.mkdtemp(prefix="llama-tui-nginx-vs-client-"))
    args.state_dir = str(state)
    os.environ["LLAMA_TUI_STATE_DIR"] = str(state)
    base = fleet.free_port_block(args.instances + 1)
    spec = fleet.FleetSpec(model=model.resolve_model(args.model), instances=args.instances,
                           parallel=args.parallel, ctx_per_slot=512 if args.model == "tiny" else 2048,
                           threads=args.threads, base_port=base + 1, nginx_port=base, policy=args.policy,
                           max_concurrency=max(64, args.concurrency))
    print(f"fleet: {args.instances} x {args.parallel} slots, -t {args.threads}, policy {args.policy}, model "
          f"{spec.model.name}; load: closed loop c={args.concurrency}, n_predict={args.n_predict}, streaming "
          f"/completion, {args.duration:.0f}s steps after {args.warmup:.0f}s warm-up, {args.rounds} rounds; "
          f"{hardware.logical_cores()} cores shared by fleet, NGINX and load generator")
    try:
        fleet.up(spec, state_dir=state)
        st = fleet.load_state(state)
        nginx_url, instance_urls = st.nginx_url(), st.instance_urls()
        servers = [i.pid for i in st.instances if i.pid]
        arms = {"nginx": [], "client": []}
        for r in range(args.rounds):
            order = ("nginx", "client") if r % 2 == 0 else ("client", "nginx")
            for arm in order:
                load1 = os.getloadavg()[0]
                n0, l0, t0 = cpu_seconds([st.nginx.pid]), cpu_seconds(servers), time.monotonic()
                m = measure(nginx_url if arm == "nginx" else instance_urls, args)
                wall = time.monotonic() - t0
                m["load"] = load1
                m["nginx_cpu"] = 100 * (cpu_seconds([st.nginx.pid]) - n0) / wall
                m["servers_cpu"] = 100 * (cpu_seconds(servers) - l0) / wall
                arms[arm].append(m)
                server = f", server {m['server_tok_s']:.0f}" if m.get("server_tok_s") else ""
                valid = "" if m.get("valid") in (None, True) else f"  INVALID: {m['why']}"
                print(f"  round {r + 1} {arm:>6}: {m['tok_s']:8.0f} tok/s{server}, ok {m['ok']}, errors "
                      f"{m['errors']}, reconnects {m['reconnects']}; CPU % of a core: client {m['cpu'] or 0:.0f}, "
                      f"nginx {m['nginx_cpu']:.0f}, llama-servers {m['servers_cpu']:.0f}; load avg {load1:.1f}{valid}")
                time.sleep(0.5)
    finally:
        fleet.down(state_dir=state)
    a = statistics.mean(m["tok_s"] for m in arms["nginx"])
    b = statistics.mean(m["tok_s"] for m in arms["client"])
    errors = sum((m["errors"] or 0) for ms in arms.values() for m in ms)
    ratio = a / b if b else float("nan")
    paired = [x["tok_s"] / y["tok_s"] for x, y in zip(arms["nginx"], arms["client"]) if y["tok_s"]]
    ng_cpu = statistics.mean(m["nginx_cpu"] for m in arms["nginx"])
    print(f"per-round ratios: {', '.join(f'{p:.3f}' for p in paired)} (median {statistics.median(paired):.3f}); "
          f"NGINX used {ng_cpu:.0f}% of a core while proxying, on {hardware.logical_cores()} cores")
    busy = max(os.getloadavg()[0], *(m["load"] for ms in arms.values() for m in ms))
    if busy > hardware.logical_cores() + 1:
        print(f"note: load average reached {busy:.1f} on {hardware.logical_cores()} cores: other processes competed "
              "for the CPU, so the per-round spread is mostly theirs; rerun on a quiet machine for a tight ratio")
    print(f"through NGINX ({args.policy}): {a:.0f} tok/s   client-side round robin: {b:.0f} tok/s")
    print(f"ratio NGINX / client-side: {ratio:.3f} (target >= 0.97: {'met' if ratio >= 0.97 else 'NOT met'}); "
          f"errors in all steps: {errors}")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
