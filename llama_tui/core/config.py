"""Settings: defaults, presets, the user's config file, environment and command line.

Precedence, highest first: command line > `LLAMA_TUI_<SECTION>_<KEY>` environment variables >
the user's `config.toml` (in the config dir) > the preset > built-in defaults.

A preset and the user file have the same shape:

    description = "..."          # presets only
    [fleet]   instances = 2 ...
    [bench]   n_predict = 128 ...
    [sweep]   instances = [1, 2] ...

The preset itself is chosen by `--preset`, else `$LLAMA_TUI_PRESET`, else `preset = "..."` at the top
of the user file. Every error names the file (or variable) and the key.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from llama_tui.core import paths, resources
from llama_tui.core.errors import ConfigError, UserError

POLICIES = ("round_robin", "least_conn", "random_two_least_conn", "hash", "prefix")  # prefix: NGINX's Lua module
ENGINES = ("local", "ray")  # where a fleet's instances run
PLACEMENTS = ("spread", "pack")  # how the ray engine places them over nodes
APIS = ("completion", "chat")


# --------------------------------------------------------------------------------------------- value parsing


def parse_int_list(text: str | list | tuple | int, what: str = "list", minimum: int = 1) -> tuple[int, ...]:
    """"1,2,4" or [1, 2, 4] -> (1, 2, 4). Ranges "1-4" expand. Malformed input raises UserError."""
    if isinstance(text, bool):
        raise UserError(f"{what} must be integers, got {text!r}", f"write {what} as e.g. 1,2,4")
    if isinstance(text, int):
        items: list[Any] = [text]
    elif isinstance(text, (list, tuple)):
        items = list(text)
    else:
        items = [p.strip() for p in str(text).split(",")]
    out: list[int] = []
    for item in items:
        if isinstance(item, bool):
            raise UserError(f"{what} must be integers, got {item!r}", f"write {what} as e.g. 1,2,4")
        if isinstance(item, int):
            out.append(item)
            continue
        s = str(item).strip()
        try:
            if "-" in s[1:]:
                lo, hi = s.split("-", 1)
                a, b = int(lo), int(hi)
                if b < a:
                    raise ValueError
                out.extend(range(a, b + 1))
            else:
                out.append(int(s))
        except ValueError:
            raise UserError(f"malformed {what}: {text!r} ({s!r} is not an integer)",
                            f"write {what} as comma-separated integers, e.g. 1,2,4") from None
    if not out:
        raise UserError(f"{what} is empty", f"write {what} as comma-separated integers, e.g. 1,2,4")
    for v in out:
        if v < minimum:
            raise UserError(f"{what} must be >= {minimum}, got {v}", f"use values of {minimum} or more")
    return tuple(out)


def _as_int(v: Any, minimum: int | None = None) -> int:
    if isinstance(v, bool):
        raise ValueError("expected an integer")
    if isinstance(v, str):
        v = v.strip()
    i = int(v)
    if isinstance(v, float) and v != i:
        raise ValueError("expected an integer")
    if minimum is not None and i < minimum:
        raise ValueError(f"must be >= {minimum}")
    return i


def _as_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _as_float(v: Any, minimum: float | None = None, maximum: float | None = None) -> float:
    if isinstance(v, bool):
        raise ValueError("expected a number")
    f = float(v)
    if not math.isfinite(f):
        raise ValueError("must be a finite number")
    if minimum is not None and f < minimum:
        raise ValueError(f"must be >= {minimum}")
    if maximum is not None and f > maximum:
        raise ValueError(f"must be <= {maximum:g}")
    return f


DAY_S = 86400.0


def check_seconds(value: Any, what: str, lo: float, hi: float) -> float:
    """A duration in seconds within [lo, hi] (inf, nan and text refused), else a one-line UserError."""
    try:
        return _as_float(value, lo, hi)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number of seconds from {lo:g} to {hi:g}, got {value!r}",
                        f"pass e.g. {what} {min(hi, max(lo, 10)):g}") from None


def seconds_arg(lo: float, hi: float, unit: str = "seconds") -> Callable[[str], float]:
    """An argparse `type=` for a duration option within [lo, hi] (in `unit`)."""
    import argparse

    def conv(text: str) -> float:
        try:
            return _as_float(text, lo, hi)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {unit} from {lo:g} to {hi:g}, got {text!r}") from None
    return conv


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def conv(v: Any) -> str:
        s = str(v).strip().replace("-", "_")
        if s not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return s
    return conv


def _ints_or_auto(v: Any) -> tuple[int, ...] | str:
    if isinstance(v, str) and v.strip() == "auto":
        return "auto"
    return parse_int_list(v)


def _opt(conv: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """None, "" or "auto" mean "not set" (llama-tui or llama-server picks)."""
    def wrapped(v: Any) -> Any:
        if v is None or (isinstance(v, str) and v.strip().lower() in ("", "auto", "none")):
            return None
        return conv(v)
    return wrapped


def _port(v: Any) -> int:
    p = _as_int(v)
    if not 1 <= p <= 65535:
        raise ValueError("must be a port number between 1 and 65535")
    return p


def _model_dirs(v: Any) -> tuple[tuple[str, str], ...]:
    from llama_tui.core.fleet.model_dirs import parse  # (the fleet package imports this module)

    return parse(v)


def _gpus(v: Any) -> tuple[int, ...]:
    if v in ("", None) or v == []:
        return ()
    return parse_int_list(v, "GPU list", minimum=0)


# --------------------------------------------------------------------------------------------- the schema

# section -> key -> (converter, default, help)
SCHEMA: dict[str, dict[str, tuple[Callable[[Any], Any], Any, str]]] = {
    "fleet": {
        "model": (_opt(str), None, "GGUF model path, or 'tiny' for the generated demo model"),
        "instances": (lambda v: _as_int(v, 1), 2, "number of llama-server instances"),
        "parallel": (lambda v: _as_int(v, 1), 2, "slots per instance (--parallel)"),
        "ctx_per_slot": (lambda v: _as_int(v, 16), 2048, "context tokens per slot; --ctx-size = this x parallel"),
        "threads": (_opt(lambda v: _as_int(v, 1)), None, "threads per instance; auto = physical cores // instances"),
        "gpu_layers": (_opt(lambda v: _as_int(v, 0)), None, "--n-gpu-layers; auto leaves llama-server's default"),
        "gpus": (_gpus, (), "GPU indices to pin instances to, round-robin (CUDA_VISIBLE_DEVICES)"),
        "pin_cpus": (_as_bool, False, "give each instance its own physical cores (Linux CPU affinity)"),
        "host": (str, "127.0.0.1", "address instances bind to (loopback only)"),
        "base_port": (_port, 18080, "port of instance 0; instance i gets base_port + i"),
        "nginx_port": (_port, 18000, "port NGINX listens on"),
        "listen": (str, "127.0.0.1", "address NGINX listens on"),
        "policy": (_one_of(POLICIES), "least_conn", "NGINX balancing policy"),
        "max_conns": (_as_bool, False, "cap each backend at its slot count in NGINX (excess queues in NGINX)"),
        "max_concurrency": (lambda v: _as_int(v, 1), 1024, "largest concurrency you plan; sizes NGINX limits"),
        "extra_args": (str, "", "extra llama-server arguments (shlex-parsed, validated against --help)"),
        "api_key": (_opt(str), None, "API key NGINX requires (Authorization: Bearer KEY)"),
        "api_key_file": (_opt(str), None, "file holding the API key"),
        "expose_admin": (_as_bool, False, "serve /slots, /metrics, /props on the public listener"),
        "insecure_public": (_as_bool, False, "let a non-loopback listen address serve without an API key"),
        "upstream_header": (_opt(_as_bool), None, "add X-Upstream (the backend that answered); auto: loopback listener only"),
        "conn_limit": (_opt(lambda v: _as_int(v, 0)), None,
                       "concurrent requests per remote client address; auto: 64 on a public listener; 0: no limit"),
        "allow_unsafe_args": (_as_bool, False, "let --extra-args publish files, tools or proxies (--path, --tools ...)"),
        "ready_timeout": (lambda v: _as_float(v, 1, DAY_S), 120.0, "seconds an instance may take to answer /health"),
        "metrics_listen": (_opt(str), None, "IP:PORT where the supervisor serves Prometheus metrics (off by default)"),
        "metrics_public": (_as_bool, False, "allow a --metrics-listen address that is not loopback"),
        "engine": (_one_of(ENGINES), "local", "where instances run: local processes, or ray (actors across a Ray cluster)"),
        "ray_address": (_opt(str), None, "the Ray cluster's address HOST:PORT (default: $RAY_ADDRESS)"),
        "placement": (_one_of(PLACEMENTS), "spread", "ray: spread instances over nodes, or pack them onto few"),
        "gpus_per_instance": (lambda v: _as_float(v, 0), 0.0, "ray: GPUs each instance reserves"),
        "node_resource": (_opt(str), None, "ray: only place instances on nodes that have this custom resource"),
        "model_dir": (_model_dirs, (), "ray: LABEL=DIR pairs: nodes with the custom resource LABEL load the model "
                      "file of that name from DIR"),
    },
    "bench": {
        "api": (_one_of(APIS), "completion", "completion (native /completion) or chat (/v1/chat/completions)"),
        "concurrency": (parse_int_list, (1, 2, 4, 8), "concurrency steps (closed loop)"),
        "duration": (lambda v: _as_float(v, 0.5, DAY_S), 10.0, "seconds per step"),
        "warmup": (lambda v: _as_float(v, 0, 3600), 2.0, "seconds of warm-up before each step, excluded"),
        "n_predict": (lambda v: _as_int(v, 1), 128, "tokens to generate per request"),
        "prompt_tokens": (lambda v: _as_int(v, 1), 32, "approximate prompt length when no prompt is given"),
        "stream": (_as_bool, True, "stream responses (false: like-for-like with non-streaming tools)"),
    },
    "sweep": {
        "instances": (parse_int_list, (1, 2), "instance counts to try"),
        "parallel": (parse_int_list, (1, 2, 4), "slots per instance to try"),
        "concurrency": (_ints_or_auto, "auto", "concurrency list, or auto (double until gains < 3%)"),
        "duration": (lambda v: _as_float(v, 0.5, DAY_S), 8.0, "seconds per cell"),
        "warmup": (lambda v: _as_float(v, 0, 3600), 2.0, "seconds of warm-up per cell"),
        "repeats": (lambda v: _as_int(v, 1), 1, "measurements per cell"),
        "max_concurrency": (lambda v: _as_int(v, 1), 1024, "auto ramp stops here"),
    },
}


# The options that say where a fleet's instances run (the ray engine's); `sweep` passes them to its fleets.
ENGINE_OPTIONS = ("engine", "ray_address", "placement", "gpus_per_instance", "node_resource", "model_dir")

# Command-line option (argparse dest) -> settings key, for the fleet options that `fleet up`,
# `nginx render` and the TUI's entry point (`llama-tui` with no command) all take.
FLEET_OPTIONS = {
    "model": "fleet.model",
    "instances": "fleet.instances",
    "parallel": "fleet.parallel",
    "ctx_per_slot": "fleet.ctx_per_slot",
    "threads": "fleet.threads",
    "gpu_layers": "fleet.gpu_layers",
    "gpus": "fleet.gpus",
    "pin_cpus": "fleet.pin_cpus",
    "base_port": "fleet.base_port",
    "host": "fleet.host",
    "nginx_port": "fleet.nginx_port",
    "policy": "fleet.policy",
    "extra_args": "fleet.extra_args",
    "listen": "fleet.listen",
    "api_key": "fleet.api_key",
    "api_key_file": "fleet.api_key_file",
    "expose_admin": "fleet.expose_admin",
    "insecure_public": "fleet.insecure_public",
    "upstream_header": "fleet.upstream_header",
    "conn_limit": "fleet.conn_limit",
    "allow_unsafe_args": "fleet.allow_unsafe_args",
    "max_conns": "fleet.max_conns",
    "max_concurrency": "fleet.max_concurrency",
    "ready_timeout": "fleet.ready_timeout",
    "metrics_listen": "fleet.metrics_listen",
    "metrics_public": "fleet.metrics_public",
    **{opt: f"fleet.{opt}" for opt in ENGINE_OPTIONS},
}


def fleet_overrides(options: Any) -> dict[str, Any]:
    """The fleet options of a parsed command line (any object with FLEET_OPTIONS' attributes, e.g. an
    argparse namespace) as `load_settings(cli=...)` overrides; options not given are None."""
    return {key: getattr(options, opt, None) for opt, key in FLEET_OPTIONS.items()}


@dataclass(frozen=True)
class Settings:
    """Resolved settings plus where each value came from (for `doctor` and error messages)."""

    preset: str | None
    values: Mapping[str, Mapping[str, Any]]
    sources: Mapping[str, str] = field(default_factory=dict)  # "fleet.instances" -> "cli" / "env:..." / path

    def get(self, dotted: str) -> Any:
        section, key = dotted.split(".", 1)
        return self.values[section][key]

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.values[name])


# --------------------------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class PresetInfo:
    name: str
    path: Path
    origin: str  # "shipped" or "user"
    description: str


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {path}: {exc}", f"fix the syntax in {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", f"check that {path} is readable") from None


def list_presets() -> list[PresetInfo]:
    """Shipped presets, then user presets (a user preset with the same name replaces the shipped one)."""
    found: dict[str, PresetInfo] = {}
    for origin, d in (("shipped", resources.presets_dir()), ("user", paths.user_presets_dir())):
        if not d.is_dir():
            continue
        for p in sorted(d.glob("*.toml")):
            desc = ""
            try:
                desc = str(_read_toml(p).get("description", ""))
            except ConfigError as exc:
                desc = f"(invalid: {exc.cause})"
            found[p.stem] = PresetInfo(p.stem, p, origin, desc)
    return sorted(found.values(), key=lambda i: (i.origin != "shipped", i.name))


def preset_path(name: str) -> Path:
    for info in list_presets():
        if info.name == name:
            return info.path
    names = ", ".join(i.name for i in list_presets()) or "none"
    raise UserError(f"unknown preset {name!r}", f"pick one of: {names} (see `llama-tui presets`)")


def _apply(values: dict[str, dict[str, Any]], sources: dict[str, str], data: Mapping[str, Any], origin: str) -> None:
    for section, table in data.items():
        if section in ("description", "preset"):
            continue
        if section not in SCHEMA:
            raise ConfigError(f"{origin}: unknown section [{section}]",
                              f"use one of [{'], ['.join(SCHEMA)}] in {origin}")
        if not isinstance(table, Mapping):
            raise ConfigError(f"{origin}: {section} must be a table", f"write [{section}] as a TOML table")
        for key, raw in table.items():
            if key not in SCHEMA[section]:
                raise ConfigError(f"{origin}: unknown key {section}.{key}",
                                  f"valid keys in [{section}]: {', '.join(SCHEMA[section])}")
            conv = SCHEMA[section][key][0]
            try:
                values[section][key] = conv(raw)
            except (ValueError, TypeError, UserError) as exc:
                detail = exc.cause if isinstance(exc, UserError) else str(exc)
                raise ConfigError(f"{origin}: bad value for {section}.{key} = {raw!r}: {detail}",
                                  f"correct {section}.{key} in {origin}") from None
            sources[f"{section}.{key}"] = origin


def env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for section, keys in SCHEMA.items():
        for key in keys:
            var = f"LLAMA_TUI_{section.upper()}_{key.upper()}"
            if var in env:
                out.setdefault(section, {})[key] = env[var]
    return out


def load_settings(
    preset: str | None = None,
    cli: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve settings. `cli` maps "section.key" to a value; None values are ignored."""
    env = os.environ if env is None else env
    values: dict[str, dict[str, Any]] = {s: {k: spec[1] for k, spec in keys.items()} for s, keys in SCHEMA.items()}
    sources: dict[str, str] = {f"{s}.{k}": "default" for s, keys in SCHEMA.items() for k in keys}

    user_file = paths.user_config_file()
    user_data = _read_toml(user_file) if user_file.is_file() else {}
    chosen = preset or env.get("LLAMA_TUI_PRESET") or user_data.get("preset")
    if chosen:
        ppath = preset_path(str(chosen))
        _apply(values, sources, _read_toml(ppath), str(ppath))
    if user_data:
        _apply(values, sources, user_data, str(user_file))
    for section, table in env_overrides(env).items():
        for key, raw in table.items():
            var = f"LLAMA_TUI_{section.upper()}_{key.upper()}"
            _apply(values, sources, {section: {key: raw}}, f"environment variable {var}")
    for dotted, raw in (cli or {}).items():
        if raw is None:
            continue
        section, key = dotted.split(".", 1)
        option = f"--{key.replace('_', '-')}"
        try:
            values[section][key] = SCHEMA[section][key][0](raw)
        except (ValueError, TypeError) as exc:
            raise UserError(f"bad value for {option} {raw!r}: {exc}", f"correct {option}") from None
        except UserError as exc:  # list parsers explain themselves; say which option it was
            raise UserError(f"bad value for {option}: {exc.cause}", exc.fix) from None
        sources[dotted] = "cli"
    return Settings(str(chosen) if chosen else None, values, sources)
