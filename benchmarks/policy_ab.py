#!/usr/bin/env python3
"""Does routing by session or prompt prefix beat least_conn when the prompt cache matters?

One fleet (default: the real model, Gemma 3 270M Q4_K_M, 2 instances x 2 slots, one thread each,
`--swa-full` so its sliding-window cache can reuse a shared prefix), then for each workload the same
load and seed under each policy (`llama-tui bench --policies`, NGINX reloaded between them):
- `sessions`: more conversations than instances, each turn carrying its history (X-Session-Id);
- `shared-prefix`: more agents than instances, each with its own system prompt (X-Session-Id = agent).
Prints the policies side by side per workload (tok/s, TTFT p50, cache_n per request, cache hit %) and
whether `hash` (and `prefix`, when NGINX's Lua module is installed) beat `least_conn` on tok/s or TTFT
p50. Issue 14 asks to report what is measured, not to tune the workload until it wins.

    .venv/bin/python benchmarks/policy_ab.py                         # ~6-8 min on an idle 2-core box
    .venv/bin/python benchmarks/policy_ab.py --model tiny --duration 8 --n-predict 32
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gemma3-270m", help="a GGUF path, a fetched model's name, or tiny")
    ap.add_argument("--instances", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="threads per instance")
    ap.add_argument("--ctx-per-slot", dest="ctx_per_slot", type=int, default=2048)
    ap.add_argument("--concurrency", default="4")
    ap.add_argument("--n-predict", dest="n_predict", type=int, default=32)
    ap.add_argument("--prompt-tokens", dest="prompt_tokens", type=int, default=32)
    ap.add_argument("--sessions", type=int, default=8, help="conversations (more than instances)")
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--prefix-tokens", dest="prefix_tokens", type=int, default=512)
    ap.add_argument("--prefix-groups", dest="prefix_groups", type=int, default=6, help="agents (more than instances)")
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--policies", default=None, help="default: least_conn,hash, and prefix when it is available")
    ap.add_argument("--workloads", default="sessions,shared-prefix")
    ap.add_argument("--json", help="write both A/B results here (one JSON object)")
    args = ap.parse_args()

    import orjson

    from llama_tui.commands.bench import ab_table
    from llama_tui.core import bench, binaries, config, fleet, model
    from llama_tui.core.bench import policy_ab

    policies = args.policies or ("least_conn,hash" + (",prefix" if binaries.nginx_lua_modules() else ""))
    state = Path(tempfile.mkdtemp(prefix="llama-tui-policy-ab-"))
    os.environ["LLAMA_TUI_STATE_DIR"] = str(state)
    base = fleet.free_port_block(args.instances + 1)
    extra = () if args.model == "tiny" else ("--no-repack", "--swa-full")
    spec = fleet.FleetSpec(model=model.resolve_model(args.model), instances=args.instances, parallel=args.parallel,
                           ctx_per_slot=args.ctx_per_slot, threads=args.threads, base_port=base + 1,
                           nginx_port=base, extra_args=extra)
    print(f"fleet: {args.instances} x {args.parallel} slots, -t {args.threads}, {' '.join(extra) or 'no extra args'}, "
          f"model {spec.model.name}; policies {policies}; c={args.concurrency}, n_predict {args.n_predict}, "
          f"{args.duration:g} s windows, seed {args.seed}; load avg {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")
    results = {}
    try:
        fleet.up(spec, state_dir=state)
        url = fleet.load_state(state).nginx_url()
        for workload in args.workloads.split(","):
            options = ({"sessions": args.sessions, "turns": args.turns} if workload == "sessions" else
                       {"prefix_tokens": args.prefix_tokens, "prefix_groups": args.prefix_groups})
            cfg = bench.BenchConfig(url=url, concurrency=config.parse_int_list(args.concurrency, "--concurrency"),
                                    duration=args.duration, warmup=args.warmup, n_predict=args.n_predict,
                                    prompt_tokens=args.prompt_tokens, seed=args.seed, state_dir=str(state),
                                    workload=workload, **options)
            print(f"\n== workload {workload} {options} (load avg {os.getloadavg()[0]:.1f})")
            result = policy_ab.run_policies(cfg, policies.split(","),
                                            on_step=lambda s: print("  " + step_line(s), flush=True))
            results[workload] = result
            print(ab_table(result))
            print(verdict(result))
    finally:
        fleet.down(state_dir=state)
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 0


def step_line(s: dict) -> str:
    return (f"[{s['policy']}] c={s['concurrency']}: {s['output_tok_s'] or 0:.1f} tok/s, TTFT p50 "
            f"{s['ttft_p50_ms'] or 0:.0f} ms, cache_n mean {s['cache_n_mean'] or 0:.0f} "
            f"({s['cache_hit_pct'] or 0:.0f}% of prompt tokens), {s['requests_ok']} ok, {s['errors']} errors"
            + ("" if s["valid"] else f", invalid: {s['invalid_reason']}"))


def verdict(result: dict) -> str:
    """Per load step: did each policy beat least_conn on tok/s or TTFT p50, and by how much."""
    lines = []
    for block in result["comparison"]:
        base = block["policies"].get("least_conn")
        if not base:
            continue
        for p, fig in block["policies"].items():
            if p == "least_conn" or not fig:
                continue
            tok = pct(fig["output_tok_s"], base["output_tok_s"])
            ttft = pct(fig["ttft_p50_ms"], base["ttft_p50_ms"])
            won = (tok or 0) > 0 or (ttft or 0) < 0
            lines.append(f"{block['load']}: {p} vs least_conn: tok/s {fmt(tok)}, TTFT p50 {fmt(ttft)}, cache_n mean "
                         f"{fig['cache_n_mean'] or 0:.0f} vs {base['cache_n_mean'] or 0:.0f} -> "
                         f"{'beats' if won else 'does not beat'} least_conn")
    return "\n".join(lines)


def pct(a: float | None, b: float | None) -> float | None:
    return 100.0 * (a - b) / b if a is not None and b else None


def fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.1f}%"


if __name__ == "__main__":
    raise SystemExit(main())
