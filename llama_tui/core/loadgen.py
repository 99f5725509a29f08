"""The load generator: streaming HTTP requests against llama-server (or NGINX in front of it).

One `StepRunner` drives one step of load (closed loop at a concurrency, or open-loop Poisson arrivals
at a rate) on one asyncio event loop and returns a mergeable `StepPartial`. Several worker processes
(`python -m llama_tui.core.loadgen worker`) each run a share of a step; `core.bench` merges them.

How requests are made, and why:
- A small HTTP/1.1 client on `asyncio.Protocol`, one fresh connection per request (`Connection:
  close`). llama-server closes keep-alive connections after streamed responses (field notes), so a
  pooled connection fails on its next request; a fresh loopback connection costs a few tens of
  microseconds of client CPU (benchmarks/client_ceiling.py measures it).
- A request that fails before any response byte arrived (connection refused, reset or closed) is
  retried once on a fresh connection and counted in `reconnects`, not in errors.
- Tokens are counted from the server, never from chunks: the native `/completion` stream carries the
  cumulative `tokens_predicted` in every event (one event may carry several tokens), the stop event
  carries `timings.predicted_n`; the chat API's last chunk carries `usage.completion_tokens`.
- Timestamps are `time.monotonic()` at the read that delivered an event. Windows are absolute monotonic
  times, which every process on the machine shares, so worker processes agree on them.
- Latency is measured from the request's intended start: in a closed loop that is when the request
  was issued; in open-loop mode it is the scheduled Poisson arrival time, so a late send (client or
  queueing delay) shows up as latency instead of being omitted (coordinated omission).
- A closed-loop stream whose request failed within 50 ms waits 50 ms before the next one, so a target
  that refuses everything is not hammered in a tight loop (the errors are still counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import ssl as ssl_module
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import orjson

from llama_tui import __version__
from llama_tui.core import paths
from llama_tui.core.errors import UserError
from llama_tui.core.stats import Samples

ERROR_CLASSES = ("connect", "timeout", "truncated", "bad_response", "server_error")  # plus http_<status>
# How every reported figure is measured: written into each result's metadata and `bench --help`.
DEFINITIONS = {
    "ttft_ms": "time to first token: from the request's intended start (closed loop: when it was sent; open loop: "
               "its scheduled arrival) to the first event carrying a token (chat: the first content delta)",
    "itl_ms": "inter-token latency: each gap between consecutive token-carrying events of a request whose later "
              "event arrived inside the window; an event carrying k tokens gives k samples of gap/k "
              "(chat: per content chunk). Events that arrive in one socket read share a timestamp, so their "
              "gap is 0: ITL is resolved only to the client's read granularity (sub-ms tiny-model tokens "
              "often show p50 0.00)",
    "tpot_ms": "time per output token: (E2E - TTFT) / (n - 1) per request with n >= 2 tokens (vLLM's definition)",
    "e2e_ms": "end-to-end latency: from the intended start to the final event (last token) of the response",
    "output_tok_s": "tokens completed inside the window / window length. Tokens come from the server: the native "
                    "stream's cumulative tokens_predicted (an event may carry several), the stop event's "
                    "timings.predicted_n, the chat API's usage.completion_tokens (spread over its content chunks); "
                    "a request in flight at the window's end counts the tokens it received inside the window. "
                    "--no-stream: tokens of requests that completed inside the window",
    "latency_population": "closed loop: requests that finished inside the window; open loop: requests whose "
                          "intended start lies inside the window (all awaited, so slow ones are not dropped)",
    "requests_ok": "requests of the latency population that completed without error",
    "errors_by_class": "http_<status>, timeout (nothing received for --timeout s, or not finished within the "
                       "drain time), truncated (the stream ended before its final event), connect (no "
                       "connection or no response even after one retry), bad_response (not HTTP/SSE/JSON), "
                       "server_error (an error event)",
    "reconnects": "requests that failed before any response byte and succeeded on a fresh connection",
    "prompt_tokens": "prompt tokens the server processed (timings.prompt_n, excluding cached ones) of requests "
                     "that completed OK in the population; cache_n: prompt tokens served from llama-server's "
                     "prompt cache for the same requests",
    "server_output_tok_s": "delta of llamacpp:tokens_predicted_total summed over the instances behind the target, "
                           "read at the window's start and end, / the time between the reads. llama-server adds a "
                           "request's tokens when its slot is released, so it moves in steps of whole requests",
    "token_agreement_pct": "(tokens the client received during the whole step - the servers' counter delta over "
                           "the step) / that delta, in percent",
    "client_cpu_percent": "CPU time of the load generator's event-loop thread(s) inside the window / window "
                          "length (100 = one core)",
    "loop_lag_p99_ms": "p99 of how late a 10 ms timer fired on the load generator's event loop(s)",
    "valid": "false when the throughput may be the client's rather than the servers': a worker above 70% of its "
             "calibrated ceiling (events/s), a worker's CPU above 90% of a core, or a mean event-loop lag, beyond "
             "the probe's 1 ms resolution, above 5% of the mean request (requests started late, so the offered "
             "load fell short)",
    "latency_valid": "false when the client's event-loop lag p99 exceeds 25 ms: the latency percentiles then "
                     "include client scheduling delay (typically other processes, such as the fleet, holding the "
                     "cores); throughput is judged by `valid`",
}

monotonic = time.monotonic
_loads = orjson.loads


# --------------------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """One base URL the load goes to (a llama-server, or NGINX in front of several)."""

    url: str
    scheme: str
    host: str
    port: int
    path: str = ""  # base path prefix, without a trailing slash

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def parse(cls, url: str) -> "Target":
        text = url.strip()
        if "://" not in text:
            text = "http://" + text
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise UserError(f"bad URL {url!r}: {exc}", "write it as http://HOST:PORT") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"bad URL {url!r}", "write it as http://HOST:PORT (http or https)")
        if port is None:
            port = 443 if parts.scheme == "https" else 80
        path = parts.path.rstrip("/")
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        return cls(f"{parts.scheme}://{shown}:{port}{path}", parts.scheme, host, port, path)


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class RequestShape:
    """What every request of a step sends."""

    api: str = "completion"  # "completion" (native /completion) or "chat" (/v1/chat/completions)
    stream: bool = True
    n_predict: int = 128
    prompt: str = "Tell me a story."
    nonce: bool = True  # a unique prefix per request so llama-server's prompt cache is not hit
    cache_prompt: bool = False  # send cache_prompt: true (and no nonce) to measure cache reuse
    ignore_eos: bool = True  # fixed-length output
    api_key: str | None = None
    timeout_s: float = 120.0  # a request that receives nothing for this long is a timeout
    connect_timeout_s: float = 10.0
    model: str | None = None  # "model" field of chat requests (llama-server ignores it)

    @property
    def path(self) -> str:
        return "/completion" if self.api == "completion" else "/v1/chat/completions"

    def body(self, nonce: str | None) -> dict[str, Any]:
        prompt = f"{nonce}: {self.prompt}" if nonce else self.prompt
        if self.api == "completion":
            body: dict[str, Any] = {"prompt": prompt, "n_predict": self.n_predict, "stream": self.stream}
        else:
            body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": self.n_predict,
                    "stream": self.stream}
            if self.stream:
                body["stream_options"] = {"include_usage": True}
            if self.model:
                body["model"] = self.model
        if self.ignore_eos:
            body["ignore_eos"] = True
        if self.cache_prompt:
            body["cache_prompt"] = True
        return body

    def head(self, target: Target) -> bytes:
        """Request line and headers up to (not including) Content-Length."""
        lines = [
            f"POST {target.path}{self.path} HTTP/1.1",
            f"Host: {target.netloc}",
            f"User-Agent: llama-tui/{__version__}",
            "Content-Type: application/json",
            f"Accept: {'text/event-stream' if self.stream else 'application/json'}",
            "Connection: close",
        ]
        if self.api_key:
            lines.append(f"Authorization: Bearer {self.api_key}")
        return ("\r\n".join(lines) + "\r\n").encode()

    def request(self, target: Target, nonce: str | None) -> bytes:
        body = orjson.dumps(self.body(nonce if self.nonce and not self.cache_prompt else None))
        return self.head(target) + b"Content-Length: %d\r\n\r\n" % len(body) + body


# --------------------------------------------------------------------------------------------- one exchange

_HEAD, _CHUNKED, _LENGTH, _CLOSE, _DONE = range(5)


class _Exchange(asyncio.Protocol):
    """One request on one fresh connection: parse the HTTP response and the SSE events as they arrive."""

    def __init__(self, runner: "StepRunner", request: bytes, intended: float, target_index: int) -> None:
        self.runner = runner
        self.request = request
        self.intended = intended
        self.target_index = target_index
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future = runner.loop.create_future()
        self.state = _HEAD
        self.buf = b""
        self.sse = b""
        self.chunk_left = 0
        self.crlf_left = 0
        self.length_left = 0
        self.collect = not runner.shape.stream  # gather the whole body (non-stream, or an HTTP error)
        self.body: list[bytes] = []
        self.body_size = 0
        self.status = 0
        self.upstream: str | None = None
        self.got_bytes = False
        self.finished = False
        self.error: str | None = None
        self.detail: str | None = None
        self.last_activity = monotonic()
        self.t_first: float | None = None
        self.t_last = 0.0
        self.t_end: float | None = None
        self.n = 0  # tokens so far (native: cumulative tokens_predicted; chat: content events)
        self.win_n = 0  # of which arrived inside the window
        self.final_n: int | None = None  # the server's own count at the end
        self.prompt_n: int | None = None
        self.cache_n: int | None = None
        self.reconnects = 0

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.finished:  # cancelled while connecting
            transport.abort()
            return
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.finished:
            return
        now = monotonic()
        self.last_activity = now
        self.got_bytes = True
        self.runner.reads += 1
        if self.state == _HEAD:
            buf = self.buf + data if self.buf else data
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                self.buf = buf
                if len(buf) > 65536:
                    self._fail("bad_response", "response header too long", now)
                return
            self.buf = b""
            if not self._parse_head(buf[:i], now):
                return
            data = buf[i + 4:]
            if self.state == _LENGTH and self.length_left == 0:
                self._body_end(now)
                return
            if not data:
                return
        state = self.state
        if state == _CHUNKED:
            self._chunked(data, now)
        elif state == _LENGTH:
            if len(data) >= self.length_left:
                data = data[:self.length_left]
                self.length_left = 0
                self._payload(data, now)
                if not self.finished:
                    self._body_end(now)
            else:
                self.length_left -= len(data)
                self._payload(data, now)
        elif state == _CLOSE:
            self._payload(data, now)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.finished:
            return
        now = monotonic()
        if self.state == _CLOSE:
            self._body_end(now)
        elif not self.got_bytes:
            self._fail("noresponse", f"connection closed before any response ({exc or 'EOF'})", now)
        else:
            self._fail("truncated", f"connection closed mid-response ({exc or 'EOF'})", now)

    # -- HTTP

    def _parse_head(self, head: bytes, now: float) -> bool:
        lines = head.split(b"\r\n")
        parts = lines[0].split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            self._fail("bad_response", f"not an HTTP response: {lines[0][:60]!r}", now)
            return False
        self.status = int(parts[1])
        chunked = False
        length = -1
        ctype = b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    self._fail("bad_response", "bad Content-Length", now)
                    return False
            elif name == b"x-upstream":
                # NGINX lists every backend it tried; the last one answered.
                self.upstream = value.decode("latin-1").split(",")[-1].strip() or None
            elif name == b"content-type":
                ctype = value.strip().lower()
        if self.status != 200 or (self.runner.shape.stream and b"event-stream" not in ctype):
            self.collect = True
        if chunked:
            self.state = _CHUNKED
        elif length >= 0:
            self.state = _LENGTH
            self.length_left = length
        else:
            self.state = _CLOSE
        return True

    def _chunked(self, data: bytes, now: float) -> None:
        buf = self.buf + data if self.buf else data
        pos, n = 0, len(buf)
        while pos < n and not self.finished:
            if self.chunk_left:
                take = min(self.chunk_left, n - pos)
                self._payload(buf[pos:pos + take] if (pos or take != n) else buf, now)
                pos += take
                self.chunk_left -= take
                if not self.chunk_left:
                    self.crlf_left = 2
                continue
            if self.crlf_left:
                skip = min(self.crlf_left, n - pos)
                pos += skip
                self.crlf_left -= skip
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            try:
                size = int(buf[pos:eol].split(b";", 1)[0], 16)
            except ValueError:
                self._fail("bad_response", "bad chunk size", now)
                return
            pos = eol + 2
            if size == 0:
                self.state = _DONE
                self._body_end(now)
                return
            self.chunk_left = size
        self.buf = buf[pos:] if pos < n else b""

    def _payload(self, data: bytes, now: float) -> None:
        if self.collect:
            if self.body_size < 4 << 20:
                self.body.append(data)
                self.body_size += len(data)
            return
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        sse = self.sse + data if self.sse else data
        start = 0
        while True:
            j = sse.find(b"\n\n", start)
            if j < 0:
                break
            self._event(sse[start:j], now)
            if self.finished:
                return
            start = j + 2
        self.sse = sse[start:] if start < len(sse) else b""

    # -- SSE events

    def _event(self, ev: bytes, now: float) -> None:
        if ev.startswith(b"data:"):
            payload = ev[5:].strip()
        elif ev.startswith(b"error:"):
            self._fail("server_error", ev[6:].strip()[:200].decode("utf-8", "replace"), now)
            return
        else:
            payload = b""
            for line in ev.split(b"\n"):
                if line.startswith(b"data:"):
                    payload = line[5:].strip()
                    break
            if not payload:
                return  # comment or keep-alive line
        if payload == b"[DONE]":
            if self.final_n is None and not self.n:
                self._fail("truncated", "stream ended without usage or content", now)
            else:
                self._complete(now)
            return
        try:
            obj = _loads(payload)
        except orjson.JSONDecodeError:
            self._fail("bad_response", f"unparseable event: {payload[:60]!r}", now)
            return
        if not isinstance(obj, dict):
            self._fail("bad_response", f"unexpected event: {payload[:60]!r}", now)
            return
        if self.runner.chat:
            self._chat_event(obj, now)
        else:
            self._native_event(obj, now)

    def _native_event(self, obj: dict, now: float) -> None:
        tp = obj.get("tokens_predicted")
        if obj.get("stop"):
            timings = obj.get("timings") or {}
            final = timings.get("predicted_n", tp)
            if isinstance(final, int):
                if final > self.n:
                    self.runner._tokens(self, final - self.n, now)
                self.final_n = final
            pn = timings.get("prompt_n")
            self.prompt_n = pn if isinstance(pn, int) else obj.get("tokens_evaluated")
            self.cache_n = timings.get("cache_n")
            self._complete(now)
            return
        if "error" in obj:
            self._fail("server_error", str(obj["error"])[:200], now)
            return
        if tp is not None:
            if tp > self.n:
                self.runner._tokens(self, tp - self.n, now)
        elif obj.get("content"):
            self.runner._tokens(self, 1, now)  # a server without tokens_predicted: one per event

    def _chat_event(self, obj: dict, now: float) -> None:
        choices = obj.get("choices")
        if choices:
            delta = choices[0].get("delta") or {}
            if delta.get("content") or delta.get("reasoning_content"):
                self.runner._tokens(self, 1, now)
        usage = obj.get("usage")
        if usage:
            self._usage(obj, usage)
        if "error" in obj:
            self._fail("server_error", str(obj["error"])[:200], now)

    def _usage(self, obj: dict, usage: dict) -> None:
        ct = usage.get("completion_tokens")
        if isinstance(ct, int):
            self.final_n = ct
        timings = obj.get("timings") or {}
        cached = timings.get("cache_n")
        if cached is None:
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        self.cache_n = cached
        pn = timings.get("prompt_n")
        if pn is None and isinstance(usage.get("prompt_tokens"), int):
            pn = usage["prompt_tokens"] - (cached or 0)
        self.prompt_n = pn

    def _body_end(self, now: float) -> None:
        if self.finished:
            return
        if self.status != 200:
            text = b"".join(self.body)[:300].decode("utf-8", "replace").strip()
            self._fail(f"http_{self.status}", text or f"HTTP {self.status}", now)
            return
        if self.collect:  # a whole JSON body: non-stream mode (or a server that ignored stream)
            try:
                obj = _loads(b"".join(self.body))
            except orjson.JSONDecodeError:
                self._fail("bad_response", "unparseable response body", now)
                return
            if not isinstance(obj, dict):
                self._fail("bad_response", "unexpected response body", now)
                return
            if "error" in obj:
                self._fail("server_error", str(obj["error"])[:200], now)
                return
            if self.runner.chat:
                self._usage(obj, obj.get("usage") or {})
            else:
                timings = obj.get("timings") or {}
                n = timings.get("predicted_n", obj.get("tokens_predicted"))
                self.final_n = n if isinstance(n, int) else None
                pn = timings.get("prompt_n")
                self.prompt_n = pn if isinstance(pn, int) else obj.get("tokens_evaluated")
                self.cache_n = timings.get("cache_n")
            if self.final_n is None:
                self._fail("bad_response", "response carries no token count", now)
                return
            self.runner._whole(self, self.final_n, now)
            self._complete(now)
            return
        # A stream that ended without its stop event / [DONE].
        if self.runner.chat and self.final_n is not None:
            self._complete(now)
        else:
            self._fail("truncated", "stream ended before its final event", now)

    # -- endings

    def _complete(self, now: float) -> None:
        self.finished = True
        self.t_end = now
        if self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(None)

    def _fail(self, cls: str, detail: str, now: float | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        self.error = cls
        self.detail = detail
        self.t_end = now if now is not None else monotonic()
        if self.transport is not None:
            self.transport.abort()
        if not self.done.done():
            self.done.set_result(None)

    def cancel(self, cls: str, detail: str) -> None:
        self._fail(cls, detail)


# --------------------------------------------------------------------------------------------- step plans and results


@dataclass
class StepPlan:
    """One worker's share of a step, on the machine-wide monotonic clock."""

    mode: str  # "closed" or "open"
    t_start: float  # load starts (warm-up begins)
    t_window: float  # warm-up ends, the measured window begins
    t_end: float  # the window ends
    concurrency: int = 0  # closed loop: streams this worker keeps in flight
    rate: float = 0.0  # open loop: this worker's arrivals per second
    drain_s: float = 60.0  # open loop: how long requests sent inside the window may still finish
    seed: int = 0
    worker: int = 0
    target_offset: int = 0
    max_inflight: int = 10000  # open loop: beyond this, arrivals queue in the client (latency still counts)


@dataclass
class LiveCounters:
    """What a worker reports every ~0.5 s while a step runs (cumulative within the step)."""

    worker: int
    t: float
    tokens: int
    inflight: int
    done: int
    errors: int
    ttft_new: list[float] = field(default_factory=list)


def _upstream_entry() -> dict[str, Any]:
    return {"requests_ok": 0, "errors": 0, "output_tokens": 0.0}


@dataclass
class StepPartial:
    """What one worker measured in one step. `merge` adds another worker's; nothing is averaged."""

    window_s: float = 0.0
    requests_started: int = 0
    requests_ok: int = 0
    errors_by_class: dict[str, int] = field(default_factory=dict)
    error_examples: dict[str, str] = field(default_factory=dict)
    errors_outside_window: int = 0
    reconnects: int = 0
    cancelled: int = 0
    output_tokens: float = 0.0
    prompt_tokens: int = 0
    cache_n: int = 0
    window_events: int = 0
    window_reads: int = 0
    tokens_received: int = 0  # every token every request received during the whole step
    ttft: Samples = field(default_factory=Samples)
    itl: Samples = field(default_factory=Samples)
    tpot: Samples = field(default_factory=Samples)
    e2e: Samples = field(default_factory=Samples)
    loop_lag: Samples = field(default_factory=Samples)
    per_upstream: dict[str, dict[str, Any]] = field(default_factory=dict)
    worker_cpu_s: list[float] = field(default_factory=list)
    worker_events: list[int] = field(default_factory=list)

    SAMPLE_FIELDS = ("ttft", "itl", "tpot", "e2e", "loop_lag")

    @property
    def errors(self) -> int:
        return sum(self.errors_by_class.values())

    def error(self, cls: str, detail: str | None) -> None:
        self.errors_by_class[cls] = self.errors_by_class.get(cls, 0) + 1
        if detail and cls not in self.error_examples:
            self.error_examples[cls] = detail

    def merge(self, other: "StepPartial") -> "StepPartial":
        self.window_s = max(self.window_s, other.window_s)
        for name in ("requests_started", "requests_ok", "errors_outside_window", "reconnects", "cancelled",
                     "output_tokens", "prompt_tokens", "cache_n", "window_events", "window_reads", "tokens_received"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for cls, n in other.errors_by_class.items():
            self.errors_by_class[cls] = self.errors_by_class.get(cls, 0) + n
        for cls, d in other.error_examples.items():
            self.error_examples.setdefault(cls, d)
        for name in self.SAMPLE_FIELDS:
            getattr(self, name).merge(getattr(other, name))
        for addr, entry in other.per_upstream.items():
            mine = self.per_upstream.setdefault(addr, _upstream_entry())
            for k, v in entry.items():
                mine[k] = mine.get(k, 0) + v
        self.worker_cpu_s.extend(other.worker_cpu_s)
        self.worker_events.extend(other.worker_events)
        return self

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in self.SAMPLE_FIELDS}
        for name in self.SAMPLE_FIELDS:
            out[name] = getattr(self, name).encode()
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "StepPartial":
        kw = {k: v for k, v in d.items() if k not in cls.SAMPLE_FIELDS}
        part = cls(**kw)
        for name in cls.SAMPLE_FIELDS:
            setattr(part, name, Samples.decode(d.get(name, "")))
        return part


# --------------------------------------------------------------------------------------------- the runner


class StepRunner:
    """Runs one StepPlan on the current event loop. `request_stop()` may be called from any thread."""

    TICK_S = 0.5
    LAG_PERIOD_S = 0.01

    def __init__(self, targets: list[Target], shape: RequestShape, plan: StepPlan,
                 on_live: Callable[[LiveCounters], None] | None = None) -> None:
        if not targets:
            raise UserError("no target URL", "pass --url http://HOST:PORT")
        self.targets = targets
        self.shape = shape
        self.plan = plan
        self.on_live = on_live
        self.chat = shape.api == "chat"
        self.tw = plan.t_window
        self.te = plan.t_end
        self.part = StepPartial()
        self.inflight: set[_Exchange] = set()
        self.tasks: set[asyncio.Task] = set()
        self.arrivals: dict[asyncio.Task, float] = {}  # open loop: pending arrival -> intended time
        self.stopping = False
        self.drain_expired = False
        self.window_closed = False
        self.live_tokens = 0
        self.live_done = 0
        self.live_errors = 0
        self.events = 0
        self.reads = 0
        self._reads0 = 0
        self.ttft_new: list[float] = []
        self._seq = 0
        self._rr = plan.target_offset
        # Nonces never repeat across runs (a fixed --seed only fixes arrivals). The unique part comes first:
        # llama-server reuses the longest common prefix of a slot's previous prompt.
        self._nonce_rng = random.Random(os.urandom(16))
        self._cpu0: float | None = None
        self._events0 = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_evt: asyncio.Event | None = None
        self._addrs: list[tuple[str, int]] = []
        self._ssl: list[ssl_module.SSLContext | None] = []

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    # -- accounting, called from _Exchange

    def _tokens(self, ex: _Exchange, k: int, now: float) -> None:
        self.live_tokens += k
        self.events += 1
        inside = self.tw <= now < self.te
        if ex.t_first is None:
            ex.t_first = now
        elif inside:
            gap = (now - ex.t_last) / k
            itl = self.part.itl.values
            if k == 1:
                itl.append(gap)
            else:
                itl.extend((gap,) * k)
        if inside:
            ex.win_n += k
        ex.n += k
        ex.t_last = now

    def _whole(self, ex: _Exchange, n: int, now: float) -> None:
        """A non-streamed response: all of its tokens arrive at once, at its end."""
        self.live_tokens += n
        self.events += 1
        ex.n = n
        if self.tw <= now < self.te:
            ex.win_n = n

    def _finish(self, ex: _Exchange) -> None:
        part = self.part
        t_end = ex.t_end if ex.t_end is not None else monotonic()
        ok = ex.error is None
        if self.chat and self.shape.stream and ex.final_n is not None:
            # Chat chunks may carry several tokens: spread the server's count over the content chunks.
            if ex.n:
                win_tokens = ex.final_n * ex.win_n / ex.n
            else:
                win_tokens = float(ex.final_n) if self.tw <= t_end < self.te else 0.0
            received = ex.final_n
        else:
            win_tokens = float(ex.win_n)
            received = ex.n
        part.output_tokens += win_tokens
        part.tokens_received += received
        if win_tokens:
            self._upstream(ex)["output_tokens"] += win_tokens
        if ok:
            self.live_done += 1
        elif ex.error != "cancelled":
            self.live_errors += 1
        if self.plan.mode == "open":
            in_pop = self.tw <= ex.intended < self.te
        else:
            in_pop = ex.error != "cancelled" and self.tw <= t_end < self.te
        if ex.error == "cancelled":
            part.cancelled += 1
            return
        if not in_pop:
            if not ok:
                part.errors_outside_window += 1
            return
        if not ok:
            part.error(ex.error or "unknown", ex.detail)
            self._upstream(ex)["errors"] += 1
            return
        part.requests_ok += 1
        part.reconnects += ex.reconnects  # it failed before any byte, then succeeded on a fresh connection
        self._upstream(ex)["requests_ok"] += 1
        e2e = t_end - ex.intended
        part.e2e.add(e2e)
        n = ex.final_n if ex.final_n is not None else ex.n
        if ex.t_first is not None and self.shape.stream:
            ttft = ex.t_first - ex.intended
            part.ttft.add(ttft)
            self.ttft_new.append(ttft)
            if n >= 2:
                part.tpot.add((e2e - ttft) / (n - 1))
        if isinstance(ex.prompt_n, int):
            part.prompt_tokens += ex.prompt_n
        if isinstance(ex.cache_n, int):
            part.cache_n += ex.cache_n

    def _upstream(self, ex: _Exchange) -> dict[str, Any]:
        """Per-backend counters: NGINX's X-Upstream, else the target the request went to."""
        addr = ex.upstream or self.targets[ex.target_index].netloc
        up = self.part.per_upstream.get(addr)
        if up is None:
            up = self.part.per_upstream[addr] = _upstream_entry()
        return up

    # -- requests

    def _next_target(self) -> int:
        i = self._rr % len(self.targets)
        self._rr += 1
        return i

    async def _request(self, intended: float) -> None:
        ti = self._next_target()
        target = self.targets[ti]
        host, port = self._addrs[ti]
        self._seq += 1
        payload = self.shape.request(target, f"{self._nonce_rng.getrandbits(48):012x}-{self.plan.worker}-{self._seq}")
        self.part.requests_started += 1
        reconnects = 0
        ex: _Exchange | None = None
        try:
            for attempt in (0, 1):
                ex = _Exchange(self, payload, intended, ti)
                ex.reconnects = reconnects
                self.inflight.add(ex)
                try:
                    try:
                        async with asyncio.timeout(self.shape.connect_timeout_s):
                            await self.loop.create_connection(lambda ex=ex: ex, host, port, ssl=self._ssl[ti],
                                                              server_hostname=target.host if self._ssl[ti] else None)
                    except (OSError, TimeoutError, ssl_module.SSLError) as exc:
                        ex._fail("noresponse", f"cannot connect to {target.netloc}: {exc or type(exc).__name__}")
                    await ex.done
                finally:
                    self.inflight.discard(ex)
                if ex.error == "noresponse" and attempt == 0 and not self.stopping:
                    reconnects += 1
                    continue
                break
        except asyncio.CancelledError:
            if ex is not None and not ex.finished:
                late = self.drain_expired and self.tw <= ex.intended < self.te
                ex._fail("timeout" if late else "cancelled",
                         "not finished within the drain time" if late else "in flight when the step ended")
            if ex is not None:
                ex.reconnects = reconnects
                self._finish(ex)
            raise
        assert ex is not None
        if ex.error == "noresponse":
            ex.error = "connect"
        ex.reconnects = reconnects
        self._finish(ex)

    async def _closed_stream(self) -> None:
        while not self.stopping:
            t0 = monotonic()
            ex_errors = self.live_errors
            await self._request(t0)
            if self.live_errors != ex_errors and monotonic() - t0 < 0.05:
                await asyncio.sleep(0.05)  # do not spin on a target that refuses at once

    async def _open_arrival(self, intended: float, sem: asyncio.Semaphore) -> None:
        try:
            await sem.acquire()
        except asyncio.CancelledError:  # still queued in the client when the step ended
            if self.drain_expired and self.tw <= intended < self.te:
                self.part.error("timeout", "queued in the client (in-flight cap) past the drain time")
            else:
                self.part.cancelled += 1
            raise
        try:
            await self._request(intended)
        finally:
            sem.release()

    async def _open_scheduler(self) -> None:
        rng = random.Random(self.plan.seed)
        sem = asyncio.Semaphore(self.plan.max_inflight)
        t = self.plan.t_start
        rate = self.plan.rate
        while not self.stopping:
            t += rng.expovariate(rate)
            if t >= self.te:
                break
            delay = t - monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.stopping:
                break
            task = self.loop.create_task(self._open_arrival(t, sem))
            self.tasks.add(task)
            self.arrivals[task] = t
            task.add_done_callback(self._arrival_done)

    def _arrival_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        self.arrivals.pop(task, None)

    # -- the clock

    def _open_window(self) -> None:
        self._cpu0 = time.thread_time()
        self._events0 = self.events
        self._reads0 = self.reads

    def _close_window(self) -> None:
        if self.window_closed:
            return
        self.window_closed = True
        now = monotonic()
        if now < self.te:
            self.te = max(now, self.tw)  # stopped early: the window ends now
        self.part.window_s = max(0.0, self.te - self.tw)
        if self._cpu0 is not None:
            self.part.worker_cpu_s.append(time.thread_time() - self._cpu0)
            self.part.worker_events.append(self.events - self._events0)
            self.part.window_reads += self.reads - self._reads0
        else:
            self.part.worker_cpu_s.append(0.0)
            self.part.worker_events.append(0)

    async def _lag_probe(self) -> None:
        period = self.LAG_PERIOD_S
        while True:
            t0 = monotonic()
            await asyncio.sleep(period)
            t1 = monotonic()
            if self.tw <= t1 < self.te and not self.window_closed:
                self.part.loop_lag.add(max(0.0, t1 - t0 - period))

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.TICK_S)
            now = monotonic()
            timeout = self.shape.timeout_s
            for ex in list(self.inflight):
                if now - ex.last_activity > timeout:
                    ex.cancel("timeout", f"nothing received for {timeout:g} s")
            self.emit_live(now)

    def emit_live(self, now: float | None = None) -> None:
        if self.on_live is None:
            return
        new, self.ttft_new = self.ttft_new, []
        self.on_live(LiveCounters(self.plan.worker, now or monotonic(), self.live_tokens, len(self.inflight),
                                  self.live_done, self.live_errors, new))

    def request_stop(self) -> None:
        """End the step now (thread-safe): the window closes early and in-flight requests are cancelled."""
        loop, evt = self._loop, self._stop_evt
        if loop is None or evt is None:
            self.stopping = True
            return
        loop.call_soon_threadsafe(evt.set)

    async def _wait_until(self, t: float) -> None:
        assert self._stop_evt is not None
        delay = t - monotonic()
        if delay > 0 and not self._stop_evt.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop_evt.wait()

    def _resolve(self) -> None:
        for t in self.targets:
            host = t.host
            try:
                infos = socket.getaddrinfo(host, t.port, type=socket.SOCK_STREAM)
                host = infos[0][4][0] if infos else host
            except OSError:
                pass  # connecting will report it
            self._addrs.append((host, t.port))
            if t.scheme == "https":
                ctx = ssl_module.create_default_context()
                if is_loopback(t.host):
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl_module.CERT_NONE
                self._ssl.append(ctx)
            else:
                self._ssl.append(None)

    async def run(self) -> StepPartial:
        self._loop = asyncio.get_running_loop()
        self._stop_evt = asyncio.Event()
        if self.stopping:
            self._stop_evt.set()
        self._resolve()
        loop = self.loop
        plan = self.plan
        now = monotonic()
        if plan.t_window <= now:
            self._open_window()
        else:
            loop.call_later(plan.t_window - now, self._open_window)
        helpers = [loop.create_task(self._ticker()), loop.create_task(self._lag_probe())]
        try:
            await self._wait_until(plan.t_start)
            if plan.mode == "closed":
                for _ in range(plan.concurrency):
                    task = loop.create_task(self._closed_stream())
                    self.tasks.add(task)
            else:
                scheduler = loop.create_task(self._open_scheduler())
                self.tasks.add(scheduler)
            await self._wait_until(self.te)
            if monotonic() < self.tw:  # stopped during warm-up
                self._open_window()
            self._close_window()
            if plan.mode == "open" and not self._stop_evt.is_set():
                scheduler.cancel()
                self.tasks.discard(scheduler)
                await self._drain(self.te + plan.drain_s)
            self.stopping = True
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
        finally:
            self.stopping = True
            for h in helpers:
                h.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            for ex in list(self.inflight):
                ex.cancel("cancelled", "step ended")
        self.emit_live()
        return self.part

    async def _drain(self, deadline: float) -> None:
        """Open loop: wait until every request sent inside the window has finished (or the deadline)."""
        assert self._stop_evt is not None
        while not self._stop_evt.is_set():
            if not any(not t.done() and self.tw <= i < self.te for t, i in self.arrivals.items()):
                return
            left = deadline - monotonic()
            if left <= 0:
                self.drain_expired = True
                return
            await asyncio.sleep(min(0.05, left))


def run_plan(targets: list[Target], shape: RequestShape, plan: StepPlan,
             on_live: Callable[[LiveCounters], None] | None = None,
             runner_ready: Callable[[StepRunner], None] | None = None) -> StepPartial:
    """Run one plan to completion from synchronous code (a fresh event loop; a helper thread when the
    caller's thread already runs one)."""
    runner = StepRunner(targets, shape, plan, on_live)
    if runner_ready is not None:
        runner_ready(runner)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(runner.run())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = asyncio.run(runner.run())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target, name="llama-tui-loadgen", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


# --------------------------------------------------------------------------------------------- worker process


def json_lines(stream: Any) -> Iterator[dict[str, Any]]:
    """The JSON objects of a line-per-object stream (the pipes between bench processes); other lines are skipped."""
    for line in stream:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            yield obj


def _write(obj: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(obj) + b"\n")
    sys.stdout.buffer.flush()


def worker_main() -> int:
    """A load worker: reads one JSON command per line on stdin, writes JSON lines on stdout.

    {"cmd": "step", "targets": [...], "shape": {...}, "plan": {...}} runs a step, streaming
    {"t": "live", ...} every 0.5 s and then {"t": "partial", ...}; {"cmd": "stop"} ends a running step
    early; {"cmd": "exit"} or end of input exits (so a worker never outlives its parent's pipe).
    """
    lock = threading.Lock()
    current: dict[str, Any] = {}

    def live(c: LiveCounters) -> None:
        with lock:
            _write({"t": "live", **asdict(c)})

    def run_step(cmd: dict[str, Any]) -> None:
        try:
            targets = [Target(**t) for t in cmd["targets"]]
            shape = RequestShape(**cmd["shape"])
            plan = StepPlan(**cmd["plan"])
            part = run_plan(targets, shape, plan, live, runner_ready=lambda r: current.__setitem__("runner", r))
            with lock:
                _write({"t": "partial", "partial": part.to_json()})
        except Exception as exc:  # report, do not die silently
            with lock:
                _write({"t": "error", "error": f"{type(exc).__name__}: {exc}"})
        finally:
            current.pop("runner", None)

    thread: threading.Thread | None = None
    for cmd in json_lines(sys.stdin.buffer):
        what = cmd.get("cmd")
        if what == "step":
            if thread is not None:
                thread.join()
            thread = threading.Thread(target=run_step, args=(cmd,), daemon=True)
            thread.start()
        elif what == "stop":
            runner = current.get("runner")
            if runner is not None:
                runner.request_stop()
        elif what == "exit":
            break
    runner = current.get("runner")
    if runner is not None:
        runner.request_stop()
    if thread is not None:
        thread.join(timeout=5)
    return 0


# --------------------------------------------------------------------------------------------- loopback SSE source


_SOURCE_EVENT = (b'data: {"index":0,"content":"x","tokens":[120],"stop":false,"id_slot":-1,'
                 b'"tokens_predicted":%d,"tokens_evaluated":%d}\n\n')
_SOURCE_STOP = (b'data: {"index":0,"content":"","tokens":[],"id_slot":0,"stop":true,"tokens_predicted":%d,'
                b'"tokens_evaluated":%d,"stop_type":"limit","timings":{"cache_n":0,"prompt_n":%d,'
                b'"prompt_ms":0.1,"predicted_n":%d,"predicted_ms":1.0}}\n\n')


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _SourceConn(asyncio.Protocol):
    """One connection to the loopback source: read a request, then stream `n_predict` native events."""

    def __init__(self, pump: "_SourcePump") -> None:
        self.pump = pump
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.n = 0
        self.i = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.n:
            return
        self.buf += data
        head_end = self.buf.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = self.buf[:head_end]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip() or 0)
        body = self.buf[head_end + 4:]
        if len(body) < length:
            return
        assert self.transport is not None
        if head.startswith(b"GET"):
            text = b'{"status":"ok"}'
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                                 b"Connection: close\r\n\r\n%s" % (len(text), text))
            self.transport.close()
            return
        try:
            self.n = max(1, int(orjson.loads(body).get("n_predict", 16)))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            self.n = 16
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        self.pump.add(self)

    def step(self) -> bool:
        """Write the next event; True when the stream is finished."""
        t = self.transport
        if t is None or t.is_closing():
            return True
        self.i += 1
        if self.i < self.n:
            t.write(_chunk(_SOURCE_EVENT % (self.i, 16)))
            return False
        t.write(_chunk(_SOURCE_EVENT % (self.i, 16)))
        t.write(_chunk(_SOURCE_STOP % (self.n, 16, 16, self.n)) + b"0\r\n\r\n")
        t.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.pump.discard(self)


class _SourcePump:
    """Every `interval_s`, every open stream gets its next token as its own small write, the way
    llama-server sends one event per decode step. interval 0: as fast as the loop turns."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.streams: dict[_SourceConn, None] = {}
        self.loop = asyncio.get_running_loop()
        self.next_t = self.loop.time()
        self.scheduled = False

    def add(self, conn: _SourceConn) -> None:
        self.streams[conn] = None
        if not self.scheduled:
            self.scheduled = True
            self.next_t = self.loop.time() + self.interval_s
            self.loop.call_at(self.next_t, self.tick)

    def discard(self, conn: _SourceConn) -> None:
        self.streams.pop(conn, None)

    def tick(self) -> None:
        for conn in list(self.streams):
            if conn.step():
                self.streams.pop(conn, None)
        if not self.streams:
            self.scheduled = False
            return
        now = self.loop.time()
        self.next_t = max(self.next_t + self.interval_s, now)
        self.loop.call_at(self.next_t, self.tick)


def source_main(argv: list[str]) -> int:
    """`python -m llama_tui.core.loadgen source [--interval S] [PORT]`: serve native-API SSE streams on
    loopback, one write per token; prints the port on stdout once listening."""
    interval = 0.002
    port = 0
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--interval":
            interval = float(args.pop(0))
        else:
            port = int(a)

    async def serve() -> None:
        pump = _SourcePump(interval)
        server = await asyncio.get_running_loop().create_server(lambda: _SourceConn(pump), "127.0.0.1", port,
                                                                backlog=2048)
        print(server.sockets[0].getsockname()[1], flush=True)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


class Source:
    """The loopback SSE source in a child process (its own process group), for calibration and tests."""

    def __init__(self, interval_s: float = 0.002) -> None:
        import subprocess

        self.interval_s = interval_s
        self.proc = subprocess.Popen([sys.executable, "-m", "llama_tui.core.loadgen", "source", "--interval",
                                      str(interval_s)],
                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=paths.owner_env(),
                                     start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.close()
            raise RuntimeError("the loopback SSE source did not start")
        self.port = int(line)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        import signal

        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        import signal

        # Ctrl-C reaches the whole foreground group: the parent stops its workers over the pipe instead.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
            return worker_main()
        return 130
    if argv and argv[0] == "source":
        return source_main(argv[1:])
    print("usage: python -m llama_tui.core.loadgen worker|source [PORT]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
