"""The one client for llama-server's and NGINX's own endpoints: /health, /props, /slots, /metrics, and
NGINX's stub_status.

Readiness is `/health` answering 200 (503 while the model loads), not an open port. Every call has a
short timeout and turns connection trouble into None rather than an exception, because a monitor
polling many instances must not stall on one sick instance.

It is the standard library's http.client over kept-alive connections, one per server and reused: the
TUI polls /slots and /metrics of 16+ instances every second, and a kept-alive http.client connection
costs about half the CPU of a fresh one, less again than a full async client
(`benchmarks/monitor_cost.py`). llama-server closes connections after streams: a reused connection
that fails is retried once on a fresh one; a fresh one that fails is not. A server is named by its
base URL, `http://HOST:PORT`, or `unix:/PATH` for a unix socket (NGINX's private status listener).
With `api_key`, every request carries `Authorization: Bearer KEY` (llama-server started with a key
answers /slots, /metrics and /props only with it; /health stays open).
"""

from __future__ import annotations

import functools
import http.client
import math
import socket
import threading
from dataclasses import dataclass
from typing import Any, Iterable
from urllib.parse import urlsplit

import orjson

DEFAULT_TIMEOUT = 2.0  # seconds to wait for an answer
DEFAULT_CONNECT_TIMEOUT = 0.5

# Counters and gauges from `--metrics` (names vary between builds: missing names are tolerated).
TOKENS_PREDICTED_TOTAL = "llamacpp:tokens_predicted_total"
PROMPT_TOKENS_TOTAL = "llamacpp:prompt_tokens_total"
REQUESTS_PROCESSING = "llamacpp:requests_processing"
REQUESTS_DEFERRED = "llamacpp:requests_deferred"
PREDICTED_TOKENS_SECONDS = "llamacpp:predicted_tokens_seconds"


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text format -> {metric name: value}. Labelled series of one name are summed."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, _, rest = line.partition("{")
            rest = rest.rsplit("}", 1)[-1]
        else:
            name, _, rest = line.partition(" ")
        parts = rest.split()
        if not parts:
            continue
        try:
            value = float(parts[0])
        except ValueError:
            continue
        if math.isnan(value):
            continue
        out[name] = out.get(name, 0.0) + value
    return out


@dataclass(frozen=True)
class SlotsSummary:
    total: int
    busy: int


def summarize_slots(slots: Any) -> SlotsSummary | None:
    if not isinstance(slots, list):
        return None
    busy = sum(1 for s in slots if isinstance(s, dict) and (s.get("is_processing") or s.get("state") == 1))
    return SlotsSummary(total=len(slots), busy=busy)


def base_url(host: str, port: int) -> str:
    h = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{h}:{port}"


def unix_url(path: object) -> str:
    """The base URL of a server listening on the unix socket `path`."""
    return f"unix:{path}"


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes


# ------------------------------------------------------------------------------------------- connections


class _TcpConnection(http.client.HTTPConnection):
    """http.client with its own connect timeout (a dead host fails fast; a slow answer may take longer)."""

    def __init__(self, host: str, port: int, timeout: float, connect_timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.connect_timeout = connect_timeout

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.connect_timeout)
        sock.settimeout(self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


Address = tuple[str, str, int] | str  # (scheme, host, port), or a unix socket's path


@functools.lru_cache(maxsize=1024)
def _address(base: str) -> Address | None:
    """Where a base URL points (None when it is not an http://, https:// or unix: URL)."""
    if base.startswith("unix:"):
        return base[len("unix:"):]
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    return parts.scheme, parts.hostname, port


class Probe:
    """The client. Thread-safe: each request takes a connection of its own from the idle pool."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
                 api_key: str | None = None, keep_alive: bool = True) -> None:
        self.timeout = timeout
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self.keep_alive = keep_alive
        self._headers: dict[str, str] = {} if keep_alive else {"Connection": "close"}
        self.set_api_key(api_key)
        self._idle: dict[Address, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    def set_api_key(self, api_key: str | None) -> None:
        """Send `Authorization: Bearer KEY` from now on (None: no Authorization)."""
        headers = {k: v for k, v in self._headers.items() if k != "Authorization"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._headers = headers  # replaced whole: a request in flight keeps the dict it took

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def keep_only(self, bases: Iterable[str]) -> None:
        """Close the kept-alive connections of every server not in `bases` (servers that went away)."""
        keep = {_address(b) for b in bases}
        keep.discard(None)
        with self._lock:
            gone = [a for a in self._idle if a not in keep]
            conns = [c for a in gone for c in self._idle.pop(a)]
        for conn in conns:
            conn.close()

    def __enter__(self) -> "Probe":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connection(self, addr: Address) -> tuple[http.client.HTTPConnection, bool]:
        """An idle kept-alive connection to `addr` (reused=True), else a new one."""
        with self._lock:
            pool = self._idle.get(addr)
            if pool:
                return pool.pop(), True
        if isinstance(addr, str):
            return _UnixConnection(addr, self.timeout), False
        scheme, host, port = addr
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=self.timeout), False
        return _TcpConnection(host, port, self.timeout, self.connect_timeout), False

    def get(self, base: str, path: str, max_bytes: int | None = None) -> Reply | None:
        """GET `path` on the server at `base`: its status and body, or None when it cannot be reached (or
        its body is longer than `max_bytes`)."""
        return self.request("GET", base, path, max_bytes=max_bytes)

    def post_json(self, base: str, path: str, payload: Any, max_bytes: int | None = None) -> Reply | None:
        """POST `payload` as JSON to `path` on the server at `base` (same answers as `get`)."""
        return self.request("POST", base, path, orjson.dumps(payload), max_bytes)

    def request(self, method: str, base: str, path: str, body: bytes | None = None,
                max_bytes: int | None = None) -> Reply | None:
        addr = _address(base)
        if addr is None:
            return None
        headers = {**self._headers, "Content-Type": "application/json"} if body is not None else self._headers
        for _ in range(2):
            conn, reused = self._connection(addr)
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read() if max_bytes is None else resp.read(max_bytes + 1)
            except (OSError, http.client.HTTPException):
                conn.close()
                if reused:
                    continue
                return None
            if max_bytes is not None and len(data) > max_bytes:
                conn.close()
                return None
            if resp.will_close or not self.keep_alive:
                conn.close()
            else:
                with self._lock:
                    self._idle.setdefault(addr, []).append(conn)
            return Reply(resp.status, data)
        return None

    # ---- llama-server's endpoints

    def health(self, base: str) -> int | None:
        """HTTP status of /health (200 ready, 503 loading), or None when unreachable."""
        r = self.get(base, "/health")
        return r.status if r is not None else None

    def ready(self, base: str) -> bool:
        return self.health(base) == 200

    def json(self, base: str, path: str) -> Any:
        r = self.get(base, path)
        if r is None or r.status != 200:
            return None
        try:
            return orjson.loads(r.body)
        except orjson.JSONDecodeError:
            return None

    def props(self, base: str) -> dict | None:
        data = self.json(base, "/props")
        return data if isinstance(data, dict) else None

    def slots(self, base: str) -> SlotsSummary | None:
        return summarize_slots(self.json(base, "/slots"))

    def metrics(self, base: str) -> dict[str, float] | None:
        r = self.get(base, "/metrics")
        if r is None or r.status != 200:
            return None
        return parse_prometheus(r.body.decode(errors="replace"))


def fetch(base: str, path: str, timeout: float = 1.0, api_key: str | None = None,
          max_bytes: int | None = None) -> Reply | None:
    """One GET on a fresh connection that is closed afterwards (`Connection: close`)."""
    with Probe(timeout=timeout, connect_timeout=None, api_key=api_key, keep_alive=False) as p:
        return p.get(base, path, max_bytes=max_bytes)


def health(host: str, port: int, timeout: float = 1.0, api_key: str | None = None) -> int | None:
    """HTTP status of /health on a fresh connection (200 ready, 503 loading), or None when unreachable."""
    r = fetch(base_url(host, port), "/health", timeout=timeout, api_key=api_key)
    return r.status if r is not None else None
