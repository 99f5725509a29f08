"""The fleet from a client's side: start it (`up`), take over an orphaned one (`adopt`), change it
(`scale`, `restart`, `set_policy`) and stop it (`down`).

`up` validates a `FleetSpec`, checks every port, and starts `python -m llama_tui.core.fleet.supervisor`
in its own session. The supervisor starts the instances in parallel, NGINX in front of them once they
are ready, restarts what crashes and writes `fleet.json` (see `fleet/state.py`). Instances and NGINX
do not depend on the supervisor: kill it and they keep serving; the next `up` (or `adopt`) starts a
new supervisor that takes them over. Commands reach the supervisor through a unix socket
(`scale`, `restart`, `set_policy`, `down`; served by `fleet/control_server.py`); `down` also works
when the supervisor is gone.

Every public function takes `state_dir` (default `paths.state_dir()`), so a sweep can run its
fleets in a directory of its own.

No error path touches a fleet it did not start: a damaged `fleet.json` makes `up` refuse (as do
processes of a fleet that has no state file), and only `down` stops what runs, found by its owner
marker (`fleet/processes.py`) when the file cannot say.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import orjson

from llama_tui.core import amx, binaries, config, paths
from llama_tui.core.errors import UserError
from llama_tui.core.fleet import frontdoor, frontdoor_rules, keys, placement, processes
from llama_tui.core.fleet import state as st_mod
from llama_tui.core.fleet.ports import check_ports
from llama_tui.core.fleet.snapshot import snapshot
from llama_tui.core.fleet.spec import DRAIN_TIMEOUT, FleetSpec, validate_extra_args
from llama_tui.core.fleet.state import FleetState, StateDamaged, load_state, read_state
from llama_tui.core.snapshots import FleetSnapshot

Progress = Callable[[str], None]
MAX_STOP_TIMEOUT_S = 3600.0  # `down --timeout`: seconds before SIGKILL


def _spawn_supervisor(sd: Path, adopt: bool) -> subprocess.Popen:
    paths.ensure_private_dir(sd / st_mod.LOG_DIR)
    env = paths.owner_env(sd)
    env["LLAMA_TUI_STATE_DIR"] = str(sd)
    pkg_root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", processes.SUPERVISOR_MODULE, "--state-dir", str(sd)] + (["--adopt"] if adopt else [])
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
    where = f"port {inst.port}" if inst.port else "port not known yet"
    return f"instance {inst.index} ({where}, {inst.threads} threads)"


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
            st_mod.refuse_strays(sd)
            spec.validate()
            frontdoor_rules.conf_path(sd)  # a state dir that nginx.conf cannot name is refused now
            check_ports(spec)
            llama_server = binaries.require_llama_server()
            nginx_bin = binaries.require_nginx()
            if spec.extra_args:
                validate_extra_args(spec.extra_args, llama_server, spec.allow_unsafe_args)
            amx_note = None
            if spec.engine != "ray":  # AMX that would crash llama-server on quantised models: --no-repack
                extra, amx_choice = amx.with_no_repack(spec.extra_args, llama_server)
                if amx_choice.no_repack:
                    spec, amx_note = dataclasses.replace(spec, extra_args=extra), amx_choice.reason
            for sock in (st_mod.control_path(sd), frontdoor.status_socket(sd / processes.NGINX_DIR)):
                paths.ensure_private_dir(sock.parent)  # a socket dir someone else made first is refused now
            where = f"on ports {spec.base_port}-{spec.port_of(spec.instances - 1)}"
            if spec.engine == "ray":  # the cluster can host it, every node has the model: else nothing is placed
                from llama_tui.core.fleet import ray_cluster

                spec = ray_cluster.prepare(spec, str(llama_server))
                where = f"on the Ray cluster at {spec.ray_address} ({spec.placement}, namespace {spec.ray_namespace})"
            if on_progress and amx_note:  # said once every check passed: bad input stays one line
                on_progress(amx_note)
            if on_progress:
                on_progress(f"starting {spec.instances} x llama-server ({spec.model.name}, parallel {spec.parallel}, "
                            f"{spec.threads_for(spec.instances)} threads each) {where}, "
                            f"nginx on {spec.listen}:{spec.nginx_port}")
            if spec.api_key:  # the state names a private key file, never the key
                spec = dataclasses.replace(spec, api_key=None, api_key_file=str(keys.store_api_key(sd, spec.api_key)))
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


def _request(s: FleetState, sd: Path, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One request to the supervisor's control socket; its error becomes a UserError."""
    path = str(st_mod.control_socket(s, sd))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        try:
            sock.sendall(orjson.dumps(payload) + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it read the request (busy): its answer says why
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
    _request(s, sd, {"op": "scale", "n": n}, _op_timeout(s, extra=spec.ready_timeout))
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
    _request(s, sd, {"op": "restart", "index": index}, _op_timeout(s) * n)
    return snapshot(sd, interval=0.2)


def set_policy(policy: str, state_dir: Path | None = None, on_progress: Progress | None = None) -> FleetSnapshot:
    """Change NGINX's balancing policy (reload). A failed reload keeps the old config; the error
    shows in the status and is raised."""
    policy = policy.strip().replace("-", "_")
    if policy not in config.POLICIES:
        raise UserError(f"unknown policy {policy!r}", f"use one of: {', '.join(config.POLICIES)}")
    sd = st_mod.resolve_dir(state_dir)
    s = _running(sd, on_progress)
    _request(s, sd, {"op": "policy", "policy": policy}, 60.0)
    return snapshot(sd, interval=0.2)


# --------------------------------------------------------------------------------------------- down


def down(state_dir: Path | None = None, timeout: float = 10.0) -> bool:
    """Stop everything the fleet in `state_dir` started: SIGTERM, then SIGKILL after `timeout`.
    Works with or without a live supervisor, and with a damaged state file (kept as fleet.json.damaged):
    what the file names is checked before it is signalled, and whatever else carries the fleet's owner
    marker (NGINX: its prefix) is found by a scan and stopped too. Returns False when nothing ran."""
    timeout = config.check_seconds(timeout, "--timeout", 0.0, MAX_STOP_TIMEOUT_S)
    sd = st_mod.resolve_dir(state_dir)
    if not sd.is_dir() and not sd.is_symlink():
        return False
    with st_mod.client_lock(sd, timeout=timeout + 60):
        try:
            s = read_state(sd)
        except StateDamaged:
            s = None
            os.replace(sd / st_mod.STATE_FILE, sd / (st_mod.STATE_FILE + ".damaged"))  # kept for a bug report
        anything = s is not None and s.anything_alive()
        sup = s.supervisor_ref() if s is not None and s.supervisor_alive else None
        if s is not None and sup is not None:
            try:
                _request(s, sd, {"op": "down", "timeout": timeout}, timeout + 30)
            except (ConnectionError, UserError):
                sup.signal(signal.SIGTERM)  # the supervisor stops the fleet on SIGTERM too
            processes.terminate([sup], timeout=timeout + 15, sig=0)  # wait; SIGKILL if it hangs
        with contextlib.suppress(StateDamaged):
            s = read_state(sd) or s
        if s is not None:
            processes.terminate(s.refs(), timeout=timeout)
            if s.nginx is not None:
                processes.kill_group_remnants(s.nginx.ref(s.owner))  # workers of a killed master
        leftovers = _stop_owned(sd, timeout)
        removed = _clear_remote(sd, s)  # what a Ray fleet left on its cluster (the supervisor stopped what it knew of)
        st_mod.remove_runtime_files(sd)
        return anything or bool(leftovers) or bool(removed)


def _clear_remote(sd: Path, s: FleetState | None) -> int:
    """Remove what a remotely placed fleet left out of this machine's sight (`placement.clear_remote`: a
    Ray fleet's actors and placement groups in its namespace). A damaged fleet.json names nothing: the
    spec `fleet up` wrote (spec.json) says where the fleet was placed. The state stays when the cluster
    cannot be reached, so that a later `fleet down` can finish the job."""
    spec = s.spec if s is not None else _written_spec(sd)
    try:
        return placement.clear_remote(spec)
    except UserError as exc:
        raise UserError(f"{exc.cause}: the fleet's instances (namespace {spec.get('ray_namespace')}) may still run "
                        "there", "run `llama-tui fleet down` again once the cluster answers (if it is gone for good, "
                        f"remove {sd / st_mod.STATE_FILE})") from None


def _written_spec(sd: Path) -> dict[str, Any]:
    try:
        data = orjson.loads((sd / st_mod.SPEC_FILE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    spec = data.get("spec") if isinstance(data, dict) else None
    return spec if isinstance(spec, dict) else {}


def _stop_owned(sd: Path, timeout: float) -> list[int]:
    """Stop what still carries the fleet's owner marker: supervisors first (SIGTERM: each stops what it
    started), then the rest. Returns their pids."""
    owner = paths.owner_marker(sd)
    found = [r for r in (processes.ref_of(p, owner) for p in processes.owned_processes(sd)) if r is not None]
    sups = [r for r in found if r.name == "supervisor"]
    processes.terminate(sups, timeout=timeout + 15)
    rest = [r for r in (processes.ref_of(p, owner) for p in processes.owned_processes(sd)) if r is not None]
    processes.terminate(rest, timeout=timeout)
    for r in rest:
        if r.group:
            processes.kill_group_remnants(r)
    return sorted({r.pid for r in found + rest})
