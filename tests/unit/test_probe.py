"""The one HTTP client (core/probe.py): kept-alive connections reused (and retried once when the server
closed one), unix sockets (NGINX's stub_status), the API key on every request, None for trouble."""

from __future__ import annotations

import http.server
import os
import socketserver
import threading
from typing import Iterator

import pytest

from llama_tui.core import probe
from llama_tui.core.fleet import frontdoor, frontdoor_nginx
from llama_tui.core.fleet.monitor import Monitor
from llama_tui.core.fleet.placement import Endpoint

from conftest import free_port

STUB = b"Active connections: 3 \nserver accepts handled requests\n 10 10 42 \nReading: 0 Writing: 2 Waiting: 1 \n"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless a side says close

    def do_GET(self) -> None:  # noqa: N802
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Authorization"), self.headers.get("Connection")))
        body = srv.bodies.get(self.path, b"not here")
        self.send_response(200 if self.path in srv.bodies else 404)
        self.send_header("Content-Length", str(len(body)))
        if self.path in srv.close_after:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def log_message(self, *args: object) -> None:
        pass


class _TcpServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _serve(server: socketserver.BaseServer, bodies: dict[str, bytes]) -> socketserver.BaseServer:
    server.bodies = bodies  # type: ignore[attr-defined]
    server.requests = []  # type: ignore[attr-defined]
    server.connections = 0  # type: ignore[attr-defined]
    server.close_after = set()  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture
def tcp_server() -> Iterator[tuple[socketserver.BaseServer, str]]:
    port = free_port()
    srv = _serve(_TcpServer(("127.0.0.1", port), _Handler),
                 {"/health": b'{"status":"ok"}', "/slots": b'[{"id":0,"is_processing":true},{"id":1}]',
                  "/metrics": b"llamacpp:tokens_predicted_total 120\nllamacpp:requests_processing 1\n",
                  "/big": b"x" * 5000})
    yield srv, probe.base_url("127.0.0.1", port)
    srv.shutdown()
    srv.server_close()


def test_kept_alive_connections_are_reused(tcp_server):
    srv, url = tcp_server
    with probe.Probe() as p:
        assert p.health(url) == 200
        assert p.slots(url) == probe.SlotsSummary(total=2, busy=1)
        assert p.metrics(url)[probe.TOKENS_PREDICTED_TOTAL] == 120.0
        assert p.get(url, "/nope").status == 404
    assert srv.connections == 1 and len(srv.requests) == 4  # four requests, one connection


def test_a_connection_the_server_closed_is_retried_once_on_a_fresh_one(tcp_server):
    srv, url = tcp_server
    srv.close_after.add("/health")
    with probe.Probe() as p:
        assert p.health(url) == 200  # the server says close: the client does not keep it
        assert p.health(url) == 200
        assert srv.connections == 2
        srv.close_after.clear()
        assert p.health(url) == 200
        conn = p._idle[probe._address(url)][0]
        conn.sock.close()  # as when llama-server drops an idle connection after a stream
        assert p.health(url) == 200
    assert srv.connections == 4


def test_the_api_key_goes_with_every_request(tcp_server):
    srv, url = tcp_server
    with probe.Probe(api_key="s3cret-key-1234567") as p:
        p.health(url)
        p.props(url)
    assert probe.health("127.0.0.1", int(url.rsplit(":", 1)[1]), api_key="other-key-12345678") == 200
    with probe.Probe() as p:
        p.health(url)
    auth = [a for _path, a, _c in srv.requests]
    assert auth == ["Bearer s3cret-key-1234567", "Bearer s3cret-key-1234567", "Bearer other-key-12345678", None]


def test_the_monitor_sends_its_api_key(tcp_server):
    srv, url = tcp_server
    ep = Endpoint("127.0.0.1", int(url.rsplit(":", 1)[1]))
    mon = Monitor(api_key="monitor-key-1234567")
    s = mon.servers([ep])[ep]
    mon.close()
    assert s.reachable and s.slots_total == 2 and s.slots_busy == 1 and s.requests_processing == 1
    assert {a for _p, a, _c in srv.requests} == {"Bearer monitor-key-1234567"}
    assert srv.connections == 1  # /slots and /metrics on one kept-alive connection


def test_one_shot_requests_close_their_connection(tcp_server):
    srv, url = tcp_server
    assert probe.fetch(url, "/health").status == 200
    assert probe.health("127.0.0.1", int(url.rsplit(":", 1)[1])) == 200
    assert srv.connections == 2 and [c for _p, _a, c in srv.requests] == ["close", "close"]


def test_trouble_is_none_not_an_exception(tcp_server):
    _srv, url = tcp_server
    with probe.Probe(timeout=0.5) as p:
        assert p.health(probe.base_url("127.0.0.1", free_port())) is None  # nothing listens
        assert p.get(url, "/big", max_bytes=1000) is None
        assert p.get(url, "/big", max_bytes=5000).body == b"x" * 5000
        assert p.get("ftp://127.0.0.1:21", "/") is None
        assert p.json(url, "/nope") is None and p.props(url) is None  # 404; not an object


def test_keep_only_closes_connections_to_servers_that_went_away(tcp_server):
    _srv, url = tcp_server
    with probe.Probe() as p:
        p.health(url)
        assert p._idle
        p.keep_only([url])
        assert p._idle
        p.keep_only([probe.base_url("127.0.0.1", 1)])
        assert not p._idle


def test_a_unix_socket_server(tmp_path):
    path = tmp_path / "status.sock"
    srv = _serve(_UnixServer(str(path), _Handler), {"/nginx_status": STUB})
    try:
        with probe.Probe() as p:
            r = p.get(probe.unix_url(path), "/nginx_status")
            assert r.status == 200 and r.body == STUB
            assert p.get(probe.unix_url(path), "/nginx_status").status == 200
        assert srv.connections == 1
        assert probe.fetch(probe.unix_url(tmp_path / "nothing.sock"), "/") is None
    finally:
        srv.shutdown()
        srv.server_close()


def test_stub_status_is_read_over_the_unix_socket(tmp_path):
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    sock = frontdoor.status_socket(prefix)
    sock.parent.mkdir(parents=True, exist_ok=True)
    srv = _serve(_UnixServer(str(sock), _Handler), {"/nginx_status": STUB})
    try:
        # this probe's own connection is left out of `active` and `writing`
        assert frontdoor_nginx.read_stub_status(prefix) == {"active": 2, "accepts": 10, "handled": 10, "requests": 42,
                                                      "reading": 0, "writing": 1, "waiting": 1}
        assert srv.requests[-1][2] == "close"  # not kept: an idle connection would count as waiting
        srv.bodies["/nginx_status"] = b"<html>not a status page</html>"
        assert frontdoor_nginx.read_stub_status(prefix) is None
    finally:
        srv.shutdown()
        srv.server_close()
        os.unlink(sock)


@pytest.mark.integration
def test_an_instance_with_a_key_answers_the_monitor_only_with_it(llama_server):
    key = "internal-key-0123456789"
    url = llama_server(parallel=2, extra=("--api-key", key))
    ep = Endpoint("127.0.0.1", int(url.rsplit(":", 1)[1]))
    with_key, without = Monitor(api_key=key), Monitor()
    try:
        good, bad = with_key.servers([ep])[ep], without.servers([ep])[ep]
    finally:
        with_key.close()
        without.close()
    assert good.reachable and good.slots_total == 2 and good.tokens_predicted_total is not None
    assert bad.reachable and bad.slots_total is None and bad.tokens_predicted_total is None  # 401 without it
    with probe.Probe(api_key=key) as p:
        assert p.metrics(url) is not None and p.props(url) is not None
    with probe.Probe() as p:
        assert p.metrics(url) is None and p.health(url) == 200  # /health stays open
    assert probe.health("127.0.0.1", ep.port) == 200

