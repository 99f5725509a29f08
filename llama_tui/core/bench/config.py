"""What a benchmark is asked to do: `BenchConfig` (validated, JSON round-trip, from settings) and the
steps it plans (a concurrency list, a ramp, or open-loop rates)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

from llama_tui.core.bench import workload as wl
from llama_tui.core.bench.target import Target
from llama_tui.core.config import APIS, parse_int_list
from llama_tui.core.errors import UserError


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
    workload: str = "unique"  # unique, shared-prefix, sessions, dataset (core/bench/workload.py)
    dataset: str | None = None  # --workload dataset:FILE
    prefix_tokens: int | None = None  # shared-prefix: S (None: the default)
    prefix_groups: int | None = None  # shared-prefix: G
    sessions: int | None = None  # sessions: N
    turns: int | None = None  # sessions: T
    n_predict_max: int | None = None  # --n-predict MIN:MAX: drawn uniformly per request
    max_window: float | None = None  # how far a window may stretch for long requests (None: 4 x duration)

    @property
    def target_urls(self) -> tuple[str, ...]:
        return self.urls or ((self.url,) if self.url else ())

    @property
    def rate(self) -> float | None:
        return self.rates[0] if self.rates else None

    def workload_params(self) -> dict[str, int]:
        """The workload's S, G (shared-prefix) or N, T (sessions), defaults filled in."""
        if self.workload == "shared-prefix":
            return {"prefix_tokens": self.prefix_tokens or wl.DEFAULTS["prefix_tokens"],
                    "prefix_groups": self.prefix_groups or wl.DEFAULTS["prefix_groups"]}
        if self.workload == "sessions":
            most = 16 if self.rates or self.ramp else max(parse_int_list(self.concurrency, "concurrency list"))
            return {"sessions": self.sessions or most, "turns": self.turns or wl.DEFAULTS["turns"]}
        return {}

    def _check_workload(self) -> "BenchConfig":
        """The workload's own checks; returns the config with a "dataset:FILE" workload split."""
        cfg = self
        if self.dataset is None and self.workload not in ("unique", "shared-prefix", "sessions", "dataset"):
            name, path = wl.parse_workload(self.workload)
            cfg = replace(self, workload=name, dataset=path)
        if cfg.workload == "dataset" and not cfg.dataset:
            raise UserError("--workload dataset needs a file", "write --workload dataset:PROMPTS.jsonl")
        for name in wl.LIMITS:
            wl.check_range(name, getattr(cfg, name))
            owner = next(w for w, names in wl.OPTIONS.items() if name in names)
            if getattr(cfg, name) is not None and cfg.workload != owner:
                flag = "--" + name.replace("_", "-")
                raise UserError(f"{flag} applies to --workload {owner}, not {cfg.workload}",
                                f"add --workload {owner}, or drop {flag}")
        if cfg.workload == "sessions" and not (cfg.rates or cfg.ramp):
            most = max(parse_int_list(cfg.concurrency, "concurrency list"))
            n = cfg.workload_params()["sessions"]
            if n < most:
                raise UserError(f"--sessions {n} is below the concurrency {most}: a conversation has one turn in "
                                "flight at a time", f"use --sessions {most} or more, or a lower --concurrency")
        if cfg.workload == "dataset":
            if cfg.prompt is not None or cfg.prompt_file is not None:
                raise UserError("--prompt and --prompt-file do not apply to --workload dataset",
                                "the prompts come from the dataset file: drop --prompt/--prompt-file")
            from llama_tui.core.bench import datasets

            datasets.load_cached(cfg.dataset or "")  # a bad file or line is reported now, before any load
        if cfg.n_predict_max is not None and cfg.n_predict_max < cfg.n_predict:
            raise UserError(f"--n-predict {cfg.n_predict}:{cfg.n_predict_max}: MIN above MAX",
                            "write --n-predict MIN:MAX with MIN <= MAX")
        return cfg

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
        if self.max_window is not None and not self.max_window >= self.duration:
            raise UserError(f"--max-window {self.max_window:g} is below --duration {self.duration:g}",
                            "give --max-window at least --duration (equal: fixed windows)")
        if self.prompt_tokens < 1:
            raise UserError(f"--prompt-tokens must be >= 1, got {self.prompt_tokens}", "correct --prompt-tokens")
        if self.workers is not None and self.workers < 1:
            raise UserError(f"--workers must be >= 1 or auto, got {self.workers}", "correct --workers")
        if self.prompt is not None and self.prompt_file is not None:
            raise UserError("--prompt and --prompt-file both given", "use one of them")
        if self.prompt_file is not None and not Path(self.prompt_file).expanduser().is_file():
            raise UserError(f"prompt file {self.prompt_file} does not exist", "correct --prompt-file")
        return self._check_workload()

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


WORKLOAD_OPTIONS = ("workload", "prefix_tokens", "prefix_groups", "sessions", "turns")


def workload_options(options: Mapping[str, Any], concurrency: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Workload options as typed (`workload` "NAME" or "dataset:FILE", `prefix_tokens` ...; None: not
    given) -> BenchConfig fields, checked as `bench` checks them (against `concurrency` when known)."""
    out: dict[str, Any] = {}
    if options.get("workload") is not None:
        out["workload"], out["dataset"] = wl.parse_workload(str(options["workload"]))
    for name in WORKLOAD_OPTIONS[1:]:
        value = options.get(name)
        if value is None:
            continue
        try:
            out[name] = int(value)
        except (TypeError, ValueError):
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} must be an integer, got {value!r}", f"correct {flag}") from None
    BenchConfig(url="http://127.0.0.1:1", concurrency=concurrency or (1,), ramp=concurrency is None,
                **out).validated()
    return out


def planned_steps(config: BenchConfig) -> list[tuple[int | None, float | None]]:
    """(concurrency, rate) of each step, in order; empty for a ramp, which plans as it goes."""
    if config.rates:
        return [(None, r) for r in config.rates]
    if config.ramp:
        return []
    return [(c, None) for c in parse_int_list(config.concurrency, "concurrency list")]
