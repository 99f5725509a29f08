"""Real NGINX in front of real llama-server (tiny model): routing, admin endpoints, API key, OpenAI
clients, reloads (a bad config is refused and the old one keeps serving), max_conns overflow, a
killed backend routed around, stub_status and the access-log follower."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time

import httpx
import pytest

from llama_tui.core.fleet import frontdoor_nginx
from llama_tui.core.fleet.accesslog import AccessLogFollower
from llama_tui.core.fleet.frontdoor import Backend, FrontDoorSpec

from conftest import LOOPBACK, wait_for

pytestmark = pytest.mark.integration

STREAM = {"prompt": "hi", "n_predict": 16, "stream": True, "ignore_eos": True}


def addr(url: str) -> str:
    return url.removeprefix("http://")


def stream_once(front: str, body: dict = STREAM, headers: dict | None = None) -> tuple[int, str | None, str]:
    with httpx.stream("POST", f"{front}/completion", json=body, headers=headers, timeout=30) as r:
        text = r.read().decode()
        return r.status_code, r.headers.get("x-upstream"), text


def test_round_robin_streams_and_x_upstream(llama_server, nginx_front):
    urls = [llama_server(parallel=1), llama_server(parallel=1)]
    door, front = nginx_front(urls, policy="round_robin", slots=1)
    seen = []
    for _ in range(4):
        status, upstream, body = stream_once(front)
        assert status == 200 and '"stop":true' in body
        seen.append(upstream)
    assert set(seen) == {addr(u) for u in urls} and seen[0] != seen[1] and seen[:2] == seen[2:]


def test_admin_endpoints_refused_unless_exposed(llama_server, nginx_front):
    url = llama_server(parallel=1)
    door, front = nginx_front([url], slots=1)
    for path in ("/slots", "/metrics", "/props", "/slots/0?action=save", "//slots", "/%73lots", "/SLOTS",
                 "/./slots", "/lora-adapters"):
        r = httpx.get(f"{front}{path}")
        assert r.status_code == 403, path
        assert r.json()["error"]["type"] == "forbidden" and "x-upstream" not in r.headers
    assert httpx.post(f"{front}/slots/0?action=erase").status_code == 403
    assert httpx.get(f"{url}/slots").status_code == 200  # the backend itself serves it, on loopback
    assert httpx.get(f"{front}/health").status_code == 200
    _, open_front = nginx_front([url], slots=1, expose_admin=True)
    r = httpx.get(f"{open_front}/slots")
    assert r.status_code == 200 and isinstance(r.json(), list) and r.headers["x-upstream"] == addr(url)


def test_api_key_enforced_at_nginx(llama_server, nginx_front, tmp_path):
    url = llama_server(parallel=1)
    keyfile = tmp_path / "key"
    keyfile.write_text("file-key-0123456789\n")
    door, front = nginx_front([url], slots=1, api_key_file=str(keyfile))
    assert httpx.get(f"{front}/v1/models").status_code == 401
    r = httpx.get(f"{front}/v1/models", headers={"Authorization": "Bearer wrong-key-0123456"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{front}/v1/models", headers={"Authorization": "Bearer FILE-KEY-0123456789"}).status_code == 401
    good = {"Authorization": "Bearer file-key-0123456789"}
    assert httpx.get(f"{front}/v1/models", headers=good).status_code == 200
    status, _, body = stream_once(front, headers=good)
    assert status == 200 and '"stop":true' in body
    assert httpx.get(f"{front}/slots", headers=good).status_code == 403  # the key does not open admin endpoints
    # rotating the key: edit the file, reload
    keyfile.write_text("rotated-key-0123456789\n")
    assert door.reload(door.spec).ok
    assert httpx.get(f"{front}/v1/models", headers=good).status_code == 401
    assert httpx.get(f"{front}/v1/models", headers={"Authorization": "Bearer rotated-key-0123456789"}).status_code == 200


def test_openai_clients_models_and_streaming_chat(llama_server, nginx_front):
    door, front = nginx_front([llama_server(parallel=2), llama_server(parallel=2)], policy="least_conn")
    base = f"{front}/v1"  # what Open WebUI / the OpenAI SDK are given
    models = httpx.get(f"{base}/models").json()
    assert models["object"] == "list" and models["data"][0]["id"]
    body = {"model": models["data"][0]["id"], "messages": [{"role": "user", "content": "Say hi"}], "stream": True,
            "max_tokens": 24, "stream_options": {"include_usage": True}, "ignore_eos": True}
    chunks, usage, done = [], None, False
    with httpx.stream("POST", f"{base}/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            ev = json.loads(line[6:])
            if ev.get("usage"):
                usage = ev["usage"]
            chunks += [c["delta"].get("content") or "" for c in ev.get("choices", [])]
    assert done and usage["completion_tokens"] == 24 and "".join(chunks)


def test_large_request_body_is_proxied(llama_server, nginx_front):
    # /tokenize is only published with --expose-admin (the default listener serves inference routes)
    door, front = nginx_front([llama_server(parallel=1)], slots=1, expose_admin=True)
    r = httpx.post(f"{front}/tokenize", json={"content": "a " * 1_500_000}, timeout=60)  # ~3 MB body
    assert r.status_code == 200 and len(r.json()["tokens"]) > 100_000


def test_invalid_config_refused_and_old_one_keeps_serving(llama_server, nginx_front):
    url = llama_server(parallel=1)
    door, front = nginx_front([url], slots=1)
    pid, conf = door.pid, door.conf_path.read_text()
    bad = FrontDoorSpec(port=door.spec.port, backends=(Backend("no-such-host.invalid", 18080, 1),))
    check = door.reload(bad)
    assert not check.ok and "host not found" in check.error and door.last_error == check.error
    assert door.conf_path.read_text() == conf and door.pid == pid
    status, upstream, body = stream_once(front)
    assert status == 200 and upstream == addr(url) and '"stop":true' in body
    # the master itself refuses a config nginx -t accepts (its new port is taken): old one stays too
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        moved = FrontDoorSpec(port=taken.getsockname()[1], backends=door.spec.backends)
        check = door.reload(moved)
        assert not check.ok and "kept the old config" in check.error and "bind()" in check.error
    assert stream_once(front)[0] == 200 and door.pid == pid


def test_reload_switches_backends_and_waits_for_new_workers(llama_server, nginx_front):
    a, b = llama_server(parallel=1), llama_server(parallel=1)
    door, front = nginx_front([a], slots=1)
    before, _ = door.workers()
    assert before and stream_once(front)[1] == addr(a)
    spec = FrontDoorSpec(port=door.spec.port, backends=(Backend(LOOPBACK, int(b.rsplit(":", 1)[1]), 1),),
                         policy="round_robin")
    assert door.reload(spec).ok
    active, _ = door.workers()
    assert active and not (active & before)  # every accepting worker is new when reload returns
    assert {stream_once(front)[1] for _ in range(4)} == {addr(b)}


def test_a_stream_survives_a_reload_that_removes_its_backend(llama_server, nginx_front):
    a, b = llama_server(parallel=1, ctx_per_slot=4096), llama_server(parallel=1)
    door, front = nginx_front([a], slots=1)

    async def scenario():
        async with httpx.AsyncClient(timeout=60) as client:
            async with client.stream("POST", f"{front}/completion",
                                     json={**STREAM, "n_predict": 4000}) as r:
                assert r.headers["x-upstream"] == addr(a)
                spec = FrontDoorSpec(port=door.spec.port, backends=(Backend(LOOPBACK, int(b.rsplit(":", 1)[1]), 1),))
                assert door.reload(spec).ok  # a leaves the upstream while streaming
                _, leaving = door.workers()
                assert leaving  # the old worker finishes the open stream
                body = (await r.aread()).decode()
        return body

    body = asyncio.run(scenario())
    assert '"stop":true' in body and '"predicted_n":4000' in body


def test_max_conns_excess_waits_instead_of_502(llama_server, nginx_front):
    urls = [llama_server(parallel=1), llama_server(parallel=1)]
    door, front = nginx_front(urls, policy="round_robin", slots=1, max_conns=True)

    async def many():
        async def one():
            async with httpx.AsyncClient(timeout=60) as c:
                async with c.stream("POST", f"{front}/completion", json={**STREAM, "n_predict": 400}) as r:
                    return r.status_code, (await r.aread()).count(b'"stop":true')
        return await asyncio.gather(*(one() for _ in range(6)))

    assert asyncio.run(many()) == [(200, 1)] * 6
    follower = AccessLogFollower(door.access_log)
    wait_for(lambda: follower.poll() is not None and follower.summary()["requests"] >= 6, 10, "6 logged requests")
    assert follower.summary()["overflowed"] >= 1 and follower.summary()["no_live_upstreams"] == 0
    assert sum(s.requests for s in follower.stats()) == 6 and not any(s.errors for s in follower.stats())


def test_killed_backend_routed_around_and_back_after_restart(llama_server, nginx_front, started):
    urls = [llama_server(parallel=1), llama_server(parallel=1)]
    door, front = nginx_front(urls, policy="round_robin", slots=1)
    victim = started.procs[-1]
    port = int(urls[1].rsplit(":", 1)[1])
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    # no client sees the dead backend: refused connections are re-sent to the live one
    results = [stream_once(front) for _ in range(10)]
    assert all(s == 200 and u == addr(urls[0]) for s, u, _ in results)
    llama_server(parallel=1, port=port)  # restarted on the same port
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if stream_once(front)[1] == addr(urls[1]):
            break
        time.sleep(0.2)
    else:
        pytest.fail("the restarted backend got no request within 10 s")
    comeback = 10 - (deadline - time.monotonic())
    assert comeback < 5, f"took {comeback:.1f}s"  # fail_timeout is 2 s


def test_stub_status_and_follower_agree_with_x_upstream(llama_server, nginx_front, started):
    urls = [llama_server(parallel=2), llama_server(parallel=2, ctx_per_slot=4096)]
    door, front = nginx_front(urls, policy="least_conn")
    # idle (the start-up probe's own connection may still be closing: a race seen on a loaded machine)
    wait_for(lambda: frontdoor_nginx.read_stub_status(door.prefix)["active"] == 0, 5, "an idle NGINX")

    async def load():
        async def one():
            async with httpx.AsyncClient(timeout=60) as c:
                async with c.stream("POST", f"{front}/completion", json={**STREAM, "n_predict": 200}) as r:
                    await r.aread()
                    return r.headers["x-upstream"]
        return await asyncio.gather(*(one() for _ in range(12)))

    async def during():
        task = asyncio.create_task(load())
        live = None
        while not task.done():  # read while streams are in flight, however slow the machine is
            live = await asyncio.to_thread(frontdoor_nginx.read_stub_status, door.prefix)
            if live and live["writing"] >= 1:
                break
            await asyncio.sleep(0.01)
        return await task, live

    upstreams, live = asyncio.run(during())
    assert live["writing"] >= 1 and live["requests"] >= 1
    follower = AccessLogFollower(door.access_log)
    wait_for(lambda: follower.poll() is not None and follower.summary()["requests"] >= len(upstreams), 10,
             "every request logged")
    stats = {s.address: s for s in follower.stats()}
    for u in urls:
        assert stats[addr(u)].requests == upstreams.count(addr(u))
        assert stats[addr(u)].p50_ms > 0 and stats[addr(u)].header_p50_ms is not None
    assert sum(s.rps for s in stats.values()) > 0
    # a backend killed mid-stream: the client sees a broken stream, the follower a truncated one
    victim = started.procs[-1]

    async def cut():
        async with httpx.AsyncClient(timeout=60) as c:
            for _ in range(6):
                async with c.stream("POST", f"{front}/completion", json={**STREAM, "n_predict": 4000}) as r:
                    if r.headers["x-upstream"] != addr(urls[1]):
                        await r.aclose()
                        continue
                    chunks = r.aiter_raw()
                    await chunks.__anext__()
                    os.killpg(victim.pid, signal.SIGKILL)
                    with pytest.raises(httpx.RemoteProtocolError):
                        async for _chunk in chunks:
                            pass
                    return True
        return False

    assert asyncio.run(cut())

    def truncated() -> int | None:
        follower.poll()
        return {s.address: s for s in follower.stats()}[addr(urls[1])].errors_by_status.get("truncated")

    assert wait_for(truncated, 10, "the truncated stream in NGINX's error log") == 1


def test_hash_keeps_a_session_on_one_backend_and_spreads_the_rest(llama_server, nginx_front):
    urls = [llama_server(parallel=1), llama_server(parallel=1)]
    door, front = nginx_front(urls, policy="hash", slots=1)
    body = {"prompt": "hi", "n_predict": 2}
    for session in ("conversation-1", "conversation-2", "conversation-3"):
        seen = {httpx.post(f"{front}/completion", json=body, headers={"X-Session-Id": session}).headers["x-upstream"]
                for _ in range(6)}
        assert len(seen) == 1, (session, seen)
    owners = {httpx.post(f"{front}/completion", json=body, headers={"X-Session-Id": f"s{i}"}).headers["x-upstream"]
              for i in range(20)}
    anonymous = {httpx.post(f"{front}/completion", json=body).headers["x-upstream"] for _ in range(20)}
    assert owners == anonymous == {addr(u) for u in urls}  # sessions and header-less requests use both


def test_access_log_rotation_while_serving_loses_no_request(llama_server, nginx_front):
    door, front = nginx_front([llama_server(parallel=1)], slots=1)
    follower = AccessLogFollower(door.access_log)
    body = {"prompt": "hi", "n_predict": 2}
    for _ in range(3):
        assert httpx.post(f"{front}/completion", json=body).status_code == 200
    assert not door.rotate_access_log(max_bytes=1 << 20)  # small log: left alone
    assert door.rotate_access_log(max_bytes=0)
    for _ in range(2):
        assert httpx.post(f"{front}/completion", json=body).status_code == 200
    deadline = time.monotonic() + 5
    while follower.total < 5 and time.monotonic() < deadline:
        follower.poll()
        time.sleep(0.05)
    assert follower.total == 5 and door.access_log.with_name("access.log.1").exists()
    assert len(door.access_log.read_text().splitlines()) == 2  # NGINX reopened its log


def test_nginx_can_be_found_again_by_its_prefix(llama_server, nginx_front, isolated_dirs):
    """NGINX overwrites its environment with its process title, so /proc/PID/environ no longer shows
    LLAMA_TUI_OWNER; the master's title keeps its command line (with `-p PREFIX`) and the workers
    share its process group, which is how an owner finds them again."""
    import psutil

    door, _ = nginx_front([llama_server(parallel=1)], slots=1)
    master = psutil.Process(door.pid)
    title = " ".join(master.cmdline())
    assert title.startswith("nginx: master process") and f"-p {door.prefix}" in title
    workers = master.children()
    assert workers and all(os.getpgid(w.pid) == door.pid for w in workers)
