"""What the Ray engine costs: the same fleet shape with the local engine and the ray engine on this
machine, in alternating rounds; streamed tok/s through NGINX and time to ready.

    sudo .venv/bin/python benchmarks/ray_overhead.py [--rounds 4] [--instances 2] [--parallel 2] [--duration 8]

Target (issue 17): ray tok/s at least 0.95x local. Ray runs as a one-node cluster on 127.0.0.1 inside
a network namespace that has only loopback (the script re-runs itself under `unshare -n`, as root),
so nothing leaves the machine. Each round starts a fleet, measures one closed-loop step with
`llama-tui bench` (streamed /completion, its own process) and brings the fleet down; the order of the
engines alternates from round to round so that drift on a busy machine falls on both, and the
ratio is the median of the rounds' own ray/local ratios.

Time to ready is the whole `fleet up` (for ray: the cluster check, the actors, llama-server, NGINX).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "integration")]

from llama_tui.core import hardware  # noqa: E402
from ray_support import LocalRayCluster, in_loopback_namespace  # noqa: E402

TARGET = 0.95


def cli(sd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LLAMA_TUI_STATE_DIR": str(sd)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "llama_tui", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise SystemExit(f"`llama-tui {' '.join(args)}` failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def one_round(engine: str, args: argparse.Namespace, address: str) -> tuple[float, float, int]:
    """(time to ready, output tok/s, errors) of one fleet of the engine."""
    import orjson

    with tempfile.TemporaryDirectory(prefix=f"llama-tui-{engine}-") as d:
        sd = Path(d) / "state"
        up = ["fleet", "up", "--engine", engine, "--model", args.model, "--instances", str(args.instances),
              "--parallel", str(args.parallel), "--threads", str(args.threads), "--ctx-per-slot", "512",
              "--detach", "--nginx-port", "18990", "--base-port", "18991"]
        if engine == "ray":
            up += ["--ray-address", address]
        t0 = time.monotonic()
        cli(sd, *up)
        ready = time.monotonic() - t0
        try:
            out = Path(d) / "bench.json"
            cli(sd, "bench", "--concurrency", str(args.concurrency), "--duration", str(args.duration), "--warmup",
                str(args.warmup), "--n-predict", str(args.n_predict), "--json", str(out))
            step = orjson.loads(out.read_bytes())["steps"][0]
            return ready, float(step["output_tok_s"]), int(step["errors"])
        finally:
            cli(sd, "fleet", "down")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=4, help="rounds (even: each engine goes first as often)")
    p.add_argument("--warmup-rounds", dest="warmup_rounds", type=int, default=1,
                   help="rounds run first and not counted (a new cluster's own processes are busy starting)")
    p.add_argument("--model", default="tiny")
    p.add_argument("--instances", type=int, default=2)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--n-predict", dest="n_predict", type=int, default=64)
    args = p.parse_args()
    if not in_loopback_namespace():
        if os.geteuid() != 0:
            raise SystemExit("ray_overhead.py runs Ray inside `unshare -n` (loopback only): run it as root")
        inner = f'ip link set lo up && exec "{sys.executable}" "{Path(__file__).resolve()}" "$@"'
        return subprocess.call(["unshare", "-n", "sh", "-c", inner, "sh", *sys.argv[1:]])
    cluster = LocalRayCluster(nodes=1, cpus=max(hardware.logical_cores(), args.instances * args.threads))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{args.instances} x parallel {args.parallel}, {args.threads} thread(s) each, streamed /completion, "
          f"c={args.concurrency}, n_predict {args.n_predict}, {args.duration:g}s windows; "
          f"{hardware.physical_cores()} physical cores, load average {load}", flush=True)
    results: dict[str, list[tuple[float, float, int]]] = {"local": [], "ray": []}
    try:
        cluster.start()
        print(f"one-node Ray cluster up in {cluster.started_in:.1f}s", flush=True)
        for r in range(-args.warmup_rounds, args.rounds):
            for engine in (("local", "ray") if r % 2 == 0 else ("ray", "local")):
                ready, tok_s, errors = one_round(engine, args, cluster.address)
                if r >= 0:
                    results[engine].append((ready, tok_s, errors))
                print(f"{'round ' + str(r + 1) if r >= 0 else 'warm-up'} {engine:>5}: ready in {ready:5.1f}s, "
                      f"{tok_s:8,.0f} tok/s, {errors} errors", flush=True)
    finally:
        cluster.stop()
    med = {e: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for e, v in results.items()}
    paired = [r[1] / loc[1] for r, loc in zip(results["ray"], results["local"])]  # same round: same drift
    ratio = statistics.median(paired)
    print(f"medians: local {med['local'][1]:,.0f} tok/s, ready {med['local'][0]:.1f}s; "
          f"ray {med['ray'][1]:,.0f} tok/s, ready {med['ray'][0]:.1f}s")
    print(f"tok/s ray/local, median of the rounds' ratios ({', '.join(f'{x:.2f}' for x in paired)}) = {ratio:.3f} "
          f"(target >= {TARGET}) -> {'PASS' if ratio >= TARGET else 'MISS'}; "
          f"errors: local {sum(x[2] for x in results['local'])}, ray {sum(x[2] for x in results['ray'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
