"""Policy A/B: the same benchmark (workload, seed, steps) against one fleet under each balancing policy in
turn, NGINX reloaded between them (`fleet.set_policy`), and the policies side by side.

    run_policies(config, ["least_conn", "hash"]) -> {"metadata", "policies", "steps" (each with its
        "policy"), "runs", "comparison", "stopped", "wall_s"}

The policies run in the order given, on the same fleet and the same seed: the same draws (agents, dataset
order, output lengths, arrivals). Each run draws fresh ids and nonces, so no run is served from the
prompt cache another run filled; the caches themselves are not emptied between runs. The fleet's own
policy is put back afterwards, also when a run fails or is stopped.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from llama_tui.core.bench.config import BenchConfig
from llama_tui.core.bench.servers import _norm_netloc, fleet_state
from llama_tui.core.bench.target import Target
from llama_tui.core.errors import UserError

# What the side-by-side view compares, per load step: step key -> label.
COMPARED = (("output_tok_s", "tok/s"), ("server_output_tok_s", "server tok/s"), ("ttft_p50_ms", "TTFT p50 ms"),
            ("ttft_p95_ms", "TTFT p95 ms"), ("e2e_p50_ms", "E2E p50 ms"), ("prompt_tok_s", "prompt tok/s"),
            ("cache_n_mean", "cache_n mean"), ("cache_hit_pct", "cache hit %"), ("requests_ok", "requests ok"),
            ("busiest_pct", "busiest instance %"), ("errors", "errors"), ("valid", "valid"))


def parse_policies(text: str | Sequence[str]) -> tuple[str, ...]:
    """"least_conn,hash" -> ("least_conn", "hash"): known policies, each once."""
    from llama_tui.core.config import POLICIES

    items = [p.strip().replace("-", "_") for p in (text.split(",") if isinstance(text, str) else text)]
    items = [p for p in items if p]
    if not items:
        raise UserError("--policies is empty", f"write e.g. --policies least_conn,hash (from: {', '.join(POLICIES)})")
    for p in items:
        if p not in POLICIES:
            raise UserError(f"unknown policy {p!r} in --policies", f"use policies from: {', '.join(POLICIES)}")
    if len(set(items)) != len(items):
        raise UserError(f"--policies names a policy twice: {','.join(items)}", "name each policy once")
    return tuple(items)


def check_fleet(config: BenchConfig) -> Any:
    """The fleet whose NGINX the benchmark targets (the only thing a policy changes); UserError if none."""
    st = fleet_state(config.state_dir)
    nginx = None
    if st is not None:
        try:
            nginx = st.nginx_url()
        except Exception:
            nginx = None
    if st is None or not nginx:
        raise UserError("--policies needs a running fleet with NGINX", "start one with `llama-tui fleet up`")
    door = _norm_netloc(Target.parse(nginx))
    if any(_norm_netloc(Target.parse(u)) != door for u in config.target_urls):
        raise UserError(f"--policies switches the fleet's NGINX ({nginx}), but the load goes elsewhere",
                        f"drop --url, or pass --url {nginx}")
    return st


def run_policies(config: BenchConfig, policies: Sequence[str], on_sample: Callable | None = None,
                 stop: threading.Event | None = None, on_step: Callable[[dict[str, Any]], None] | None = None,
                 on_policy: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run `config` once per policy on the running fleet (see the module's docstring)."""
    from llama_tui.core import fleet
    from llama_tui.core.bench.session import run
    from llama_tui.core.fleet import frontdoor_rules

    policies = parse_policies(policies)
    config = config.validated()
    st = check_fleet(config)
    for p in policies:
        frontdoor_rules.check_policy(p)  # e.g. `prefix` without NGINX's Lua module: refused before anything runs
    state_dir = Path(config.state_dir) if config.state_dir else None
    original = getattr(st.nginx, "policy", None)
    config = replace(config, seed=config.seed if config.seed is not None else int.from_bytes(os.urandom(4), "little"))
    t0 = time.monotonic()
    runs: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    current = original
    try:
        for p in policies:
            if stop is not None and stop.is_set():
                break
            if p != current:
                fleet.set_policy(p, state_dir)
                current = p
            if on_policy is not None:
                on_policy(p)

            def tagged(step: dict[str, Any], p: str = p) -> None:
                step["policy"] = p
                if on_step is not None:
                    on_step(step)

            result = run(config, on_sample=on_sample, stop=stop, on_step=tagged)
            for step in result["steps"]:
                step["policy"] = p
            steps.extend(result["steps"])
            runs.append({"policy": p, "metadata": result["metadata"], "best": result["best"],
                         "stopped": result["stopped"], "wall_s": result["wall_s"]})
            if result["stopped"]:
                break
    finally:
        if original and current != original:
            fleet.set_policy(original, state_dir)
    meta = dict(runs[0]["metadata"]) if runs else {}
    meta["policies"] = list(policies)
    meta["policy_restored"] = original
    return {"metadata": meta, "policies": list(policies), "steps": steps, "runs": runs,
            "comparison": comparison(steps, policies), "stopped": bool(stop is not None and stop.is_set()),
            "wall_s": round(time.monotonic() - t0, 2)}


def load_label(step: dict[str, Any]) -> str:
    return f"c={step['concurrency']}" if step["mode"] == "closed" else f"rate={step['rate']:g}/s"


def busiest_share(step: dict[str, Any]) -> float | None:
    """The share (%) of a step's completed requests that its busiest instance served: how evenly a
    policy spread the load (routing by key trades balance for cache reuse)."""
    counts = [e.get("requests_ok", 0) for e in (step.get("per_upstream") or {}).values()]
    return round(100.0 * max(counts) / sum(counts), 1) if counts and sum(counts) else None


def comparison(steps: list[dict[str, Any]], policies: Sequence[str]) -> list[dict[str, Any]]:
    """Per load step: each policy's compared figures, in the order of the steps."""
    out: list[dict[str, Any]] = []
    by_load: dict[str, dict[str, Any]] = {}
    for step in steps:
        label = load_label(step)
        row = by_load.get(label)
        if row is None:
            row = by_load[label] = {"load": label, "policies": {}}
            out.append(row)
        figures = {key: step.get(key) for key, _ in COMPARED}
        figures["busiest_pct"] = busiest_share(step)
        row["policies"][step["policy"]] = figures
    for row in out:
        for p in policies:
            row["policies"].setdefault(p, None)
    return out
