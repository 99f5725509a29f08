"""The fleet supervisor: one detached process per state dir that owns the fleet.

    python -m llama_tui.core.fleet.supervisor --state-dir DIR [--adopt]

It runs in its own session with LLAMA_TUI_OWNER=DIR. A fresh supervisor reads `spec.json`, starts
every instance at once (each llama-server in its own process group, its output appended to a
size-capped log), and starts NGINX (through `frontdoor_nginx.FrontDoor`, as NGINX's parent) once all of
them answer /health 200. Then it watches:

- instances that exit or hang are restarted, or marked failed (`fleet/instances.py`);
- NGINX that dies is started again with the last config that passed `nginx -t` (`fleet/door_keeper.py`);
- `fleet.json` is rewritten atomically on every change.

Nothing ties the children to the supervisor's life (no parent-death signal, no pipes): when it is
killed, instances and NGINX keep serving. `--adopt` starts a supervisor that takes over such an
orphaned fleet from `fleet.json`; it cannot wait() on processes it did not start, so it polls them.

Commands arrive on a unix socket (`fleet/control_server.py`, one JSON line in, one out): ping, scale,
restart, policy, down (`fleet/operations.py`). One operation runs at a time; the watch loop keeps
going while an operation waits.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import orjson

from llama_tui.core import paths
from llama_tui.core.errors import UserError
from llama_tui.core.fleet import keys, placement, processes
from llama_tui.core.fleet import state as st_mod
from llama_tui.core.fleet.control_server import ControlServer
from llama_tui.core.fleet.door_keeper import DoorKeeper
from llama_tui.core.fleet.instances import LOG_MAX_BYTES, STOP_TIMEOUT_S, HangWatch, Instance, Instances
from llama_tui.core.fleet.operations import Operations
from llama_tui.core.fleet.published import Publisher
from llama_tui.core.fleet.spec import FleetSpec
from llama_tui.core.fleet.state import FleetState, log


class Supervisor:
    def __init__(self, state_dir: Path, adopt: bool = False) -> None:
        self.dir = st_mod.resolve_dir(state_dir)
        self.adopting = adopt
        self.lock = threading.RLock()  # guards instances, state, door
        self.exit_event = threading.Event()
        self.dirty = False  # the state file could not be written; retry
        self.exit_after_reply = False
        self.term_requested = False
        self.shutting_down = False
        self.spec: FleetSpec
        self.internal_key: str | None = None  # every instance requires it; NGINX sends it
        self.state: FleetState
        self.door: DoorKeeper
        self.instances = Instances(self)
        self.ops = Operations(self)
        self.phase = "starting"  # starting -> running | failed
        self._last_housekeeping = 0.0
        self._lock_fd: int | None = None
        self._control: ControlServer | None = None
        self.internal_key: str | None = None  # instances require it (see _use_placement)
        self.metrics: Any = None  # metrics_server.MetricsListener with --metrics-listen

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

    def setup_fresh(self) -> None:
        payload = orjson.loads((self.dir / st_mod.SPEC_FILE).read_bytes())
        self.spec = FleetSpec.from_dict(payload["spec"])
        self.state = FleetState(
            state_dir=str(self.dir), spec=self.spec.to_dict(), status="starting",
            supervisor_pid=os.getpid(), supervisor_started=processes.process_start_time(os.getpid()),
            control=str(st_mod.control_path(self.dir)), llama_server=payload["llama_server"],
            nginx_bin=payload["nginx_bin"], nginx=DoorKeeper.nginx_state(self.spec, self.dir),
        )
        self.state.owner = paths.owner_marker(self.dir)
        self.door = DoorKeeper(self, Path(payload["nginx_bin"]), prefix=self.dir / processes.NGINX_DIR)
        self._use_placement()
        access_log = self.door.door.access_log
        if access_log.exists():  # an earlier fleet's requests do not count for this one
            os.replace(access_log, access_log.with_name("access.log.1"))
        threads = self.spec.threads_for(self.spec.instances)
        with self.lock:
            self.instances.items = self.instances.new(range(self.spec.instances), threads)
            self.instances.placement.reserve(range(self.spec.instances))
            self.save()
            for inst in self.instances.items:  # all at once: they load in parallel
                self.instances.spawn(inst)
            self.save()
        log(f"started {len(self.instances.items)} instances of {self.spec.model.name} ({threads} threads each)")

    def setup_adopted(self) -> None:
        old = st_mod.read_state(self.dir)
        if old is None:
            raise UserError(f"no fleet state to adopt in {self.dir}", "start a fleet with `llama-tui fleet up`")
        self.spec = FleetSpec.from_dict(old.spec)
        old.supervisor_pid = os.getpid()
        old.supervisor_started = processes.process_start_time(os.getpid())
        old.control = str(st_mod.control_path(self.dir))
        old.status = "starting"
        old.error = None
        # Paths are computed from the state dir, never taken from the file (a log path in it would be
        # rotated, i.e. truncated; a prefix would get NGINX's files).
        fresh = DoorKeeper.nginx_state(self.spec, self.dir)
        if old.nginx is None:
            old.nginx = fresh
        else:
            for name in ("prefix", "config_path", "error_log", "access_log"):
                setattr(old.nginx, name, getattr(fresh, name))
        for rec in old.instances:
            rec.log_path = str(st_mod.instance_log_path(self.dir, rec.index))
        self.state = old
        self.door = DoorKeeper(self, Path(old.nginx_bin or "nginx"), prefix=Path(fresh.prefix))
        self._use_placement()
        now = time.monotonic()
        leftover: list[Instance] = []
        with self.lock:
            for rec in sorted(old.instances, key=lambda r: r.index):
                inst = self.instances.instance(rec)
                if rec.state == "draining":  # an interrupted scale-down: finish it
                    inst.held = True
                    leftover.append(inst)
                    continue
                if rec.state == "failed":
                    inst.resume_retry(now)
                elif rec.state == "stopped":
                    pass
                elif inst.handle is not None:
                    log(f"adopted instance {rec.index} (pid {rec.pid}, port {rec.port}, {rec.state})")
                else:
                    log(f"instance {rec.index} is gone: starting it again")
                    rec.pid = None
                    rec.state = "restarting"
                    inst.next_start = now
                self.instances.items.append(inst)
            self.state.instances = [i.rec for i in self.instances.items]
            ng = old.nginx.ref(old.owner)
            if ng is not None and ng.alive():  # its pid names our NGINX, started when recorded
                self.door.adopt(ng)
            self.save()
        self.instances.stop(leftover)

    def _use_placement(self) -> None:
        """Instances through the placement of the fleet's engine, each requiring the fleet's internal key
        (in its environment), which NGINX and the probes send."""
        self.internal_key = keys.ensure_internal_key(self.dir)
        self.instances.use(placement.for_fleet(self.spec, self.dir, self.internal_key), api_key=self.internal_key)

    # ------------------------------------------------------------------------------------ state file

    def save(self) -> None:
        with self.lock:
            self.state.instances = [i.rec for i in self.instances.sorted()]
            try:
                st_mod.write_state(self.dir, self.state)
                self.dirty = False
            except OSError as exc:  # disk full: the fleet keeps running; the next tick tries again
                if not self.dirty:
                    log(f"cannot write the state file: {exc}")
                self.dirty = True

    # ------------------------------------------------------------------------------------ watching

    def tick(self) -> None:
        now = time.monotonic()
        with self.lock:
            if self.shutting_down:
                return
            changed = self.instances.tick(now)
            changed |= self.door.tick(now)
            changed |= self._advance_phase()
            if changed or self.dirty:
                self.save()

    def _advance_phase(self) -> bool:
        if self.phase != "starting":
            return False
        insts = self.instances.items
        states = [i.rec.state for i in insts]
        if not self.adopting and "failed" in states:
            bad = next(i.rec for i in insts if i.rec.state == "failed")
            self.phase = "failed"
            self.state.status = "failed"
            self.state.error = f"instance {bad.index} (port {bad.port}) failed to start: {bad.last_error}"
            return True
        if any(s in ("starting", "restarting") for s in states):
            return False
        if not self.door.wanted:
            if not self.adopting or not any(i.rec.in_upstream for i in insts):
                for i in insts:
                    i.rec.in_upstream = i.rec.state == "ready"
            if not self.door.start():
                if not self.adopting:
                    self.phase = "failed"
                    self.state.status = "failed"
                    self.state.error = f"nginx did not start: {self.state.nginx.config_error}"  # type: ignore[union-attr]
                    return True
                self.door.wanted = True  # adopted fleet: keep serving, the watch loop retries NGINX
        self.phase = "running"
        self.state.status = "running"
        log("fleet running")
        return True

    def housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last_housekeeping < 1.0:
            return
        self._last_housekeeping = now
        self.instances.rotate_logs()
        st_mod.rotate_log(st_mod.supervisor_log_path(self.dir), LOG_MAX_BYTES)
        self.door.housekeeping()

    def shutdown(self, timeout: float = STOP_TIMEOUT_S, keep_state: bool = False) -> None:
        """Stop NGINX and every instance, then remove the runtime files (unless `keep_state`)."""
        with self.lock:
            self.shutting_down = True
            self.state.status = "stopping" if not keep_state else self.state.status
            for i in self.instances.items:
                i.held = True
            self.save()
        log("stopping the fleet")
        with self.lock:
            self.door.stop(timeout)
        self.instances.stop(list(self.instances.items), timeout=timeout)
        try:  # what the instances held (Ray placement groups) goes with them
            self.instances.placement.release([i.rec.index for i in self.instances.items])
        except Exception as exc:  # the cluster is gone: `fleet down` clears what it can reach
            log(f"could not release the fleet's placement: {type(exc).__name__}: {exc}")
        with self.lock:
            if keep_state:
                self.save()
            else:
                st_mod.remove_runtime_files(self.dir)
        log("fleet stopped")

    # ------------------------------------------------------------------------------------ main loop

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.term_requested = True
        self.exit_event.set()

    def _start_serving(self) -> None:
        self._control = ControlServer(st_mod.control_path(self.dir), self.ops.dispatch,
                                      self.exit_event, lambda: self.exit_after_reply,
                                      str(st_mod.supervisor_log_path(self.dir)))
        self._control.open()
        threading.Thread(target=HangWatch(self.instances).loop, args=(self.exit_event,), name="liveness",
                         daemon=True).start()
        if self.instances.placement.starts_in_background:  # remote instances: clients read what we see
            threading.Thread(target=Publisher(self.instances, self.dir).run, args=(self.exit_event,),
                             name="publisher", daemon=True).start()
        if self.spec.metrics_listen:
            self._start_metrics()

    def _start_metrics(self) -> None:
        """The Prometheus listener; a fleet whose metrics address is taken keeps serving without it."""
        from llama_tui.core.fleet.metrics_server import MetricsListener  # (imports prometheus_client)

        listener = MetricsListener(self.dir, self.spec.metrics_listen, lambda: self.door.totals,
                                   public=self.spec.metrics_public)
        try:
            listener.start()
            self.metrics = listener
        except OSError as exc:
            log(f"cannot serve metrics on {self.spec.metrics_listen}: {exc}; the fleet runs without them")

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
        self._start_serving()
        self.save()
        log(f"supervising {len(self.instances.items)} instances in {self.dir} (control: {self.state.control})")
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
                busy = (any(i.rec.state in ("starting", "restarting") for i in self.instances.items)
                        or self.phase == "starting")
            self.exit_event.wait(0.1 if busy else 0.5)
        if self._control is not None:
            self._control.close()
        if self.metrics is not None:
            self.metrics.close()
        self.instances.close()
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
