"""Live per-backend upstream statistics from NGINX's JSON access log (and its error log).

Open-source NGINX has no live per-upstream state; the access log has the per-request truth. The
front door logs one JSON object per request (`log_format llama_tui` in nginx.conf.j2) with
`$upstream_addr`, `$upstream_status`, `$upstream_header_time`, `$upstream_response_time`, which list
every backend a request tried: ", " between tries, " : " between upstream groups (the max_conns
overflow redirect). A request that tried several backends counts against each one it tried, with the
status that backend gave.

A backend that dies mid-stream does not show in the access log (NGINX logs 200 and "OK"); the error
log says "... while reading upstream, ... upstream: "http://ADDR/..."". The follower tails that too
and counts such responses as `truncated` errors of that backend.

What `stats()` reports per backend (address):
- requests, errors, errors_by_status: cumulative since the log began. Keys are the backend's HTTP
  status ("502" = it refused the connection or failed before answering, "503" = loading), "truncated"
  (the stream broke off), or "client NNN" (NGINX answered the client NNN >= 400 after this backend).
- aborted: responses the client closed before the end (not counted as errors).
- rps: tries that ended in the last `window` seconds / window.
- inflight: estimated requests in flight: the time-average number of concurrent requests over the
  last `window` seconds, from the (start, end) intervals of the requests that ended in it (Little's
  law measured directly). The access log only sees a request when it ends, so streams still running
  are missing until they finish: it lags for streams longer than the window. stub_status `writing`
  (frontdoor_nginx.read_stub_status) is the exact, fleet-wide live count.
- p50_ms / p95_ms (upstream response time) and header_p50_ms / header_p95_ms (upstream header time,
  about time to first byte) over the backend's last 1024 responses.

`totals()` is the cumulative part as one frozen value (what the supervisor's Prometheus listener
exports): the counters above plus histograms of every try's response and header time, counted into
`LATENCY_BUCKETS` as the lines are read (one bisect per time).
"""

from __future__ import annotations

import os
import re
import time
from bisect import bisect_left
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from llama_tui.core.snapshots import UpstreamStat
from llama_tui.core.stats import percentile

WINDOW_S = 10.0
RECENT = 1024
MAX_READ = 32 << 20  # bytes read per poll and file, so one poll stays short on a huge backlog

# Upper bounds (seconds) of the latency histograms: a stream lasts up to minutes, its first byte far less.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

_SPLIT = re.compile(r", | : ")
_ADDRESS = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):\d+$|^unix:")
_MIDSTREAM = re.compile(r'while reading upstream.*?upstream: "[a-z]+://([^/"]+)')


class _Tail:
    """Reads a growing file incrementally: complete lines only, survives truncation and rotation."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._f = None
        self._ino: int | None = None
        self._buf = b""
        self._open()  # hold the file from now on, so a rotation before the first read loses nothing

    def _open(self) -> bool:
        try:
            f = open(self.path, "rb")
        except OSError:
            return False
        self._f, self._ino, self._buf = f, os.fstat(f.fileno()).st_ino, b""
        return True

    def _drain(self, limit: int) -> list[bytes]:
        data = self._f.read(limit) if self._f else b""
        if not data:
            return []
        data = self._buf + data
        *lines, self._buf = data.split(b"\n")
        return lines

    def lines(self, limit: int = MAX_READ) -> list[bytes]:
        if self._f is None and not self._open():
            return []
        out: list[bytes] = []
        try:
            st = os.stat(self.path)
        except OSError:
            st = None  # renamed away and not yet recreated: finish the old file
        if st is not None and st.st_ino != self._ino:
            out += self._drain(limit)  # the rest of the rotated file first
            if self._buf:
                out.append(self._buf)
            self._f.close()
            self._f = None
            if not self._open():
                return out
        elif st is not None and st.st_size < self._f.tell():  # truncated in place
            self._f.seek(0)
            self._buf = b""
        return out + self._drain(limit)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class _Histogram:
    """Observations per bucket of LATENCY_BUCKETS (the last one: above them all) and their sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # the first bound >= seconds ("le")
        self.sum += seconds


@dataclass(frozen=True)
class Histogram:
    """A frozen histogram: `counts[i]` observations <= LATENCY_BUCKETS[i] and above the bound before it;
    the last count is above every bound."""

    counts: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class BackendTotals:
    """One backend's cumulative numbers since the log began."""

    address: str
    requests: int
    errors: int
    aborted: int
    errors_by_status: tuple[tuple[str, int], ...]
    response: Histogram  # upstream response time of every try
    header: Histogram  # upstream header time (about time to first byte) of every try that got headers


@dataclass(frozen=True)
class AccessTotals:
    backends: tuple[BackendTotals, ...]
    requests: int  # every request NGINX logged
    by_client_status: tuple[tuple[str, int], ...]  # the status NGINX gave the client


@dataclass
class _Backend:
    requests: int = 0
    errors: int = 0
    aborted: int = 0
    by_status: Counter = field(default_factory=Counter)
    # (start, end, header_s, response_s) of the latest responses
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT))
    response: _Histogram = field(default_factory=_Histogram)
    header: _Histogram = field(default_factory=_Histogram)


def _floats(text: str) -> list[float | None]:
    out: list[float | None] = []
    for part in _SPLIT.split(text or ""):
        try:
            out.append(float(part))
        except ValueError:
            out.append(None)
    return out


class AccessLogFollower:
    """Follows NGINX's JSON access log (and the error log next to it) and keeps per-backend statistics.

    Call `poll()` (cheap; reads only what was appended) and then `stats()`. Not thread-safe."""

    def __init__(self, path: Path | str, error_log: Path | str | None = "auto", window: float = WINDOW_S) -> None:
        self.path = Path(path)
        if error_log == "auto":
            error_log = self.path.with_name("error.log")
        self._access = _Tail(self.path)
        self._errors = _Tail(Path(error_log)) if error_log else None
        self.window = window
        self._backends: dict[str, _Backend] = {}
        self._first_ts: float | None = None
        self._last_ts: float | None = None
        self.total = 0
        self.by_client_status: Counter = Counter()
        self.no_upstream = 0  # answered by NGINX itself (401 key, 403 admin endpoint, ...)
        self.overflowed = 0  # every backend was at max_conns; went to the overflow group
        self.no_live_upstreams = 0  # NGINX found no backend at all (all down)
        self.malformed = 0

    def _backend(self, address: str) -> _Backend:
        b = self._backends.get(address)
        if b is None:
            b = self._backends[address] = _Backend()
        return b

    def poll(self) -> int:
        """Read what the logs gained since the last poll. Returns the number of requests read."""
        n = 0
        for raw in self._access.lines():
            if raw.strip():
                n += self._record(raw)
        if self._errors is not None:
            for raw in self._errors.lines():
                m = _MIDSTREAM.search(raw.decode(errors="replace"))
                if m:
                    b = self._backend(m.group(1))
                    b.errors += 1
                    b.by_status["truncated"] += 1
        return n

    def _record(self, raw: bytes) -> int:
        try:
            e = orjson.loads(raw)
            end = float(e["msec"])
            status = int(e["status"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            self.malformed += 1
            return 0
        self.total += 1
        self.by_client_status[str(status)] += 1
        try:
            request_time = float(e.get("request_time") or 0.0)
        except (TypeError, ValueError):
            request_time = 0.0
        begin = end - request_time  # the log covers time from the first request's start
        self._first_ts = begin if self._first_ts is None else min(self._first_ts, begin)
        self._last_ts = end if self._last_ts is None else max(self._last_ts, end)
        addrs = [a for a in _SPLIT.split(e.get("upstream_addr") or "") if a]
        if not addrs:
            self.no_upstream += 1
            return 1
        statuses = _SPLIT.split(e.get("upstream_status") or "")
        headers = _floats(e.get("upstream_header_time", ""))
        responses = _floats(e.get("upstream_response_time", ""))
        tries = []
        for i, addr in enumerate(addrs):
            if _ADDRESS.match(addr):
                tries.append(i)
            elif i == len(addrs) - 1:
                self.no_live_upstreams += 1  # NGINX found no backend to try at all
            else:
                self.overflowed += 1  # every backend was at max_conns: redirected to the overflow group
        for i in tries:
            b = self._backend(addrs[i])
            b.requests += 1
            last = i == len(addrs) - 1
            code = statuses[i].strip() if i < len(statuses) else "-"
            backend_error = code.isdigit() and code != "499" and int(code) >= 400
            if last and status == 499 and not backend_error:
                # The client went away (e.g. a benchmark ending its window, with requests still queued or
                # streaming): not the backend's failure.
                b.aborted += 1
            else:
                if not code.isdigit():
                    code = str(status) if last else "-"
                if code == "-" or int(code) >= 400:
                    b.errors += 1
                    b.by_status[code] += 1
                elif last and status >= 400:
                    b.errors += 1
                    b.by_status[f"client {status}"] += 1
                elif last and not e.get("completion"):
                    b.aborted += 1
            rt = responses[i] if i < len(responses) else None
            ht = headers[i] if i < len(headers) else None
            if rt is not None:
                b.response.observe(rt)
            if ht is not None:
                b.header.observe(ht)
            if last:  # the try that served the response ended with the request
                b.recent.append((end - (rt if rt is not None else request_time), end, ht, rt))
            else:  # an earlier try began with the request and failed fast
                b.recent.append((begin, begin + (rt or 0.0), ht, rt))
        return 1

    def stats(self, now: float | None = None) -> tuple[UpstreamStat, ...]:
        """Per-backend statistics, sorted by address. `now` defaults to the wall clock (NGINX's $msec)."""
        now = time.time() if now is None else now
        lo = now - self.window
        span = self.window
        if self._first_ts is not None:
            span = max(1.0, min(self.window, now - self._first_ts))
        out = []
        for address in sorted(self._backends):
            b = self._backends[address]
            ended = [r for r in b.recent if lo <= r[1] <= now]
            busy = sum(max(0.0, min(r[1], now) - max(r[0], lo)) for r in b.recent if r[1] >= lo)
            resp = sorted(r[3] * 1000 for r in b.recent if r[3] is not None)
            head = sorted(r[2] * 1000 for r in b.recent if r[2] is not None)
            estimate = busy / span
            out.append(UpstreamStat(
                address=address,
                requests=b.requests,
                errors=b.errors,
                errors_by_status=dict(b.by_status),
                inflight=int(round(estimate)),
                rps=round(len(ended) / span, 3),
                p50_ms=_round(percentile(resp, 50)),
                p95_ms=_round(percentile(resp, 95)),
                header_p50_ms=_round(percentile(head, 50)),
                header_p95_ms=_round(percentile(head, 95)),
                inflight_estimate=round(estimate, 3),
                aborted=b.aborted,
            ))
        return tuple(out)

    def totals(self) -> AccessTotals:
        """The cumulative counters and histograms, frozen (safe to hand to another thread)."""
        return AccessTotals(
            backends=tuple(BackendTotals(
                address=a, requests=b.requests, errors=b.errors, aborted=b.aborted,
                errors_by_status=tuple(sorted(b.by_status.items())),
                response=Histogram(tuple(b.response.counts), b.response.sum),
                header=Histogram(tuple(b.header.counts), b.header.sum),
            ) for a, b in sorted(self._backends.items())),
            requests=self.total, by_client_status=tuple(sorted(self.by_client_status.items())))

    def summary(self) -> dict[str, Any]:
        """Front-door totals: requests, client statuses, requests no backend served."""
        return {
            "requests": self.total,
            "by_client_status": dict(self.by_client_status),
            "no_upstream": self.no_upstream,
            "overflowed": self.overflowed,
            "no_live_upstreams": self.no_live_upstreams,
            "malformed_lines": self.malformed,
            "first_ts": self._first_ts,
            "last_ts": self._last_ts,
        }

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        """What the supervisor persists to `<state>/upstream.json` (plus its own `stub_status`)."""
        now = time.time() if now is None else now
        return {"updated_at": now, "window_s": self.window,
                "upstreams": [asdict(s) for s in self.stats(now)], "summary": self.summary()}

    def close(self) -> None:
        self._access.close()
        if self._errors is not None:
            self._errors.close()


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 2)
