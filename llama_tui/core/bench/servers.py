"""The servers behind a benchmark's targets: that every target answers, which llama-server instances are
behind them (explicit --server-url, the running fleet, or the target itself), and their token counters,
read at a window's edges so a step can compare the client's count with the servers' own."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llama_tui.core import probe
from llama_tui.core.bench.target import Target
from llama_tui.core.errors import UserError

if TYPE_CHECKING:
    from llama_tui.core.bench.config import BenchConfig


def _norm_netloc(t: Target) -> tuple[str, int]:
    host = "127.0.0.1" if t.host in ("localhost", "0.0.0.0") else ("::1" if t.host == "::" else t.host)
    return host, t.port


def check_targets(config: BenchConfig) -> dict[str, int]:
    """Every target must answer /health; a one-line UserError otherwise. Returns url -> status."""
    out = {}
    with probe.Probe(timeout=5.0, connect_timeout=3.0, api_key=config.api_key, keep_alive=False) as pr:
        for url in config.target_urls:
            t = Target.parse(url)
            status = pr.health(t.url)
            if status is None:
                raise UserError(f"cannot reach {t.url} (no answer to GET /health)",
                                "start the fleet (`llama-tui fleet up`) or correct --url")
            if status == 503:
                raise UserError(f"{t.url} is not ready (HTTP 503: loading the model?)", "wait until /health answers 200")
            if status == 401:
                raise UserError(f"{t.url} requires an API key (HTTP 401)", "pass --api-key KEY")
            out[t.url] = status
    return out


def fleet_state(state_dir: str | None) -> Any:
    """The fleet's state in `state_dir` (default: the usual state dir), or None without a readable one."""
    try:
        from llama_tui.core import fleet
    except ImportError:
        return None
    try:
        return fleet.load_state(Path(state_dir) if state_dir else None)
    except Exception:  # a damaged or foreign state file must not stop a benchmark
        return None


def server_probe(api_key: str | None = None) -> probe.Probe:
    """A probe with timeouts for a machine under load (a benchmark is the load): a missed read costs a figure."""
    return probe.Probe(timeout=10.0, connect_timeout=5.0, api_key=api_key)


def _is_llama_server(url: str, pr: probe.Probe) -> bool:
    m = pr.metrics(url)
    return bool(m) and probe.TOKENS_PREDICTED_TOTAL in m


@dataclass
class Servers:
    """The llama-server instances behind the targets, whose /metrics a step reads."""

    urls: tuple[str, ...] = ()
    source: str | None = None  # "--server-url", "fleet", "target" or None
    fleet: Any = None
    api_key: str | None = None  # the fleet's internal key: its instances require it
    targets_are_instances: bool = False  # every target is a fleet instance (not NGINX): they need api_key too


def internal_key(st: Any, urls: tuple[str, ...]) -> str | None:
    """The fleet's internal key, when every one of `urls` is one of its instances (never sent elsewhere)."""
    from llama_tui.core.fleet import keys

    try:
        ours = {_norm_netloc(Target.parse(u)) for u in st.instance_urls()} if st is not None else set()
    except Exception:  # a damaged or foreign state file
        return None
    if not urls or not {_norm_netloc(Target.parse(u)) for u in urls} <= ours:
        return None
    return keys.read_internal_key(st.state_dir)


def discover_servers(config: BenchConfig) -> Servers:
    if config.server_urls:
        st = fleet_state(config.state_dir)
        urls = tuple(Target.parse(u).url for u in config.server_urls)
        return Servers(urls, "--server-url", st, internal_key(st, urls))
    targets = [Target.parse(u) for u in config.target_urls]
    st = fleet_state(config.state_dir)
    if st is not None:
        try:
            fleet_urls = [Target.parse(u) for u in st.instance_urls()]
            nginx = st.nginx_url()
        except Exception:
            fleet_urls, nginx = [], None
        known = {_norm_netloc(u) for u in fleet_urls}
        if nginx:
            known.add(_norm_netloc(Target.parse(nginx)))
        if fleet_urls and all(_norm_netloc(t) in known for t in targets):
            direct = not any(nginx and _norm_netloc(t) == _norm_netloc(Target.parse(nginx)) for t in targets)
            urls = tuple(u.url for u in fleet_urls)
            return Servers(urls, "fleet", st, internal_key(st, urls), direct)
    with server_probe() as pr:
        direct = [t.url for t in targets if _is_llama_server(t.url, pr)]
    if direct and len(direct) == len(targets):
        return Servers(tuple(direct), "target", None)
    return Servers((), None, None)


def read_counters(urls: tuple[str, ...], pr: probe.Probe) -> dict[str, float] | None:
    """{"tokens": sum of tokens_predicted_total, "prompt": sum of prompt_tokens_total}; None if any is missing."""
    tokens = prompt = 0.0
    for u in urls:
        m = pr.metrics(u)
        if not m or probe.TOKENS_PREDICTED_TOTAL not in m:
            return None
        tokens += m[probe.TOKENS_PREDICTED_TOTAL]
        prompt += m.get(probe.PROMPT_TOKENS_TOTAL, 0.0)
    return {"tokens": tokens, "prompt": prompt}


class CounterReader(threading.Thread):
    """Reads the servers' counters at the window's start and end (or when the step is stopped early)."""

    def __init__(self, urls: tuple[str, ...], t_window: float, t_end: float, stopped: threading.Event,
                 api_key: str | None = None) -> None:
        super().__init__(name="llama-tui-counters", daemon=True)
        self.urls, self.t_window, self.t_end, self.stopped, self.api_key = urls, t_window, t_end, stopped, api_key
        self.start_read: tuple[float, dict[str, float] | None] | None = None
        self.end_read: tuple[float, dict[str, float] | None] | None = None

    def _read(self, pr: probe.Probe) -> tuple[float, dict[str, float] | None]:
        t0 = time.monotonic()
        c = read_counters(self.urls, pr)
        return (t0 + time.monotonic()) / 2, c

    def run(self) -> None:
        with server_probe(self.api_key) as pr:
            self.stopped.wait(max(0.0, self.t_window - time.monotonic()))
            self.start_read = self._read(pr)
            self.stopped.wait(max(0.0, self.t_end - time.monotonic()))
            self.end_read = self._read(pr)
