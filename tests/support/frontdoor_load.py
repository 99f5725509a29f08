"""A small async streaming load helper for the front-door tests and benchmarks/nginx_vs_client.py.

Closed loop: `concurrency` workers each send one streaming request after another until `duration`
runs out (or `requests` are sent), each on a FRESH connection (llama-server closes keep-alive
connections after streams, so reuse would manufacture errors). Every request ends as exactly one
of: ok, or a failure named precisely:

- "http NNN": the response status was not 200;
- "connect": the connection could not be opened;
- "truncated": the stream broke off, or ended without its stop event ([DONE] for chat);
- "timeout": no progress within the read timeout;
- "other TYPE": anything else.

Tokens are the server's counts: `timings.predicted_n` of the native stop event, or
`usage.completion_tokens` of a chat stream (asked with stream_options.include_usage). Only the last
event is parsed, so the client spends little CPU per token.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import orjson


@dataclass
class LoadResult:
    requests: int = 0
    ok: int = 0
    tokens: int = 0
    failures: Counter = field(default_factory=Counter)
    by_upstream: Counter = field(default_factory=Counter)  # X-Upstream of each ok response
    examples: list[str] = field(default_factory=list)  # the first few failures, described
    duration_s: float = 0.0
    cpu_s: float = 0.0  # this process's CPU time during the run

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def tok_s(self) -> float:
        return self.tokens / self.duration_s if self.duration_s else 0.0

    def describe(self) -> str:
        return (f"{self.requests} requests, {self.ok} ok, {self.failed} failed {dict(self.failures)}, "
                f"{self.tokens} tokens in {self.duration_s:.1f}s = {self.tok_s:.0f} tok/s, "
                f"client CPU {self.cpu_s:.1f}s; upstreams {dict(self.by_upstream)}; {self.examples[:3]}")


def _body(api: str, n_predict: int, nonce: int) -> tuple[str, dict]:
    prompt = f"Request {nonce}: tell me a story about a lighthouse keeper."
    if api == "chat":
        return "/v1/chat/completions", {
            "messages": [{"role": "user", "content": prompt}], "max_tokens": n_predict, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True}
    return "/completion", {"prompt": prompt, "n_predict": n_predict, "stream": True, "ignore_eos": True,
                           "cache_prompt": False}


def _last_event(tail: bytes) -> bytes | None:
    """The payload of the last complete `data:` event in the tail of an SSE body."""
    events = [e.strip() for e in tail.split(b"\n\n") if e.strip()]
    for ev in reversed(events):
        for line in ev.splitlines():
            if line.startswith(b"data:"):
                return line[5:].strip()
    return None


def _tokens(api: str, tail: bytes) -> int | None:
    """Server-counted tokens from a finished stream, or None when its stop event is missing."""
    if api == "chat":
        if _last_event(tail) != b"[DONE]":
            return None
        data = _last_event(tail[: tail.rindex(b"[DONE]")].rsplit(b"data:", 1)[0])
        try:
            return int(orjson.loads(data)["usage"]["completion_tokens"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
    data = _last_event(tail)
    try:
        ev = orjson.loads(data or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(ev, dict) or not ev.get("stop"):
        return None
    return int((ev.get("timings") or {}).get("predicted_n") or ev.get("tokens_predicted") or 0)


async def one_request(client: httpx.AsyncClient, base_url: str, api: str, n_predict: int, nonce: int,
                      headers: dict | None, res: LoadResult) -> None:
    path, body = _body(api, n_predict, nonce)
    res.requests += 1
    kind, detail = None, ""
    try:
        async with client.stream("POST", base_url + path, json=body, headers=headers) as r:
            if r.status_code != 200:
                await r.aread()
                kind, detail = f"http {r.status_code}", r.text[:200]
            else:
                tail = b""
                async for chunk in r.aiter_raw():
                    tail = (tail + chunk)[-4096:]
                n = _tokens(api, tail)
                if n is None:
                    kind, detail = "truncated", f"no stop event; tail {tail[-120:]!r}"
                else:
                    res.ok += 1
                    res.tokens += n
                    res.by_upstream[r.headers.get("x-upstream", "?")] += 1
    except httpx.ConnectError as exc:
        kind, detail = "connect", str(exc)
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
        kind, detail = "truncated", f"{type(exc).__name__}: {exc}"
    except httpx.TimeoutException as exc:
        kind, detail = "timeout", f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - counted and described, never hidden
        kind, detail = f"other {type(exc).__name__}", str(exc)
    if kind:
        res.failures[kind] += 1
        if len(res.examples) < 10:
            res.examples.append(f"{kind}: {detail}")


async def run_load(base_urls: str | list[str], concurrency: int, duration: float | None = None,
                   requests: int | None = None, n_predict: int = 64, api: str = "completion",
                   headers: dict | None = None, read_timeout: float = 120.0) -> LoadResult:
    """Closed-loop streaming load. Several `base_urls` are used in turn (client-side round robin)."""
    urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
    res = LoadResult()
    counter = itertools.count()
    deadline = time.monotonic() + duration if duration else None
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)  # a fresh connection per request
    timeout = httpx.Timeout(read_timeout, connect=10.0)

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                return
            n = next(counter)
            if requests is not None and n >= requests:
                return
            await one_request(client, urls[n % len(urls)], api, n_predict, n, headers, res)

    cpu0, t0 = time.process_time(), time.monotonic()
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    res.duration_s = time.monotonic() - t0
    res.cpu_s = time.process_time() - cpu0
    return res


def load(base_urls: str | list[str], concurrency: int, **kw) -> LoadResult:
    return asyncio.run(run_load(base_urls, concurrency, **kw))
