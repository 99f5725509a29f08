#!/usr/bin/env python3
"""Our load generator's per-process ceiling vs a minimal aiohttp client, same source, same run.

The source is llama-tui's loopback SSE source (a child process): every `--interval` it writes each
open stream's next native /completion event as its own small write, the way llama-server sends one
event per decode step. Both clients run `--concurrency` streams of `--n-predict` tokens against it,
alternately, `--rounds` times each (drift hits both alike), on one event loop in this process.

The ceiling is events per CPU-second of the client's event-loop thread (what one worker can take with
a whole core); the ratio is ours / aiohttp. Also printed: CPU per 1,000 tok/s, events per read (1.0:
the client keeps up, one small read per event), and what a fresh connection per request costs
(requests of 1 token vs 256 tokens).

aiohttp is NOT a llama-tui dependency. Install it into the venv for this script only:

    .venv/bin/pip install aiohttp
    .venv/bin/python benchmarks/client_ceiling.py --duration 5 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import orjson  # noqa: E402

from llama_tui.core import bench  # noqa: E402


async def _aiohttp_run(aiohttp, url: str, concurrency: int, n_predict: int, warmup: float, duration: float) -> dict:
    """A minimal aiohttp streaming client: post, read lines, parse each data line, count token deltas."""
    counters = {"events": 0, "tokens": 0, "requests": 0, "errors": 0}
    t_start = time.monotonic()
    t_window, t_end = t_start + warmup, t_start + warmup + duration
    window: dict[str, float] = {}
    body = {"prompt": "calibrate", "n_predict": n_predict, "stream": True}

    async def stream(session) -> None:
        while time.monotonic() < t_end:
            try:
                async with session.post(f"{url}/completion", json=body) as resp:
                    seen = 0
                    async for line in resp.content:
                        if not line.startswith(b"data: "):
                            continue
                        ev = orjson.loads(line[6:])
                        tp = ev.get("tokens_predicted", seen)
                        if tp > seen:
                            counters["tokens"] += tp - seen
                            counters["events"] += 1
                            seen = tp
                        if ev.get("stop"):
                            break
                counters["requests"] += 1
            except aiohttp.ClientError:
                counters["errors"] += 1

    async def clock() -> None:
        await asyncio.sleep(max(0.0, t_window - time.monotonic()))
        window["cpu0"], window["ev0"] = time.thread_time(), counters["events"]
        await asyncio.sleep(max(0.0, t_end - time.monotonic()))
        window["cpu"], window["ev"] = time.thread_time() - window["cpu0"], counters["events"] - window["ev0"]

    # Fresh connection per request, like ours (the source closes after each stream anyway).
    conn = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(clock(), *(stream(session) for _ in range(concurrency)))
    events, cpu = window["ev"], window["cpu"]
    return {"events_s": events / duration, "client_cpu_percent": 100 * cpu / duration,
            "ceiling_events_s_per_worker": events / cpu if cpu > 0 else None, "errors": counters["errors"]}


def ours(url: str, args: argparse.Namespace, n_predict: int | None = None, concurrency: int | None = None) -> dict:
    return bench.measure_ceiling(url, duration=args.duration, concurrency=concurrency or args.concurrency,
                                 n_predict=n_predict or args.n_predict, warmup=args.warmup)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=4.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--concurrency", type=int, default=64, help="concurrent streams")
    ap.add_argument("--n-predict", dest="n_predict", type=int, default=256)
    ap.add_argument("--interval", type=float, default=0.004, help="seconds between a stream's events at the source")
    ap.add_argument("--rounds", type=int, default=2, help="alternating runs of each client")
    args = ap.parse_args()
    try:
        import aiohttp
    except ImportError:
        aiohttp = None
        print("aiohttp is not installed (it is not a llama-tui dependency): install it into the venv for this "
              "script with `.venv/bin/pip install aiohttp`; measuring our client only", file=sys.stderr)

    ours_runs, aio_runs = [], []
    with bench.Source(args.interval) as src:
        print(f"source: {src.url}, one event per stream every {args.interval * 1000:g} ms, "
              f"{args.concurrency} streams x {args.n_predict} tokens, {args.duration:g} s per run")
        for r in range(args.rounds):
            o = ours(src.url, args)
            ours_runs.append(o)
            print(f"round {r + 1} llama-tui: {o['ceiling_events_s_per_worker']:>9,.0f} events/CPU-s  "
                  f"({o['events_s']:,.0f} events/s at {o['client_cpu_percent']:.0f}% CPU, "
                  f"{o['events_per_read']} events/read, {o['errors']} errors)")
            if aiohttp is not None:
                a = asyncio.run(_aiohttp_run(aiohttp, src.url, args.concurrency, args.n_predict, args.warmup,
                                             args.duration))
                aio_runs.append(a)
                print(f"round {r + 1} aiohttp:   {a['ceiling_events_s_per_worker']:>9,.0f} events/CPU-s  "
                      f"({a['events_s']:,.0f} events/s at {a['client_cpu_percent']:.0f}% CPU, {a['errors']} errors)")
        # What a fresh connection per request costs: 1-token requests vs long ones, CPU per request.
        short = ours(src.url, args, n_predict=1, concurrency=16)
    ceiling = statistics.median(o["ceiling_events_s_per_worker"] for o in ours_runs)
    per_event_us = 1e6 / ceiling
    # a 1-token request is 1 token event (+ the stop event, parsed but not a token): CPU per request
    req_s = short["requests_ok"] / short["duration_s"]
    cpu_per_req_us = 1e6 * (short["client_cpu_percent"] / 100) / req_s if req_s else float("nan")
    print()
    print(f"llama-tui ceiling: {ceiling:,.0f} events/s per worker (median of {len(ours_runs)}), "
          f"CPU per 1,000 tok/s: {100 * 1000 / ceiling:.2f}% of one core ({per_event_us:.1f} us per event)")
    print(f"fresh connection per request: {cpu_per_req_us:.0f} us of client CPU per 1-token request "
          f"(connect + request + response head + 2 events; {req_s:,.0f} requests/s at "
          f"{short['client_cpu_percent']:.0f}% CPU)")
    if aio_runs:
        aio = statistics.median(a["ceiling_events_s_per_worker"] for a in aio_runs)
        print(f"aiohttp ceiling:   {aio:,.0f} events/s per worker (median of {len(aio_runs)})")
        print(f"ratio llama-tui / aiohttp: {ceiling / aio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
