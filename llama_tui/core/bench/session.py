"""A benchmark session: checks the targets, builds the prompt, finds the servers and the client ceiling
once, then runs steps (in this process's event loop, or in load-worker processes that each take a share)
and turns each into a step result.

    run(config, on_sample=None, stop=None, on_step=None) -> dict   metadata + one dict per step
    run_step(config, concurrency=None, rate=None, on_sample=None) -> dict   one step (the sweep's cell)

A step is: load starts, `warmup` seconds are thrown away, then a `duration`-second window is measured.
Closed loop (`concurrency`): that many streams, each sending its next request when the previous one
ends; at the window's end requests still in flight are cancelled, and only what they received inside
the window counts. Open loop (`rate`): Poisson arrivals at that rate; latency counts from the intended
arrival time, and requests sent inside the window are awaited (up to `drain`) after it closes.

Warm-up lasts at least `warmup` seconds and until the load is steady (core/bench/steady.py: in flight
at its target, a request lifetime passed); the window then opens for every worker at once. Every step
reads the tokens the instances behind the target have decoded (core/bench/servers.py) at the window's
start and end, with the load kept on until the end read is done, and reports whether the client itself
was the bottleneck and whether the window held enough request lifetimes (`valid`).
"""

from __future__ import annotations

import contextlib
import os
import platform
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from llama_tui import __version__
from llama_tui.core import hardware
from llama_tui.core.bench.calibration import client_ceiling
from llama_tui.core.bench.config import BenchConfig, planned_steps
from llama_tui.core.bench.definitions import DEFINITIONS, iso_now
from llama_tui.core.bench.live import LiveSamples, Sample
from llama_tui.core.bench.plans import auto_workers, lead_s, worker_plans
from llama_tui.core.bench.prompts import resolve_prompt, sized_text
from llama_tui.core.bench.runner import run_plan
from llama_tui.core.bench.servers import (CounterReader, check_targets, discover_servers, read_counters,
                                          server_probe)
from llama_tui.core.bench.steady import WARMUP_CAP_S, StepWindow, WarmupGate
from llama_tui.core.bench.step import LiveCounters
from llama_tui.core.bench.step_result import step_result
from llama_tui.core.bench.target import Target
from llama_tui.core.bench.traffic import agent_tag
from llama_tui.core.bench.verdicts import CEILING_FRACTION
from llama_tui.core.bench.workers import WorkerPool
from llama_tui.core.bench.workload import RequestShape

HOLD_S = 15.0  # at most this long after a window, the load waits for the servers' end read
from llama_tui.core.config import parse_int_list
from llama_tui.core.errors import UserError


class BenchSession:
    """Checks the targets, builds the prompt, finds the servers and the client ceiling once; then runs steps."""

    def __init__(self, config: BenchConfig, stop: threading.Event | None = None) -> None:
        self.config = config.validated()
        self.stop = stop
        self.t0 = time.monotonic()
        self.targets = [Target.parse(u) for u in self.config.target_urls]
        self.health = check_targets(self.config) if self.config.check else {}
        self.servers = discover_servers(self.config)
        if self.servers.targets_are_instances and self.servers.api_key:  # --url straight at instances
            self.config = replace(self.config, api_key=self.servers.api_key)
        self.shape, self.prompt_info, self.workload_info = build_shape(self.config)
        self._check_context()
        self.ceiling, self.ceiling_source = client_ceiling(self.config)
        c = self.config
        self.seed = c.seed if c.seed is not None else int.from_bytes(os.urandom(4), "little")
        self.pool: WorkerPool | None = None
        self.next_workers: int | None = None  # auto: raised after a step that ran a worker hot
        self.steps_done = 0
        self.tokens_received_total = 0
        self.server_tokens_total: float | None = 0.0

    def _check_context(self) -> None:
        """A workload whose requests cannot fit a slot's context is refused before any load."""
        c, shape = self.config, self.shape
        need = _request_tokens(c, self.prompt_info, self.workload_info)
        if need is None:
            return
        n_ctx = None
        with server_probe(self.servers.api_key or c.api_key) as pr:
            for u in self.servers.urls or tuple(t.url for t in self.targets):
                props = pr.props(u) or {}
                n_ctx = (props.get("default_generation_settings") or {}).get("n_ctx")
                if isinstance(n_ctx, int):
                    break
        if isinstance(n_ctx, int) and need > n_ctx:
            what = (f"{shape.turns} turns of about {need // max(1, shape.turns)} tokens each" if shape.workload
                    == "sessions" else "system prompt, user part and output")
            raise UserError(f"the workload needs up to {need} tokens per request ({what}), above a slot's context "
                            f"({n_ctx})", "lower --turns, --prefix-tokens, --prompt-tokens or --n-predict, or start "
                            "the fleet with a larger --ctx-per-slot")

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def __enter__(self) -> "BenchSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- metadata

    def metadata(self) -> dict[str, Any]:
        c = self.config
        props = None
        with server_probe(self.servers.api_key or c.api_key) as pr:
            for u in self.servers.urls + tuple(t.url for t in self.targets):
                props = pr.props(u)
                if props:
                    break
        st = self.servers.fleet
        fleet_meta = nginx_meta = None
        if st is not None:
            spec = dict(getattr(st, "spec", {}) or {})
            fleet_meta = {k: spec.get(k) for k in ("instances", "parallel", "ctx_per_slot", "threads", "gpu_layers",
                                                   "gpus", "policy", "max_conns", "model")}
            fleet_meta["state_dir"] = getattr(st, "state_dir", None)
            fleet_meta["instances_running"] = len(st.instance_urls())
            ng = getattr(st, "nginx", None)
            if ng is not None:
                nginx_meta = {"policy": getattr(ng, "policy", None), "port": getattr(ng, "port", None),
                              "config_path": getattr(ng, "config_path", None), "config_hash": None}
                with contextlib.suppress(OSError, TypeError, ImportError):
                    from llama_tui.core.fleet.frontdoor import config_hash

                    nginx_meta["config_hash"] = config_hash(Path(ng.config_path).read_text())
        gpus = []
        with contextlib.suppress(Exception):
            from llama_tui.core import gpu

            gpus = [{"index": g.index, "name": g.name, "memory_total_bytes": g.memory_total_bytes}
                    for g in gpu.nvml().devices()]
        total_mem, _ = hardware.memory()
        model = (props or {}).get("model_path") or (fleet_meta or {}).get("model")
        return {
            "tool": "llama-tui", "version": __version__, "date": iso_now(),
            "targets": [t.url for t in self.targets], "api": c.api,
            "streaming": "stream" if c.stream else "no-stream",
            "n_predict": c.n_predict, "n_predict_max": c.n_predict_max, "ignore_eos": c.ignore_eos,
            "cache_prompt": self.shape.sends_cache_prompt,
            "nonce": self.shape.nonce and not c.cache_prompt and c.workload in ("unique", "shared-prefix"),
            "prompt": self.prompt_info, "workload": self.workload_info,
            "duration_s": c.duration, "warmup_s": c.warmup, "timeout_s": c.timeout, "seed": self.seed,
            "workers": c.workers or "auto",
            "load_shape": ("rate" if c.rates else "ramp" if c.ramp else "concurrency"),
            "llama_server": {"build_info": (props or {}).get("build_info"), "total_slots": (props or {}).get("total_slots"),
                             "model_path": (props or {}).get("model_path")} if props else None,
            "model": model, "model_sliding_window": sliding_window(model), "fleet": fleet_meta, "nginx": nginx_meta,
            "servers": list(self.servers.urls), "servers_from": self.servers.source,
            "host": {"cpu": hardware.cpu_model(), "physical_cores": hardware.physical_cores(),
                     "logical_cores": hardware.logical_cores(), "memory_bytes": total_mem, "gpus": gpus,
                     "python": platform.python_version(), "platform": platform.platform()},
            "client_ceiling": {"events_s_per_worker": self.ceiling, "source": self.ceiling_source,
                               "invalid_above_fraction": CEILING_FRACTION},
            "definitions": DEFINITIONS,
        }

    # -- one step

    def _workers(self, mode: str, concurrency: int, rate: float) -> int:
        if self.config.workers:
            return self.config.workers
        w = auto_workers(mode, concurrency, rate, self.config.n_predict, self.ceiling)
        if self.next_workers:
            w = max(w, self.next_workers)
        return min(w, concurrency) if mode == "closed" else w

    def step(self, concurrency: int | None = None, rate: float | None = None, on_sample: Sample | None = None,
             index: int | None = None, steps_total: int | None = None) -> dict[str, Any]:
        c = self.config
        if concurrency is None and rate is None:
            if c.rates:
                rate = c.rates[0]
            else:
                concurrency = c.concurrency[0]
        mode = "open" if rate is not None else "closed"
        if mode == "closed" and (not isinstance(concurrency, int) or concurrency < 1):
            raise UserError(f"concurrency must be an integer >= 1, got {concurrency!r}", "correct --concurrency")
        if mode == "open" and not (rate and rate > 0):
            raise UserError(f"rate must be above 0, got {rate!r}", "correct --rate")
        index = self.steps_done if index is None else index
        n_workers = self._workers(mode, concurrency or 0, rate or 0.0)
        if n_workers > 1 and (self.pool is None or len(self.pool.procs) < n_workers):
            self.close()
            self.pool = WorkerPool(n_workers)
        started_at = iso_now()
        stopped = threading.Event()
        pr = server_probe(self.servers.api_key)
        pre = read_counters(self.servers.urls, pr) if self.servers.urls else None
        plans = worker_plans(mode, concurrency, rate, n_workers, warmup=c.warmup, duration=c.duration, drain=c.drain,
                             seed=self.seed, index=index, gate_s=WARMUP_CAP_S if c.warmup > 0 else None,
                             hold_s=HOLD_S if self.servers.urls else 0.0)
        t_start = plans[0].t_start
        live = LiveSamples(on_sample, self.t0, index, steps_total, concurrency, rate, t_start, t_start + c.warmup,
                           t_start + c.warmup + c.duration)
        live.opened = not plans[0].gated
        reader = CounterReader(self.servers.urls, stopped, self.servers.api_key) if self.servers.urls else None
        gate = WarmupGate(mode, concurrency or 0, t_start, c.warmup, c.duration, lead_s(n_workers), c.max_window)
        if not plans[0].gated:  # --warmup 0: the window opens with the load, no steady-state wait
            gate.window = (plans[0].t_window, plans[0].t_end)
            if reader is not None:
                reader.set_window(*gate.window)
        window = StepWindow(gate, live, reader)
        if reader is not None:
            reader.start()
        try:
            if n_workers == 1:
                runner_box: dict[str, Any] = {}

                def on_live(counters: LiveCounters) -> None:
                    opened = window.observe(counters)
                    runner = runner_box.get("runner")
                    if opened is not None and runner is not None:
                        runner.set_window(*opened)
                    live.emit(counters.t)
                    if self.stop is not None and self.stop.is_set() and runner is not None:
                        runner.request_stop()

                def ready(runner: Any) -> None:
                    runner_box["runner"] = runner
                    window.on_release(runner.release)

                part = run_plan(self.targets, self.shape, plans[0], on_live, runner_ready=ready)
            else:
                assert self.pool is not None
                part = self.pool.run(self.targets, self.shape, plans, window, self.stop)
        finally:
            stopped.set()
            if reader is not None:
                reader.join(timeout=30)
        time.sleep(0.1 if self.servers.urls else 0)  # let the servers release the cancelled slots
        post = read_counters(self.servers.urls, pr) if self.servers.urls else None
        pr.close()
        self.steps_done += 1
        step = step_result(c, part, mode=mode, concurrency=concurrency, rate=rate, n_workers=n_workers, index=index,
                           started_at=started_at, servers=self.servers.urls, ceiling=self.ceiling, reader=reader,
                           pre=pre, post=post, warmup=gate.fields())
        live.final(step)
        if not c.workers:
            per_worker = step.get("client_events_s_per_worker") or 0
            if self.ceiling and per_worker > 0.5 * self.ceiling:
                self.next_workers = min(max(1, hardware.logical_cores() // 2), n_workers * 2)
        return step


def sliding_window(model: str | None) -> int | None:
    """The model's attention window when it slides (Gemma 2/3 ...), from its GGUF header: llama-server then
    reuses a cached prompt only up to its checkpoints, unless started with --swa-full."""
    if not model:
        return None
    from llama_tui.core import gguf_header

    try:
        return gguf_header.read_header(Path(model)).arch_int("attention.sliding_window")
    except (OSError, gguf_header.GGUFHeaderError):
        return None


def build_shape(config: BenchConfig) -> tuple[RequestShape, dict[str, Any], dict[str, Any]]:
    """What every request of the benchmark sends: the prompt (sized with the server's tokenizer), the
    workload's shared texts and its draws; and the metadata's record of both."""
    c = config
    if c.workload == "dataset":
        from llama_tui.core.bench import datasets

        prompt, prompt_info = "", {"source": f"dataset {c.dataset}"}
        data_info: dict[str, Any] = {"dataset": datasets.load_cached(c.dataset or "").describe()}
    else:
        prompt, prompt_info = resolve_prompt(c)
        data_info = {}
    params = c.workload_params()
    run_tag = os.urandom(6).hex()
    prefix = ""
    if c.workload == "shared-prefix":
        prefix, sized = sized_text(c, params["prefix_tokens"], lead=agent_tag(run_tag, 0))
        data_info["prefix_tokens"] = params["prefix_tokens"]
        data_info["prefix_tokens_measured"] = sized["tokens"]
    shape = RequestShape(api=c.api, stream=c.stream, n_predict=c.n_predict, n_predict_max=c.n_predict_max,
                         prompt=prompt, nonce=not c.cache_prompt, cache_prompt=c.cache_prompt,
                         ignore_eos=c.ignore_eos, api_key=c.api_key, timeout_s=c.timeout, workload=c.workload,
                         prefix=prefix, groups=params.get("prefix_groups", 0), sessions=params.get("sessions", 0),
                         turns=params.get("turns", 0), dataset=c.dataset, run_tag=run_tag)
    return shape, prompt_info, {**shape.describe(), **data_info}


def _request_tokens(c: BenchConfig, prompt_info: dict[str, Any], workload_info: dict[str, Any]) -> int | None:
    """About the most tokens one request of the workload holds (prompt, history and output)."""
    if c.workload not in ("shared-prefix", "sessions"):
        return None
    user = prompt_info.get("tokens") or c.prompt_tokens
    out = c.n_predict_max or c.n_predict
    if c.workload == "shared-prefix":
        return int((workload_info.get("prefix_tokens_measured") or workload_info["prefix_tokens"]) + user + out + 8)
    return int(workload_info["turns"] * (user + out + 12))


def run_step(config: BenchConfig, concurrency: int | None = None, rate: float | None = None,
             on_sample: Sample | None = None, stop: threading.Event | None = None) -> dict[str, Any]:
    """One measured step (what the sweep runs per cell). Blocks; safe to call from plain synchronous code."""
    with BenchSession(config, stop) as session:
        return session.step(concurrency=concurrency, rate=rate, on_sample=on_sample, steps_total=1)


def run(config: BenchConfig, on_sample: Sample | None = None, stop: threading.Event | None = None,
        on_step: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every step of `config` (a concurrency list, a ramp, or rates). Returns {"metadata", "steps", ...}."""
    t0 = time.monotonic()
    with BenchSession(config, stop) as session:
        meta = session.metadata()
        steps: list[dict[str, Any]] = []
        stopped = False

        def do(concurrency: int | None, rate: float | None, total: int | None) -> dict[str, Any]:
            step = session.step(concurrency=concurrency, rate=rate, on_sample=on_sample, index=len(steps),
                                steps_total=total)
            steps.append(step)
            if on_step is not None:
                on_step(step)
            return step

        if config.ramp and not config.rates:
            c = parse_int_list(config.concurrency, "concurrency list")[0]
            prev = None
            while c <= config.max_concurrency:
                step = do(c, None, None)
                if stop is not None and stop.is_set():
                    stopped = True
                    break
                tok = step["output_tok_s"] or 0.0
                if prev is not None and tok < prev * (1 + config.ramp_gain):
                    break
                prev = tok if prev is None else max(prev, tok)
                c *= 2
        else:
            plan = planned_steps(config)
            for conc, rate in plan:
                if stop is not None and stop.is_set():
                    stopped = True
                    break
                do(conc, rate, len(plan))
            stopped = stopped or bool(stop is not None and stop.is_set())
        best = max(steps, key=lambda s: s.get("output_tok_s") or 0.0) if steps else None
    return {"metadata": meta, "steps": steps, "stopped": stopped, "wall_s": round(time.monotonic() - t0, 2),
            "best": {"step": best["step"], "concurrency": best["concurrency"], "rate": best["rate"],
                     "output_tok_s": best["output_tok_s"]} if best else None}
