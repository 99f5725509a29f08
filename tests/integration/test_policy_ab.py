"""Workloads against real llama-server (tiny model) and the policy A/B on a real fleet: the prompt cache
shows in cache_n, `bench --policies` runs each policy on the same load and puts the fleet's policy
back, and the `prefix` policy keeps a prompt prefix on one instance without a session id."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import httpx
import orjson
import pytest

from llama_tui.core import bench, fleet
from llama_tui.core.bench import BenchConfig
from llama_tui.core.errors import UserError
from llama_tui.core.fleet import frontdoor_rules

from conftest import free_port, free_port_block, run_cli, skip_without_policy


def test_the_prefix_policy_without_the_lua_module_is_refused_in_one_line(monkeypatch):
    from llama_tui.core import binaries

    monkeypatch.setattr(binaries, "nginx_lua_modules", lambda: None)
    with pytest.raises(UserError) as err:
        frontdoor_rules.check_policy("prefix")
    assert "Lua module" in err.value.cause and binaries.NGINX_LUA_PACKAGE in err.value.fix
    assert frontdoor_rules.check_policy("hash") == ()


@pytest.mark.integration
def test_shared_prefix_comes_from_the_cache_and_unique_prompts_do_not(llama_server):
    url = llama_server(parallel=2, ctx_per_slot=1024)
    base = dict(url=url, concurrency=(2,), duration=1.5, warmup=0.3, n_predict=8, prompt_tokens=16, workers=1)
    shared = bench.run_step(BenchConfig(workload="shared-prefix", prefix_tokens=128, prefix_groups=2, **base))
    unique = bench.run_step(BenchConfig(**base))
    assert shared["requests_ok"] > 0 and unique["requests_ok"] > 0 and shared["errors"] == unique["errors"] == 0
    assert shared["cache_n_mean"] > 100 and shared["cache_hit_pct"] > 50  # the 128-token system prompt
    assert unique["cache_n_mean"] < 4  # the nonce defeats the cache
    assert shared["workload"] == "shared-prefix" and shared["prompt_tok_s"] > 0
    # the server's window rate counts in-flight tokens too: it reads like the client's
    assert shared["server_rate_basis"] == "decoded" and abs(shared["server_rate_agreement_pct"]) < 10


@pytest.fixture
def tiny_fleet(isolated_dirs: Path, tiny_model: Path) -> Iterator[Path]:
    """2 instances x 2 slots behind NGINX (least_conn) in the test's state dir."""
    spec = fleet.FleetSpec(model=tiny_model, instances=2, parallel=2, ctx_per_slot=2048, threads=1,
                           base_port=free_port_block(4), nginx_port=free_port(), ready_timeout=60)
    fleet.up(spec, state_dir=isolated_dirs)
    try:
        yield isolated_dirs
    finally:
        fleet.down(isolated_dirs, timeout=5)


@pytest.mark.integration
def test_bench_policies_prints_them_side_by_side_and_restores_the_fleets_policy(tiny_fleet, tmp_path):
    out = tmp_path / "ab.json"
    proc = run_cli("bench", "--policies", "hash,least_conn", "--workload", "sessions", "--sessions", "4", "--turns",
                   "3", "--concurrency", "2", "--duration", "1.5", "--warmup", "0.3", "--n-predict", "16", "--seed",
                   "5", "--json", str(out), "--csv", str(tmp_path / "ab.csv"), timeout=180)
    assert proc.returncode == 0, proc.stderr
    head = next(line for line in proc.stdout.splitlines() if line.startswith("load"))
    assert head.split()[-2:] == ["hash", "least_conn"]  # the policies side by side, in the order given
    for label in ("tok/s", "TTFT p50 ms", "cache_n mean", "cache hit %", "busiest instance %"):
        assert any(line.split("  ")[0].strip() == "" and label in line for line in proc.stdout.splitlines()), label
    result = orjson.loads(out.read_bytes())
    assert [s["policy"] for s in result["steps"]] == ["hash", "least_conn"]
    assert all(s["errors"] == 0 and s["requests_ok"] > 0 and s["cache_n"] > 0 for s in result["steps"])
    [block] = result["comparison"]
    assert block["load"] == "c=2" and set(block["policies"]) == {"hash", "least_conn"}
    assert all(50.0 <= fig["busiest_pct"] <= 100.0 for fig in block["policies"].values())  # 2 instances
    assert [r["metadata"]["seed"] for r in result["runs"]] == [5, 5]
    assert result["metadata"]["workload"]["name"] == "sessions"
    assert fleet.load_state(tiny_fleet).nginx.policy == "least_conn"  # put back
    assert "policy" in (tmp_path / "ab.csv").read_text().splitlines()[0]


@pytest.mark.integration
def test_the_prefix_policy_keeps_each_prompt_prefix_on_one_instance(tiny_fleet):
    skip_without_policy("prefix")
    fleet.set_policy("prefix", tiny_fleet)
    nginx = fleet.load_state(tiny_fleet).nginx_url()
    filler = " ".join(["shared system prompt"] * 60)  # beyond the 512 bytes the policy keys on
    served: dict[str, set[str]] = {}
    with httpx.Client(timeout=30) as client:
        for i in range(3):
            for agent in "abcdefghijkl":
                r = client.post(f"{nginx}/completion", json={"prompt": f"[agent {agent}] {filler} question {i}",
                                                             "n_predict": 2})
                assert r.status_code == 200, r.text
                served.setdefault(agent, set()).add(r.headers["x-upstream"])
    assert all(len(ups) == 1 for ups in served.values()), served
    assert len(set.union(*served.values())) == 2  # twelve agents spread over both instances (all on one: 2**-11)


@pytest.mark.integration
def test_sweep_with_a_list_of_policies_sweeps_each_into_its_folder(tmp_path):
    out = tmp_path / "sweep"
    base = free_port_block(3)
    proc = run_cli("sweep", "--model", "tiny", "--instances", "2", "--parallel", "1", "--concurrency", "2",
                   "--threads", "1", "--duration", "1", "--warmup", "0.3", "--n-predict", "16", "--workload",
                   "shared-prefix", "--prefix-tokens", "64", "--prefix-groups", "3", "--policy", "least_conn,hash",
                   "--nginx-port", str(base), "--base-port", str(base + 1), "--out", str(out), timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "== policy least_conn" in proc.stdout and "== policy hash" in proc.stdout
    assert "best per policy:" in proc.stdout
    for policy in ("least_conn", "hash"):
        [row] = [orjson.loads(line) for line in (out / policy / "results.jsonl").read_bytes().splitlines()]
        assert row["errors"] == 0 and row["workload"] == "shared-prefix" and row["cache_n_mean"] > 0, row
        meta = orjson.loads((out / policy / "metadata.json").read_bytes())
        assert meta["params"]["policy"] == policy and meta["params"]["workload"]["prefix_groups"] == 3


@pytest.mark.integration
def test_a_workload_that_cannot_fit_a_slot_is_refused_before_any_load(llama_server):
    url = llama_server(parallel=1, ctx_per_slot=256)
    with pytest.raises(UserError) as err:
        bench.run_step(BenchConfig(url=url, concurrency=(1,), workload="sessions", turns=20, n_predict=64,
                                   prompt_tokens=16, duration=1.0))
    assert "20 turns of about" in err.value.cause and "above a slot's context (256)" in err.value.cause
    assert "--ctx-per-slot" in err.value.fix
