"""The streaming HTTP client: one request on one fresh connection, its HTTP response and SSE events
parsed as they arrive, every token handed to the step's `Tally` the moment its read delivers it.

How requests are made, and why:
- A small HTTP/1.1 client on `asyncio.Protocol`, one fresh connection per request (`Connection:
  close`). llama-server closes keep-alive connections after streamed responses (field notes), so a
  pooled connection fails on its next request; a fresh loopback connection costs a few tens of
  microseconds of client CPU (benchmarks/client_ceiling.py measures it).
- Tokens are counted from the server, never from chunks: the native `/completion` stream carries the
  cumulative `tokens_predicted` in every event (one event may carry several tokens), the stop event
  carries `timings.predicted_n`; the chat API's last chunk carries `usage.completion_tokens`.
- Timestamps are `time.monotonic()` at the read that delivered an event. Windows are absolute monotonic
  times, which every process on the machine shares, so worker processes agree on them.

This is the load generator's hot path (benchmarks/client_ceiling.py measures its ceiling): it does no
work per event beyond finding the event, decoding its JSON and telling the tally.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from llama_tui.core.bench.tally import Tally

monotonic = time.monotonic
_loads = orjson.loads

_HEAD, _CHUNKED, _LENGTH, _CLOSE, _DONE = range(5)
# Bytes asked of each recv. asyncio's default, 256 KiB, is above glibc's initial mmap threshold
# (128 KiB): until the process happens to raise that threshold, every read maps, shrinks and unmaps
# a buffer, which measured here as 1.5-2x the client's CPU per event, depending on what the process
# allocated before. 64 KiB always comes from the heap; an SSE event is a few hundred bytes.
READ_SIZE = 64 * 1024


class HttpStream(asyncio.Protocol):
    """One request on one fresh connection: writes it, frames the HTTP/1.1 response (status, headers; a
    chunked, sized or read-to-close body) and splits a streamed body into SSE events. What the events and
    bodies mean is the subclass's (`_event`, `_body_end`)."""

    # Slots: the parser reads and writes these on every event (a fixed offset each, no instance dict).
    __slots__ = ('tally', 'request', 'transport', 'done', 'state', 'buf', 'sse', 'chunk_left', 'crlf_left',
                 'length_left', 'collect', 'body', 'body_size', 'status', 'upstream', 'got_bytes', 'finished', 'error',
                 'detail', 'last_activity', 't_end')

    def __init__(self, tally: "Tally", loop: asyncio.AbstractEventLoop, request: bytes) -> None:
        self.tally = tally
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future = loop.create_future()
        self.state = _HEAD
        self.buf = b""
        self.sse = b""
        self.chunk_left = 0
        self.crlf_left = 0
        self.length_left = 0
        self.collect = not tally.stream  # gather the whole body (non-stream, or an HTTP error)
        self.body: list[bytes] = []
        self.body_size = 0
        self.status = 0
        self.upstream: str | None = None
        self.got_bytes = False
        self.finished = False
        self.error: str | None = None
        self.detail: str | None = None
        self.last_activity = monotonic()
        self.t_end: float | None = None

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.finished:  # cancelled while connecting
            transport.abort()
            return
        if getattr(transport, "max_size", None) is not None:  # plain sockets (TLS reads through its protocol)
            transport.max_size = READ_SIZE  # type: ignore[attr-defined]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.finished:
            return
        now = monotonic()
        self.last_activity = now
        self.got_bytes = True
        self.tally.reads += 1
        if self.state == _HEAD:
            buf = self.buf + data if self.buf else data
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                self.buf = buf
                if len(buf) > 65536:
                    self.fail("bad_response", "response header too long", now)
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
            self.fail("noresponse", f"connection closed before any response ({exc or 'EOF'})", now)
        else:
            self.fail("truncated", f"connection closed mid-response ({exc or 'EOF'})", now)

    # -- HTTP

    def _parse_head(self, head: bytes, now: float) -> bool:
        lines = head.split(b"\r\n")
        parts = lines[0].split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            self.fail("bad_response", f"not an HTTP response: {lines[0][:60]!r}", now)
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
                    self.fail("bad_response", "bad Content-Length", now)
                    return False
            elif name == b"x-upstream":
                # NGINX lists every backend it tried; the last one answered.
                self.upstream = value.decode("latin-1").split(",")[-1].strip() or None
            elif name == b"content-type":
                ctype = value.strip().lower()
        if self.status != 200 or (self.tally.stream and b"event-stream" not in ctype):
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
                self.fail("bad_response", "bad chunk size", now)
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

    def _event(self, ev: bytes, now: float) -> None:
        """One SSE event of a streamed body, without the blank line that ended it."""
        raise NotImplementedError

    def _body_end(self, now: float) -> None:
        """The response body is complete (its length, its last chunk, or the connection's end)."""
        raise NotImplementedError

    # -- endings

    def _complete(self, now: float) -> None:
        self.finished = True
        self.t_end = now
        if self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(None)

    def fail(self, cls: str, detail: str, now: float | None = None) -> None:
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


class Exchange(HttpStream):
    """One request to llama-server (native /completion or the OpenAI chat API): its events' tokens,
    usage and timings, counted into the step's tally."""

    __slots__ = ('intended', 'target_index', 't_first', 't_last', 'n', 'win_n', 'final_n', 'prompt_n', 'cache_n',
                 'reconnects', 'text')

    def __init__(self, tally: "Tally", loop: asyncio.AbstractEventLoop, request: bytes, intended: float,
                 target_index: int, keep_text: bool = False) -> None:
        super().__init__(tally, loop, request)
        self.intended = intended
        self.target_index = target_index
        self.t_first: float | None = None
        self.t_last = 0.0
        self.n = 0  # tokens so far (native: cumulative tokens_predicted; chat: content events)
        self.win_n = 0  # of which arrived inside the window
        self.final_n: int | None = None  # the server's own count at the end
        self.prompt_n: int | None = None
        self.cache_n: int | None = None
        self.reconnects = 0
        self.text: list[str] | None = [] if keep_text else None  # the reply's text (a conversation's history)

    # -- SSE events

    def _event(self, ev: bytes, now: float) -> None:
        if ev.startswith(b"data:"):
            payload = ev[5:].strip()
        elif ev.startswith(b"error:"):
            self.fail("server_error", ev[6:].strip()[:200].decode("utf-8", "replace"), now)
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
                self.fail("truncated", "stream ended without usage or content", now)
            else:
                self._complete(now)
            return
        try:
            obj = _loads(payload)
        except orjson.JSONDecodeError:
            self.fail("bad_response", f"unparseable event: {payload[:60]!r}", now)
            return
        if not isinstance(obj, dict):
            self.fail("bad_response", f"unexpected event: {payload[:60]!r}", now)
            return
        if self.tally.chat:
            self._chat_event(obj, now)
        else:
            self._native_event(obj, now)

    def _native_event(self, obj: dict, now: float) -> None:
        tp = obj.get("tokens_predicted")
        if self.text is not None and obj.get("content"):
            self.text.append(obj["content"])
        if obj.get("stop"):
            timings = obj.get("timings") or {}
            final = timings.get("predicted_n", tp)
            if isinstance(final, int):
                if final > self.n:
                    self.tally.add_tokens(self, final - self.n, now)
                self.final_n = final
            pn = timings.get("prompt_n")
            self.prompt_n = pn if isinstance(pn, int) else obj.get("tokens_evaluated")
            self.cache_n = timings.get("cache_n")
            self._complete(now)
            return
        if "error" in obj:
            self.fail("server_error", str(obj["error"])[:200], now)
            return
        if tp is not None:
            if tp > self.n:
                self.tally.add_tokens(self, tp - self.n, now)
        elif obj.get("content"):
            self.tally.add_tokens(self, 1, now)  # a server without tokens_predicted: one per event

    def _chat_event(self, obj: dict, now: float) -> None:
        choices = obj.get("choices")
        if choices:
            delta = choices[0].get("delta") or {}
            if delta.get("content") or delta.get("reasoning_content"):
                self.tally.add_tokens(self, 1, now)
                if self.text is not None and delta.get("content"):
                    self.text.append(delta["content"])
        usage = obj.get("usage")
        if usage:
            self._usage(obj, usage)
        if "error" in obj:
            self.fail("server_error", str(obj["error"])[:200], now)

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
            self.fail(f"http_{self.status}", text or f"HTTP {self.status}", now)
            return
        if self.collect:  # a whole JSON body: non-stream mode (or a server that ignored stream)
            try:
                obj = _loads(b"".join(self.body))
            except orjson.JSONDecodeError:
                self.fail("bad_response", "unparseable response body", now)
                return
            if not isinstance(obj, dict):
                self.fail("bad_response", "unexpected response body", now)
                return
            if "error" in obj:
                self.fail("server_error", str(obj["error"])[:200], now)
                return
            if self.tally.chat:
                self._usage(obj, obj.get("usage") or {})
                if self.text is not None:
                    self.text.append(str(((obj.get("choices") or [{}])[0].get("message") or {}).get("content") or ""))
            else:
                if self.text is not None:
                    self.text.append(str(obj.get("content") or ""))
                timings = obj.get("timings") or {}
                n = timings.get("predicted_n", obj.get("tokens_predicted"))
                self.final_n = n if isinstance(n, int) else None
                pn = timings.get("prompt_n")
                self.prompt_n = pn if isinstance(pn, int) else obj.get("tokens_evaluated")
                self.cache_n = timings.get("cache_n")
            if self.final_n is None:
                self.fail("bad_response", "response carries no token count", now)
                return
            self.tally.add_whole(self, self.final_n, now)
            self._complete(now)
            return
        # A stream that ended without its stop event / [DONE].
        if self.tally.chat and self.final_n is not None:
            self._complete(now)
        else:
            self.fail("truncated", "stream ended before its final event", now)
