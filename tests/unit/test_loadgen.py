"""The load generator against fake servers: only for what a real llama-server cannot do on demand
(hang, garbage, die mid-stream, refuse once, split events oddly, a deliberately slow server).

Each fake runs on its own event loop in a thread; the URL's path selects its behaviour.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Iterator

import orjson
import pytest

from llama_tui.core.bench import RequestShape, Source, StepPartial, StepPlan, Target, run_plan
from llama_tui.core.errors import UserError


def _native_event(k: int, stop: bool = False, n: int = 0) -> bytes:
    ev: dict = {"content": "x", "stop": stop, "tokens_predicted": k, "tokens_evaluated": 5}
    if stop:
        ev["timings"] = {"predicted_n": n, "prompt_n": 5, "cache_n": 2}
    return b"data: " + orjson.dumps(ev) + b"\n\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
            b"X-Upstream: 127.0.0.1:1111, 127.0.0.1:2222\r\nConnection: close\r\n\r\n")


class FakeServer:
    """A tiny HTTP server whose behaviour is picked by the request path's first segment."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.connections = 0
        self.requests: list[bytes] = []
        self.slow_lock: asyncio.Lock | None = None
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            self.slow_lock = asyncio.Lock()
            self.server = self.loop.run_until_complete(asyncio.start_server(self._conn, "127.0.0.1", 0))
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        assert ready.wait(10)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n_conn = self.connections
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length) if length else b""
            self.requests.append(body)
            mode = head.split(b" ")[1].split(b"/")[1].decode()
            req = orjson.loads(body) if body else {}
            n = req.get("n_predict") or req.get("max_tokens") or 4
            await getattr(self, f"mode_{mode}")(writer, n, n_conn)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def mode_split(self, w: asyncio.StreamWriter, n: int, _: int) -> None:
        """Events split across chunks and several events in one chunk, one event with 3 tokens."""
        w.write(SSE_HEAD)
        body = _native_event(3) + _native_event(4) + _native_event(6) + _native_event(6, True, 6)
        # chunk boundaries inside events and inside the chunk-size lines' neighbourhood
        for part in (body[:7], body[7:50], body[50:51], body[51:]):
            w.write(_chunk(part))
            await w.drain()
            await asyncio.sleep(0.01)
        w.write(b"0\r\n\r\n")

    async def mode_ok(self, w: asyncio.StreamWriter, n: int, _: int) -> None:
        w.write(SSE_HEAD)
        for i in range(1, n + 1):
            w.write(_chunk(_native_event(i)))
            await asyncio.sleep(0)
        w.write(_chunk(_native_event(n, True, n)) + b"0\r\n\r\n")

    async def mode_trickle(self, w: asyncio.StreamWriter, n: int, _: int) -> None:
        """One token every 20 ms: a request that is still streaming when the window ends."""
        w.write(SSE_HEAD)
        for i in range(1, n + 1):
            w.write(_chunk(_native_event(i)))
            await w.drain()
            await asyncio.sleep(0.02)
        w.write(_chunk(_native_event(n, True, n)) + b"0\r\n\r\n")

    async def mode_hang(self, w: asyncio.StreamWriter, n: int, _: int) -> None:
        w.write(SSE_HEAD)
        await w.drain()
        await asyncio.sleep(3600)

    async def mode_garbage(self, w: asyncio.StreamWriter, n: int, _: int) -> None:
        w.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\nnot http at all")

    async def mode_badjson(self, w: asyncio.StreamWriter, n: int, _: int) -> None:
        w.write(SSE_HEAD + _chunk(b"data: {not json\n\n"))
        await w.drain()
        await asyncio.sleep(0.5)

    async def mode_die(self, w: asyncio.StreamWriter, n: int, _: int) -> None:
        """A few tokens, then the connection drops without the stop event."""
        w.write(SSE_HEAD)
        for i in range(1, 4):
            w.write(_chunk(_native_event(i)))
        await w.drain()
        w.transport.abort()

    async def mode_http503(self, w: asyncio.StreamWriter, n: int, _: int) -> None:
        text = b'{"error":{"message":"Loading model"}}'
        w.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (len(text), text))

    async def mode_dropfirst(self, w: asyncio.StreamWriter, n: int, n_conn: int) -> None:
        """The first connection is closed without a byte (a keep-alive close); later ones are served."""
        if n_conn == 1:
            w.transport.abort()
            return
        await self.mode_ok(w, n, n_conn)

    async def mode_slow(self, w: asyncio.StreamWriter, n: int, _: int) -> None:
        """One request at a time, 0.2 s each: a server that queues."""
        assert self.slow_lock is not None
        async with self.slow_lock:
            await asyncio.sleep(0.2)
            await self.mode_ok(w, n, 0)

    async def mode_nostream(self, w: asyncio.StreamWriter, n: int, _: int) -> None:
        text = orjson.dumps({"content": "abc", "tokens_predicted": n, "tokens_evaluated": 7,
                             "timings": {"predicted_n": n, "prompt_n": 7, "cache_n": 0}})
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(text), text))

    async def mode_chat(self, w: asyncio.StreamWriter, n: int, _: int) -> None:
        """Chat chunks: role, 3 content chunks carrying n tokens in all, finish, usage, [DONE]."""
        w.write(SSE_HEAD)
        chunks = [{"choices": [{"delta": {"role": "assistant", "content": None}, "finish_reason": None}]}]
        chunks += [{"choices": [{"delta": {"content": "ab"}, "finish_reason": None}]} for _ in range(3)]
        chunks += [{"choices": [{"delta": {}, "finish_reason": "length"}]},
                   {"choices": [], "usage": {"completion_tokens": n, "prompt_tokens": 20,
                                             "prompt_tokens_details": {"cached_tokens": 4}}}]
        for c in chunks:
            w.write(_chunk(b"data: " + orjson.dumps(c) + b"\n\n"))
            await w.drain()
            await asyncio.sleep(0.005)
        w.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    srv = FakeServer()
    yield srv
    srv.close()


def closed_plan(concurrency: int = 1, warmup: float = 0.0, duration: float = 1.0) -> StepPlan:
    now = time.monotonic()
    return StepPlan("closed", now, now + warmup, now + warmup + duration, concurrency=concurrency)


def one(url: str, shape: RequestShape, duration: float = 0.6) -> StepPartial:
    return run_plan([Target.parse(url)], shape, closed_plan(duration=duration))


# --------------------------------------------------------------------------------------------- counting


def test_tokens_come_from_tokens_predicted_not_from_events(fake):
    part = one(f"{fake.url}/split", RequestShape(n_predict=6))
    assert part.requests_ok >= 1 and part.errors == 0
    # 4 events per response, 6 tokens: counting events would give 4 (or 3 without the stop event)
    assert part.output_tokens == pytest.approx(6 * part.requests_ok, abs=6)
    assert part.prompt_tokens == 5 * part.requests_ok and part.cache_n == 2 * part.requests_ok
    # one event carried 3 tokens: TTFT covers it; the later gaps give 6 - 3 = 3 ITL samples per request
    assert len(part.ttft) == part.requests_ok and len(part.tpot) == part.requests_ok
    # X-Upstream lists every backend NGINX tried; the last one answered
    assert set(part.per_upstream) == {"127.0.0.1:2222"}


def test_chat_tokens_come_from_usage(fake):
    part = one(f"{fake.url}/chat", RequestShape(api="chat", n_predict=9))
    assert part.requests_ok >= 1 and part.errors == 0
    # 3 content chunks, usage says 9 tokens
    assert part.output_tokens == pytest.approx(9 * part.requests_ok, abs=9)
    assert part.cache_n == 4 * part.requests_ok and part.prompt_tokens == 16 * part.requests_ok
    body = orjson.loads(fake.requests[0])
    assert body["stream_options"] == {"include_usage": True} and body["ignore_eos"] is True
    assert body["messages"][0]["role"] == "user"


def test_no_stream_takes_tokens_from_timings(fake):
    part = one(f"{fake.url}/nostream", RequestShape(stream=False, n_predict=11))
    assert part.requests_ok >= 1 and part.errors == 0
    assert part.output_tokens == 11 * part.requests_ok
    assert len(part.ttft) == 0 and len(part.e2e) == part.requests_ok  # no first token without a stream


def test_each_request_gets_a_unique_nonce_first(fake):
    part = one(f"{fake.url}/ok", RequestShape(n_predict=2, prompt="same prompt"))
    assert part.requests_ok >= 3
    prompts = [orjson.loads(b)["prompt"] for b in fake.requests]
    assert len(set(prompts)) == len(prompts) and all(p.endswith("same prompt") for p in prompts)
    assert len({p[:4] for p in prompts}) > 1  # the unique part leads, so no common cached prefix


def test_cache_prompt_sends_the_same_prompt(fake):
    one(f"{fake.url}/ok", RequestShape(n_predict=2, prompt="same prompt", cache_prompt=True, nonce=False))
    bodies = [orjson.loads(b) for b in fake.requests]
    assert {b["prompt"] for b in bodies} == {"same prompt"} and all(b["cache_prompt"] for b in bodies)


def test_in_flight_request_counts_only_its_tokens_inside_the_window(fake):
    """A request still streaming at the window's end is cancelled; its in-window tokens count."""
    now = time.monotonic()
    plan = StepPlan("closed", now, now + 0.4, now + 1.2, concurrency=1)
    part = run_plan([Target.parse(f"{fake.url}/trickle")], RequestShape(n_predict=10_000), plan)
    assert part.requests_ok == 0 and part.cancelled == 1 and part.errors == 0
    assert 0 < part.output_tokens < part.tokens_received  # warm-up tokens are received but not counted
    assert len(part.itl) > 0 and len(part.ttft) == 0


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("mode, cls", [("garbage", "bad_response"), ("badjson", "bad_response"),
                                       ("die", "truncated"), ("http503", "http_503")])
def test_errors_are_classified(fake, mode, cls):
    part = one(f"{fake.url}/{mode}", RequestShape(n_predict=8))
    assert part.errors >= 1 and set(part.errors_by_class) == {cls}, part.errors_by_class
    assert part.requests_ok == 0 and cls in part.error_examples


def test_truncated_stream_keeps_the_tokens_it_received(fake):
    part = one(f"{fake.url}/die", RequestShape(n_predict=8))
    n = part.errors_by_class["truncated"]
    assert part.tokens_received >= 3 * n  # 3 tokens before each drop
    assert part.per_upstream["127.0.0.1:2222"]["errors"] == n


def test_a_hanging_server_is_a_timeout(fake):
    part = one(f"{fake.url}/hang", RequestShape(n_predict=8, timeout_s=0.6), duration=2.0)
    assert part.errors_by_class == {"timeout": 1}, part.errors_by_class


def test_refused_connection_is_a_connect_error_after_one_retry():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    part = one(f"http://127.0.0.1:{port}", RequestShape(n_predict=4), duration=0.3)
    assert part.errors >= 1 and set(part.errors_by_class) == {"connect"}
    assert part.reconnects == 0  # retries that failed again are errors, not reconnects


def test_a_connection_closed_before_any_byte_is_retried_and_not_an_error(fake):
    part = one(f"{fake.url}/dropfirst", RequestShape(n_predict=4))
    assert part.errors == 0 and part.reconnects == 1 and part.requests_ok >= 1


# --------------------------------------------------------------------------------------------- open loop


def test_open_loop_latency_counts_from_the_intended_send_time(fake):
    """A server that serves one request per 0.2 s, offered 10/s, with at most one request in flight:
    arrivals wait in the client. Measured from the actual send, each request would take ~0.2 s;
    measured from its intended arrival, the queueing delay shows up (coordinated omission)."""
    now = time.monotonic()
    plan = StepPlan("open", now, now, now + 1.2, rate=10.0, seed=7, drain_s=30, max_inflight=1)
    part = run_plan([Target.parse(f"{fake.url}/slow")], RequestShape(n_predict=2), plan)
    assert part.errors == 0 and part.requests_ok >= 5
    e2e = part.e2e.summary()
    assert e2e["p50"] > 0.5 and e2e["p99"] > 1.0, e2e  # far above the 0.2 s service time
    # every request sent inside the window was awaited: none dropped
    assert part.requests_ok == part.requests_started


def test_open_loop_queueing_in_the_server_shows_in_e2e(fake):
    now = time.monotonic()
    plan = StepPlan("open", now, now, now + 1.0, rate=12.0, seed=3, drain_s=30)
    part = run_plan([Target.parse(f"{fake.url}/slow")], RequestShape(n_predict=2), plan)
    assert part.errors == 0 and part.requests_ok >= 5
    assert part.e2e.summary()["p95"] > 0.6


def test_open_loop_requests_not_done_by_the_drain_are_timeouts(fake):
    now = time.monotonic()
    plan = StepPlan("open", now, now, now + 0.5, rate=8.0, seed=1, drain_s=0.3)
    part = run_plan([Target.parse(f"{fake.url}/hang")], RequestShape(n_predict=2), plan)
    assert part.requests_ok == 0 and part.errors_by_class.get("timeout", 0) >= 1


# --------------------------------------------------------------------------------------------- plumbing


def test_partials_merge_and_survive_json():
    a, b = StepPartial(), StepPartial()
    a.requests_ok, b.requests_ok = 2, 3
    a.error("truncated", "x")
    b.error("truncated", "y")
    b.error("http_502", "z")
    a.ttft.extend([0.1, 0.2])
    b.ttft.extend([0.3])
    a.per_upstream["u1"] = {"requests_ok": 2, "errors": 1, "output_tokens": 10.0}
    b.per_upstream["u1"] = {"requests_ok": 3, "errors": 0, "output_tokens": 5.0}
    b.worker_cpu_s, b.worker_events = [0.5], [100]
    b2 = StepPartial.from_json(orjson.loads(orjson.dumps(b.to_json())))
    m = a.merge(b2)
    assert m.requests_ok == 5 and m.errors_by_class == {"truncated": 2, "http_502": 1}
    assert sorted(m.ttft.values) == [0.1, 0.2, 0.3]
    assert m.per_upstream["u1"] == {"requests_ok": 5, "errors": 1, "output_tokens": 15.0}
    assert m.worker_events == [100]


def test_target_parsing():
    t = Target.parse("127.0.0.1:8080/")
    assert (t.url, t.netloc, t.path) == ("http://127.0.0.1:8080", "127.0.0.1:8080", "")
    assert Target.parse("http://[::1]:9/llama").url == "http://[::1]:9/llama"
    assert Target.parse("https://localhost").port == 443
    with pytest.raises(UserError):
        Target.parse("ftp://x")


def test_request_bytes():
    req = RequestShape(n_predict=5, api_key="k" * 10).request(Target.parse("http://127.0.0.1:1/base"), "N1")
    head, _, body = req.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /base/completion HTTP/1.1\r\n") and b"Connection: close" in head
    assert b"Authorization: Bearer kkkkkkkkkk" in head and b"Content-Length: %d" % len(body) in head
    assert orjson.loads(body) == {"prompt": "N1: Tell me a story.", "n_predict": 5, "stream": True,
                                  "ignore_eos": True}


def test_loopback_source_streams_one_event_per_token():
    with Source(interval_s=0.001) as src:
        part = one(src.url, RequestShape(n_predict=50, nonce=False))
    assert part.requests_ok >= 1 and part.errors == 0
    assert part.output_tokens == pytest.approx(50 * part.requests_ok, abs=50)
