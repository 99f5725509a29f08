"""Failure isolation at the front door, on real NGINX (issue 13): a request that kills the instance
serving it is not re-sent to the others; refused connections and 503s (loading) still go to another
instance.

What NGINX's retry rules mean for a POST: `error` covers a refused connection, and also a backend that
dies after it received the request, before its response header. Without `non_idempotent`, NGINX re-sends
a POST only when it never reached a backend (a refused connection); with it, to `tries` backends. So the
listener has no `non_idempotent` on errors, and a 503 (nothing processed) is retried by a location of its
own that lists only `http_503`.

A real llama-server cannot crash on demand from a request, so `tests/support/fake_llama.py` stands in where one
must die of a request; a real llama-server killed while it processes a request shows the same on the
real stack.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from llama_tui.core import probe
from llama_tui.core.fleet import port_free

from conftest import LOOPBACK, REPO, free_port, wait_for

pytestmark = pytest.mark.integration

POST = {"prompt": "x", "n_predict": 4}


@pytest.fixture
def fake_backend(started, tmp_path):
    """Factory: a fake llama-server in MODE (crash | loading | ok); returns (its URL, the file its hits go to)."""

    def start(mode: str) -> tuple[str, Path]:
        port = free_port()
        hits = tmp_path / f"hits-{port}"
        hits.write_text("")
        started.add(subprocess.Popen([sys.executable, str(REPO / "tests" / "support" / "fake_llama.py"), mode, str(port), str(hits)],
                                     start_new_session=True, stdin=subprocess.DEVNULL))
        wait_for(lambda: not port_free(LOOPBACK, port), 10, f"the fake backend on {port}")  # (a request would kill a crasher)
        return probe.base_url(LOOPBACK, port), hits

    return start


def hits(files: list[Path]) -> list[list[str]]:
    return [f.read_text().splitlines() for f in files]


@pytest.mark.parametrize("max_conns", [False, True], ids=["plain", "max_conns-overflow"])
def test_a_request_that_kills_its_instance_is_not_resent(fake_backend, nginx_front, max_conns):
    backends = [fake_backend("crash") for _ in range(3)]
    _, front = nginx_front([u for u, _ in backends], policy="round_robin", slots=1, max_conns=max_conns,
                           internal_key="internal-key-0123456789")
    r = httpx.post(f"{front}/completion", json=POST, timeout=30)
    assert r.status_code == 502
    time.sleep(0.3)
    got = hits([h for _, h in backends])
    # one instance received it (and died of it); no other instance ever saw it
    assert sorted(len(g) for g in got) == [0, 0, 1], got
    # and it carried the internal key, not the client's Authorization
    assert [g for g in got if g][0] == ["POST /completion Bearer internal-key-0123456789"]
    # the 502 names the instance that failed (a benchmark attributes the error to it)
    victim = next(u for (u, _), g in zip(backends, got) if g)
    assert r.headers["x-upstream"] == victim.removeprefix("http://")


def test_refused_connections_and_503s_go_to_one_other_instance(fake_backend, nginx_front):
    dead = probe.base_url(LOOPBACK, free_port())  # nothing listens there
    loading, loading_hits = fake_backend("loading")
    ok, ok_hits = fake_backend("ok")
    _, front = nginx_front([dead, loading, ok], policy="round_robin", slots=1)
    for _ in range(6):
        r = httpx.post(f"{front}/completion", json=POST, timeout=30)
        assert r.status_code == 200 and r.json()["served_by"] == int(ok.rsplit(":", 1)[1]), r.text
        assert r.json()["path"] == "/completion"
    r = httpx.get(f"{front}/v1/models", timeout=30)  # a GET that meets the loading one too
    assert r.status_code == 200 and r.json()["path"] == "/v1/models"
    assert len(ok_hits.read_text().splitlines()) == 7
    assert all(line.startswith(("POST /completion", "GET /v1/models")) for line in loading_hits.read_text().splitlines())


def test_a_real_instance_killed_mid_request_is_not_resent(llama_server, nginx_front, started):
    """Two real llama-servers; the one that processes a long non-streamed completion is SIGKILLed. The
    client gets 502 and the other instance never processes the request (it used to redo it)."""
    urls = [llama_server(parallel=1, ctx_per_slot=8192), llama_server(parallel=1, ctx_per_slot=8192)]
    procs = dict(zip(urls, started.procs[-2:]))
    _, front = nginx_front(urls, policy="round_robin", slots=1)
    box: dict[str, httpx.Response] = {}
    body = {"prompt": "x", "n_predict": 8000, "ignore_eos": True}
    t = threading.Thread(target=lambda: box.setdefault("r", httpx.post(f"{front}/completion", json=body, timeout=120)))
    t.start()

    def processing() -> str | None:
        with probe.Probe(timeout=1.0) as p:
            for u in urls:
                if (p.slots(u) or probe.SlotsSummary(0, 0)).busy:
                    return u
        return None

    victim = wait_for(processing, 20, "an instance processing the request")
    other = next(u for u in urls if u != victim)
    procs[victim].kill()
    t.join(timeout=120)
    assert box["r"].status_code == 502, box["r"].text[:200]
    m = probe.Probe().metrics(other) or {}
    assert m.get(probe.PROMPT_TOKENS_TOTAL, 0) == 0 and m.get(probe.TOKENS_PREDICTED_TOTAL, 0) == 0, m
