"""Load proofs through real NGINX in front of real llama-server instances (tiny model, -t 1):

- every policy carries a sustained streaming load (concurrency 4x the slots, 30 s) with zero errors;
- max_conns under the same overload: the excess goes to the overflow group, zero errors;
- round_robin spreads 200 requests evenly over a 4-instance fleet, attributed by X-Upstream, and
  `fleet status --json` accounts for them per upstream;
- 16 concurrent streams survive `fleet scale 2` and `fleet scale 4` without one failure.

Failures are counted precisely by tests/support/frontdoor_load.py (fresh connection per request; a stream
without its stop event is a failure). `LLAMA_TUI_LOAD_SECONDS` shortens the sustained runs locally.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time

import pytest

from llama_tui.core.fleet.accesslog import AccessLogFollower
from llama_tui.core.config import POLICIES

from conftest import free_port, free_port_block, run_cli, skip_without_policy, wait_for
from tests.support.frontdoor_load import LoadResult, load, run_load

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECONDS = float(os.environ.get("LLAMA_TUI_LOAD_SECONDS", "30"))


def check_clean(res: LoadResult, door) -> AccessLogFollower:
    """Zero failures client-side, and NGINX's log agrees: every request served, no backend error."""
    assert res.failed == 0, res.describe()
    follower = AccessLogFollower(door.access_log)

    def logged_all() -> bool:
        # NGINX writes a request's log line when it finalizes the request, which can be just after the
        # client has read the last byte: wait (briefly) for the last lines, then compare exactly.
        follower.poll()
        return follower.summary()["requests"] >= res.requests

    wait_for(logged_all, 10, "NGINX to log every request")
    summary = follower.summary()
    assert summary["requests"] == res.requests and summary["by_client_status"] == {"200": res.requests}
    assert summary["no_live_upstreams"] == 0
    assert not [s for s in follower.stats() if s.errors], follower.stats()
    return follower


@pytest.mark.parametrize("policy", POLICIES)
def test_sustained_streaming_load_per_policy(policy, llama_server, nginx_front):
    skip_without_policy(policy)
    urls = [llama_server(parallel=2, threads=1), llama_server(parallel=2, threads=1)]
    door, front = nginx_front(urls, policy=policy, slots=2, max_concurrency=64)
    res = load(front, concurrency=16, duration=SECONDS, n_predict=64)  # 16 = 4x the 4 slots
    print(f"\n{policy}: {res.describe()}")
    follower = check_clean(res, door)
    assert res.ok >= 100 and res.duration_s >= SECONDS
    served = {s.address: s.requests for s in follower.stats()}
    assert set(served) == {u.removeprefix("http://") for u in urls} and all(served.values())
    assert dict(res.by_upstream) == served  # X-Upstream and the access log attribute the same way


def test_max_conns_overload_queues_through_the_overflow_group(llama_server, nginx_front):
    urls = [llama_server(parallel=2, threads=1), llama_server(parallel=2, threads=1)]
    door, front = nginx_front(urls, policy="least_conn", slots=2, max_conns=True, max_concurrency=64)
    res = load(front, concurrency=16, duration=min(SECONDS, 10), n_predict=64)
    print(f"\nmax_conns: {res.describe()}")
    follower = check_clean(res, door)
    assert follower.summary()["overflowed"] > 0  # the cap was reached, and nothing failed


def _fleet_up(*args: str) -> None:
    proc = run_cli("fleet", "up", "--detach", "--model", "tiny", "--threads", "1", "--base-port",
                   str(free_port_block(4)), "--nginx-port", str(free_port()), "--max-concurrency", "64", *args)
    assert proc.returncode == 0, proc.stderr


def _status() -> dict:
    proc = run_cli("fleet", "status", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_round_robin_spreads_200_requests_and_fleet_status_accounts_for_them(isolated_dirs):
    from llama_tui.core import fleet

    _fleet_up("--instances", "4", "--parallel", "1", "--policy", "round_robin")
    try:
        front = fleet.load_state().nginx_url()
        res = load(front, concurrency=4, requests=200, n_predict=16)
        assert res.failed == 0 and res.ok == 200, res.describe()
        assert len(res.by_upstream) == 4 and all(40 <= n <= 60 for n in res.by_upstream.values()), res.by_upstream
        deadline = time.monotonic() + 10  # the supervisor persists the access-log statistics about once a second
        while True:
            ups = {u["address"]: u for u in _status()["nginx"]["upstreams"]}
            if sum(u["requests"] for u in ups.values()) >= 200 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert {a: u["requests"] for a, u in ups.items()} == dict(res.by_upstream)
        assert all(u["errors"] == 0 and u["p50_ms"] is not None for u in ups.values())
        print(f"\nround_robin spread: {dict(res.by_upstream)}")
    finally:
        run_cli("fleet", "down")


def test_16_streams_survive_scale_4_to_2_to_4(isolated_dirs):
    from llama_tui.core import fleet

    _fleet_up("--instances", "4", "--parallel", "2", "--policy", "least_conn")
    try:
        front = fleet.load_state().nginx_url()
        result: dict[str, LoadResult] = {}
        steps: list[str] = []

        def drive() -> None:
            result["load"] = asyncio.run(run_load(front, concurrency=16, duration=max(12.0, min(SECONDS, 20)),
                                                  n_predict=256))

        t = threading.Thread(target=drive)
        t.start()
        time.sleep(2)
        for n in ("2", "4"):
            proc = run_cli("fleet", "scale", n)
            steps.append(f"scale {n}: rc={proc.returncode} {proc.stdout.strip()[-200:]} {proc.stderr.strip()[-300:]}")
            assert proc.returncode == 0, steps
            time.sleep(2)
        t.join()
        res = result["load"]
        print(f"\nrescale 4->2->4 under 16 streams: {res.describe()}\n" + "\n".join(steps))
        assert res.failed == 0, res.describe()
        assert res.ok > 50
        members = [i for i in _status()["instances"] if i["state"] == "ready"]
        assert len(members) == 4
    finally:
        run_cli("fleet", "down")
