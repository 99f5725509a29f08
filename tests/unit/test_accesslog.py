"""AccessLogFollower: incremental reading (partial lines, truncation, rotation) and the statistics
it derives per backend from NGINX's JSON access log and error log."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from llama_tui.core.fleet.accesslog import AccessLogFollower
from llama_tui.core.stats import percentile

A, B = "127.0.0.1:18080", "127.0.0.1:18081"
T0 = 1_800_000_000.0


def line(end: float, status: int = 200, addr: str = A, ustatus: str = "200", header: str = "0.010",
         response: str = "1.000", request_time: float | None = None, completion: str = "OK") -> str:
    rt = request_time if request_time is not None else max(float(x) for x in response.replace(" : ", ", ").split(", ")
                                                            if x not in ("-", ""))
    return json.dumps({"msec": round(end, 3), "status": status, "request_time": rt, "upstream_addr": addr,
                       "upstream_status": ustatus, "upstream_connect_time": "0.000", "upstream_header_time": header,
                       "upstream_response_time": response, "bytes_sent": 100, "completion": completion,
                       "method": "POST", "uri": "/completion"}) + "\n"


def append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def by_addr(follower: AccessLogFollower, now: float) -> dict:
    return {s.address: s for s in follower.stats(now)}


def test_counts_percentiles_rate_and_inflight(tmp_path):
    log = tmp_path / "access.log"
    # A: 20 one-second requests ending every 0.5 s (two always in flight); B: 5 fast ones
    text = "".join(line(T0 + 0.5 * i, response="1.000", header=f"{0.010 + 0.001 * i:.3f}") for i in range(1, 21))
    text += "".join(line(T0 + i, addr=B, response="0.100", header="0.050") for i in range(1, 6))
    log.write_text(text)
    f = AccessLogFollower(log)
    assert f.poll() == 25
    s = by_addr(f, now=T0 + 10.0)
    assert s[A].requests == 20 and s[A].errors == 0 and s[B].requests == 5
    assert s[A].p50_ms == pytest.approx(1000.0) and s[A].header_p50_ms == pytest.approx(20.5)
    assert s[A].header_p95_ms == pytest.approx(29.05)
    assert s[A].rps == pytest.approx(2.0)  # 20 in the 10 s window
    assert s[A].inflight == 2 and s[A].inflight_estimate == pytest.approx(1.95, abs=0.06)
    assert s[B].inflight == 0 and s[B].rps == pytest.approx(0.5)
    # a minute later nothing is recent, the totals and percentiles stay
    later = by_addr(f, now=T0 + 70)
    assert later[A].rps == 0 and later[A].inflight == 0 and later[A].requests == 20 and later[A].p95_ms == 1000.0


def test_a_request_that_tried_several_backends_counts_against_each(tmp_path):
    log = tmp_path / "access.log"
    log.write_text(
        line(T0 + 1, addr=f"{A}, {B}", ustatus="502, 200", header="-, 0.010", response="0.001, 0.500")
        + line(T0 + 2, addr=f"{A}, {B}", ustatus="503, 200", header="0.001, 0.010", response="0.001, 0.500")
        + line(T0 + 3, status=502, addr=f"{A}, {B}", ustatus="502, 502", header="-, -", response="0.000, 0.000"))
    f = AccessLogFollower(log)
    f.poll()
    s = by_addr(f, now=T0 + 4)
    assert s[A].requests == 3 and s[A].errors == 3 and s[A].errors_by_status == {"502": 2, "503": 1}
    assert s[B].requests == 3 and s[B].errors == 1 and s[B].errors_by_status == {"502": 1}
    assert f.summary()["by_client_status"] == {"200": 2, "502": 1}


def test_overflow_no_live_upstreams_and_nginx_answers(tmp_path):
    log = tmp_path / "access.log"
    log.write_text(
        # every backend at max_conns: redirected to the overflow group, served by B
        line(T0 + 1, addr=f"llama_fleet : {B}", ustatus="502 : 200", header="- : 0.010", response="0.000 : 0.300")
        # nothing alive at all
        + line(T0 + 2, status=502, addr="llama_fleet : llama_overflow", ustatus="502 : 502", header="- : -",
               response="0.000 : 0.000")
        # answered by NGINX itself: refused admin endpoint, missing key
        + line(T0 + 3, status=403, addr="", ustatus="", header="", response="0", request_time=0.0)
        + line(T0 + 4, status=401, addr="", ustatus="", header="", response="0", request_time=0.0))
    f = AccessLogFollower(log)
    assert f.poll() == 4
    s = by_addr(f, now=T0 + 5)
    assert list(s) == [B] and s[B].requests == 1 and s[B].errors == 0
    summ = f.summary()
    assert summ["overflowed"] == 2 and summ["no_live_upstreams"] == 1 and summ["no_upstream"] == 2
    assert summ["requests"] == 4 and summ["by_client_status"] == {"200": 1, "502": 1, "403": 1, "401": 1}


def test_client_status_and_aborts(tmp_path):
    log = tmp_path / "access.log"
    log.write_text(line(T0 + 1, completion="")  # the client hung up mid-stream
                   + line(T0 + 2, status=499, ustatus="-", header="-", response="0.200")  # before any byte
                   + line(T0 + 2.5, status=499, ustatus="200")  # while streaming (a benchmark's window end)
                   + line(T0 + 3, status=400, ustatus="400")  # the backend refused the request
                   + line(T0 + 3.5, status=499, ustatus="502"))  # the backend failed, then the client left
    f = AccessLogFollower(log)
    f.poll()
    s = by_addr(f, now=T0 + 4)[A]
    assert s.requests == 5 and s.aborted == 3
    assert s.errors == 2 and s.errors_by_status == {"400": 1, "502": 1}


def test_truncated_streams_come_from_the_error_log(tmp_path):
    log, err = tmp_path / "access.log", tmp_path / "error.log"
    log.write_text(line(T0 + 1) + line(T0 + 2, addr=B))
    err.write_text(
        '2026/11/21 20:06:28 [error] 1#1: *16 upstream prematurely closed connection while reading upstream, '
        f'client: 127.0.0.1, server: _, request: "POST /completion HTTP/1.1", upstream: "http://{A}/completion", '
        'host: "127.0.0.1:18000"\n'
        '2026/11/21 20:06:30 [error] 1#1: *20 connect() failed (111: Connection refused) while connecting to '
        f'upstream, client: 127.0.0.1, server: _, request: "POST /completion HTTP/1.1", upstream: "http://{B}/x"\n')
    f = AccessLogFollower(log)
    f.poll()
    s = by_addr(f, now=T0 + 3)
    assert s[A].errors == 1 and s[A].errors_by_status == {"truncated": 1} and s[A].requests == 1
    assert s[B].errors == 0  # a refused connection shows in the access log as that try's 502 instead


def test_partial_last_line_is_kept_until_complete(tmp_path):
    log = tmp_path / "access.log"
    full = line(T0 + 1) + line(T0 + 2)
    log.write_text(full + line(T0 + 3)[:40])
    f = AccessLogFollower(log)
    assert f.poll() == 2
    append(log, line(T0 + 3)[40:])
    assert f.poll() == 1
    assert f.poll() == 0 and f.summary()["malformed_lines"] == 0 and f.total == 3


def test_truncation_and_rotation(tmp_path):
    log = tmp_path / "access.log"
    f = AccessLogFollower(log)
    assert f.poll() == 0 and f.stats() == ()  # no log yet
    log.write_text(line(T0 + 1) * 3)
    assert f.poll() == 3
    log.write_text(line(T0 + 2))  # truncated in place (copytruncate) and written again
    assert f.poll() == 1
    # rotation: NGINX still appends to the renamed file until it reopens its logs
    append(log, line(T0 + 3))
    os.replace(log, tmp_path / "access.log.1")
    append(tmp_path / "access.log.1", line(T0 + 4) + line(T0 + 5)[:30])
    log.write_text(line(T0 + 6))
    assert f.poll() == 3  # the rest of the old file (2 lines + a cut one counted as malformed), then the new one
    assert f.summary()["malformed_lines"] == 1
    append(log, line(T0 + 7))
    assert f.poll() == 1
    assert by_addr(f, now=T0 + 8)[A].requests == 8


def test_garbage_lines_are_counted_not_fatal(tmp_path):
    log = tmp_path / "access.log"
    log.write_text("not json\n" + '{"msec": "x"}\n' + line(T0 + 1) + "\n")
    f = AccessLogFollower(log)
    assert f.poll() == 1 and f.summary()["malformed_lines"] == 2


def test_to_json_is_what_the_supervisor_persists(tmp_path):
    log = tmp_path / "access.log"
    log.write_text(line(T0 + 1) + line(T0 + 2, addr=B))
    f = AccessLogFollower(log)
    f.poll()
    data = json.loads(json.dumps(f.to_json(now=T0 + 3)))
    assert [u["address"] for u in data["upstreams"]] == [A, B]
    assert set(data["upstreams"][0]) >= {"address", "requests", "errors", "inflight", "rps", "p50_ms", "p95_ms"}
    assert data["summary"]["requests"] == 2


def test_percentile():
    assert percentile([], 50) is None
    assert percentile([5.0], 95) == 5.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile(list(range(101)), 95) == 95
