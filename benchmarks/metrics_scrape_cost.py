"""Does scraping the supervisor's Prometheus listener disturb the fleet? The same streamed bench through
NGINX with and without a 10 Hz scraper, in alternating rounds, on one demo-shaped fleet (tiny model).

    .venv/bin/python benchmarks/metrics_scrape_cost.py [--rounds 3] [--duration 8] [--concurrency 4]

Per round and mode it prints the bench's output tok/s (streamed, through NGINX), the scrapes made, and
the samples the supervisor took meanwhile (`llama_tui_metrics_samples_total`: each sample is one
/slots and one /metrics request per instance). Target: the sampler keeps its 2 s clock whatever the
scrape rate, and the tok/s ratio is within the noise. The machine's load counts: alternate rounds,
and read the medians. tests/unit/test_prometheus.py counts the requests an instance receives directly
(llama-server's task ids), with and without scrapes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llama_tui.core import fleet  # noqa: E402


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llama_tui", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)


def metric(metrics_url: str, name: str) -> float:
    """A metric of the supervisor's listener, summed over its labels."""
    text = httpx.get(metrics_url, timeout=5).text
    return sum(float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M))


class Scraper(threading.Thread):
    def __init__(self, url: str, hz: float) -> None:
        super().__init__(daemon=True)
        self.url, self.hz, self.n = url, hz, 0
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=5) as c:
            while not self.stop.is_set():
                t = time.monotonic()
                c.get(self.url).raise_for_status()
                self.n += 1
                self.stop.wait(max(0.0, 1 / self.hz - (time.monotonic() - t)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--hz", type=float, default=10.0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="llama-tui-metrics-cost-") as d:
        env = {**os.environ, "LLAMA_TUI_STATE_DIR": str(Path(d) / "state"), "PYTHONPATH": str(ROOT)}
        base = fleet.free_port_block(4)
        up = cli("fleet", "up", "--preset", "demo", "--base-port", str(base), "--nginx-port", str(base + 2),
                 "--metrics-listen", f"127.0.0.1:{base + 3}", "--detach", env=env)
        if up.returncode != 0:
            print(up.stderr, file=sys.stderr)
            return 1
        try:
            status = json.loads(cli("fleet", "status", "--json", env=env).stdout)
            url = status["metrics_url"]
            rows: dict[str, list[float]] = {"quiet": [], "scraped": []}
            rates: dict[str, list[float]] = {"quiet": [], "scraped": []}
            for r in range(args.rounds):
                for mode in (("quiet", "scraped") if r % 2 == 0 else ("scraped", "quiet")):
                    scraper = Scraper(status["metrics_url"], args.hz) if mode == "scraped" else None
                    if scraper:
                        scraper.start()
                    out = Path(d) / f"bench-{r}-{mode}.json"
                    s0, w0 = metric(url, "llama_tui_metrics_samples_total"), time.monotonic()
                    b = cli("bench", "--url", status["nginx_url"], "--concurrency", str(args.concurrency),
                            "--duration", str(args.duration), "--warmup", "2", "--n-predict", "64",
                            "--json", str(out), env=env)
                    if scraper:
                        scraper.stop.set()
                        scraper.join()
                    s1, wall = metric(url, "llama_tui_metrics_samples_total"), time.monotonic() - w0
                    if b.returncode != 0:
                        print(b.stderr, file=sys.stderr)
                        return 1
                    step = json.loads(out.read_text())["steps"][0]
                    tok = step["output_tok_s"]
                    rows[mode].append(tok)
                    rates[mode].append((s1 - s0) / wall)
                    print(f"round {r} {mode:<8} {tok:8.0f} tok/s  errors {step.get('errors', 0)}  "
                          f"scrapes {scraper.n if scraper else 0:4d}  samples {s1 - s0:3.0f} in {wall:.1f}s "
                          f"({(s1 - s0) / wall:.2f}/s)", flush=True)
            ratio = statistics.median(rows["scraped"]) / statistics.median(rows["quiet"])
            print(f"median tok/s: quiet {statistics.median(rows['quiet']):.0f}, scraped at {args.hz:g} Hz "
                  f"{statistics.median(rows['scraped']):.0f} (ratio {ratio:.3f}); the supervisor's samples "
                  f"{statistics.median(rates['quiet']):.2f}/s quiet, {statistics.median(rates['scraped']):.2f}/s scraped")
        finally:
            cli("fleet", "down", env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
