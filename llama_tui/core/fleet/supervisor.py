"""The fleet supervisor: one detached process per state dir that owns the fleet.

    python -m llama_tui.core.fleet.supervisor --state-dir DIR [--adopt]

It runs in its own session with LLAMA_TUI_OWNER=DIR. A fresh supervisor reads `spec.json`, starts
every instance at once (each llama-server in its own process group, its output appended to a
size-capped log), and starts NGINX (through `frontdoor.FrontDoor`, as NGINX's parent) once all of
them answer /health 200. Then it watches:

- an instance that exits is restarted on the same port after an exponential backoff (0.5 s, 1 s,
  2 s ... 30 s); one that exits before it was ever ready twice, or `CRASH_LIMIT` times within
  `CRASH_WINDOW_S`, is marked `failed` with the tail of its log, and leaves NGINX's upstream;
- a ready instance that answers no /health probe for `HANG_S` while using almost no CPU (stopped,
  deadlocked) is killed, and so restarted like a crash; a busy one (CPU in use) is left alone;
- NGINX that dies is started again with the last config that passed `nginx -t`;
- `fleet.json` is rewritten atomically on every change.

Nothing ties the children to the supervisor's life (no parent-death signal, no pipes): when it is
killed, instances and NGINX keep serving. `--adopt` starts a supervisor that takes over such an
orphaned fleet from `fleet.json`; it cannot wait() on processes it did not start, so it polls them.

Commands arrive on a unix socket (one JSON line in, one out): ping, scale, restart, policy, down.
One operation runs at a time; the watch loop keeps going while an operation waits.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import orjson

from llama_tui.core import hardware, paths
from llama_tui.core.errors import UserError
from llama_tui.core.fleet import state as st_mod
from llama_tui.core.fleet.frontdoor import FrontDoor, FrontDoorSpec
from llama_tui.core.fleet.monitor import Endpoint, Monitor, health, tree_cpu_seconds
from llama_tui.core.fleet.ports import check_ports
from llama_tui.core.fleet.spec import FleetSpec
from llama_tui.core.fleet.state import FleetState, InstanceState, NginxState

# Runs before llama-server in the same process (exec keeps the pid): sets the CPU affinity every thread
# llama-server will create inherits. llama.cpp's own --cpu-mask leaves the main thread unpinned at -t 1.
_PIN_EXEC = ("import os,sys\n"
             "os.sched_setaffinity(0,[int(c) for c in sys.argv[1].split(',')])\n"
             "try:\n os.execv(sys.argv[2],sys.argv[2:])\n"
             "except OSError as e:\n print('llama-tui: cannot start',sys.argv[2],'(',e,')',file=sys.stderr);sys.exit(127)\n")


def pinned(cmd: list[str], cpus: list[int] | None) -> list[str]:
    """The argv that starts `cmd` restricted to `cpus` (the command itself when there are none)."""
    if not cpus:
        return list(cmd)
    return [sys.executable, "-I", "-S", "-c", _PIN_EXEC, ",".join(map(str, cpus)), *cmd]


# An instance that answers no /health probe for HANG_S seconds while using under HANG_CPU_FRACTION of a
# core is hung (stopped, deadlocked): it is killed and restarted like a crash. One that uses CPU is only
# busy (llama-server queues /health behind streams when its HTTP threads are all taken) and is left alone.
HANG_S = float(os.environ.get("LLAMA_TUI_HANG_S", "30"))
HANG_CPU_FRACTION = 0.05


class Liveness:
    """The hang verdict for one instance, from /health probes and the process's CPU time."""

    def __init__(self, hang_s: float = HANG_S, cpu_fraction: float = HANG_CPU_FRACTION) -> None:
        self.hang_s = hang_s
        self.cpu_fraction = cpu_fraction
        self.since: float | None = None  # first unanswered probe of this episode
        self.cpu0 = 0.0
        self.busy_noted = False

    def observe(self, now: float, answered: bool, cpu_s: float | None) -> tuple[str, float, float] | None:
        """("hung" | "busy", seconds unanswered, CPU seconds used meanwhile) once a verdict is due, else None.
        "busy" comes once per episode; the window then starts again."""
        if answered or cpu_s is None:
            self.since, self.busy_noted = None, False
            return None
        if self.since is None:
            self.since, self.cpu0 = now, cpu_s
            return None
        waited, used = now - self.since, cpu_s - self.cpu0
        if waited < self.hang_s:
            return None
        if used < self.cpu_fraction * waited:
            self.since = None
            return ("hung", waited, used)
        self.since, self.cpu0 = now, cpu_s
        if self.busy_noted:
            return None
        self.busy_noted = True
        return ("busy", waited, used)


CRASH_LIMIT = 5  # crashes within CRASH_WINDOW_S that mark an instance failed
CRASH_WINDOW_S = 60.0
START_ATTEMPTS = 2  # an instance that never got ready is failed after this many exits
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
STOP_TIMEOUT_S = 10.0
LOG_MAX_BYTES = int(os.environ.get("LLAMA_TUI_LOG_MAX_BYTES", str(8 << 20)))
ACCESS_LOG_MAX_BYTES = int(os.environ.get("LLAMA_TUI_ACCESS_LOG_MAX_BYTES", str(256 << 20)))


def log(msg: str) -> None:
    try:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {msg}", flush=True)
    except OSError:
        pass  # a full disk must not take the supervisor down


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Instance:
    """One llama-server: its record in fleet.json plus what only the supervisor knows."""

    def __init__(self, rec: InstanceState, proc: subprocess.Popen | None = None) -> None:
        self.rec = rec
        self.proc = proc
        self.spawned = time.monotonic()
        self.crashes: collections.deque[float] = collections.deque()
        self.ever_ready = rec.ready_at is not None
        self.start_failures = 0
        self.next_start: float | None = None  # waiting out a backoff
        self.held = False  # an operation (scale, restart, down) controls it; the watch loop keeps off
        self.liveness = Liveness()
        self.hung_note: str | None = None  # why the supervisor killed it, for the restart's last_error

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return self.rec.alive()

    def exit_code(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None


class Supervisor:
    def __init__(self, state_dir: Path, adopt: bool = False) -> None:
        self.dir = st_mod.resolve_dir(state_dir)
        self.adopting = adopt
        self.lock = threading.RLock()  # guards instances, state, door
        self.op_lock = threading.Lock()  # one operation at a time
        self.exit_event = threading.Event()
        self.dirty = False  # the state file could not be written; retry
        self.exit_after_reply = False
        self.term_requested = False
        self.shutting_down = False
        self.instances: list[Instance] = []
        self.spec: FleetSpec
        self.state: FleetState
        self.door: FrontDoor
        self.nginx_wanted = False
        self.nginx_next_start = 0.0
        self.nginx_failures = 0
        self.phase = "starting"  # starting -> running | failed
        self.follower: Any = None
        self.follower_error_logged = False
        self._last_housekeeping = 0.0
        self._lock_fd: int | None = None
        self._server: socket.socket | None = None
        self._mon = Monitor(http_timeout=1.0)

    # ------------------------------------------------------------------------------------ setup

    def _take_lock(self) -> bool:
        import fcntl

        fd = os.open(self.dir / st_mod.SUPERVISOR_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + 5.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._lock_fd = fd
                return True
            except OSError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    return False
                time.sleep(0.05)

    @property
    def owner(self) -> str:
        return paths.owner_marker(self.dir)

    @property
    def host(self) -> str:
        return "127.0.0.1" if self.spec.host == "localhost" else self.spec.host

    def _nginx_state(self) -> NginxState:
        prefix = self.dir / st_mod.NGINX_DIR
        return NginxState(port=self.spec.nginx_port, listen=self.spec.listen, policy=self.spec.policy,
                          prefix=str(prefix), config_path=str(prefix / "nginx.conf"),
                          error_log=str(prefix / "logs" / "error.log"), access_log=str(prefix / "logs" / "access.log"))

    def _new_instances(self, indices: range | list[int], threads: int) -> list[Instance]:
        """Records for new instances; with `pin_cpus`, each gets physical cores no other instance holds."""
        taken = {c for i in self.instances for c in (i.rec.cpus or ())}
        out = []
        for index in indices:
            cpus = None
            if self.spec.pin_cpus:
                cpus = hardware.allocate_cores(threads, taken)
                if cpus is None:
                    free = len(hardware.core_groups()) - sum(1 for g in hardware.core_groups() if taken & set(g))
                    raise UserError(f"--pin-cpus: instance {index} needs {threads} physical core(s) of its own and "
                                    f"{free} of {len(hardware.core_groups())} are free",
                                    "scale to fewer instances, or restart the fleet without --pin-cpus")
                taken.update(cpus)
            rec = InstanceState(index=index, port=self.spec.port_of(index), threads=threads,
                                log_path=str(st_mod.instance_log_path(self.dir, index)), gpu=self.spec.gpu_of(index),
                                cpus=list(cpus) if cpus else None,
                                cmd=self.spec.command(self.state.llama_server or "llama-server", index, threads))
            out.append(Instance(rec))
        return out

    def setup_fresh(self) -> None:
        payload = orjson.loads((self.dir / st_mod.SPEC_FILE).read_bytes())
        self.spec = FleetSpec.from_dict(payload["spec"])
        self.state = FleetState(
            state_dir=str(self.dir), spec=self.spec.to_dict(), status="starting",
            supervisor_pid=os.getpid(), supervisor_started=st_mod.process_start_time(os.getpid()),
            control=str(st_mod.control_path(self.dir)), llama_server=payload["llama_server"],
            nginx_bin=payload["nginx_bin"], nginx=self._nginx_state(),
        )
        self.door = FrontDoor(Path(payload["nginx_bin"]), prefix=self.dir / st_mod.NGINX_DIR)
        if self.door.access_log.exists():  # an earlier fleet's requests do not count for this one
            os.replace(self.door.access_log, self.door.access_log.with_name("access.log.1"))
        threads = self.spec.threads_for(self.spec.instances)
        with self.lock:
            self.instances = self._new_instances(range(self.spec.instances), threads)
            self.save()
            for inst in self.instances:  # all at once: they load in parallel
                self._spawn(inst)
            self.save()
        log(f"started {len(self.instances)} instances of {self.spec.model.name} ({threads} threads each)")

    def setup_adopted(self) -> None:
        old = st_mod.read_state(self.dir)
        if old is None:
            raise UserError(f"no fleet state to adopt in {self.dir}", "start a fleet with `llama-tui fleet up`")
        self.spec = FleetSpec.from_dict(old.spec)
        old.supervisor_pid = os.getpid()
        old.supervisor_started = st_mod.process_start_time(os.getpid())
        old.control = str(st_mod.control_path(self.dir))
        old.status = "starting"
        old.error = None
        if old.nginx is None:
            old.nginx = self._nginx_state()
        self.state = old
        self.door = FrontDoor(Path(old.nginx_bin or "nginx"), prefix=Path(old.nginx.prefix))
        now = time.monotonic()
        leftover: list[Instance] = []
        with self.lock:
            for rec in sorted(old.instances, key=lambda r: r.index):
                inst = Instance(rec)
                if rec.state == "draining":  # an interrupted scale-down: finish it
                    inst.held = True
                    leftover.append(inst)
                    continue
                if rec.state in ("failed", "stopped"):
                    pass
                elif rec.alive():
                    log(f"adopted instance {rec.index} (pid {rec.pid}, port {rec.port}, {rec.state})")
                else:
                    log(f"instance {rec.index} is gone: starting it again")
                    rec.pid = None
                    rec.state = "restarting"
                    inst.next_start = now
                self.instances.append(inst)
            self.state.instances = [i.rec for i in self.instances]
            if old.nginx.alive():
                self.door.adopt(old.nginx.pid, self._door_spec())  # type: ignore[arg-type]
                self.nginx_wanted = True
                log(f"adopted nginx (pid {old.nginx.pid})")
            self.save()
        self._stop_instances(leftover)

    # ------------------------------------------------------------------------------------ state file

    def save(self) -> None:
        with self.lock:
            self.state.instances = [i.rec for i in sorted(self.instances, key=lambda x: x.rec.index)]
            try:
                st_mod.write_state(self.dir, self.state)
                self.dirty = False
            except OSError as exc:  # disk full: the fleet keeps running; the next tick tries again
                if not self.dirty:
                    log(f"cannot write the state file: {exc}")
                self.dirty = True

    # ------------------------------------------------------------------------------------ processes

    def _open_instance_log(self, rec: st_mod.InstanceState) -> int:
        """The instance's log, opened for appending; /dev/null when it cannot be opened (full disk)."""
        log_path = Path(rec.log_path)
        try:
            paths.ensure_private_dir(log_path.parent)
            return os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            log(f"instance {rec.index}: cannot open its log {log_path} ({exc}); its output is discarded")
            return os.open(os.devnull, os.O_WRONLY)

    def _spawn(self, inst: Instance, restart: bool = False) -> None:
        rec = inst.rec
        rec.cmd = self.spec.command(self.state.llama_server or "llama-server", rec.index, rec.threads)
        env = paths.owner_env(self.dir)
        if rec.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(rec.gpu)
        fd = self._open_instance_log(rec)
        try:
            on = f" on CPUs {hardware.format_cpus(rec.cpus)}" if rec.cpus else ""
            banner = (f"--- llama-tui: instance {rec.index} {'restart' if restart else 'start'} at "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}{on}: {' '.join(rec.cmd)}\n")
            try:
                os.write(fd, banner.encode())
            except OSError:
                pass  # a full disk loses the banner, not the instance
            proc = subprocess.Popen(pinned(rec.cmd, rec.cpus), stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, env=env,
                                    start_new_session=True, close_fds=True, cwd=str(self.dir))
        except OSError as exc:
            rec.state = "failed"
            rec.last_error = f"cannot start llama-server: {exc}"
            rec.pid = None
            log(f"instance {rec.index}: {rec.last_error}")
            return
        finally:
            os.close(fd)
        inst.proc = proc
        inst.spawned = time.monotonic()
        inst.next_start = None
        rec.pid = proc.pid
        rec.pid_started = st_mod.process_start_time(proc.pid)
        rec.started_at = time.time()
        rec.ready_at = None
        rec.exit_code = None
        if restart:
            rec.restarts += 1
            rec.state = "restarting"
        else:
            rec.state = "starting"

    def _crashed(self, inst: Instance, now: float) -> None:
        rec = inst.rec
        code = inst.exit_code()
        if inst.proc is not None:
            inst.proc.wait(timeout=1)
        inst.proc = None
        rec.pid = None
        rec.exit_code = code
        inst.crashes.append(now)
        while inst.crashes and now - inst.crashes[0] > CRASH_WINDOW_S:
            inst.crashes.popleft()
        tail = st_mod.error_summary(rec.log_path)
        how, inst.hung_note = inst.hung_note or _exit_text(code), None
        if not inst.ever_ready:
            inst.start_failures += 1
        if (not inst.ever_ready and inst.start_failures >= START_ATTEMPTS) or len(inst.crashes) >= CRASH_LIMIT:
            why = (f"{how} before it was ready ({inst.start_failures} attempts)" if not inst.ever_ready
                   else f"{how}; {len(inst.crashes)} crashes within {CRASH_WINDOW_S:.0f}s")
            rec.state = "failed"
            rec.last_error = f"{why}: {tail}"
            log(f"instance {rec.index} failed: {rec.last_error}")
            if rec.in_upstream:
                rec.in_upstream = False
                self._reload_nginx()
            return
        delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (len(inst.crashes) - 1))
        rec.state = "restarting"
        rec.last_error = how if how.startswith("hung") else f"{how}: {tail}"  # a hung one's log says nothing
        inst.next_start = now + delay
        log(f"instance {rec.index} {how}; restarting on port {rec.port} in {delay:.1f}s")

    def _stop_instances(self, insts: list[Instance], timeout: float = STOP_TIMEOUT_S) -> None:
        refs = [i.rec.ref() for i in insts if i.alive()]
        st_mod.terminate([r for r in refs if r is not None], timeout=timeout)
        with self.lock:
            for i in insts:
                if i.proc is not None:
                    try:
                        i.proc.wait(timeout=1)
                    except subprocess.TimeoutExpired:
                        pass
                i.proc = None
                i.rec.pid = None
                if i.rec.state != "failed":  # a failed instance stays failed (with its error)
                    i.rec.state = "stopped"
                i.rec.in_upstream = False
                i.next_start = None

    # ------------------------------------------------------------------------------------ nginx

    def _door_spec(self) -> FrontDoorSpec:
        """NGINX in front of the instances that are in the upstream, with the current policy (the same
        builder `llama-tui nginx render` uses, so it prints exactly the live config)."""
        ports = [i.rec.port for i in sorted(self.instances, key=lambda x: x.rec.index) if i.rec.in_upstream]
        return FrontDoorSpec.for_fleet(self.spec, ports, policy=self.state.nginx.policy)  # type: ignore[union-attr]

    def _record_nginx(self) -> None:
        ng = self.state.nginx
        assert ng is not None
        pid = self.door.pid
        if pid != ng.pid:
            ng.pid = pid
            ng.pid_started = st_mod.process_start_time(pid) if pid else None

    def _start_nginx(self) -> bool:
        ng = self.state.nginx
        assert ng is not None
        if ng.pid:  # whatever is left of a killed master (its workers hold the port)
            st_mod.kill_group_remnants(ng.pid, ("nginx",))
        spec = self.door.spec if self.door.spec is not None and self.door.spec.backends else self._door_spec()
        try:
            self.door.start(spec)
        except UserError as exc:
            self.nginx_failures += 1
            delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** self.nginx_failures)
            self.nginx_next_start = time.monotonic() + delay
            ng.config_error = exc.cause
            log(f"nginx did not start: {exc.cause}; trying again in {delay:.1f}s")
            self._record_nginx()
            return False
        if self.nginx_wanted:
            ng.restarts += 1
        self.nginx_wanted = True
        self.nginx_failures = 0
        ng.config_valid = True
        ng.config_error = None
        ng.policy = spec.policy
        self._record_nginx()
        log(f"nginx listening on {spec.listen}:{spec.port} (pid {ng.pid}, {len(spec.backends)} backends, "
            f"{spec.policy})")
        return True

    def _nginx_workers(self) -> set[int]:
        import psutil

        pid = self.door.pid
        if pid is None:
            return set()
        try:
            return {c.pid for c in psutil.Process(pid).children()}
        except psutil.Error:
            return set()

    def _reload_nginx(self) -> bool:
        """Apply the current membership/policy. On failure the old config stays and the error is kept."""
        ng = self.state.nginx
        assert ng is not None
        spec = self._door_spec()
        if not spec.backends:
            ng.config_error = "no instance is ready to receive requests; NGINX keeps the previous upstream"
            return False
        if self.door.pid is None:
            if self.door.spec is not None:
                self.door.spec = spec  # used when NGINX is started again
            return False
        check = self.door.reload(spec)
        ng.config_valid = check.ok
        ng.config_error = None if check.ok else check.error
        if check.ok:
            ng.policy = spec.policy
        else:
            log(f"nginx reload failed, previous config kept: {check.error}")
        self._record_nginx()
        return check.ok

    # ------------------------------------------------------------------------------------ watching

    def tick(self) -> None:
        now = time.monotonic()
        with self.lock:
            if self.shutting_down:
                return
            changed = False
            for inst in list(self.instances):
                rec = inst.rec
                if inst.held or rec.state in ("failed", "stopped"):
                    continue
                if inst.next_start is not None:
                    if now >= inst.next_start:
                        self._spawn(inst, restart=True)
                        changed = True
                    continue
                if not inst.alive():
                    self._crashed(inst, now)
                    changed = True
                    continue
                if rec.state in ("starting", "restarting"):
                    code = health(self.host, rec.port, timeout=0.5)
                    if code == 200:
                        rec.state = "ready"
                        rec.ready_at = time.time()
                        rec.last_error = None if not rec.restarts else rec.last_error
                        inst.ever_ready = True
                        inst.start_failures = 0
                        changed = True
                        log(f"instance {rec.index} ready on port {rec.port} after "
                            f"{now - inst.spawned:.2f}s (pid {rec.pid})")
                    elif now - inst.spawned > self.spec.ready_timeout:
                        ref = rec.ref()
                        if ref is not None:
                            st_mod.terminate([ref], timeout=3)
                        if inst.proc is not None:
                            inst.proc.wait(timeout=1)
                        inst.proc = None
                        rec.pid = None
                        rec.state = "failed"
                        rec.last_error = (f"not ready within {self.spec.ready_timeout:.0f}s: "
                                          f"{st_mod.error_summary(rec.log_path)}")
                        log(f"instance {rec.index} failed: {rec.last_error}")
                        if rec.in_upstream:
                            rec.in_upstream = False
                            self._reload_nginx()
                        changed = True
            if self.nginx_wanted and self.door.pid is None and now >= self.nginx_next_start:
                ng = self.state.nginx
                log(f"nginx (pid {ng.pid if ng else None}) is gone: starting it again with the last valid config")
                self._start_nginx()
                changed = True
            elif self.nginx_wanted and self.state.nginx is not None and self.state.nginx.pid != self.door.pid:
                self._record_nginx()
                changed = True
            changed |= self._advance_phase()
            if changed or self.dirty:
                self.save()

    def check_liveness(self) -> None:
        """Probe every ready instance's /health (outside the lock); kill one that is hung (see Liveness)."""
        with self.lock:
            if self.shutting_down:
                return
            targets = [(i, i.rec.pid) for i in self.instances if i.rec.state == "ready" and not i.held and i.rec.pid]
        timeout = min(2.0, HANG_S / 3)
        for inst, pid in targets:
            answered = health(self.host, inst.rec.port, timeout=timeout) is not None
            verdict = inst.liveness.observe(time.monotonic(), answered, None if answered else tree_cpu_seconds(pid))
            if verdict is None:
                continue
            kind, waited, used = verdict
            if kind == "busy":
                log(f"instance {inst.rec.index} answered no /health for {waited:.0f}s but used {used:.1f}s of CPU: "
                    "busy, not hung (its HTTP threads are taken by streams); left running")
                continue
            with self.lock:
                if inst.rec.pid != pid or inst.rec.state != "ready" or inst.held or self.shutting_down:
                    continue
                inst.hung_note = (f"hung (no /health answer for {waited:.0f}s, {used:.2f}s of CPU meanwhile), "
                                  "killed by the supervisor")
                log(f"instance {inst.rec.index} (pid {pid}) is {inst.hung_note}")
                ref = inst.rec.ref()
                if ref is not None:
                    ref.signal(signal.SIGKILL)  # the watch loop sees the exit and restarts it like a crash

    def _liveness_loop(self) -> None:
        while not self.exit_event.wait(min(2.0, HANG_S / 3)):
            try:
                self.check_liveness()
            except Exception:
                log(f"liveness check error:\n{traceback.format_exc()}")

    def _advance_phase(self) -> bool:
        if self.phase != "starting":
            return False
        states = [i.rec.state for i in self.instances]
        if not self.adopting and "failed" in states:
            bad = next(i.rec for i in self.instances if i.rec.state == "failed")
            self.phase = "failed"
            self.state.status = "failed"
            self.state.error = f"instance {bad.index} (port {bad.port}) failed to start: {bad.last_error}"
            return True
        if any(s in ("starting", "restarting") for s in states):
            return False
        if not self.nginx_wanted:
            if not self.adopting or not any(i.rec.in_upstream for i in self.instances):
                for i in self.instances:
                    i.rec.in_upstream = i.rec.state == "ready"
            if not self._start_nginx():
                if not self.adopting:
                    self.phase = "failed"
                    self.state.status = "failed"
                    self.state.error = f"nginx did not start: {self.state.nginx.config_error}"  # type: ignore[union-attr]
                    return True
                self.nginx_wanted = True  # adopted fleet: keep serving, the watch loop retries NGINX
        self.phase = "running"
        self.state.status = "running"
        log("fleet running")
        return True

    def housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last_housekeeping < 1.0:
            return
        self._last_housekeeping = now
        for inst in list(self.instances):
            st_mod.rotate_log(Path(inst.rec.log_path), LOG_MAX_BYTES)
        st_mod.rotate_log(st_mod.supervisor_log_path(self.dir), LOG_MAX_BYTES)
        prefix = self.dir / st_mod.NGINX_DIR
        for name in ("error.log", "stderr.log"):
            st_mod.rotate_log(prefix / "logs" / name, LOG_MAX_BYTES)
        with self.lock:
            rotate = getattr(self.door, "rotate_access_log", None)
            if rotate is not None and self.door.pid is not None:
                try:
                    rotate(ACCESS_LOG_MAX_BYTES)
                except OSError:
                    pass
        self._follow_access_log()

    def _follow_access_log(self) -> None:
        """Feed NGINX's access log to the front door's follower and persist its per-upstream totals."""
        try:
            if self.follower is None:
                from llama_tui.core.fleet.accesslog import AccessLogFollower

                self.follower = AccessLogFollower(self.door.access_log)
            self.follower.poll()
            paths.write_private(self.dir / st_mod.UPSTREAM_FILE, orjson.dumps(self.follower.to_json()))
        except Exception as exc:  # statistics must never take the supervisor down
            if not self.follower_error_logged:
                self.follower_error_logged = True
                log(f"access-log statistics unavailable: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------------------------ operations

    def _wait_ready(self, insts: list[Instance]) -> list[Instance]:
        """Wait until every instance is ready (the watch loop probes them); returns those that failed."""
        deadline = time.monotonic() + self.spec.ready_timeout + 10
        while time.monotonic() < deadline and not self.shutting_down:
            with self.lock:
                failed = [i for i in insts if i.rec.state in ("failed", "stopped")]
                if failed:
                    return failed
                if all(i.rec.state == "ready" for i in insts):
                    return []
            time.sleep(0.05)
        return [i for i in insts if i.rec.state != "ready"]

    def _busy(self, inst: Instance) -> bool:
        s = self._mon.servers([Endpoint(self.host, inst.rec.port)]).get(Endpoint(self.host, inst.rec.port))
        if s is None or not s.reachable:
            return False
        return bool(s.requests_processing or s.requests_deferred or s.slots_busy)

    def _drain_and_stop(self, leaving: list[Instance], timeout: float) -> dict[str, Any]:
        """Take `leaving` out of NGINX, let their open streams finish, then stop them."""
        t0 = time.monotonic()
        with self.lock:
            was_member = False
            for i in leaving:
                i.held = True
                was_member |= i.rec.in_upstream
                i.rec.in_upstream = False
                if i.alive():
                    i.rec.state = "draining"
            old_workers = self._nginx_workers() if was_member else set()
            reloaded = self._reload_nginx() if was_member else False
            self.save()
        deadline = t0 + timeout
        import psutil

        # 1. NGINX's old workers finish the requests they took before the reload, then exit.
        while reloaded and time.monotonic() < deadline and not self.shutting_down:
            if not any(psutil.pid_exists(p) and st_mod.alive(p) for p in old_workers):
                break
            time.sleep(0.05)
        # 2. The instances finish what they still process.
        while time.monotonic() < deadline and not self.shutting_down:
            busy = [i for i in leaving if i.alive() and self._busy(i)]
            if not busy:
                break
            time.sleep(0.1)
        drained = time.monotonic() < deadline
        self._stop_instances(leaving)
        return {"drained": drained, "drain_s": round(time.monotonic() - t0, 2)}

    def op_scale(self, n: int) -> dict[str, Any]:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UserError(f"scale needs 1 or more instances, got {n!r}", "pass a positive number")
        with self.op_lock:
            with self.lock:
                cur = sorted(self.instances, key=lambda x: x.rec.index)
            have = len(cur)
            if n == have:
                return {"changed": False, "instances": n}
            if n > have:
                indices = range(have, n)
                self.spec.check_port_range(n)
                check_ports(self.spec, indices=indices, nginx=False)
                threads = self.spec.threads_for(n)
                with self.lock:
                    new = self._new_instances(indices, threads)
                    self.instances.extend(new)
                    for inst in new:
                        self._spawn(inst)
                    self.save()
                log(f"scale {have} -> {n}: started instances {indices.start}-{indices.stop - 1}")
                failed = self._wait_ready(new)
                if failed:
                    bad = failed[0].rec
                    err = bad.last_error or f"not ready (state {bad.state})"
                    with self.lock:
                        for inst in new:
                            inst.held = True
                    self._stop_instances(new)
                    with self.lock:
                        self.instances = [i for i in self.instances if i not in new]
                        self.save()
                    raise UserError(f"scale to {n} failed: instance {bad.index} (port {bad.port}) did not start: {err}",
                                    f"the fleet stays at {have}; see {bad.log_path}")
                with self.lock:
                    for inst in new:
                        inst.rec.in_upstream = True
                    ok = self._reload_nginx()
                    self.spec = dataclasses.replace(self.spec, instances=n)
                    self.state.spec = self.spec.to_dict()
                    self.save()
                log(f"scale {have} -> {n}: done (nginx reload {'ok' if ok else 'failed'})")
                return {"changed": True, "instances": n, "nginx_reloaded": ok}
            leaving = [i for i in cur if i.rec.index >= n]
            log(f"scale {have} -> {n}: draining instances {[i.rec.index for i in leaving]}")
            result = self._drain_and_stop(leaving, self.spec.drain_timeout)
            with self.lock:
                self.instances = [i for i in self.instances if i not in leaving]
                self.spec = dataclasses.replace(self.spec, instances=n)
                self.state.spec = self.spec.to_dict()
                self.save()
            log(f"scale {have} -> {n}: done ({result})")
            return {"changed": True, "instances": n, **result}

    def _restart_one(self, index: int) -> dict[str, Any]:
        with self.lock:
            inst = next((i for i in self.instances if i.rec.index == index), None)
            if inst is None:
                raise UserError(f"no instance {index} in the fleet",
                                f"pick one of: {', '.join(str(i.rec.index) for i in self.instances)}")
            others = [i for i in self.instances if i is not inst and i.rec.in_upstream and i.rec.state == "ready"]
            graceful = inst.rec.in_upstream and bool(others) and inst.alive()
            inst.held = True
        result: dict[str, Any] = {"index": index, "graceful": graceful}
        if graceful:
            result.update(self._drain_and_stop([inst], self.spec.drain_timeout))
        else:
            self._stop_instances([inst])
        with self.lock:
            inst.crashes.clear()
            inst.start_failures = 0
            inst.ever_ready = False
            inst.rec.last_error = None
            self._spawn(inst, restart=True)
            inst.held = False
            self.save()
        failed = self._wait_ready([inst])
        if failed:
            raise UserError(f"instance {index} did not come back: {inst.rec.last_error}", f"see {inst.rec.log_path}")
        with self.lock:
            if not inst.rec.in_upstream:
                inst.rec.in_upstream = True
                self._reload_nginx()
            self.save()
        log(f"instance {index} restarted ({result})")
        return result

    def op_restart(self, index: int | None) -> dict[str, Any]:
        with self.op_lock:
            with self.lock:
                targets = [index] if index is not None else sorted(i.rec.index for i in self.instances)
            return {"restarted": [self._restart_one(i) for i in targets]}

    def op_policy(self, policy: str) -> dict[str, Any]:
        from llama_tui.core.config import POLICIES

        if policy not in POLICIES:
            raise UserError(f"unknown policy {policy!r}", f"use one of: {', '.join(POLICIES)}")
        with self.op_lock, self.lock:
            ng = self.state.nginx
            assert ng is not None
            if self.door.pid is None:
                raise UserError("nginx is not running right now", "wait a few seconds for the supervisor to restart it")
            old = ng.policy
            ng.policy = policy
            ok = self._reload_nginx()
            if not ok:
                ng.policy = old
                self.save()
                raise UserError(f"nginx kept its previous config ({old}): {ng.config_error}",
                                "see the nginx error log: `llama-tui fleet logs nginx`")
            self.spec = dataclasses.replace(self.spec, policy=policy)
            self.state.spec = self.spec.to_dict()
            self.save()
            log(f"policy {old} -> {policy}")
            return {"policy": policy, "previous": old}

    def shutdown(self, timeout: float = STOP_TIMEOUT_S, keep_state: bool = False) -> None:
        """Stop NGINX and every instance, then remove the runtime files (unless `keep_state`)."""
        with self.lock:
            self.shutting_down = True
            self.state.status = "stopping" if not keep_state else self.state.status
            for i in self.instances:
                i.held = True
            self.save()
        log("stopping the fleet")
        with self.lock:
            ng_pid = self.state.nginx.pid if self.state.nginx else None
            if self.door.pid is not None:
                self.door.stop(timeout=min(3.0, timeout))
            if ng_pid:
                st_mod.kill_group_remnants(ng_pid, ("nginx",))
            if self.state.nginx is not None:
                self.state.nginx.pid = None
        self._stop_instances(list(self.instances), timeout=timeout)
        with self.lock:
            if keep_state:
                self.save()
            else:
                st_mod.remove_runtime_files(self.dir, self.state.control)
        log("fleet stopped")

    def op_down(self, timeout: float) -> dict[str, Any]:
        with self.lock:
            self.shutting_down = True  # an operation in progress stops waiting and lets go of op_lock
        with self.op_lock:
            self.shutdown(timeout=timeout)
        self.exit_after_reply = True  # the main loop ends once the answer is sent
        return {"stopped": True}

    def dispatch(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "ping":
            return {"pid": os.getpid(), "phase": self.phase}
        if op == "down":
            return self.op_down(float(req.get("timeout") or STOP_TIMEOUT_S))
        if self.shutting_down:
            raise UserError("the fleet is stopping", "wait for `fleet down` to finish")
        if self.phase != "running":
            raise UserError("the fleet is still starting", "wait until `llama-tui fleet up` has returned")
        if op == "scale":
            return self.op_scale(req.get("n"))  # type: ignore[arg-type]
        if op == "restart":
            return self.op_restart(req.get("index"))
        if op == "policy":
            return self.op_policy(str(req.get("policy")))
        raise UserError(f"unknown supervisor request {op!r}", "update llama-tui: the command and supervisor differ")

    # ------------------------------------------------------------------------------------ control socket

    def _open_control(self) -> None:
        path = Path(self.state.control or st_mod.control_path(self.dir))
        paths.ensure_private_dir(path.parent)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(path))
        os.chmod(path, 0o600)
        srv.listen(16)
        srv.settimeout(0.5)
        self._server = srv
        threading.Thread(target=self._serve, name="control", daemon=True).start()

    def _serve(self) -> None:
        assert self._server is not None
        while not self.exit_event.is_set():
            try:
                conn, _ = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            buf = b""
            while not buf.endswith(b"\n") and len(buf) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                buf += chunk
            conn.settimeout(None)
            try:
                req = orjson.loads(buf)
                if not isinstance(req, dict):
                    raise ValueError("request must be a JSON object")
                resp = {"ok": True, **self.dispatch(req)}
            except UserError as exc:
                resp = {"ok": False, "error": exc.cause, "fix": exc.fix}
            except Exception as exc:
                log(f"request {buf[:200]!r} failed:\n{traceback.format_exc()}")
                resp = {"ok": False, "error": f"supervisor error: {type(exc).__name__}: {exc}",
                        "fix": f"see {st_mod.supervisor_log_path(self.dir)}"}
            conn.sendall(orjson.dumps(resp) + b"\n")
        except OSError:
            pass
        finally:
            conn.close()
            if self.exit_after_reply:
                self.exit_event.set()

    # ------------------------------------------------------------------------------------ main loop

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.term_requested = True
        self.exit_event.set()

    def run(self) -> int:
        paths.ensure_private_dir(self.dir)
        if not self._take_lock():
            log(f"another supervisor holds {self.dir / st_mod.SUPERVISOR_LOCK}; exiting")
            return 3
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            self.setup_adopted() if self.adopting else self.setup_fresh()
        except Exception as exc:
            log(f"cannot start: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            return 1
        self._open_control()
        threading.Thread(target=self._liveness_loop, name="liveness", daemon=True).start()
        self.save()
        log(f"supervising {len(self.instances)} instances in {self.dir} (control: {self.state.control})")
        code = 0
        while True:
            if self.term_requested and not self.shutting_down:
                self.shutdown()
                break
            if self.exit_event.is_set():
                break
            try:
                self.tick()
                if self.phase == "failed":
                    log(f"start failed: {self.state.error}")
                    self.shutdown(timeout=5.0, keep_state=True)
                    code = 1
                    break
                self.housekeeping()
            except Exception:
                log(f"watch loop error:\n{traceback.format_exc()}")
            with self.lock:
                busy = any(i.rec.state in ("starting", "restarting") for i in self.instances) or self.phase == "starting"
            self.exit_event.wait(0.1 if busy else 0.5)
        if self._server is not None:
            self._server.close()
        self._mon.close()
        return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llama_tui.core.fleet.supervisor",
                                description="Own a llama-tui fleet (started by `llama-tui fleet up`).")
    p.add_argument("--state-dir", required=True, type=Path)
    p.add_argument("--adopt", action="store_true", help="take over the running fleet described by fleet.json")
    args = p.parse_args(argv)
    return Supervisor(args.state_dir, adopt=args.adopt).run()


if __name__ == "__main__":
    sys.exit(main())
