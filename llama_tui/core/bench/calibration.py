"""The client's own ceiling: how many events per CPU-second one load worker can take, measured against
the loopback SSE source and cached per machine (a step whose worker runs near it is marked invalid)."""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from llama_tui import __version__
from llama_tui.core import hardware, paths
from llama_tui.core.bench.definitions import iso_now
from llama_tui.core.bench.runner import run_plan
from llama_tui.core.bench.source import Source
from llama_tui.core.bench.step import StepPlan
from llama_tui.core.bench.target import Target
from llama_tui.core.bench.workload import RequestShape

if TYPE_CHECKING:
    from llama_tui.core.bench.config import BenchConfig

CALIBRATION_FILE = "bench-calibration.json"
monotonic = time.monotonic


def measure_ceiling(url: str, duration: float = 3.0, concurrency: int = 32, n_predict: int = 256,
                    warmup: float = 0.5) -> dict[str, Any]:
    """Drive a streaming source flat out from this process; the events per CPU-second of the event-loop
    thread is the client's ceiling (what one worker can parse if it had a whole core)."""
    shape = RequestShape(n_predict=n_predict, nonce=False, prompt="calibrate")
    now = monotonic()
    plan = StepPlan("closed", now + 0.05, now + 0.05 + warmup, now + 0.05 + warmup + duration, concurrency=concurrency)
    part = run_plan([Target.parse(url)], shape, plan)
    events = sum(part.worker_events)
    cpu = sum(part.worker_cpu_s)
    window = part.window_s or duration
    events_s = events / window
    ceiling = events / cpu if cpu > 0 else None
    return {
        "events_s": round(events_s, 1),
        "tokens_s": round(part.output_tokens / window, 1),
        "client_cpu_percent": round(100.0 * cpu / window, 1),
        "ceiling_events_s_per_worker": round(ceiling, 1) if ceiling else None,
        "cpu_percent_per_1k_tok_s": round(100.0 * 1000.0 / ceiling, 2) if ceiling else None,
        "events_per_read": round(events / part.window_reads, 2) if part.window_reads else None,
        "loop_lag_p99_ms": part.loop_lag.summary(1000.0)["p99"],
        "errors": part.errors,
        "requests_ok": part.requests_ok,
        "concurrency": concurrency,
        "n_predict": n_predict,
        "duration_s": round(window, 3),
    }


def _fingerprint() -> dict[str, Any]:
    return {"version": __version__, "python": platform.python_version(), "cpu": hardware.cpu_model(),
            "host": platform.node(), "cores": hardware.logical_cores()}


def calibration_path() -> Path:
    return paths.cache_dir() / CALIBRATION_FILE


def calibrate(duration: float = 3.0, concurrency: int = 64, interval_s: float = 0.004, save: bool = True) -> dict:
    """Measure this machine's client ceiling against the loopback SSE source (a child process that writes
    one small event per token per stream every `interval_s`, like llama-server's decode steps)."""
    with Source(interval_s) as src:
        result = measure_ceiling(src.url, duration=duration, concurrency=concurrency, n_predict=256)
    result.update({"source_interval_ms": interval_s * 1000, "measured_at": iso_now(), **_fingerprint()})
    if save and result.get("ceiling_events_s_per_worker"):
        paths.write_private(calibration_path(), orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return result


def load_calibration() -> dict | None:
    try:
        data = orjson.loads(calibration_path().read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    fp = _fingerprint()
    if not isinstance(data, dict) or any(data.get(k) != v for k, v in fp.items()):
        return None
    return data


def client_ceiling(config: BenchConfig) -> tuple[float | None, str]:
    """(events/s one worker can take, where that figure comes from)."""
    if config.ceiling_events_s:
        return float(config.ceiling_events_s), "config"
    cal = load_calibration()
    if cal is None:
        try:
            cal = calibrate(duration=1.5)
        except (OSError, RuntimeError):
            return None, "unavailable"
        return cal.get("ceiling_events_s_per_worker"), "calibrated now"
    return cal.get("ceiling_events_s_per_worker"), str(calibration_path())
