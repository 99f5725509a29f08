"""The supervisor's Prometheus listener (`fleet up --metrics-listen IP:PORT`).

Two threads in the supervisor:

- the sampler takes a `FleetSnapshot` every `SAMPLE_INTERVAL_S` (the same assembly `fleet status` and
  the TUI use: /slots and /metrics of each instance over kept-alive connections, process stats, NGINX's
  stub_status) plus the access log's totals the door keeper publishes, and keeps the latest as one
  frozen `MetricsSample`;
- a one-thread HTTP server answers each scrape from that sample (`prometheus.FleetCollector`) and
  nothing else. Scrapes queue behind each other, a client that stalls is cut off after
  `CLIENT_TIMEOUT_S`, and the instances see the sampler's requests only, at its own rate.

The address is private by default: loopback unless the user passes --metrics-public
(`spec.parse_metrics_listen`).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from llama_tui.core.fleet.accesslog import AccessTotals
from llama_tui.core.fleet.monitor import Monitor
from llama_tui.core.fleet.prometheus import FleetCollector, MetricsSample
from llama_tui.core.fleet.snapshot import snapshot
from llama_tui.core.fleet.spec import metrics_url, parse_metrics_listen
from llama_tui.core.fleet.state import log

SAMPLE_INTERVAL_S = 2.0
CLIENT_TIMEOUT_S = 5.0


class _QuietHandler(WSGIRequestHandler):
    timeout = CLIENT_TIMEOUT_S  # a scraper that stops sending or reading is dropped

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass


class MetricsListener:
    """The sampler and the HTTP server of one fleet. `access()` returns the door keeper's latest
    `AccessTotals` (or None)."""

    def __init__(self, state_dir: Path, listen: str, access: Callable[[], AccessTotals | None],
                 interval: float = SAMPLE_INTERVAL_S, public: bool = False) -> None:
        self.state_dir = Path(state_dir)
        self.listen = listen
        self.host, self.port = parse_metrics_listen(listen, public)
        self.access = access
        self.interval = interval
        self._latest: MetricsSample | None = None
        self._samples = 0
        self._stop = threading.Event()
        self._server: WSGIServer | None = None
        self._threads: list[threading.Thread] = []
        self._error_logged = False

    @property
    def url(self) -> str:
        return metrics_url(self.listen)

    def latest(self) -> MetricsSample | None:
        return self._latest

    def start(self) -> None:
        """Bind the address (OSError when it is taken) and start both threads."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(FleetCollector(self.latest))

        class _Server(WSGIServer):
            address_family = socket.AF_INET6 if ipaddress.ip_address(self.host).version == 6 else socket.AF_INET

        self._server = make_server(self.host, self.port, make_wsgi_app(registry), server_class=_Server,
                                   handler_class=_QuietHandler)
        self._threads = [threading.Thread(target=self._sample_loop, name="metrics-sampler", daemon=True),
                         threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                          name="metrics-listener", daemon=True)]
        for t in self._threads:
            t.start()
        log(f"serving Prometheus metrics on {self.url} (a sample every {self.interval:g}s)")

    def sample_once(self, monitor: Monitor) -> MetricsSample:
        t0 = time.monotonic()
        snap = snapshot(self.state_dir, monitor=monitor)
        self._samples += 1
        return MetricsSample(taken_at=time.time(), duration_s=round(time.monotonic() - t0, 4), snapshot=snap,
                             access=self.access(), samples=self._samples)

    def _sample_loop(self) -> None:
        monitor = Monitor()
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    self._latest = self.sample_once(monitor)
                except Exception as exc:  # metrics must never take the supervisor down
                    if not self._error_logged:
                        self._error_logged = True
                        log(f"metrics sample failed: {type(exc).__name__}: {exc}")
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
        finally:
            monitor.close()

    def close(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for t in self._threads:
            t.join(timeout=5)
