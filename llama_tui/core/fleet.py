"""The fleet: N llama-server instances behind NGINX, owned by a detached supervisor process.

`up` validates a `FleetSpec`, checks every port, and starts `python -m llama_tui.core.supervisor` in
its own session. The supervisor starts the instances in parallel, NGINX in front of them once they
are ready, restarts what crashes and writes `fleet.json` (see `core/state.py`). Instances and NGINX
do not depend on the supervisor: kill it and they keep serving; the next `up` (or `adopt`) starts a
new supervisor that takes them over. Commands reach the supervisor through a unix socket
(`scale`, `restart`, `set_policy`, `down`); `down` also works when the supervisor is gone.

Every public function takes `state_dir` (default `paths.state_dir()`), so a sweep can run its
fleets in a directory of its own.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import orjson

from llama_tui.core import binaries, config, frontdoor, hardware, paths
from llama_tui.core import model as model_mod
from llama_tui.core import state as st_mod
from llama_tui.core.errors import UserError
from llama_tui.core.monitor import Endpoint, Monitor  # noqa: F401  (Monitor: for snapshot(monitor=...))
from llama_tui.core.snapshots import (FleetSnapshot, InstanceSnapshot, UpstreamSnapshot, UpstreamStat)
from llama_tui.core.state import FleetState, load_state, read_state  # noqa: F401  (public re-exports)

Progress = Callable[[str], None]

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


# --------------------------------------------------------------------------------------------- the spec


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
        if self.policy not in config.POLICIES:
            raise UserError(f"unknown policy {self.policy!r}", f"use one of: {', '.join(config.POLICIES)}")

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


# --------------------------------------------------------------------------------------------- ports


def port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT leftover is not "in use"
        try:
            s.bind((host.strip("[]"), port))
        except OSError:
            return False
    return True


def free_port_block(n: int, host: str = "127.0.0.1", lo: int = 20000, hi: int = 60000) -> int:
    """The first port of `n` consecutive ports free on `host` now (for scripts that start fleets)."""
    import random

    for _ in range(500):
        base = random.randrange(lo, hi - n)
        if all(port_free(host, p) for p in range(base, base + n)):
            return base
    raise UserError(f"no block of {n} free ports between {lo} and {hi} on {host}", "stop some servers and retry")


def check_ports(spec: FleetSpec, indices: range | None = None, nginx: bool = True) -> None:
    """Every port the fleet needs is free, checked before anything starts."""
    indices = range(spec.instances) if indices is None else indices
    host = "127.0.0.1" if spec.host == "localhost" else spec.host
    for i in indices:
        if not port_free(host, spec.port_of(i)):
            raise UserError(f"port {spec.port_of(i)} (instance {i}) is already in use on {host}",
                            "stop what uses it, or pick another --base-port")
    if nginx and not port_free(spec.listen, spec.nginx_port):
        raise UserError(f"port {spec.nginx_port} (NGINX) is already in use on {spec.listen}",
                        "stop what uses it, or pick another --nginx-port")


# --------------------------------------------------------------------------------------------- up / adopt


def _spawn_supervisor(sd: Path, adopt: bool) -> subprocess.Popen:
    paths.ensure_private_dir(sd / st_mod.LOG_DIR)
    env = paths.owner_env(sd)
    env["LLAMA_TUI_STATE_DIR"] = str(sd)
    pkg_root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "llama_tui.core.supervisor", "--state-dir", str(sd)] + (["--adopt"] if adopt else [])
    log = st_mod.supervisor_log_path(sd)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, cwd=str(sd), env=env,
                                start_new_session=True, close_fds=True)
    finally:
        os.close(fd)
    # Reap it when it exits, so a long-lived caller (TUI, tests) keeps no zombie around.
    threading.Thread(target=proc.wait, name="llama-tui-supervisor-reaper", daemon=True).start()
    return proc


def _wait_registered(sd: Path, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Wait until the new supervisor has written fleet.json with its pid (or died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = read_state(sd)
        if s is not None and s.supervisor_pid == proc.pid:
            return
        if proc.poll() is not None:
            return
        time.sleep(0.02)
    raise UserError(f"the fleet supervisor did not start within {timeout:.0f}s",
                    f"see {st_mod.supervisor_log_path(sd)}")


def _describe(inst: st_mod.InstanceState) -> str:
    return f"instance {inst.index} (port {inst.port}, {inst.threads} threads)"


def _wait_running(sd: Path, proc: subprocess.Popen, timeout: float, on_progress: Progress | None) -> FleetState:
    """Follow fleet.json until the supervisor reports `running`; raise with the cause otherwise."""
    seen: dict[int, str] = {}
    nginx_seen = False
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        s = read_state(sd)
        if s is not None and on_progress is not None:
            for inst in s.instances:
                if seen.get(inst.index) != inst.state:
                    seen[inst.index] = inst.state
                    extra = f" after {time.monotonic() - t0:.1f}s" if inst.state == "ready" else ""
                    on_progress(f"{_describe(inst)}: {inst.state}{extra}")
            if s.nginx is not None and s.nginx.pid and not nginx_seen:
                nginx_seen = True
                on_progress(f"nginx listening on {s.nginx.listen}:{s.nginx.port} ({s.nginx.policy})")
        if s is not None and s.supervisor_pid == proc.pid and s.status == "running":
            return s
        failed = s is not None and s.supervisor_pid == proc.pid and s.status == "failed"
        if failed or proc.poll() is not None:
            if not failed:
                proc.wait(timeout=5) if proc.returncode is None else None
                s = read_state(sd)  # it may have written its error just before exiting
            msg = (s.error if s is not None and s.supervisor_pid == proc.pid and s.error else None)
            if msg is None:
                tail = st_mod.error_summary(st_mod.supervisor_log_path(sd))
                msg = f"the fleet supervisor exited (code {proc.returncode}): {tail}"
            raise UserError(msg, _failure_fix(s, sd))
        if time.monotonic() > deadline:
            slow = [i for i in (s.instances if s else []) if i.state != "ready"]
            what = ", ".join(f"{_describe(i)} is {i.state}" for i in slow) or "nginx is not up"
            raise UserError(f"the fleet was not ready within {timeout:.0f}s: {what}",
                            f"see the logs in {sd / st_mod.LOG_DIR}; raise --ready-timeout for big models")
        time.sleep(0.05)


def _failure_fix(s: FleetState | None, sd: Path) -> str:
    failed = [i for i in (s.instances if s else []) if i.state == "failed"]
    if failed:
        return (f"check the model file and --extra-args; full log: {failed[0].log_path} "
                f"(or `llama-tui fleet logs {failed[0].index}`)")
    return f"see {st_mod.supervisor_log_path(sd)}"


def up(spec: FleetSpec, state_dir: Path | None = None, on_progress: Progress | None = None) -> FleetSnapshot:
    """Start a fleet (or adopt an orphaned one in `state_dir`) and return once every instance answers
    /health 200 and NGINX listens. Raises UserError, leaving nothing running, when it cannot."""
    sd = st_mod.resolve_dir(state_dir)
    paths.ensure_private_dir(sd)
    with st_mod.client_lock(sd):
        existing = load_state(sd)
        if existing is not None:
            if existing.supervisor_alive:
                n = len(existing.instances)
                raise UserError(
                    f"a fleet is already running in {sd} ({n} instances, supervisor pid {existing.supervisor_pid})",
                    "change it with `llama-tui fleet scale N` or `llama-tui fleet policy P`, "
                    "or stop it with `llama-tui fleet down`")
            proc = None
        else:
            spec.validate()
            check_ports(spec)
            llama_server = binaries.require_llama_server()
            nginx_bin = binaries.require_nginx()
            if spec.extra_args:
                validate_extra_args(spec.extra_args, llama_server)
            if on_progress:
                on_progress(f"starting {spec.instances} x llama-server ({spec.model.name}, parallel {spec.parallel}, "
                            f"{spec.threads_for(spec.instances)} threads each) on ports {spec.base_port}-"
                            f"{spec.port_of(spec.instances - 1)}, nginx on {spec.listen}:{spec.nginx_port}")
            payload = {"spec": spec.to_dict(), "llama_server": str(llama_server), "nginx_bin": str(nginx_bin)}
            paths.write_private(sd / st_mod.SPEC_FILE, orjson.dumps(payload, option=orjson.OPT_INDENT_2))
            proc = _spawn_supervisor(sd, adopt=False)
            _wait_registered(sd, proc)
    if proc is None:
        if on_progress:
            on_progress(f"adopting the running fleet in {sd} (its supervisor had stopped)")
        return adopt(sd, on_progress=on_progress)
    try:
        _wait_running(sd, proc, spec.ready_timeout * 2 + 30, on_progress)
        return snapshot(sd, interval=0.2)
    except BaseException:  # a failure or Ctrl-C while starting: leave nothing running
        down(sd, timeout=5.0)
        raise


def adopt(state_dir: Path | None = None, on_progress: Progress | None = None,
          timeout: float | None = None) -> FleetSnapshot:
    """Start a new supervisor for a fleet whose supervisor died; it takes over the running instances
    and NGINX and restarts what is gone. A no-op when the supervisor is alive."""
    sd = st_mod.resolve_dir(state_dir)
    with st_mod.client_lock(sd):
        existing = load_state(sd)
        if existing is None:
            raise UserError(f"no fleet is running in {sd}", "start one with `llama-tui fleet up`")
        if existing.supervisor_alive:
            return snapshot(sd, interval=0.2)
        proc = _spawn_supervisor(sd, adopt=True)
        _wait_registered(sd, proc)
    ready_timeout = float(existing.spec.get("ready_timeout", 120.0))
    _wait_running(sd, proc, timeout or ready_timeout * 2 + 30, on_progress)
    return snapshot(sd, interval=0.2)


# --------------------------------------------------------------------------------------------- control


def _request(s: FleetState, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One request to the supervisor's control socket; its error becomes a UserError."""
    path = s.control or str(st_mod.control_path(Path(s.state_dir)))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        sock.sendall(orjson.dumps(payload) + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    except (OSError, socket.timeout) as exc:
        raise ConnectionError(f"cannot talk to the fleet supervisor at {path}: {exc}") from None
    finally:
        sock.close()
    try:
        resp = orjson.loads(buf)
    except orjson.JSONDecodeError:
        raise ConnectionError("the fleet supervisor closed the connection without an answer") from None
    if not resp.get("ok"):
        raise UserError(resp.get("error") or "the supervisor refused", resp.get("fix") or "")
    return resp


def _running(sd: Path, on_progress: Progress | None = None) -> FleetState:
    """The running fleet with a live supervisor (adopting an orphaned fleet first)."""
    s = load_state(sd)
    if s is None:
        raise UserError(f"no fleet is running in {sd}", "start one with `llama-tui fleet up`")
    if not s.supervisor_alive:
        if on_progress:
            on_progress("the fleet supervisor is not running: adopting the fleet first")
        adopt(sd, on_progress=on_progress)
        s = load_state(sd)
        if s is None or not s.supervisor_alive:
            raise UserError(f"the fleet in {sd} could not be adopted", f"see {st_mod.supervisor_log_path(sd)}")
    return s


def _op_timeout(s: FleetState, extra: float = 0.0) -> float:
    spec = s.spec
    return float(spec.get("ready_timeout", 120.0)) + float(spec.get("drain_timeout", DRAIN_TIMEOUT)) + 30.0 + extra


def scale(n: int, state_dir: Path | None = None, on_progress: Progress | None = None) -> FleetSnapshot:
    """Add or remove instances without touching the others. Leaving instances leave NGINX first and
    finish their open streams before they stop; new ones join NGINX once ready."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"scale needs 1 or more instances, got {n!r}", "pass a positive number, e.g. `fleet scale 4`")
    sd = st_mod.resolve_dir(state_dir)
    s = _running(sd, on_progress)
    spec = FleetSpec.from_dict(s.spec)
    current = {i.index for i in s.instances}
    spec.check_port_range(n)
    check_ports(spec, indices=range(max(current, default=-1) + 1, n), nginx=False)
    _request(s, {"op": "scale", "n": n}, _op_timeout(s, extra=spec.ready_timeout))
    return snapshot(sd, interval=0.2)


def restart(index: int | None = None, state_dir: Path | None = None,
            on_progress: Progress | None = None) -> FleetSnapshot:
    """Restart one instance (or all, one after another), on the same port. A ready instance leaves
    NGINX and drains first when others can take its load."""
    sd = st_mod.resolve_dir(state_dir)
    s = _running(sd, on_progress)
    if index is not None and index not in {i.index for i in s.instances}:
        have = ", ".join(str(i.index) for i in s.instances) or "none"
        raise UserError(f"no instance {index} in the fleet", f"pick one of: {have}")
    n = 1 if index is not None else max(1, len(s.instances))
    _request(s, {"op": "restart", "index": index}, _op_timeout(s) * n)
    return snapshot(sd, interval=0.2)


def set_policy(policy: str, state_dir: Path | None = None, on_progress: Progress | None = None) -> FleetSnapshot:
    """Change NGINX's balancing policy (reload). A failed reload keeps the old config; the error
    shows in the status and is raised."""
    policy = policy.strip().replace("-", "_")
    if policy not in config.POLICIES:
        raise UserError(f"unknown policy {policy!r}", f"use one of: {', '.join(config.POLICIES)}")
    sd = st_mod.resolve_dir(state_dir)
    s = _running(sd, on_progress)
    _request(s, {"op": "policy", "policy": policy}, 60.0)
    return snapshot(sd, interval=0.2)


# --------------------------------------------------------------------------------------------- down


def down(state_dir: Path | None = None, timeout: float = 10.0) -> bool:
    """Stop everything the fleet in `state_dir` started: SIGTERM, then SIGKILL after `timeout`.
    Works with or without a live supervisor. Returns False when nothing was running."""
    sd = st_mod.resolve_dir(state_dir)
    if not sd.is_dir():
        return False
    with st_mod.client_lock(sd, timeout=timeout + 60):
        s = read_state(sd)
        anything = s is not None and s.anything_alive()
        if s is not None and s.supervisor_alive:
            sup = s.supervisor_ref()
            try:
                _request(s, {"op": "down", "timeout": timeout}, timeout + 30)
            except (ConnectionError, UserError):
                if sup is not None:
                    sup.signal(signal.SIGTERM)  # the supervisor stops the fleet on SIGTERM too
            if sup is not None:
                st_mod.terminate([sup], timeout=timeout + 15, sig=0)  # wait; SIGKILL if it hangs
        s = read_state(sd) or s
        if s is not None:
            st_mod.terminate(s.refs(), timeout=timeout)
            if s.nginx is not None and s.nginx.pid:
                st_mod.kill_group_remnants(s.nginx.pid, ("nginx",))  # workers of a killed master
        leftovers = st_mod.owned_processes(sd)
        for p in leftovers:
            st_mod.ProcRef(p.pid, None, False).signal(signal.SIGKILL)
            st_mod.kill_group_remnants(p.pid, ("nginx", "llama-server"))
        st_mod.remove_runtime_files(sd, s.control if s else None)
        return anything or bool(leftovers)


# --------------------------------------------------------------------------------------------- snapshot


def _read_upstreams(sd: Path) -> tuple[UpstreamStat, ...]:
    try:
        data = orjson.loads((sd / st_mod.UPSTREAM_FILE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return ()
    rows = data.get("upstreams", data) if isinstance(data, dict) else data
    names = {f.name for f in dataclasses.fields(UpstreamStat)}
    out = []
    for row in rows if isinstance(rows, list) else ():
        if isinstance(row, dict) and "address" in row:
            out.append(UpstreamStat(**{k: v for k, v in row.items() if k in names}))
    return tuple(out)


def _stub_status(prefix: str | None) -> dict[str, int] | None:
    if not prefix:
        return None
    try:
        return frontdoor.read_stub_status(Path(prefix))
    except Exception:  # a status reader must never break `fleet status`
        return None


def snapshot(state_dir: Path | None = None, monitor: Any = None, interval: float = 0.5) -> FleetSnapshot:
    """The fleet now: per-instance state, slots, tok/s, CPU, memory, GPU; NGINX; the machine.

    Pass the same `monitor` (core/monitor.Monitor) on every call to get rates between calls (the TUI
    does, once a second). Without one, a fresh monitor samples twice, `interval` seconds apart."""
    sd = st_mod.resolve_dir(state_dir)
    s = load_state(sd)
    own = monitor is None
    mon = Monitor() if own else monitor
    try:
        if s is None:
            if own:
                mon.system()
                time.sleep(min(interval, 0.2))
            return FleetSnapshot(taken_at=time.time(), running=False, system=mon.system())
        host = s.spec.get("host", "127.0.0.1")
        live = {i.index: i.alive() for i in s.instances}
        pids = [i.pid for i in s.instances if live[i.index] and i.pid]
        eps = [Endpoint(host, i.port) for i in s.instances if live[i.index]]
        if own:
            mon.sample(pids, eps)
            time.sleep(interval)
        sample = mon.sample(pids, eps)
        now = time.time()
        instances = []
        threads_total = 0
        for i in sorted(s.instances, key=lambda x: x.index):
            up_ = live[i.index]
            proc = sample.process(i.pid) if up_ else None
            srv = sample.server(host, i.port) if up_ else None
            state = i.state
            error = i.last_error
            if not up_ and state in ("ready", "starting", "draining"):
                state = "restarting" if s.supervisor_alive else "stopped"
                if not s.supervisor_alive:
                    error = error or "process gone and no supervisor to restart it (run `llama-tui fleet up`)"
            if up_ or state not in ("failed", "stopped"):
                threads_total += i.threads
            instances.append(InstanceSnapshot(
                index=i.index, port=i.port, pid=i.pid if up_ else None, state=state, restarts=i.restarts,
                uptime_s=round(now - i.started_at, 1) if up_ and i.started_at else None, threads=i.threads,
                slots_busy=srv.slots_busy if srv else None, slots_total=srv.slots_total if srv else None,
                requests_processing=srv.requests_processing if srv else None,
                requests_deferred=srv.requests_deferred if srv else None,
                server_tok_s=srv.server_tok_s if srv else None,
                cpu_percent=proc.cpu_percent if proc else None, rss_bytes=proc.rss_bytes if proc else None,
                gpu_memory_bytes=proc.gpu_memory_bytes if proc else None,
                gpu_util_percent=proc.gpu_util_percent if proc else None, cpus=i.cpus,
                log_path=i.log_path, last_error=error,
            ))
        ng = None
        if s.nginx is not None:
            n = s.nginx
            ng = UpstreamSnapshot(
                port=n.port, pid=n.pid if n.alive() else None, policy=n.policy, listen=n.listen,
                config_path=n.config_path, config_valid=n.config_valid, config_error=n.config_error,
                upstreams=_read_upstreams(sd), stub_status=_stub_status(n.prefix),
            )
        warnings = []
        if not s.supervisor_alive:
            warnings.append(f"the fleet supervisor (pid {s.supervisor_pid}) is gone: instances and NGINX keep "
                            "serving but nothing restarts them (fix: `llama-tui fleet up` adopts the fleet)")
        if threads_total > hardware.physical_cores():
            n_inst = sum(1 for x in instances if x.state not in ("failed", "stopped"))
            warnings.append(f"{n_inst} instances use {threads_total} threads on {hardware.physical_cores()} "
                            "physical cores: llama.cpp's spinning threads collapse throughput when oversubscribed "
                            "(fix: restart the fleet with fewer --threads)")
        if s.nginx is not None and s.nginx.config_error:
            warnings.append(f"nginx kept its previous config: {s.nginx.config_error}")
        try:
            spec = FleetSpec.from_dict(s.spec)
            expo = exposure_warning(spec)
            if expo:
                warnings.append(expo)
        except (TypeError, KeyError):
            pass
        return FleetSnapshot(
            taken_at=now, running=True, supervisor_pid=s.supervisor_pid, supervisor_alive=s.supervisor_alive,
            model=s.spec.get("model"), parallel=s.spec.get("parallel"), instances=tuple(instances),
            nginx=ng, system=sample.system, warnings=tuple(warnings),
        )
    finally:
        if own:
            mon.close()


def status_json(snap: FleetSnapshot, state_dir: Path | None = None) -> dict[str, Any]:
    """`FleetSnapshot.to_json()` plus what a script wants next to it: the supervisor, URLs, commands."""
    from llama_tui.core.probe import base_url

    sd = st_mod.resolve_dir(state_dir)
    data = snap.to_json()
    s = read_state(sd) if snap.running else None
    data["state_dir"] = str(sd)
    data["status"] = s.status if s else None
    data["supervisor"] = {"pid": snap.supervisor_pid, "alive": snap.supervisor_alive}
    data["nginx_url"] = s.nginx_url() if s else None
    data["spec"] = FleetSpec.from_dict(s.spec).public_dict() if s else None
    by_index = {i.index: i for i in (s.instances if s else [])}
    host = s.spec.get("host", "127.0.0.1") if s else "127.0.0.1"
    for inst in data["instances"]:
        rec = by_index.get(inst["index"])
        inst["url"] = base_url(host, inst["port"])
        inst["cmd"] = rec.cmd if rec else None
        inst["in_upstream"] = rec.in_upstream if rec else None
        inst["gpu"] = rec.gpu if rec else None
    if data.get("nginx") is not None and s is not None and s.nginx is not None:
        data["nginx"]["restarts"] = s.nginx.restarts
    data["cores"] = {"physical": hardware.physical_cores(), "logical": hardware.logical_cores()}
    return data


# --------------------------------------------------------------------------------------------- doctor


def doctor_check(data: dict[str, Any]) -> None:
    """For `llama-tui doctor`: the running fleet (if any) and its thread budget."""
    s = load_state()
    if s is None:
        data["fleet"] = {"running": False}
        return
    members = [i for i in s.instances if i.state not in ("failed", "stopped")]
    threads = sum(i.threads for i in members)
    cores = hardware.physical_cores()
    data["fleet"] = {"running": True, "instances": len(members), "threads": threads, "physical_cores": cores,
                     "supervisor_alive": s.supervisor_alive, "state_dir": s.state_dir}
    if threads > cores:
        data["warnings"].append(
            f"the running fleet uses {len(members)} instances x their threads = {threads} threads on {cores} "
            "physical cores: throughput collapses when oversubscribed (fix: `llama-tui fleet down`, then "
            "`fleet up` without --threads, which budgets physical cores // instances)")
    if not s.supervisor_alive:
        data["warnings"].append("a fleet runs without its supervisor (fix: `llama-tui fleet up` adopts it)")
