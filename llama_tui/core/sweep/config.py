"""What a sweep measures: `SweepConfig`, its validation and JSON form, and `build_config`, which makes
one from sweep options over the settings (the CLI and the TUI both call it)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

from llama_tui.core import paths
from llama_tui.core.config import ENGINE_OPTIONS, FLEET_OPTIONS
from llama_tui.core.errors import UserError

FLEET_STATE = "fleet-state"


@dataclass(frozen=True)
class SweepConfig:
    model: Path
    out_dir: Path
    instances: tuple[int, ...] = (1, 2)
    parallel: tuple[int, ...] = (1, 2, 4)
    concurrency: tuple[int, ...] | str = "auto"
    ctx_per_slot: int = 2048
    duration: float = 8.0
    warmup: float = 2.0
    repeats: int = 1
    slo: Mapping[str, float] = field(default_factory=dict)
    policy: str = "least_conn"
    host: str = "127.0.0.1"
    base_port: int = 18180
    nginx_port: int = 18100
    threads: tuple[int, ...] | None = None  # None: the thread budget (physical cores // instances)
    batch: tuple[int, ...] | None = None  # --batch-size values to sweep (None: llama-server's default)
    ubatch: tuple[int, ...] | None = None  # --ubatch-size values
    n_predict: tuple[int, ...] = (128,)
    prompt_tokens: int = 32
    api: str = "completion"
    stream: bool = True
    gpu_layers: int | None = None
    gpus: tuple[int, ...] = ()
    extra_args: str = ""
    max_concurrency: int = 1024
    ready_timeout: float = 120.0
    resume: bool = False
    adaptive: bool = False
    budget_min: float | None = None
    cores: int | None = None  # for the thread budget; None: this machine's physical cores
    command: tuple[str, ...] = ()  # the command line that started the sweep (for the metadata)
    # Where each shape's fleet runs (FleetSpec's fields of the same names): local, or a Ray cluster.
    engine: str = "local"
    ray_address: str | None = None
    placement: str = "spread"
    gpus_per_instance: float = 0.0
    node_resource: str | None = None
    model_dirs: tuple[tuple[str, str], ...] = ()
    workload: Mapping[str, Any] = field(default_factory=dict)  # BenchConfig's workload fields (core/bench)

    def validate(self) -> None:
        if isinstance(self.concurrency, str) and self.concurrency != "auto":
            raise UserError(f"--concurrency must be a list or auto, got {self.concurrency!r}",
                            "write --concurrency 1,4,16 or --concurrency auto")
        for name in ("instances", "parallel", "threads", "batch", "ubatch", "n_predict") + (
                () if isinstance(self.concurrency, str) else ("concurrency",)):
            vals = getattr(self, name)
            if vals is not None and (not vals or any(int(v) < 1 for v in vals)):
                raise UserError(f"--{name.replace('_', '-')} needs positive integers, got {vals!r}",
                                f"write --{name.replace('_', '-')} as e.g. 1,2,4")
        for ok, name, value, fix in ((self.repeats >= 1, "--repeats", self.repeats, "write --repeats 1 or more"),
                                     (self.duration > 0, "--duration", self.duration, "write a positive --duration"),
                                     (self.warmup >= 0, "--warmup", self.warmup, "write --warmup 0 or more")):
            if not ok:
                raise UserError(f"bad value for {name} {value!r}: {fix.split(' ', 1)[1]}", fix)
        if self.budget_min is not None and not 0 < self.budget_min <= 7 * 24 * 60:  # (nan and inf too)
            raise UserError(f"--budget must be a positive number of minutes (a week at most), got {self.budget_min}",
                            "write --budget 10")
        if self.adaptive and self.shape_count() < 2:
            raise UserError("--adaptive compares shapes, and this grid has only one "
                            f"(instances {','.join(map(str, self.instances))} x parallel "
                            f"{','.join(map(str, self.parallel))})",
                            "give --instances or --parallel more than one value, or drop --adaptive")
        paths.check_private_dir(self.out_dir)  # not a link, ours, writable by no one else
        from llama_tui.core.fleet import frontdoor_rules, spec  # refused now, not at every cell's fleet

        spec.check_unsafe_args(spec.parse_extra_args(self.extra_args), allow=False)
        frontdoor_rules.conf_path(self.fleet_state_dir() / "nginx")

    def shape_count(self) -> int:
        """How many shapes the grid holds (instances x parallel x threads x batch x ubatch)."""
        n = 1
        for vals in (self.instances, self.parallel, self.threads, self.batch, self.ubatch):
            n *= len(vals) if vals else 1
        return n

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"], d["out_dir"], d["slo"] = str(self.model), str(self.out_dir), dict(self.slo)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "SweepConfig":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["model"], kw["out_dir"] = Path(kw["model"]), Path(kw["out_dir"])
        for k in ("instances", "parallel", "threads", "batch", "ubatch", "n_predict", "gpus", "command"):
            if isinstance(kw.get(k), list):
                kw[k] = tuple(kw[k])
        if isinstance(kw.get("concurrency"), list):
            kw["concurrency"] = tuple(kw["concurrency"])
        kw["model_dirs"] = tuple(tuple(p) for p in kw.get("model_dirs") or ())
        return cls(**kw)

    @classmethod
    def from_settings(cls, settings: Any, out_dir: Path | str, **overrides: Any) -> "SweepConfig":
        """From resolved `config.Settings`: the [sweep] table, with the model, context, policy and
        llama-server options of [fleet] and the request shape of [bench]. `overrides` (field names of
        this class) win when not None. Threads stay None (the budget) unless given. Validates."""
        from llama_tui.core import model as model_mod

        sw, fl, be = settings.section("sweep"), settings.section("fleet"), settings.section("bench")
        kw: dict[str, Any] = dict(
            model=model_mod.resolve_model(fl["model"]), out_dir=Path(out_dir).expanduser().absolute(),
            instances=tuple(sw["instances"]), parallel=tuple(sw["parallel"]),
            concurrency=sw["concurrency"] if sw["concurrency"] == "auto" else tuple(sw["concurrency"]),
            ctx_per_slot=fl["ctx_per_slot"], duration=sw["duration"], warmup=sw["warmup"], repeats=sw["repeats"],
            policy=fl["policy"], host=fl["host"], n_predict=(be["n_predict"],), prompt_tokens=be["prompt_tokens"],
            api=be["api"], stream=be["stream"], gpu_layers=fl["gpu_layers"], gpus=tuple(fl["gpus"] or ()),
            extra_args=fl["extra_args"], max_concurrency=sw["max_concurrency"], ready_timeout=fl["ready_timeout"],
            engine=fl["engine"], ray_address=fl["ray_address"], placement=fl["placement"],
            gpus_per_instance=fl["gpus_per_instance"], node_resource=fl["node_resource"],
            model_dirs=fl["model_dir"])
        kw.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def params(self) -> dict[str, Any]:
        """What every cell shares; a cell measured under other parameters does not stand on resume."""
        return {"ctx_per_slot": self.ctx_per_slot, "duration": self.duration, "warmup": self.warmup,
                "policy": self.policy, "api": self.api, "stream": self.stream, "prompt_tokens": self.prompt_tokens,
                "gpu_layers": self.gpu_layers, "gpus": list(self.gpus), "extra_args": self.extra_args,
                **({"workload": dict(self.workload)} if self.workload else {})}

    def fleet_state_dir(self) -> Path:
        return Path(self.out_dir) / FLEET_STATE


# --------------------------------------------------------------------------------------------- from options

# Sweep option -> settings key (the preset's [sweep], [fleet] and [bench] tables fill in the rest).
SETTINGS_OPTIONS = {
    "model": "fleet.model",
    "instances": "sweep.instances",
    "parallel": "sweep.parallel",
    "concurrency": "sweep.concurrency",
    "ctx_per_slot": "fleet.ctx_per_slot",
    "duration": "sweep.duration",
    "warmup": "sweep.warmup",
    "repeats": "sweep.repeats",
    "max_concurrency": "sweep.max_concurrency",
    "policy": "fleet.policy",
    "gpu_layers": "fleet.gpu_layers",
    "gpus": "fleet.gpus",
    "extra_args": "fleet.extra_args",
    "prompt_tokens": "bench.prompt_tokens",
    "api": "bench.api",
    **{opt: FLEET_OPTIONS[opt] for opt in ENGINE_OPTIONS},
}
# Options that are no setting: they set SweepConfig fields directly (lists as "1,2,4" or sequences).
LIST_OPTIONS = ("threads", "batch", "ubatch", "n_predict")
OTHER_OPTIONS = ("slo", "base_port", "nginx_port", "out", "resume", "adaptive", "budget",
                 "workload", "prefix_tokens", "prefix_groups", "sessions", "turns")  # the last five: core/bench
OPTIONS = tuple(SETTINGS_OPTIONS) + LIST_OPTIONS + OTHER_OPTIONS


def sweeps_root() -> Path:
    """Where sweeps go without --out: STATE_DIR/sweeps/DATE-TIME."""
    from llama_tui.core import paths

    return paths.state_dir() / "sweeps"


def latest_sweep() -> Path | None:
    dirs = sorted((d for d in sweeps_root().glob("*") if (d / "results.jsonl").is_file()),
                  key=lambda d: d.stat().st_mtime)
    return dirs[-1] if dirs else None


def out_dir_for(out: str | Path | None, resume: bool) -> Path:
    """The output directory: `out`; with `resume` and no `out`, the latest sweep; else a new dated one."""
    if out:
        path = Path(out).expanduser()
    elif resume:
        latest = latest_sweep()
        if latest is None:
            raise UserError("--resume found no sweep to continue", "pass --out DIR with the sweep's directory")
        path = latest
    else:
        path = sweeps_root() / time.strftime("%Y%m%d-%H%M%S")
    if resume and not (path / "results.jsonl").is_file():
        raise UserError(f"--resume: {path} holds no sweep results", "pass the --out directory of an earlier sweep")
    return path


def command_line(options: Mapping[str, Any], preset: str | None = None) -> tuple[str, ...]:
    """The `llama-tui sweep ...` command that `options` stand for (recorded in metadata.json)."""
    argv = ["llama-tui", "sweep"] + (["--preset", preset] if preset else [])
    for name, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        else:
            argv += [flag, ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)]
    return tuple(argv)


def build_config(options: Mapping[str, Any], preset: str | None = None,
                 command: Sequence[str] | None = None) -> tuple[SweepConfig, Any]:
    """The sweep config, and the resolved settings, for sweep options (names as in OPTIONS, values as
    typed on a command line or already typed; None: not given) over a preset and the user's settings.

    `command` is recorded in metadata.json; None records the command line the options stand for.
    Bad input raises UserError (one line naming the option)."""
    from llama_tui.core import bench, config
    from llama_tui.core.sweep import results

    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise TypeError(f"unknown sweep options: {sorted(unknown)}")
    settings = config.load_settings(preset=preset, cli={key: options.get(opt) for opt, key in SETTINGS_OPTIONS.items()})

    def int_list(name: str) -> tuple[int, ...] | None:
        value = options.get(name)
        return None if value is None else config.parse_int_list(value, "--" + name.replace("_", "-"))

    def number(name: str, kind: type, example: str) -> Any:
        value, flag = options.get(name), "--" + name.replace("_", "-")
        if value is None:
            return None
        try:
            out = kind(value)
        except (TypeError, ValueError):
            out = None
        if out is None or (name.endswith("port") and not 1 <= out <= 65535):
            raise UserError(f"bad value for {flag} {value!r}", f"write e.g. {flag} {example}")
        return out

    resume = bool(options.get("resume"))
    cfg = SweepConfig.from_settings(
        settings, out_dir_for(options.get("out"), resume),
        slo=results.parse_slo(options.get("slo")), **{name: int_list(name) for name in LIST_OPTIONS},
        base_port=number("base_port", int, "18180"), nginx_port=number("nginx_port", int, "18100"), resume=resume,
        adaptive=bool(options.get("adaptive")), budget_min=number("budget", float, "10"),
        workload=bench.workload_options(options, int_list("concurrency") if options.get("concurrency") not in
                                        (None, "auto") else None),
        command=tuple(command) if command is not None else command_line(options, preset))
    return cfg, settings
