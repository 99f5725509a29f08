"""Streaming soak through NGINX while a random instance is SIGKILLed every minute.

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--instances 4] [--parallel 2] [--concurrency 16]

Target (issue 8): zero unexplained failures. Each minute is one bench-engine step (closed loop,
streaming /completion through the fleet's NGINX). At a random moment inside the minute one instance
is SIGKILLed. A failure is *explained* when it is a truncated stream on the killed instance in that
minute (it was in flight there when the kill came); anything else (another backend, another error
class, a minute without a kill) is *unexplained*. Recovery time is kill -> the supervisor reports the
instance ready again on its port and back in NGINX's upstream.

Prints requests, failures, explained failures, unexplained failures, recovery time p50/p95/max.
Exit status 1 when a failure is unexplained or an instance did not recover.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llama_tui.core import bench, fleet, hardware, model  # noqa: E402
from llama_tui.core.bench import BenchConfig  # noqa: E402


def _instance(sd: Path, index: int):
    st = fleet.load_state(sd)
    return next((i for i in st.instances if i.index == index), None) if st else None


def _watch_recovery(sd: Path, index: int, old_pid: int, killed_at: float, out: list[float], timeout: float) -> None:
    deadline = killed_at + timeout
    while time.monotonic() < deadline:
        inst = _instance(sd, index)
        if inst and inst.pid != old_pid and inst.state == "ready" and inst.in_upstream:
            out.append(time.monotonic() - killed_at)
            return
        time.sleep(0.05)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--minutes", type=int, default=10, help="soak length; one kill per minute (default 10)")
    p.add_argument("--minute", type=float, default=60.0, help="seconds per round (default 60)")
    p.add_argument("--instances", type=int, default=4)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--n-predict", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="threads per instance (default 1)")
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args()
    # SIGTERM (e.g. `timeout`, `kill`) ends the soak like Ctrl-C: the finally below stops its fleet.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rng = random.Random(args.seed)
    model_path = model.resolve_model(args.model)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"soak: {args.minutes} x {args.minute:.0f} s, {args.instances} instances x {args.parallel} slots of "
          f"{model_path.name}, concurrency {args.concurrency}, n_predict {args.n_predict}, "
          f"{hardware.physical_cores()} cores (load average {load})", flush=True)

    totals = {"requests": 0, "failures": 0, "explained": 0, "unexplained": 0, "tokens": 0}
    recoveries: list[float] = []
    kills = 0
    with tempfile.TemporaryDirectory(prefix="llama-tui-soak-") as d:
        sd = Path(d)
        base = fleet.free_port_block(args.instances + 1)
        spec = fleet.FleetSpec(model=model_path, instances=args.instances, parallel=args.parallel,
                               ctx_per_slot=max(512, args.n_predict + 64), threads=args.threads, base_port=base,
                               nginx_port=base + args.instances, ready_timeout=120, policy="least_conn")
        try:
            fleet.up(spec, state_dir=sd)
            nginx = fleet.load_state(sd).nginx_url()
            config = BenchConfig(url=nginx, concurrency=(args.concurrency,), duration=args.minute, warmup=0.0,
                                 n_predict=args.n_predict, prompt_tokens=16, workers=1, timeout=60,
                                 state_dir=str(sd))
            for minute in range(1, args.minutes + 1):
                index = rng.randrange(args.instances)
                victim = _instance(sd, index)
                kill_after = rng.uniform(0.15, 0.6) * args.minute
                killed: dict[str, float] = {}

                def kill(victim=victim, index=index) -> None:
                    os.kill(victim.pid, signal.SIGKILL)
                    killed["at"] = time.monotonic()
                    threading.Thread(target=_watch_recovery, daemon=True,
                                     args=(sd, index, victim.pid, killed["at"], recoveries, 45.0)).start()

                timer = threading.Timer(kill_after, kill)
                timer.start()
                step = bench.run_step(config)
                timer.cancel()
                addr = f"127.0.0.1:{victim.port}"
                up = step["per_upstream"]
                explained = 0
                if "at" in killed:
                    kills += 1
                    explained = min(up.get(addr, {}).get("errors", 0), step["errors_by_class"].get("truncated", 0))
                unexplained = step["errors"] - explained
                totals["requests"] += step["requests_ok"] + step["errors"]
                totals["failures"] += step["errors"]
                totals["explained"] += explained
                totals["unexplained"] += unexplained
                totals["tokens"] += step["output_tokens"]
                print(f"minute {minute:2d}: killed instance {index} ({addr}) at {kill_after:4.1f}s; "
                      f"{step['requests_ok'] + step['errors']} requests, {step['errors']} failed "
                      f"({explained} explained), {step['output_tok_s']:.0f} tok/s, errors {step['errors_by_class']}",
                      flush=True)
                # let the recovery watcher finish before the next kill
                deadline = time.monotonic() + 45
                while len(recoveries) < kills and time.monotonic() < deadline:
                    time.sleep(0.1)
        finally:
            fleet.down(sd, timeout=10)

    recovered = len(recoveries)
    print()
    print(f"requests               {totals['requests']}")
    print(f"failures               {totals['failures']}")
    print(f"  explained by a kill  {totals['explained']}  (truncated streams in flight on the killed instance)")
    print(f"  unexplained          {totals['unexplained']}")
    print(f"kills                  {kills}, recovered {recovered}")
    if recoveries:
        qs = statistics.quantiles(recoveries, n=20, method="inclusive") if len(recoveries) > 1 else recoveries * 19
        print(f"recovery time          p50 {statistics.median(recoveries):.2f} s, p95 {qs[18]:.2f} s, "
              f"max {max(recoveries):.2f} s  (kill -> ready and back in the NGINX upstream)")
    ok = totals["unexplained"] == 0 and recovered == kills
    print(f"target: zero unexplained failures -> {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
