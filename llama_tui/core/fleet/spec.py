"""The fleet's shape as the user asked for it: `FleetSpec`, and the checks it must pass before anything starts.

`FleetSpec.from_settings` validates resolved settings (ranges, loopback instances, port ranges, CPU
pinning, policy) and resolves the model. `--extra-args` are checked against the llama-server's own
`--help` and against the flags llama-tui manages itself. `oversubscription` and `exposure_warning`
are the warnings a fleet of this shape deserves.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_tui.core import binaries, config, hardware
from llama_tui.core import model as model_mod
from llama_tui.core.errors import UserError
from llama_tui.core.fleet import frontdoor

DRAIN_TIMEOUT = 60.0  # seconds a leaving instance may take to finish its open streams

# llama-server flags that llama-tui sets itself, and the llama-tui option to use instead.
MANAGED_FLAGS: dict[str, str] = {
    "-m": "--model", "--model": "--model",
    "-mu": "--model", "--model-url": "--model", "-hf": "--model", "-hfr": "--model", "--hf-repo": "--model",
    "-hff": "--model", "--hf-file": "--model", "--docker-repo": "--model", "-dr": "--model",
    "--host": "--host", "--port": "--base-port",
    "-np": "--parallel", "--parallel": "--parallel",
    "-c": "--ctx-per-slot", "--ctx-size": "--ctx-per-slot",
    "-t": "--threads", "--threads": "--threads", "-tb": "--threads", "--threads-batch": "--threads",
    "-ngl": "--gpu-layers", "--gpu-layers": "--gpu-layers", "--n-gpu-layers": "--gpu-layers",
    "--metrics": "(always on)", "--no-slots": "(llama-tui reads /slots)", "--slots": "(always on)",
    "--api-key": "--api-key (enforced at NGINX)", "--api-key-file": "--api-key-file (enforced at NGINX)",
    "--api-prefix": "(llama-tui needs /health at the root)", "--log-file": "(llama-tui captures the log)",
    "--ssl-key-file": "(NGINX is the front door)", "--ssl-cert-file": "(NGINX is the front door)",
    "--reuse-port": "(each instance owns its port)",
    "--models-dir": "--model", "--models-preset": "--model",
}


@dataclass(frozen=True)
class FleetSpec:
    model: Path
    instances: int = 2
    parallel: int = 2
    ctx_per_slot: int = 2048
    threads: int | None = None  # None: physical cores // instances
    gpu_layers: int | None = None
    gpus: tuple[int, ...] = ()
    pin_cpus: bool = False  # each instance on its own physical cores (Linux CPU affinity)
    host: str = "127.0.0.1"
    base_port: int = 18080
    nginx_port: int = 18000
    listen: str = "127.0.0.1"
    policy: str = "least_conn"
    max_conns: bool = False
    max_concurrency: int = 1024
    extra_args: tuple[str, ...] = ()
    api_key: str | None = None
    expose_admin: bool = False
    ready_timeout: float = 120.0
    drain_timeout: float = DRAIN_TIMEOUT
    api_key_file: str | None = None  # NGINX re-reads it at every render (key rotation)

    @classmethod
    def from_settings(cls, settings: config.Settings, check_extra_args: bool = True) -> "FleetSpec":
        """Validate resolved settings and resolve the model (a GGUF file, or the tiny demo model)."""
        f = settings.section("fleet")
        extra = parse_extra_args(f["extra_args"])
        if check_extra_args and extra:
            validate_extra_args(extra, binaries.require_llama_server())
        api_key_file = None
        if f.get("api_key_file") and not f.get("api_key"):
            api_key_file = str(Path(f["api_key_file"]).expanduser().absolute())
            frontdoor.read_key_file(api_key_file)  # fail now, naming the file
        spec = cls(
            model=model_mod.resolve_model(f["model"]),
            instances=f["instances"], parallel=f["parallel"], ctx_per_slot=f["ctx_per_slot"],
            threads=f["threads"], gpu_layers=f["gpu_layers"], gpus=tuple(f["gpus"] or ()), pin_cpus=f["pin_cpus"],
            host=f["host"], base_port=f["base_port"], nginx_port=f["nginx_port"], listen=f["listen"],
            policy=f["policy"], max_conns=f["max_conns"], max_concurrency=f["max_concurrency"],
            extra_args=extra, api_key=f["api_key"], expose_admin=f["expose_admin"],
            ready_timeout=f["ready_timeout"], api_key_file=api_key_file,
        )
        spec.validate()
        return spec

    def validate(self) -> None:
        if self.instances < 1:
            raise UserError(f"--instances must be 1 or more, got {self.instances}", "pass --instances 1 or more")
        if self.parallel < 1:
            raise UserError(f"--parallel must be 1 or more, got {self.parallel}", "pass --parallel 1 or more")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be 1 or more, got {self.threads}", "pass --threads 1 or more")
        check_loopback(self.host)
        try:
            ipaddress.ip_address(self.listen)
        except ValueError:
            raise UserError(f"--listen must be an IP address, got {self.listen!r}",
                            "use 127.0.0.1 (default) or 0.0.0.0 for every interface") from None
        self.check_port_range(self.instances)
        self.check_pinning(self.instances)
        from llama_tui.core.fleet.frontdoor import check_policy

        check_policy(self.policy)  # unknown, or `prefix` without NGINX's Lua module: refused before anything starts

    def check_port_range(self, instances: int) -> None:
        for name, port in (("--base-port", self.base_port), ("--nginx-port", self.nginx_port)):
            if not 1 <= port <= 65535:
                raise UserError(f"{name} {port} is out of range", f"pick {name} between 1024 and 65535")
        last = self.base_port + instances - 1
        if last > 65535:
            raise UserError(f"{instances} instances from --base-port {self.base_port} need ports up to {last}, "
                            "beyond 65535", "pick a lower --base-port")
        if self.base_port <= self.nginx_port <= last:
            raise UserError(f"--nginx-port {self.nginx_port} collides with the instance ports "
                            f"{self.base_port}-{last}", "pick an --nginx-port outside that range")

    def check_pinning(self, instances: int) -> None:
        """With `pin_cpus`, every instance needs physical cores of its own: instances x threads of them."""
        if not self.pin_cpus:
            return
        if not hardware.can_pin():
            raise UserError("--pin-cpus needs CPU affinity, which this OS does not offer (macOS has none)",
                            "drop --pin-cpus")
        threads = self.threads_for(instances)
        cores = len(hardware.core_groups())
        if instances * threads > cores:
            fit = cores // threads
            raise UserError(f"--pin-cpus: {instances} instances x {threads} threads need {instances * threads} "
                            f"physical cores of their own; this process may use {cores}",
                            (f"use at most {fit} instance(s) at --threads {threads}, " if fit else "")
                            + "lower --threads, or drop --pin-cpus")

    def threads_for(self, instances: int) -> int:
        return self.threads if self.threads is not None else hardware.thread_budget(instances)

    def port_of(self, index: int) -> int:
        return self.base_port + index

    def gpu_of(self, index: int) -> int | None:
        return self.gpus[index % len(self.gpus)] if self.gpus else None

    def command(self, llama_server: Path | str, index: int, threads: int) -> list[str]:
        """The full llama-server command line of instance `index`."""
        cmd = [str(llama_server), "-m", str(self.model), "--host", self.host, "--port", str(self.port_of(index)),
               "-np", str(self.parallel), "-c", str(self.ctx_per_slot * self.parallel),
               "-t", str(threads), "-tb", str(threads), "--metrics"]
        if self.gpu_layers is not None:
            cmd += ["-ngl", str(self.gpu_layers)]
        return cmd + list(self.extra_args)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = str(self.model)
        d["gpus"] = list(self.gpus)
        d["extra_args"] = list(self.extra_args)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FleetSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        d["model"] = Path(d["model"])
        d["gpus"] = tuple(d.get("gpus") or ())
        d["extra_args"] = tuple(d.get("extra_args") or ())
        return cls(**d)

    def public_dict(self) -> dict[str, Any]:
        """The spec without secrets (for status output)."""
        d = self.to_dict()
        d["api_key"] = "(set)" if self.api_key else None
        return d


def check_loopback(host: str) -> None:
    """Instances always bind loopback; NGINX is the only public listener."""
    if host == "localhost":
        return
    try:
        ok = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise UserError(f"--host {host} is not a loopback address: instances only bind loopback",
                        "leave --host at 127.0.0.1 and use --listen ADDRESS to expose NGINX")


def parse_extra_args(text: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    if not text:
        return ()
    if isinstance(text, (tuple, list)):
        return tuple(str(t) for t in text)
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise UserError(f"cannot parse --extra-args {text!r}: {exc}",
                        "quote arguments as in a shell, e.g. --extra-args \"--batch-size 512\"") from None


def _is_number(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def validate_extra_args(args: tuple[str, ...], llama_server: Path) -> None:
    """Every flag must be one this llama-server's --help lists, and none that llama-tui manages."""
    known = binaries.llama_server_flags(llama_server)
    for tok in args:
        if not tok.startswith("-") or _is_number(tok):
            continue
        flag = tok.split("=", 1)[0]
        if flag in MANAGED_FLAGS:
            raise UserError(f"--extra-args must not set {flag}: llama-tui manages it",
                            f"use llama-tui's {MANAGED_FLAGS[flag]} instead" if MANAGED_FLAGS[flag].startswith("-")
                            else f"remove {flag} {MANAGED_FLAGS[flag]}")
        if flag not in known:
            close = difflib.get_close_matches(flag, sorted(known), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UserError(f"--extra-args: {flag} is not a flag of {llama_server.name}",
                            f"{hint}see `{llama_server} --help`")


def oversubscription(instances: int, threads: int, cores: int | None = None) -> str | None:
    """A warning when instances x threads exceeds the physical cores, else None."""
    cores = hardware.physical_cores() if cores is None else cores
    if instances * threads <= cores:
        return None
    fix = (f"--threads {max(1, cores // instances)}" if cores // instances >= 1 and cores // instances < threads
           else f"at most {cores} instances at --threads 1")
    return (f"{instances} instances x {threads} threads = {instances * threads} threads on {cores} physical cores: "
            f"llama.cpp's spinning threads collapse throughput when oversubscribed (fix: {fix})")


def exposure_warning(spec: FleetSpec) -> str | None:
    try:
        public = not ipaddress.ip_address(spec.listen).is_loopback
    except ValueError:
        public = True
    if public and not (spec.api_key or spec.api_key_file):
        return (f"NGINX listens on {spec.listen}:{spec.nginx_port} WITHOUT an API key: anyone who can reach "
                f"this machine can use the models (fix: --api-key-file FILE, or --listen 127.0.0.1)")
    return None
