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
from llama_tui.core.fleet import frontdoor_rules, model_dirs

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
    "-a": "(llama-tui names the model after its file)", "--alias": "(llama-tui names the model after its file)",
}

# llama-server flags that publish files, tools or proxies, or read and write files on a request's
# behalf (llama.cpp's help: "do not enable in untrusted environments"). Refused in --extra-args
# unless --allow-unsafe-args.
UNSAFE_FLAGS: dict[str, str] = {
    "--path": "serves the files of a directory",
    "--tools": "lets requests run built-in tools (read and write files, run shell commands)",
    "--tools-runtime": "runs the built-in tools",
    "-ag": "enables the tools and the MCP proxy", "--agent": "enables the tools and the MCP proxy",
    "--webui-mcp-proxy": "makes the server a proxy to other hosts", "--ui-mcp-proxy": "makes the server a proxy to other hosts",
    "--mcp-servers-config": "connects requests to MCP tool servers", "--mcp-servers-json": "connects requests to MCP tool servers",
    "--slot-save-path": "lets requests write and read slot files",
    "--media-path": "lets requests read local files (file:// URLs)",
    "--props": "lets requests change the server's settings (POST /props)",
    "--ui-config-file": "publishes a file's contents to the web UI", "--webui-config-file": "publishes a file's contents to the web UI",
    "--log-prompts-dir": "writes every prompt to files",
    "--lora-init-without-apply": "lets requests switch LoRA adapters (POST /lora-adapters)",
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
    metrics_listen: str | None = None  # HOST:PORT of the supervisor's Prometheus listener (None: off)
    metrics_public: bool = False  # allow a metrics_listen address that is not loopback
    insecure_public: bool = False  # a non-loopback --listen without an API key (refused otherwise)
    upstream_header: bool | None = None  # X-Upstream; None: on for a loopback listener only
    conn_limit: int | None = None  # requests per remote client address; None: frontdoor's default, 0: none
    allow_unsafe_args: bool = False  # --extra-args may publish files, tools or proxies (UNSAFE_FLAGS)
    # Where instances run: "local" processes, or "ray" actors across the cluster at `ray_address`, in the
    # fleet's own namespace (made by `fleet up`), placed by `placement` (spread | pack) with
    # `gpus_per_instance` GPUs each, on nodes that have `node_resource` when it is set.
    engine: str = "local"
    ray_address: str | None = None
    ray_namespace: str | None = None
    placement: str = "spread"
    gpus_per_instance: float = 0.0
    node_resource: str | None = None
    model_dirs: tuple[tuple[str, str], ...] = ()  # ray: (LABEL, DIR): nodes with LABEL load DIR/<model file name>

    @classmethod
    def from_settings(cls, settings: config.Settings, check_extra_args: bool = True,
                      resolve_model: bool = True) -> "FleetSpec":
        """Validate resolved settings and resolve the model (a GGUF file, or the tiny demo model).
        `resolve_model=False` keeps the model as given (a fleet described for another machine)."""
        f = settings.section("fleet")
        extra = parse_extra_args(f["extra_args"])
        allow_unsafe = bool(f.get("allow_unsafe_args"))
        check_unsafe_args(extra, allow_unsafe)
        if check_extra_args and extra:
            validate_extra_args(extra, binaries.require_llama_server(), allow_unsafe)
        api_key_file = None
        if f.get("api_key"):
            frontdoor_rules.check_key(f["api_key"])
        elif f.get("api_key_file"):
            api_key_file = str(Path(f["api_key_file"]).expanduser().absolute())
            frontdoor_rules.check_key(frontdoor_rules.read_key_file(api_key_file))  # fail now, naming the file
        spec = cls(
            model=model_mod.resolve_model(f["model"]) if resolve_model else Path(f["model"] or model_mod.TINY_MODEL_NAME),
            instances=f["instances"], parallel=f["parallel"], ctx_per_slot=f["ctx_per_slot"],
            threads=f["threads"], gpu_layers=f["gpu_layers"], gpus=tuple(f["gpus"] or ()), pin_cpus=f["pin_cpus"],
            host=f["host"], base_port=f["base_port"], nginx_port=f["nginx_port"], listen=f["listen"],
            policy=f["policy"], max_conns=f["max_conns"], max_concurrency=f["max_concurrency"],
            extra_args=extra, api_key=f["api_key"], expose_admin=f["expose_admin"],
            ready_timeout=f["ready_timeout"], api_key_file=api_key_file,
            metrics_listen=f["metrics_listen"], metrics_public=f["metrics_public"],
            insecure_public=bool(f.get("insecure_public")), upstream_header=f.get("upstream_header"),
            conn_limit=f.get("conn_limit"), allow_unsafe_args=allow_unsafe,
            engine=f["engine"], ray_address=f["ray_address"], placement=f["placement"],
            gpus_per_instance=f["gpus_per_instance"], node_resource=f["node_resource"],
            model_dirs=f["model_dir"],
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
        if self.api_key is not None:
            frontdoor_rules.check_key(self.api_key)
        if frontdoor_rules.is_public(self.listen) and not (self.api_key or self.api_key_file) and not self.insecure_public:
            raise UserError(f"--listen {self.listen} serves other machines, and no API key is set",
                            "pass --api-key-file FILE (or --listen 127.0.0.1); --insecure-public serves without a key")
        check_unsafe_args(self.extra_args, self.allow_unsafe_args)
        self.check_port_range(self.instances)
        self.check_pinning(self.instances)
        from llama_tui.core.fleet.frontdoor_rules import check_policy

        check_policy(self.policy)  # unknown, or `prefix` without NGINX's Lua module: refused before anything starts
        if self.metrics_listen is not None:
            parse_metrics_listen(self.metrics_listen, self.metrics_public)
        self.check_engine()

    def check_engine(self) -> None:
        """The engine's options: the ray engine's only with it, and none it cannot honour."""
        if self.engine not in config.ENGINES:
            raise UserError(f"unknown engine {self.engine!r}", f"use one of: {', '.join(config.ENGINES)}")
        if self.placement not in config.PLACEMENTS:
            raise UserError(f"unknown placement {self.placement!r}", f"use one of: {', '.join(config.PLACEMENTS)}")
        if self.engine == "local":
            ray_only = [flag for flag, v in (("--gpus-per-instance", self.gpus_per_instance),
                                              ("--node-resource", self.node_resource),
                                              ("--model-dir", self.model_dirs)) if v]
            if ray_only:
                raise UserError(f"{ray_only[0]} places instances on Ray nodes", "add --engine ray, or drop it")
            return
        if self.pin_cpus:
            raise UserError("--pin-cpus pins local processes; Ray places the instances of --engine ray",
                            "drop --pin-cpus (Ray reserves --threads CPUs per instance)")
        if self.gpus:
            raise UserError("--gpus picks local GPUs; Ray assigns them with --engine ray",
                            "use --gpus-per-instance G instead")
        if self.gpus_per_instance < 0:
            raise UserError(f"--gpus-per-instance must be 0 or more, got {self.gpus_per_instance:g}",
                            "pass e.g. --gpus-per-instance 1")

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

    @property
    def alias(self) -> str:
        """The model's name in the API (`/v1/models`): its file name, never its path."""
        return self.model.name.replace(",", "_") or "model"

    def command(self, llama_server: Path | str, index: int, threads: int) -> list[str]:
        """The full llama-server command line of instance `index` (its key goes in its environment)."""
        cmd = [str(llama_server), "-m", str(self.model), "--alias", self.alias, "--host", self.host,
               "--port", str(self.port_of(index)), "-np", str(self.parallel), "-c", str(self.ctx_per_slot * self.parallel),
               "-t", str(threads), "-tb", str(threads), "--metrics"]
        if self.gpu_layers is not None:
            cmd += ["-ngl", str(self.gpu_layers)]
        return cmd + list(self.extra_args)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = str(self.model)
        d["gpus"] = list(self.gpus)
        d["extra_args"] = list(self.extra_args)
        d["model_dirs"] = [list(p) for p in self.model_dirs]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FleetSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        d["model"] = Path(d["model"])
        d["gpus"] = tuple(d.get("gpus") or ())
        d["extra_args"] = tuple(d.get("extra_args") or ())
        d["model_dirs"] = model_dirs.parse(d.get("model_dirs"))
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


def unsafe_args(args: tuple[str, ...]) -> list[str]:
    """The flags in `args` that publish files, tools or proxies (`UNSAFE_FLAGS`), in order, once each."""
    found = []
    for tok in args:
        flag = tok.split("=", 1)[0]
        if flag in UNSAFE_FLAGS and flag not in found:
            found.append(flag)
    return found


def check_unsafe_args(args: tuple[str, ...], allow: bool) -> None:
    """A UserError naming every unsafe flag in `args`, unless `allow`."""
    found = unsafe_args(args)
    if found and not allow:
        named = "; ".join(f"{f} {UNSAFE_FLAGS[f]}" for f in found)
        raise UserError(f"--extra-args: {named}", "remove " + ", ".join(found)
                        + " (or pass --allow-unsafe-args if every client and local user is trusted)")


def unsafe_args_warning(spec: "FleetSpec") -> str | None:
    """The warning an --allow-unsafe-args fleet deserves, naming its unsafe flags; else None."""
    found = unsafe_args(spec.extra_args)
    if not found or not spec.allow_unsafe_args:
        return None
    return (f"--allow-unsafe-args: the instances run with {', '.join(found)}: "
            + "; ".join(f"{f} {UNSAFE_FLAGS[f]}" for f in found) + " (only for trusted clients and local users)")


def validate_extra_args(args: tuple[str, ...], llama_server: Path, allow_unsafe: bool = False) -> None:
    """Every flag must be one this llama-server's --help lists, none that llama-tui manages, and none
    that publishes files, tools or proxies unless `allow_unsafe`."""
    check_unsafe_args(args, allow_unsafe)
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
        public = frontdoor_rules.is_public(spec.listen)
    except UserError:
        public = True
    if public and not (spec.api_key or spec.api_key_file):
        return (f"NGINX listens on {spec.listen}:{spec.nginx_port} WITHOUT an API key: anyone who can reach "
                f"this machine can use the models (fix: --api-key-file FILE, or --listen 127.0.0.1)")
    return None


def parse_metrics_listen(value: str, public: bool = False) -> tuple[str, int]:
    """`--metrics-listen HOST:PORT` ([V6]:PORT) as (host, port). A private address: loopback unless `public`."""
    host, sep, port_text = str(value).strip().rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if ":" in host and not bracketed:  # "::1:9464" could be an address of its own
        sep = ""
    try:
        ip = ipaddress.ip_address(host)
        port = int(port_text)
    except ValueError:
        ip, port = None, 0
    if not sep or ip is None or not 1 <= port <= 65535:
        raise UserError(f"--metrics-listen must be IP:PORT, got {value!r}",
                        "pass e.g. --metrics-listen 127.0.0.1:9464 (a port from 1 to 65535)")
    if not ip.is_loopback and not public:
        raise UserError(f"--metrics-listen {value} is not a loopback address: the metrics describe the fleet",
                        f"use 127.0.0.1:{port}, or add --metrics-public to serve them on {host}")
    return str(ip), port


def metrics_url(value: str) -> str:
    """The URL a client on this machine scrapes for a `--metrics-listen` value (a wildcard via loopback)."""
    from llama_tui.core.probe import base_url

    host, port = parse_metrics_listen(value, public=True)
    return base_url({"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host), port) + "/metrics"
