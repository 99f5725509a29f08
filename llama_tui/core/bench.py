"""The benchmark engine: steps of streaming load, merged exactly, checked against the servers' counters.

    run(config, on_sample=None, stop=None) -> dict        metadata + one dict per step
    run_step(config, concurrency=None, rate=None, on_sample=None) -> dict   one step (the sweep's cell)
    spawn(config) -> BenchProcess                         the same in a child process (the TUI)
    calibrate(duration) -> dict                           the client's own ceiling on a loopback source

A step is: load starts, `warmup` seconds are thrown away, then a `duration`-second window is measured.
Closed loop (`concurrency`): that many streams, each sending its next request when the previous one
ends; at the window's end requests still in flight are cancelled, and only what they received inside
the window counts. Open loop (`rate`): Poisson arrivals at that rate; latency counts from the intended
arrival time, and requests sent inside the window are awaited (up to `drain`) after it closes.

Load runs in this process's own event loop (workers=1) or in worker processes (`loadgen worker`)
that each take a share; their raw samples are merged, so percentiles are exact. Every step also
reads `llamacpp:tokens_predicted_total` from the instances behind the target at the window's start
and end, and reports whether the client itself was the bottleneck (`valid`, `invalid_reason`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import platform
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import orjson

from llama_tui import __version__
from llama_tui.core import hardware, paths, probe
from llama_tui.core.config import APIS, parse_int_list
from llama_tui.core.childproc import EventStream
from llama_tui.core.errors import UserError
from llama_tui.core.loadgen import (DEFINITIONS, LiveCounters, RequestShape, StepPartial, StepPlan, Target,
                                    is_loopback, json_lines, measure_ceiling, run_plan)
from llama_tui.core.snapshots import BenchSample
from llama_tui.core.stats import percentile

Sample = Callable[[BenchSample], None]

CEILING_FRACTION = 0.70
CPU_SATURATED = 0.90
LOOP_LAG_LIMIT_MS = 25.0  # p99 above this: the latencies include client scheduling delay (latency_valid false)
LATE_START_FRACTION = 0.05  # mean loop lag above this share of the mean request: the offered load fell short
PROBE_RESOLUTION_MS = 1.0  # timer lateness the lag probe shows on an idle loop (epoll's millisecond timeouts)
CALIBRATION_FILE = "bench-calibration.json"
QUANTILE_KEYS = ("p50", "p95", "p99", "mean")
LATENCIES = ("ttft", "itl", "tpot", "e2e")


# --------------------------------------------------------------------------------------------- configuration


def parse_rates(text: str | float | int | list | tuple) -> tuple[float, ...]:
    """"2" or "0.5,1,2" -> request rates per second. Malformed input raises UserError."""
    items = list(text) if isinstance(text, (list, tuple)) else str(text).split(",")
    out = []
    for item in items:
        try:
            v = float(str(item).strip())
        except ValueError:
            raise UserError(f"malformed rate list: {text!r} ({item!r} is not a number)",
                            "write --rate as requests per second, e.g. 2 or 1,2,4") from None
        if not v > 0 or math.isinf(v):
            raise UserError(f"rate must be above 0, got {item!r}", "write --rate as requests per second, e.g. 2")
        out.append(v)
    if not out:
        raise UserError("rate list is empty", "write --rate as requests per second, e.g. 2")
    return tuple(out)


@dataclass(frozen=True)
class BenchConfig:
    """Everything a benchmark needs. `url` (one) or `urls` (several: client-side round-robin)."""

    url: str | None = None
    urls: tuple[str, ...] = ()
    api: str = "completion"
    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    ramp: bool = False
    rates: tuple[float, ...] = ()  # open loop when given
    duration: float = 10.0
    warmup: float = 2.0
    n_predict: int = 128
    prompt: str | None = None
    prompt_file: str | None = None
    prompt_tokens: int = 32
    stream: bool = True
    cache_prompt: bool = False
    ignore_eos: bool = True
    workers: int | None = None  # None: auto
    server_urls: tuple[str, ...] = ()  # llama-server instances whose /metrics to read
    state_dir: str | None = None  # the fleet state dir to find instances in (default: paths.state_dir())
    api_key: str | None = None
    timeout: float = 120.0  # a request that receives nothing for this long is a timeout
    drain: float = 60.0  # open loop: how long requests sent inside the window may take to finish
    max_concurrency: int = 1024  # ramp stops here
    ramp_gain: float = 0.03
    seed: int | None = None
    ceiling_events_s: float | None = None  # client ceiling per worker (default: calibrated once, cached)
    json_path: str | None = None  # spawn(): where the child writes its result
    csv_path: str | None = None
    check: bool = True  # check that every target answers before starting

    @property
    def target_urls(self) -> tuple[str, ...]:
        return self.urls or ((self.url,) if self.url else ())

    @property
    def rate(self) -> float | None:
        return self.rates[0] if self.rates else None

    def validated(self) -> "BenchConfig":
        if not self.target_urls:
            raise UserError("no target URL", "pass --url http://HOST:PORT (NGINX or a llama-server), or start a "
                            "fleet with `llama-tui fleet up`")
        for u in self.target_urls + self.server_urls:
            Target.parse(u)
        if self.api not in APIS:
            raise UserError(f"unknown API {self.api!r}", f"use one of: {', '.join(APIS)}")
        parse_int_list(self.concurrency, "concurrency list")
        if self.rates:
            parse_rates(self.rates)
        checks = [("duration", self.duration, 0.5), ("warmup", self.warmup, 0.0), ("timeout", self.timeout, 0.1),
                  ("drain", self.drain, 0.0)]
        for name, v, lo in checks:
            if not isinstance(v, (int, float)) or v < lo:
                raise UserError(f"--{name} must be >= {lo}, got {v!r}", f"correct --{name}")
        if self.n_predict < 1:
            raise UserError(f"--n-predict must be >= 1, got {self.n_predict}", "correct --n-predict")
        if self.prompt_tokens < 1:
            raise UserError(f"--prompt-tokens must be >= 1, got {self.prompt_tokens}", "correct --prompt-tokens")
        if self.workers is not None and self.workers < 1:
            raise UserError(f"--workers must be >= 1 or auto, got {self.workers}", "correct --workers")
        if self.prompt is not None and self.prompt_file is not None:
            raise UserError("--prompt and --prompt-file both given", "use one of them")
        if self.prompt_file is not None and not Path(self.prompt_file).expanduser().is_file():
            raise UserError(f"prompt file {self.prompt_file} does not exist", "correct --prompt-file")
        return self

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "BenchConfig":
        names = {f.name for f in fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return cls(**kw)

    @classmethod
    def from_settings(cls, settings: Any, url: str | None = None, **overrides: Any) -> "BenchConfig":
        """From resolved `config.Settings` ([bench] table); `overrides` win (field names of this class)."""
        b = settings.section("bench")
        kw: dict[str, Any] = {
            "api": b["api"], "concurrency": tuple(b["concurrency"]), "duration": float(b["duration"]),
            "warmup": float(b["warmup"]), "n_predict": int(b["n_predict"]),
            "prompt_tokens": int(b["prompt_tokens"]), "stream": bool(b["stream"]),
        }
        with contextlib.suppress(KeyError, AttributeError):
            key = settings.get("fleet.api_key")
            if key:
                kw["api_key"] = key
        if url is not None:
            kw["url"] = url
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)


# --------------------------------------------------------------------------------------------- calibration


def _fingerprint() -> dict[str, Any]:
    return {"version": __version__, "python": platform.python_version(), "cpu": hardware.cpu_model(),
            "host": platform.node(), "cores": hardware.logical_cores()}


def calibration_path() -> Path:
    return paths.cache_dir() / CALIBRATION_FILE


def calibrate(duration: float = 3.0, concurrency: int = 64, interval_s: float = 0.004, save: bool = True) -> dict:
    """Measure this machine's client ceiling against the loopback SSE source (a child process that writes
    one small event per token per stream every `interval_s`, like llama-server's decode steps)."""
    from llama_tui.core.loadgen import Source

    with Source(interval_s) as src:
        result = measure_ceiling(src.url, duration=duration, concurrency=concurrency, n_predict=256)
    result.update({"source_interval_ms": interval_s * 1000, "measured_at": _iso_now(), **_fingerprint()})
    if save and result.get("ceiling_events_s_per_worker"):
        paths.write_private(calibration_path(), orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return result


def load_calibration() -> dict | None:
    try:
        data = orjson.loads(calibration_path().read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    fp = _fingerprint()
    if not isinstance(data, dict) or any(data.get(k) != v for k, v in fp.items()):
        return None
    return data


def client_ceiling(config: BenchConfig) -> tuple[float | None, str]:
    """(events/s one worker can take, where that figure comes from)."""
    if config.ceiling_events_s:
        return float(config.ceiling_events_s), "config"
    cal = load_calibration()
    if cal is None:
        try:
            cal = calibrate(duration=1.5)
        except (OSError, RuntimeError):
            return None, "unavailable"
        return cal.get("ceiling_events_s_per_worker"), "calibrated now"
    return cal.get("ceiling_events_s_per_worker"), str(calibration_path())


# --------------------------------------------------------------------------------------------- targets and servers


def _iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _norm_netloc(t: Target) -> tuple[str, int]:
    host = "127.0.0.1" if t.host in ("localhost", "0.0.0.0") else ("::1" if t.host == "::" else t.host)
    return host, t.port


def check_targets(config: BenchConfig) -> dict[str, int]:
    """Every target must answer /health; a one-line UserError otherwise. Returns url -> status."""
    import httpx

    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    out = {}
    for url in config.target_urls:
        t = Target.parse(url)
        try:
            r = httpx.get(f"{t.url}/health", timeout=httpx.Timeout(5.0, connect=3.0), headers=headers,
                          verify=not is_loopback(t.host))
        except httpx.HTTPError as exc:
            raise UserError(f"cannot reach {t.url}: {exc or type(exc).__name__}",
                            "start the fleet (`llama-tui fleet up`) or correct --url") from None
        if r.status_code == 503:
            raise UserError(f"{t.url} is not ready (HTTP 503: loading the model?)", "wait until /health answers 200")
        if r.status_code == 401:
            raise UserError(f"{t.url} requires an API key (HTTP 401)", "pass --api-key KEY")
        out[t.url] = r.status_code
    return out


def _fleet_state(state_dir: str | None) -> Any:
    try:
        from llama_tui.core import fleet
    except ImportError:
        return None
    try:
        return fleet.load_state(Path(state_dir) if state_dir else None)
    except Exception:  # a damaged or foreign state file must not stop a benchmark
        return None


def _probe(api_key: str | None = None) -> probe.Probe:
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
        st = _fleet_state(config.state_dir)
        urls = tuple(Target.parse(u).url for u in config.server_urls)
        return Servers(urls, "--server-url", st, _internal_key(st, urls))
    targets = [Target.parse(u) for u in config.target_urls]
    st = _fleet_state(config.state_dir)
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
            return Servers(urls, "fleet", st, _internal_key(st, urls), direct)
    with _probe() as pr:
        direct = [t.url for t in targets if _is_llama_server(t.url, pr)]
    if direct and len(direct) == len(targets):
        return Servers(tuple(direct), "target", None)
    return Servers((), None, None)


def _internal_key(st: Any, urls: tuple[str, ...]) -> str | None:
    """The fleet's internal key, when every one of `urls` is one of its instances (never sent elsewhere)."""
    from llama_tui.core.fleet import keys

    try:
        ours = {_norm_netloc(Target.parse(u)) for u in st.instance_urls()} if st is not None else set()
    except Exception:  # a damaged or foreign state file
        return None
    if not urls or not {_norm_netloc(Target.parse(u)) for u in urls} <= ours:
        return None
    return keys.read_internal_key(st.state_dir)


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


class _CounterReader(threading.Thread):
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
        with _probe(self.api_key) as pr:
            self.stopped.wait(max(0.0, self.t_window - time.monotonic()))
            self.start_read = self._read(pr)
            self.stopped.wait(max(0.0, self.t_end - time.monotonic()))
            self.end_read = self._read(pr)


# --------------------------------------------------------------------------------------------- prompts

_WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches and "
          "every morning engineers measure how many tokens per second their servers can stream").split()


def _words(n: int) -> str:
    return " ".join(_WORDS[i % len(_WORDS)] for i in range(max(1, n)))


def tokenize_count(url: str, text: str, api_key: str | None = None) -> int | None:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.post(f"{url}/tokenize", json={"content": text}, timeout=10.0, headers=headers)
        if r.status_code != 200:
            return None
        tokens = r.json().get("tokens")
        return len(tokens) if isinstance(tokens, list) else None
    except (httpx.HTTPError, ValueError):
        return None


def build_prompt(n_tokens: int, count: Callable[[str], int | None]) -> tuple[str, int | None]:
    """A prompt of about `n_tokens` tokens, sized with the server's own tokenizer (`count`); without one,
    one word per token. Returns (text, its token count or None)."""
    words = n_tokens
    best: tuple[int, str, int | None] | None = None
    tried: set[int] = set()
    for _ in range(8):
        text = _words(words)
        measured = count(text)
        if measured is None:
            return text, None
        if best is None or abs(measured - n_tokens) < best[0]:
            best = (abs(measured - n_tokens), text, measured)
        if measured == n_tokens:
            break
        tried.add(words)
        nxt = max(1, round(words * n_tokens / max(1, measured)))
        if nxt in tried:
            nxt = words + (1 if measured < n_tokens else -1)
        if nxt < 1 or nxt in tried:
            break
        words = nxt
    assert best is not None
    return best[1], best[2]


def resolve_prompt(config: BenchConfig) -> tuple[str, dict[str, Any]]:
    if config.prompt is not None:
        return config.prompt, {"source": "--prompt"}
    if config.prompt_file is not None:
        path = Path(config.prompt_file).expanduser()
        try:
            return path.read_text(), {"source": f"--prompt-file {path}"}
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read prompt file {path}: {exc}", "correct --prompt-file") from None
    url = Target.parse(config.target_urls[0]).url
    text, measured = build_prompt(config.prompt_tokens, lambda t: tokenize_count(url, t, config.api_key))
    return text, {"source": f"--prompt-tokens {config.prompt_tokens}", "tokens": measured,
                  "tokenizer": "server /tokenize" if measured is not None else "none (about one token per word)"}


# --------------------------------------------------------------------------------------------- worker processes


class WorkerPool:
    """N load-worker processes (`python -m llama_tui.core.loadgen worker`), kept across steps."""

    def __init__(self, n: int) -> None:
        self.procs: list[subprocess.Popen] = []
        self.lines: queue.Queue = queue.Queue()
        env = paths.owner_env()
        try:
            for i in range(n):
                p = subprocess.Popen([sys.executable, "-m", "llama_tui.core.loadgen", "worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
                self.procs.append(p)
                threading.Thread(target=self._reader, args=(i, p), daemon=True).start()
        except OSError as exc:
            self.close()
            raise UserError(f"cannot start load workers: {exc}", "use --workers 1") from None

    def _reader(self, i: int, p: subprocess.Popen) -> None:
        assert p.stdout is not None
        for msg in json_lines(p.stdout):
            self.lines.put((i, msg))
        err = p.stderr.read().decode(errors="replace")[-500:] if p.stderr else ""
        self.lines.put((i, {"t": "eof", "stderr": err}))

    def send(self, i: int, cmd: dict[str, Any]) -> None:
        p = self.procs[i]
        assert p.stdin is not None
        try:
            p.stdin.write(orjson.dumps(cmd) + b"\n")
            p.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def run(self, targets: list[Target], shape: RequestShape, plans: list[StepPlan], live: "_Live",
            stop: threading.Event | None) -> StepPartial:
        for i, plan in enumerate(plans):
            self.send(i, {"cmd": "step", "targets": [asdict(t) for t in targets], "shape": asdict(shape),
                          "plan": asdict(plan)})
        parts: dict[int, StepPartial] = {}
        stop_sent = False
        next_emit = time.monotonic() + 0.5
        while len(parts) < len(plans):
            try:
                i, msg = self.lines.get(timeout=max(0.01, next_emit - time.monotonic()))
            except queue.Empty:
                msg = None
            if msg is not None:
                kind = msg.get("t")
                if kind == "live":
                    live.update(LiveCounters(**{k: v for k, v in msg.items() if k != "t"}))
                elif kind == "partial":
                    parts[i] = StepPartial.from_json(msg["partial"])
                elif kind == "error":
                    raise UserError(f"load worker {i} failed: {msg.get('error')}", "run with --workers 1",
                                    exit_code=1)
                elif kind == "eof" and i not in parts and i < len(plans):
                    raise UserError(f"load worker {i} exited: {msg.get('stderr') or 'no output'}",
                                    "run with --workers 1", exit_code=1)
            now = time.monotonic()
            if now >= next_emit:
                live.emit(now)
                next_emit = now + 0.5
            if stop is not None and stop.is_set() and not stop_sent:
                stop_sent = True
                for j in range(len(plans)):
                    self.send(j, {"cmd": "stop"})
        merged = StepPartial()
        for i in sorted(parts):
            merged.merge(parts[i])
        return merged

    def close(self) -> None:
        for i in range(len(self.procs)):
            self.send(i, {"cmd": "exit"})
        for p in self.procs:
            with contextlib.suppress(OSError):
                if p.stdin:
                    p.stdin.close()
        deadline = time.monotonic() + 3
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        self.procs = []


def auto_workers(mode: str, concurrency: int, rate: float, n_predict: int, ceiling: float | None) -> int:
    """Worker processes for a step: one per 128 streams (closed) or per half a ceiling of expected events
    (open), at most half the logical cores, so the servers on the same machine keep theirs."""
    cap = max(1, hardware.logical_cores() // 2)
    if mode == "open":
        expected = rate * n_predict
        want = math.ceil(expected / (0.5 * ceiling)) if ceiling else 1
    else:
        want = math.ceil(concurrency / 128)
    return max(1, min(cap, want))


# --------------------------------------------------------------------------------------------- live samples


class _Live:
    """Merges workers' live counters into BenchSamples."""

    def __init__(self, emit: Sample | None, t0: float, index: int, steps_total: int | None,
                 concurrency: int | None, rate: float | None, t_start: float, t_window: float, t_end: float) -> None:
        self.emit_to = emit
        self.t0 = t0
        self.index, self.steps_total = index, steps_total
        self.concurrency, self.rate = concurrency, rate
        self.t_start, self.t_window, self.t_end = t_start, t_window, t_end
        self.latest: dict[int, LiveCounters] = {}
        self.ttfts: list[float] = []
        self.last_tokens = 0
        self.last_t = t_start
        self.lock = threading.Lock()
        self.last: BenchSample | None = None

    def update(self, c: LiveCounters) -> None:
        with self.lock:
            self.latest[c.worker] = c
            self.ttfts.extend(c.ttft_new)

    def update_and_emit(self, c: LiveCounters) -> None:
        self.update(c)
        self.emit(c.t)

    def emit(self, now: float) -> None:
        with self.lock:
            counters = list(self.latest.values())
            self.ttfts.sort()
            p50 = percentile(self.ttfts, 50)
            p95 = percentile(self.ttfts, 95)
        tokens = sum(c.tokens for c in counters)
        dt = now - self.last_t
        tok_s = (tokens - self.last_tokens) / dt if dt > 0 else 0.0
        self.last_tokens, self.last_t = tokens, now
        sample = BenchSample(
            t=round(now - self.t0, 3), step=self.index, concurrency=self.concurrency, rate=self.rate,
            tok_s=round(max(0.0, tok_s), 1), inflight=sum(c.inflight for c in counters),
            requests_done=sum(c.done for c in counters),
            ttft_p50_ms=round(p50 * 1000, 2) if p50 is not None else None,
            errors=sum(c.errors for c in counters), phase="warmup" if now < self.t_window else "measure",
            ttft_p95_ms=round(p95 * 1000, 2) if p95 is not None else None, steps_total=self.steps_total,
            step_elapsed_s=round(max(0.0, now - self.t_start), 2),
            step_duration_s=round(self.t_end - self.t_start, 2))
        self.last = sample
        if self.emit_to is not None:
            self.emit_to(sample)

    def final(self, step: Mapping[str, Any]) -> None:
        """One last sample carrying the step's own figures and whether they are valid."""
        if self.emit_to is None:
            return
        now = time.monotonic()
        base = self.last or BenchSample(t=0.0, step=self.index, concurrency=self.concurrency, rate=self.rate,
                                        tok_s=0.0, inflight=0, requests_done=0, ttft_p50_ms=None, errors=0,
                                        steps_total=self.steps_total, step_duration_s=round(self.t_end - self.t_start, 2))
        self.emit_to(replace(base, t=round(now - self.t0, 3), tok_s=step["output_tok_s"] or 0.0, inflight=0,
                             ttft_p50_ms=step["ttft_p50_ms"], ttft_p95_ms=step["ttft_p95_ms"], valid=step["valid"],
                             phase="measure", step_elapsed_s=round(now - self.t_start, 2)))


# --------------------------------------------------------------------------------------------- a session


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _r(v: float | None, digits: int = 1) -> float | None:
    return round(v, digits) if v is not None else None


class BenchSession:
    """Checks the targets, builds the prompt, finds the servers and the client ceiling once; then runs steps."""

    def __init__(self, config: BenchConfig, stop: threading.Event | None = None) -> None:
        self.config = config.validated()
        self.stop = stop
        self.t0 = time.monotonic()
        self.targets = [Target.parse(u) for u in self.config.target_urls]
        self.health = check_targets(self.config) if self.config.check else {}
        self.servers = discover_servers(self.config)
        if self.servers.targets_are_instances and self.servers.api_key:  # --url straight at instances
            self.config = replace(self.config, api_key=self.servers.api_key)
        prompt, self.prompt_info = resolve_prompt(self.config)
        c = self.config
        self.shape = RequestShape(api=c.api, stream=c.stream, n_predict=c.n_predict, prompt=prompt,
                                  nonce=not c.cache_prompt, cache_prompt=c.cache_prompt, ignore_eos=c.ignore_eos,
                                  api_key=c.api_key, timeout_s=c.timeout)
        self.ceiling, self.ceiling_source = client_ceiling(self.config)
        self.seed = c.seed if c.seed is not None else int.from_bytes(os.urandom(4), "little")
        self.pool: WorkerPool | None = None
        self.next_workers: int | None = None  # auto: raised after a step that ran a worker hot
        self.steps_done = 0
        self.tokens_received_total = 0
        self.server_tokens_total: float | None = 0.0

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def __enter__(self) -> "BenchSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- metadata

    def metadata(self) -> dict[str, Any]:
        c = self.config
        props = None
        with _probe(self.servers.api_key or c.api_key) as pr:
            for u in self.servers.urls + tuple(t.url for t in self.targets):
                props = pr.props(u)
                if props:
                    break
        st = self.servers.fleet
        fleet_meta = nginx_meta = None
        if st is not None:
            spec = dict(getattr(st, "spec", {}) or {})
            fleet_meta = {k: spec.get(k) for k in ("instances", "parallel", "ctx_per_slot", "threads", "gpu_layers",
                                                   "gpus", "policy", "max_conns", "model")}
            fleet_meta["state_dir"] = getattr(st, "state_dir", None)
            fleet_meta["instances_running"] = len(st.instance_urls())
            ng = getattr(st, "nginx", None)
            if ng is not None:
                nginx_meta = {"policy": getattr(ng, "policy", None), "port": getattr(ng, "port", None),
                              "config_path": getattr(ng, "config_path", None), "config_hash": None}
                with contextlib.suppress(OSError, TypeError, ImportError):
                    from llama_tui.core.fleet.frontdoor import config_hash

                    nginx_meta["config_hash"] = config_hash(Path(ng.config_path).read_text())
        gpus = []
        with contextlib.suppress(Exception):
            from llama_tui.core import gpu

            gpus = [{"index": g.index, "name": g.name, "memory_total_bytes": g.memory_total_bytes}
                    for g in gpu.nvml().devices()]
        total_mem, _ = hardware.memory()
        model = (props or {}).get("model_path") or (fleet_meta or {}).get("model")
        return {
            "tool": "llama-tui", "version": __version__, "date": _iso_now(),
            "targets": [t.url for t in self.targets], "api": c.api,
            "streaming": "stream" if c.stream else "no-stream",
            "n_predict": c.n_predict, "ignore_eos": c.ignore_eos, "cache_prompt": c.cache_prompt,
            "nonce": self.shape.nonce and not c.cache_prompt, "prompt": self.prompt_info,
            "duration_s": c.duration, "warmup_s": c.warmup, "timeout_s": c.timeout, "seed": self.seed,
            "workers": c.workers or "auto",
            "load_shape": ("rate" if c.rates else "ramp" if c.ramp else "concurrency"),
            "llama_server": {"build_info": (props or {}).get("build_info"), "total_slots": (props or {}).get("total_slots"),
                             "model_path": (props or {}).get("model_path")} if props else None,
            "model": model, "fleet": fleet_meta, "nginx": nginx_meta,
            "servers": list(self.servers.urls), "servers_from": self.servers.source,
            "host": {"cpu": hardware.cpu_model(), "physical_cores": hardware.physical_cores(),
                     "logical_cores": hardware.logical_cores(), "memory_bytes": total_mem, "gpus": gpus,
                     "python": platform.python_version(), "platform": platform.platform()},
            "client_ceiling": {"events_s_per_worker": self.ceiling, "source": self.ceiling_source,
                               "invalid_above_fraction": CEILING_FRACTION},
            "definitions": DEFINITIONS,
        }

    # -- one step

    def _workers(self, mode: str, concurrency: int, rate: float) -> int:
        if self.config.workers:
            return self.config.workers
        w = auto_workers(mode, concurrency, rate, self.config.n_predict, self.ceiling)
        if self.next_workers:
            w = max(w, self.next_workers)
        return min(w, concurrency) if mode == "closed" else w

    def step(self, concurrency: int | None = None, rate: float | None = None, on_sample: Sample | None = None,
             index: int | None = None, steps_total: int | None = None) -> dict[str, Any]:
        c = self.config
        if concurrency is None and rate is None:
            if c.rates:
                rate = c.rates[0]
            else:
                concurrency = c.concurrency[0]
        mode = "open" if rate is not None else "closed"
        if mode == "closed" and (not isinstance(concurrency, int) or concurrency < 1):
            raise UserError(f"concurrency must be an integer >= 1, got {concurrency!r}", "correct --concurrency")
        if mode == "open" and not (rate and rate > 0):
            raise UserError(f"rate must be above 0, got {rate!r}", "correct --rate")
        index = self.steps_done if index is None else index
        n_workers = self._workers(mode, concurrency or 0, rate or 0.0)
        if n_workers > 1 and (self.pool is None or len(self.pool.procs) < n_workers):
            self.close()
            self.pool = WorkerPool(n_workers)
        started_at = _iso_now()
        stopped = threading.Event()
        pr = _probe(self.servers.api_key)
        pre = read_counters(self.servers.urls, pr) if self.servers.urls else None
        lead = 0.05 if n_workers == 1 else 0.4
        t_start = time.monotonic() + lead
        t_window = t_start + c.warmup
        t_end = t_window + c.duration
        plans = []
        for w in range(n_workers):
            seed = (self.seed * 1000003 + index * 1009 + w) & 0xFFFFFFFF
            if mode == "closed":
                share = _split(concurrency or 0, n_workers)[w]
                if share == 0:
                    continue
                plans.append(StepPlan("closed", t_start, t_window, t_end, concurrency=share, seed=seed, worker=w,
                                      target_offset=w, drain_s=c.drain))
            else:
                plans.append(StepPlan("open", t_start, t_window, t_end, rate=(rate or 0.0) / n_workers, seed=seed,
                                      worker=w, target_offset=w, drain_s=c.drain))
        live = _Live(on_sample, self.t0, index, steps_total, concurrency, rate, t_start, t_window, t_end)
        reader = (_CounterReader(self.servers.urls, t_window, t_end, stopped, self.servers.api_key)
                  if self.servers.urls else None)
        if reader is not None:
            reader.start()
        try:
            if n_workers == 1:
                runner_box: dict[str, Any] = {}

                def on_live(counters: LiveCounters) -> None:
                    live.update_and_emit(counters)
                    if self.stop is not None and self.stop.is_set() and "runner" in runner_box:
                        runner_box["runner"].request_stop()

                part = run_plan(self.targets, self.shape, plans[0], on_live,
                                runner_ready=lambda r: runner_box.__setitem__("runner", r))
            else:
                assert self.pool is not None
                part = self.pool.run(self.targets, self.shape, plans, live, self.stop)
        finally:
            stopped.set()
            if reader is not None:
                reader.join(timeout=30)
        time.sleep(0.1 if self.servers.urls else 0)  # let the servers release the cancelled slots
        post = read_counters(self.servers.urls, pr) if self.servers.urls else None
        pr.close()
        self.steps_done += 1
        step = self._step_dict(part, mode, concurrency, rate, n_workers, index, started_at, reader, pre, post)
        live.final(step)
        if not c.workers:
            per_worker = step.get("client_events_s_per_worker") or 0
            if self.ceiling and per_worker > 0.5 * self.ceiling:
                self.next_workers = min(max(1, hardware.logical_cores() // 2), n_workers * 2)
        return step

    def _step_dict(self, part: StepPartial, mode: str, concurrency: int | None, rate: float | None, n_workers: int,
                   index: int, started_at: str, reader: _CounterReader | None, pre: dict | None,
                   post: dict | None) -> dict[str, Any]:
        c = self.config
        w = part.window_s
        stream = c.stream
        step: dict[str, Any] = {
            "step": index, "mode": mode, "concurrency": concurrency if mode == "closed" else None,
            "rate": rate if mode == "open" else None, "started_at": started_at,
            "duration_s": round(w, 3), "warmup_s": c.warmup,
            "api": c.api, "stream": stream, "n_predict": c.n_predict,
            "requests_ok": part.requests_ok, "errors": part.errors, "errors_by_class": dict(part.errors_by_class),
            "error_examples": dict(part.error_examples), "errors_outside_window": part.errors_outside_window,
            "reconnects": part.reconnects, "requests_cancelled": part.cancelled,
            "requests_started": part.requests_started,
            "output_tokens": int(round(part.output_tokens)),
            "output_tok_s": _r(part.output_tokens / w if w > 0 else None),
            "prompt_tokens": part.prompt_tokens, "prompt_tok_s": _r(part.prompt_tokens / w if w > 0 else None),
            "cache_n": part.cache_n,
        }
        for name in LATENCIES:
            if stream or name == "e2e":
                summary = getattr(part, name).summary(1000.0)
            else:  # no stream, no first token: TTFT, ITL and TPOT are unknown
                summary = {k: None for k in QUANTILE_KEYS}
            step[f"{name}_ms"] = summary
            for k in QUANTILE_KEYS:
                step[f"{name}_{k}_ms"] = summary[k]
        step["samples_n"] = {name: len(getattr(part, name)) for name in LATENCIES}
        # The servers' own count over the same window.
        server_tokens = server_rate = server_window = None
        if reader is not None and reader.start_read and reader.end_read and reader.start_read[1] and reader.end_read[1]:
            server_tokens = reader.end_read[1]["tokens"] - reader.start_read[1]["tokens"]
            server_window = reader.end_read[0] - reader.start_read[0]
            server_rate = server_tokens / server_window if server_window > 0 else None
        step["server_output_tokens"] = int(server_tokens) if server_tokens is not None else None
        step["server_output_tok_s"] = _r(server_rate)
        step["server_window_s"] = _r(server_window, 3)
        step["servers"] = list(self.servers.urls)
        step["tokens_received"] = part.tokens_received
        step["server_tokens_step"] = int(post["tokens"] - pre["tokens"]) if pre and post else None
        agree = None
        if pre and post and post["tokens"] - pre["tokens"] > 0:
            agree = 100.0 * (part.tokens_received - (post["tokens"] - pre["tokens"])) / (post["tokens"] - pre["tokens"])
        step["token_agreement_pct"] = _r(agree, 2)
        step["per_upstream"] = {
            addr: {"requests_ok": e["requests_ok"], "errors": e["errors"],
                   "output_tokens": int(round(e["output_tokens"])),
                   "output_tok_s": _r(e["output_tokens"] / w if w > 0 else None)}
            for addr, e in sorted(part.per_upstream.items())}
        # Was the client the bottleneck?
        cpu = part.worker_cpu_s
        events = part.worker_events
        step["workers"] = n_workers
        step["client_cpu_percent"] = _r(100.0 * sum(cpu) / w if w > 0 else None)
        step["client_cpu_max_worker_percent"] = _r(100.0 * max(cpu) / w if w > 0 and cpu else None)
        step["client_events_s"] = _r(sum(events) / w if w > 0 else None)
        per_worker = max(events) / w if w > 0 and events else None
        step["client_events_s_per_worker"] = _r(per_worker)
        step["ceiling_events_s_per_worker"] = _r(self.ceiling)
        lag = part.loop_lag.summary(1000.0)
        step["loop_lag_p99_ms"] = lag["p99"]
        step["loop_lag_mean_ms"] = lag["mean"]
        max_cpu = max(cpu) / w if w > 0 and cpu else None
        reasons = client_bottleneck(per_worker, max_cpu, lag["mean"], step["e2e_ms"]["mean"], self.ceiling)
        step["valid"] = not reasons
        step["invalid_reason"] = "; ".join(reasons) or None
        # A late event loop (often: the fleet's threads hold the cores) adds its delay to the latencies
        # measured, without necessarily lowering the throughput, which the checks above judge.
        late = lag["p99"] is not None and lag["p99"] > LOOP_LAG_LIMIT_MS
        step["latency_valid"] = not late
        step["latency_note"] = (f"client event-loop lag p99 {lag['p99']:.0f} ms > {LOOP_LAG_LIMIT_MS:.0f} ms: "
                                "latencies include up to that much client scheduling delay" if late else None)
        return step


def client_bottleneck(events_s_per_worker: float | None, max_worker_cpu: float | None, loop_lag_mean_ms: float | None,
                      e2e_mean_ms: float | None, ceiling: float | None) -> list[str]:
    """Why a step's throughput may be the client's rather than the servers' (empty: it is not)."""
    reasons = []
    if events_s_per_worker is not None and ceiling and events_s_per_worker > CEILING_FRACTION * ceiling:
        reasons.append(f"client at {100 * events_s_per_worker / ceiling:.0f}% of its calibrated ceiling "
                       f"({events_s_per_worker:.0f} of {ceiling:.0f} events/s per worker): add --workers")
    if max_worker_cpu is not None and max_worker_cpu > CPU_SATURATED:
        reasons.append(f"client CPU saturated ({100 * max_worker_cpu:.0f}% of a core in one worker): add --workers")
    # The probe's own resolution is not lateness: asyncio sleeps in epoll with millisecond timeouts, so
    # its timers fire up to ~1 ms late on an idle machine (0.67 ms mean measured here with one instance).
    late_ms = None if loop_lag_mean_ms is None else loop_lag_mean_ms - PROBE_RESOLUTION_MS
    if late_ms is not None and e2e_mean_ms and late_ms > LATE_START_FRACTION * e2e_mean_ms:
        reasons.append(f"client started requests late: mean event-loop lag {loop_lag_mean_ms:.1f} ms (beyond the "
                       f"probe's {PROBE_RESOLUTION_MS:.0f} ms resolution: {100 * late_ms / e2e_mean_ms:.0f}% of the "
                       f"mean request, {e2e_mean_ms:.0f} ms), so the offered load fell short (other processes "
                       "hold the cores)")
    return reasons


# --------------------------------------------------------------------------------------------- public API


def run_step(config: BenchConfig, concurrency: int | None = None, rate: float | None = None,
             on_sample: Sample | None = None, stop: threading.Event | None = None) -> dict[str, Any]:
    """One measured step (what the sweep runs per cell). Blocks; safe to call from plain synchronous code."""
    with BenchSession(config, stop) as session:
        return session.step(concurrency=concurrency, rate=rate, on_sample=on_sample, steps_total=1)


def planned_steps(config: BenchConfig) -> list[tuple[int | None, float | None]]:
    if config.rates:
        return [(None, r) for r in config.rates]
    if config.ramp:
        return []
    return [(c, None) for c in parse_int_list(config.concurrency, "concurrency list")]


def run(config: BenchConfig, on_sample: Sample | None = None, stop: threading.Event | None = None,
        on_step: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every step of `config` (a concurrency list, a ramp, or rates). Returns {"metadata", "steps", ...}."""
    t0 = time.monotonic()
    with BenchSession(config, stop) as session:
        meta = session.metadata()
        steps: list[dict[str, Any]] = []
        stopped = False

        def do(concurrency: int | None, rate: float | None, total: int | None) -> dict[str, Any]:
            step = session.step(concurrency=concurrency, rate=rate, on_sample=on_sample, index=len(steps),
                                steps_total=total)
            steps.append(step)
            if on_step is not None:
                on_step(step)
            return step

        if config.ramp and not config.rates:
            c = parse_int_list(config.concurrency, "concurrency list")[0]
            prev = None
            while c <= config.max_concurrency:
                step = do(c, None, None)
                if stop is not None and stop.is_set():
                    stopped = True
                    break
                tok = step["output_tok_s"] or 0.0
                if prev is not None and tok < prev * (1 + config.ramp_gain):
                    break
                prev = tok if prev is None else max(prev, tok)
                c *= 2
        else:
            plan = planned_steps(config)
            for conc, rate in plan:
                if stop is not None and stop.is_set():
                    stopped = True
                    break
                do(conc, rate, len(plan))
            stopped = stopped or bool(stop is not None and stop.is_set())
        best = max(steps, key=lambda s: s.get("output_tok_s") or 0.0) if steps else None
    return {"metadata": meta, "steps": steps, "stopped": stopped, "wall_s": round(time.monotonic() - t0, 2),
            "best": {"step": best["step"], "concurrency": best["concurrency"], "rate": best["rate"],
                     "output_tok_s": best["output_tok_s"]} if best else None}


# --------------------------------------------------------------------------------------------- files

CSV_FIELDS = (["step", "mode", "concurrency", "rate", "duration_s", "api", "stream", "n_predict", "requests_ok",
               "errors", "reconnects", "output_tokens", "output_tok_s", "prompt_tokens", "prompt_tok_s"]
              + [f"{n}_{k}_ms" for n in LATENCIES for k in QUANTILE_KEYS]
              + ["server_output_tokens", "server_output_tok_s", "token_agreement_pct", "cache_n", "workers",
                 "client_cpu_percent", "client_events_s_per_worker", "loop_lag_p99_ms", "valid", "invalid_reason",
                 "latency_valid", "latency_note",
                 "errors_by_class", "per_upstream"])


def to_csv(result: Mapping[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for step in result.get("steps", []):
        row = dict(step)
        for k in ("errors_by_class", "per_upstream"):
            row[k] = orjson.dumps(step.get(k) or {}).decode()
        w.writerow(row)
    return buf.getvalue()


def write_outputs(result: Mapping[str, Any], json_path: str | None, csv_path: str | None) -> None:
    for p, data in ((json_path, lambda: orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n"),
                    (csv_path, lambda: to_csv(result).encode())):
        if not p or p == "-":
            continue
        path = Path(p).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data())
        except OSError as exc:
            raise UserError(f"cannot write {path}: {exc.strerror}", "choose a writable path") from None


# --------------------------------------------------------------------------------------------- child process (TUI)


def default_result_path() -> Path:
    return paths.ensure_private_dir(paths.state_dir() / "bench") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"


class BenchProcess:
    """A benchmark running in a child process (own process group, LLAMA_TUI_OWNER set), streaming back
    JSON lines: samples, steps, then the result. The parent never shares an event loop or GIL with the load."""

    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self._samples: EventStream[BenchSample] = EventStream()
        self.steps: list[dict[str, Any]] = []
        self._result: dict[str, Any] | None = None
        self._error: UserError | None = None
        self._done = threading.Event()
        self._stderr: list[str] = []
        self.latest: BenchSample | None = None
        self.proc = subprocess.Popen([sys.executable, "-m", "llama_tui.core.bench", "child"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=paths.owner_env(),
                                     start_new_session=True)
        assert self.proc.stdin is not None
        self.proc.stdin.write(orjson.dumps(config.to_json()) + b"\n")
        self.proc.stdin.flush()
        threading.Thread(target=self._read, daemon=True, name="llama-tui-bench-child").start()
        threading.Thread(target=self._read_err, daemon=True, name="llama-tui-bench-stderr").start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr = (self._stderr + [line.decode(errors="replace").rstrip()])[-20:]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for msg in json_lines(self.proc.stdout):
                kind = msg.get("t")
                if kind == "sample":
                    s = BenchSample(**msg["sample"])
                    self.latest = s
                    self._samples.put(s)
                elif kind == "step":
                    self.steps.append(msg["step"])
                elif kind == "result":
                    self._result = msg["result"]
                elif kind == "error":
                    self._error = UserError(msg.get("cause", "benchmark failed"), msg.get("fix", ""))
        finally:
            self.proc.wait()
            if self._result is None and self._error is None:
                tail = " | ".join(self._stderr[-3:])
                self._error = UserError(f"benchmark process exited with code {self.proc.returncode}"
                                        + (f": {tail}" if tail else ""), "see the message above")
            self._done.set()
            self._samples.close()

    def samples(self, timeout: float | None = None) -> Iterator[BenchSample]:
        """Live samples until the benchmark ends (blocks between them)."""
        return self._samples.iter(timeout)

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """The finished result ({"metadata", "steps", "out", ...}); raises UserError if the run failed."""
        if not self._done.wait(timeout):
            raise TimeoutError("benchmark still running")
        if self._result is None:
            assert self._error is not None
            raise self._error
        return self._result

    def stop(self) -> None:
        """Ask the child to end the current step now and return what it measured."""
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"stop\n")
            self.proc.stdin.flush()

    def cancel(self, timeout: float = 10.0) -> None:
        """Kill the child and its workers (its whole process group); returns when they are gone."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        self._done.wait(timeout)
        for f in (self.proc.stdin,):
            with contextlib.suppress(OSError, ValueError):
                if f:
                    f.close()


def spawn(config: BenchConfig) -> BenchProcess:
    """Run `run(config)` in a child process; see BenchProcess."""
    config.validated()
    return BenchProcess(config)


def child_main() -> int:
    out = sys.stdout.buffer
    lock = threading.Lock()

    def send(obj: dict[str, Any]) -> None:
        with lock:
            try:
                out.write(orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS) + b"\n")
                out.flush()
            except (BrokenPipeError, ValueError):
                pass

    # stdin is read with os.read: a daemon thread blocked in a buffered reader aborts interpreter shutdown.
    pending = b""
    while b"\n" not in pending:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        pending += chunk
    line, _, rest = pending.partition(b"\n")
    stop = threading.Event()

    def watch_stdin() -> None:  # any further line ("stop"), or the parent's end of the pipe closing, ends the run
        if not rest:
            with contextlib.suppress(OSError):
                os.read(0, 1)
        stop.set()

    try:
        config = BenchConfig.from_json(orjson.loads(line))
        threading.Thread(target=watch_stdin, daemon=True).start()
        result = run(config, on_sample=lambda s: send({"t": "sample", "sample": asdict(s)}), stop=stop,
                     on_step=lambda st: send({"t": "step", "step": st}))
        out_path = Path(config.json_path).expanduser() if config.json_path else default_result_path()
        result["out"] = str(out_path)
        write_outputs(result, str(out_path), config.csv_path)
        send({"t": "result", "result": result})
        return 0
    except UserError as exc:
        send({"t": "error", "cause": exc.cause, "fix": exc.fix})
        return exc.exit_code
    except Exception as exc:  # report instead of a silent death
        send({"t": "error", "cause": f"{type(exc).__name__}: {exc}", "fix": "report this as a bug"})
        return 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        raise SystemExit(child_main())
    print("usage: python -m llama_tui.core.bench child  (reads a BenchConfig as JSON on stdin)", file=sys.stderr)
    raise SystemExit(2)
