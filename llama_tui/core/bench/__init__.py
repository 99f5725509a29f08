"""The benchmark engine: steps of streaming load, merged exactly, checked against the servers' counters.

    run(config, on_sample=None, stop=None, on_step=None) -> dict   metadata + one dict per step
    run_step(config, concurrency=None, rate=None, on_sample=None) -> dict   one step (the sweep's cell)
    spawn(config) -> BenchProcess                         the same in a child process (the TUI)
    calibrate(duration) -> dict                           the client's own ceiling on a loopback source
    write_outputs(result, json_path, csv_path)            the JSON and CSV files

The modules, one job each:
    config       BenchConfig, parse_rates, planned_steps        what a benchmark is asked to do
    target       Target                                         where the load goes
    workload     RequestShape, parse_workload, parse_n_predict  what each request sends; the workloads
    prompts      build_prompt, resolve_prompt, sized_text       prompt text, sized with the server's tokenizer
    traffic      make_traffic                                   each request's body, workload by workload
    datasets     load (datasets.load)                           --workload dataset:FILE (JSONL prompts/chats)
    client       Exchange                                       the streaming HTTP/SSE exchange (hot path)
    tally        Tally                                          what a step counted, inside its window
    step         StepPlan, LiveCounters, StepPartial            a step's records (cross the worker pipes)
    runner       StepRunner, run_plan                           one worker's share of a step on an event loop
    workers      WorkerPool, worker entry                       load-worker processes
    plans        auto_workers, worker_plans                     how a step is shared among workers
    source       Source, source entry                           the loopback SSE source
    calibration  calibrate, client_ceiling                      the client's own ceiling
    servers      discover_servers, read_counters                the llama-servers behind the target, their
                                                                decoded tokens (counter + busy slots)
    steady       WarmupGate, StepWindow, window_verdict         warm-up until steady; window long enough
    live         LiveSamples                                    live samples while a step runs
    verdicts     client_bottleneck, latency_note                valid / latency_valid
    step_result  step_result                                    one step's dict
    session      BenchSession, run, run_step                    a benchmark, step after step
    outputs      write_outputs, to_csv                          JSON and CSV files
    child        spawn, BenchProcess, child entry               a benchmark in a child process (the TUI)
    definitions  DEFINITIONS                                    what every figure means

The names below are imported on first use: the worker and source processes import this package too,
and must start with only the load generator loaded (a worker starts inside a step's 0.4 s lead).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BenchConfig": "config", "parse_rates": "config", "planned_steps": "config", "workload_options": "config",
    "WORKLOAD_OPTIONS": "config",
    "Target": "target",
    "RequestShape": "workload", "parse_workload": "workload", "parse_n_predict": "workload",
    "WORKLOADS": "workload",
    "build_prompt": "prompts", "resolve_prompt": "prompts", "tokenize_count": "prompts", "sized_text": "prompts",
    "make_traffic": "traffic",
    "StepPlan": "step", "LiveCounters": "step", "StepPartial": "step",
    "StepRunner": "runner", "run_plan": "runner",
    "Source": "source",
    "calibrate": "calibration", "calibration_path": "calibration", "load_calibration": "calibration",
    "client_ceiling": "calibration", "measure_ceiling": "calibration",
    "Servers": "servers", "check_targets": "servers", "discover_servers": "servers", "fleet_state": "servers",
    "read_counters": "servers",
    "CEILING_FRACTION": "verdicts", "LOOP_LAG_LIMIT_MS": "verdicts", "client_bottleneck": "verdicts",
    "latency_note": "verdicts",
    "LATENCIES": "step_result", "QUANTILE_KEYS": "step_result",
    "BenchSession": "session", "run": "session", "run_step": "session", "build_shape": "session",
    "CSV_FIELDS": "outputs", "to_csv": "outputs", "write_outputs": "outputs", "default_result_path": "outputs",
    "BenchProcess": "child", "spawn": "child",
    "DEFINITIONS": "definitions",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

