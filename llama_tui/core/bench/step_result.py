"""One step's result: the dict every output carries (JSON, CSV, the sweep's rows, the TUI's verdicts),
assembled from the merged `StepPartial`, the servers' counter reads and the verdicts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llama_tui.core.bench.steady import window_verdict
from llama_tui.core.bench.step import StepPartial
from llama_tui.core.bench.verdicts import client_bottleneck, latency_note

if TYPE_CHECKING:
    from llama_tui.core.bench.config import BenchConfig
    from llama_tui.core.bench.servers import CounterReader

QUANTILE_KEYS = ("p50", "p95", "p99", "mean")
LATENCIES = ("ttft", "itl", "tpot", "e2e")


def _r(v: float | None, digits: int = 1) -> float | None:
    return round(v, digits) if v is not None else None


def step_result(config: BenchConfig, part: StepPartial, *, mode: str, concurrency: int | None, rate: float | None,
                n_workers: int, index: int, started_at: str, servers: tuple[str, ...], ceiling: float | None,
                reader: CounterReader | None, pre: dict | None, post: dict | None,
                warmup: dict[str, Any] | None = None) -> dict[str, Any]:
    """The step's dict. `reader` read the servers' decoded tokens at the window's edges; `pre` and `post`
    at the whole step's; `warmup` is the warm-up's record (core/bench/steady.py)."""
    c = config
    w = part.window_s
    stream = c.stream
    step: dict[str, Any] = {
        "step": index, "mode": mode, "concurrency": concurrency if mode == "closed" else None,
        "rate": rate if mode == "open" else None, "started_at": started_at,
        "duration_s": round(w, 3), "warmup_s": c.warmup, "warmup_note": None, "window_note": None,
        **{k: v for k, v in (warmup or {}).items() if v is not None},
        "api": c.api, "stream": stream, "n_predict": c.n_predict, "n_predict_max": c.n_predict_max,
        "workload": c.workload,
        "requests_ok": part.requests_ok, "errors": part.errors, "errors_by_class": dict(part.errors_by_class),
        "error_examples": dict(part.error_examples), "errors_outside_window": part.errors_outside_window,
        "reconnects": part.reconnects, "requests_cancelled": part.cancelled,
        "requests_started": part.requests_started,
        "output_tokens": int(round(part.output_tokens)),
        "output_tok_s": _r(part.output_tokens / w if w > 0 else None),
        "prompt_tokens": part.prompt_tokens, "prompt_tok_s": _r(part.prompt_tokens / w if w > 0 else None),
        "cache_n": part.cache_n,
        "cache_n_mean": _r(part.cache_n / part.cache_reports if part.cache_reports else None),
        "cache_hit_pct": _r(100.0 * part.cache_n / (part.cache_n + part.prompt_tokens)
                            if part.cache_n + part.prompt_tokens > 0 else None),
    }
    for name in LATENCIES:
        if stream or name == "e2e":
            summary = getattr(part, name).summary(1000.0)
        else:  # no stream, no first token: TTFT, ITL and TPOT are unknown
            summary = {k: None for k in QUANTILE_KEYS}
        step[f"{name}_ms"] = summary
        for k in QUANTILE_KEYS:
            step[f"{name}_{k}_ms"] = summary[k]
    step["samples_n"] = {name: len(getattr(part, name)) for name in LATENCIES}
    # The servers' own count over the same window: tokens decoded between its edges.
    server_tokens = server_rate = server_window = basis = consistent = counter_rate = None
    start, end = (reader.start_read, reader.end_read) if reader is not None else (None, None)
    if start and end:
        server_tokens = end["tokens"] - start["tokens"]
        server_window = end["t"] - start["t"]
        server_rate = server_tokens / server_window if server_window > 0 else None
        counter_rate = (end["counter"] - start["counter"]) / server_window if server_window > 0 else None
        basis = "decoded" if start["basis"] == end["basis"] == "decoded" else "completions"
        consistent = bool(start["consistent"] and end["consistent"])
    step["server_output_tokens"] = int(server_tokens) if server_tokens is not None else None
    step["server_output_tok_s"] = _r(server_rate)
    step["server_window_s"] = _r(server_window, 3)
    step["server_counter_tok_s"] = _r(counter_rate)  # the completion counter alone: jumps with completions
    step["server_rate_basis"] = basis
    step["server_reads_consistent"] = consistent
    client_rate = part.output_tokens / w if w > 0 else None
    step["server_rate_agreement_pct"] = _r(100.0 * (server_rate - client_rate) / client_rate
                                           if server_rate is not None and client_rate else None, 2)
    step["servers"] = list(servers)
    step["tokens_received"] = part.tokens_received
    step["server_tokens_step"] = int(post["tokens"] - pre["tokens"]) if pre and post else None
    agree = None
    if pre and post and post["tokens"] - pre["tokens"] > 0:
        agree = 100.0 * (part.tokens_received - (post["tokens"] - pre["tokens"])) / (post["tokens"] - pre["tokens"])
    step["token_agreement_pct"] = _r(agree, 2)
    step["per_upstream"] = {
        addr: {"requests_ok": e["requests_ok"], "errors": e["errors"],
               "output_tokens": int(round(e["output_tokens"])),
               "output_tok_s": _r(e["output_tokens"] / w if w > 0 else None)}
        for addr, e in sorted(part.per_upstream.items())}
    # Was the client the bottleneck?
    cpu = part.worker_cpu_s
    events = part.worker_events
    step["workers"] = n_workers
    step["client_cpu_percent"] = _r(100.0 * sum(cpu) / w if w > 0 else None)
    step["client_cpu_max_worker_percent"] = _r(100.0 * max(cpu) / w if w > 0 and cpu else None)
    step["client_events_s"] = _r(sum(events) / w if w > 0 else None)
    per_worker = max(events) / w if w > 0 and events else None
    step["client_events_s_per_worker"] = _r(per_worker)
    step["ceiling_events_s_per_worker"] = _r(ceiling)
    lag = part.loop_lag.summary(1000.0)
    step["loop_lag_p99_ms"] = lag["p99"]
    step["loop_lag_mean_ms"] = lag["mean"]
    max_cpu = max(cpu) / w if w > 0 and cpu else None
    reasons = client_bottleneck(per_worker, max_cpu, lag["mean"], step["e2e_ms"]["mean"], ceiling)
    short = window_verdict(w, step["e2e_p50_ms"], part.requests_ok, part.errors)
    if short:
        reasons.append(short)
    if step.get("warmup_note"):
        reasons.append(step["warmup_note"])
    step["valid"] = not reasons
    step["invalid_reason"] = "; ".join(reasons) or None
    note = latency_note(lag["p99"])
    step["latency_valid"] = note is None
    step["latency_note"] = note
    return step
