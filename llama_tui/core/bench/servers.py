"""The servers behind a benchmark's targets: that every target answers, which llama-server instances are
behind them (explicit --server-url, the running fleet, or the target itself), and how many tokens they
have decoded, read at a window's edges so a step can compare the client's count with the servers' own.

llama-server adds a request's tokens to `llamacpp:tokens_predicted_total` only when the request ends
(its slot is released), so the counter alone moves in steps of whole requests. The tokens decoded so
far are the counter plus each busy slot's `n_decoded` (GET /slots). The two come from two requests,
so a read is taken as /metrics, /slots, /metrics and kept only when the counter did not move between
the two /metrics reads (no slot was released in between, so the /slots read agrees with the counter);
otherwise it is tried again (`consistent` says whether one agreed). Without /slots (--no-slots), the
read is the counter alone (`basis` "completions")."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

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


def discover_servers(config: BenchConfig) -> Servers:
    if config.server_urls:
        st = fleet_state(config.state_dir)
        urls = tuple(Target.parse(u).url for u in config.server_urls)
        return Servers(urls, "--server-url", st, internal_key(st, urls) or config.api_key)
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
    with server_probe(config.api_key) as pr:
        direct = [t.url for t in targets if _is_llama_server(t.url, pr)]
    if direct and len(direct) == len(targets):
        return Servers(tuple(direct), "target", None, config.api_key)
    return Servers((), None, None)


def _busy_decoded(slots: Any) -> int:
    """Tokens decoded so far by the requests the slots are processing."""
    total = 0
    for slot in slots:
        if not isinstance(slot, dict) or not slot.get("is_processing"):
            continue
        nt = slot.get("next_token")
        nt = nt[0] if isinstance(nt, list) and nt else nt
        n = nt.get("n_decoded") if isinstance(nt, dict) else None
        if isinstance(n, int) and n > 0:
            total += n
    return total


def read_instance(url: str, pr: probe.Probe, tries: int = 4) -> dict[str, Any] | None:
    """One instance's decoded tokens at one instant (see the module's docstring):
    {"t": when, "counter", "prompt", "in_flight", "decoded", "basis", "consistent"}; None without /metrics."""
    last: dict[str, Any] | None = None
    for _ in range(tries):
        t0 = time.monotonic()
        m1 = pr.metrics(url)
        if not m1 or probe.TOKENS_PREDICTED_TOTAL not in m1:
            return None
        counter, prompt = m1[probe.TOKENS_PREDICTED_TOTAL], m1.get(probe.PROMPT_TOKENS_TOTAL, 0.0)
        t1 = time.monotonic()
        slots = pr.json(url, "/slots")
        t2 = time.monotonic()
        if not isinstance(slots, list):
            return {"t": (t0 + t1) / 2, "counter": counter, "prompt": prompt, "in_flight": 0, "decoded": counter,
                    "basis": "completions", "consistent": True}
        m2 = pr.metrics(url)
        in_flight = _busy_decoded(slots)
        consistent = bool(m2) and m2.get(probe.TOKENS_PREDICTED_TOTAL) == counter
        last = {"t": (t1 + t2) / 2, "counter": counter, "prompt": prompt, "in_flight": in_flight,
                "decoded": counter + in_flight, "basis": "decoded", "consistent": consistent}
        if consistent:
            break
    return last


def read_counters(urls: tuple[str, ...], pr: probe.Probe) -> dict[str, Any] | None:
    """The instances' sums: {"t", "tokens" (decoded so far), "counter", "prompt", "basis", "consistent"};
    None if any instance has no counters."""
    reads = []
    for u in urls:
        r = read_instance(u, pr)
        if r is None:
            return None
        reads.append(r)
    if not reads:
        return None
    return {"t": sum(r["t"] for r in reads) / len(reads), "tokens": sum(r["decoded"] for r in reads),
            "counter": sum(r["counter"] for r in reads), "prompt": sum(r["prompt"] for r in reads),
            "basis": "decoded" if all(r["basis"] == "decoded" for r in reads) else "completions",
            "consistent": all(r["consistent"] for r in reads)}


class CounterReader(threading.Thread):
    """Reads the servers' decoded tokens at the window's start and end (or when the step is stopped
    early), once the window is known (`set_window`); then calls `on_end`."""

    def __init__(self, urls: tuple[str, ...], stopped: threading.Event, api_key: str | None = None,
                 on_end: Callable[[], None] | None = None) -> None:
        super().__init__(name="llama-tui-counters", daemon=True)
        self.urls, self.stopped, self.api_key, self.on_end = urls, stopped, api_key, on_end
        self.t_window: float | None = None
        self.t_end: float | None = None
        self._window = threading.Event()
        self.start_read: dict[str, Any] | None = None
        self.end_read: dict[str, Any] | None = None

    def set_window(self, t_window: float, t_end: float) -> None:
        self.t_window, self.t_end = t_window, t_end
        self._window.set()

    def run(self) -> None:
        try:
            with server_probe(self.api_key) as pr:
                while not self._window.wait(0.05):
                    if self.stopped.is_set():
                        return
                assert self.t_window is not None and self.t_end is not None
                self.stopped.wait(max(0.0, self.t_window - time.monotonic()))
                self.start_read = read_counters(self.urls, pr)
                self.stopped.wait(max(0.0, self.t_end - time.monotonic()))
                self.end_read = read_counters(self.urls, pr)
        finally:
            if self.on_end is not None:
                self.on_end()
