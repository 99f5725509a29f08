"""The loopback SSE source: a stand-in for llama-server's native /completion stream, for calibrating the
client and for tests. Every `interval` each open stream gets its next event as its own small write, the
way llama-server sends one event per decode step.

Entry point: `python -m llama_tui.core.bench.source [--interval S] [PORT]` prints its port once
listening; `Source` runs it in a child process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys

import orjson

from llama_tui.core import paths


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
    """`python -m llama_tui.core.bench.source [--interval S] [PORT]`: serve native-API SSE streams on
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
        self.interval_s = interval_s
        self.proc = subprocess.Popen([sys.executable, "-m", "llama_tui.core.bench.source", "--interval",
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


if __name__ == "__main__":
    raise SystemExit(source_main(sys.argv[1:]))
