"""The supervisor's instances: start them, notice crashes and hangs, restart them, stop them.

- an instance that exits is restarted on the same port after an exponential backoff (0.5 s, 1 s,
  2 s ... 30 s); one that cannot start (it exits before it was ever ready twice, or, after it once
  was, `CRASH_LIMIT` times in a row), or that crashes `CRASH_LIMIT` times within `CRASH_WINDOW_S`,
  is marked `failed` with the tail of its log, and leaves NGINX's upstream;
- except the last serving one: an instance that crashes while it serves (a request may have crashed
  it) is never marked failed while no other instance serves; it is restarted (backoff up to 30 s),
  so requests cannot take the whole fleet down for good while the model itself starts;
- a crashed instance leaves NGINX's upstream while others serve, and rejoins once ready (nobody
  else's process on its free port gets requests meanwhile);
- a failed instance is tried again after a cool-down (`FAILED_COOLDOWN_S`, doubling up to
  `FAILED_COOLDOWN_MAX_S`) once the fleet runs: one start (half-open); ready, it rejoins NGINX;
  exiting before ready, it is failed again with the new log tail;
- a ready instance that answers no /health probe for `HANG_S` while using almost no CPU (stopped,
  deadlocked) is killed, and so restarted like a crash; a busy one (CPU in use) is left alone.

`Instances` works under the supervisor's lock (`sup.lock`) and reads the supervisor's current spec,
so a scale or policy change is seen at once. It starts, watches and stops instances only through the
placement seam (`placement.Placement`): an instance is a handle and an endpoint, not a local pid.
"""

from __future__ import annotations

import collections
import os
import signal
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from llama_tui.core import hardware
from llama_tui.core.errors import UserError
from llama_tui.core.fleet import state as st_mod
from llama_tui.core.fleet.monitor import Monitor
from llama_tui.core.fleet.placement import Endpoint, InstanceHandle, Placement, PlacementError, endpoint_of
from llama_tui.core.fleet.state import InstanceState, log
from llama_tui.core.probe import health

if TYPE_CHECKING:
    from llama_tui.core.fleet.supervisor import Supervisor

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
FAILED_COOLDOWN_S = float(os.environ.get("LLAMA_TUI_FAILED_COOLDOWN_S", "60"))  # first retry of a failed instance
FAILED_COOLDOWN_MAX_S = 600.0
CRASH_WINDOW_S = 60.0
START_ATTEMPTS = 2  # an instance that never got ready is failed after this many exits
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
STOP_TIMEOUT_S = 10.0
LOG_MAX_BYTES = int(os.environ.get("LLAMA_TUI_LOG_MAX_BYTES", str(8 << 20)))


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

    def __init__(self, rec: InstanceState, placement: Placement, handle: InstanceHandle | None = None) -> None:
        self.rec = rec
        self.placement = placement
        self.handle = handle  # None: not running (never started, stopped, or gone)
        self.spawned = time.monotonic()
        self.crashes: collections.deque[float] = collections.deque()
        self.ever_ready = rec.ready_at is not None
        self.start_failures = 0  # exits before it got ready, since it last was
        self.next_start: float | None = None  # waiting out a backoff
        self.retry_at: float | None = None  # failed: when it is tried again (half-open)
        self.cooldown = FAILED_COOLDOWN_S  # the next cool-down after a failure
        self.probing = False  # this start is a failed instance's retry: one try only
        self.rejoin = False  # joins NGINX's upstream once ready (it left it when it failed)
        self.squatted_noted = False
        self.held = False  # an operation (scale, restart, down) controls it; the watch loop keeps off
        self.pending: Future[InstanceHandle] | None = None  # a start in a worker thread (a remote placement)
        self.liveness = Liveness()
        self.hung_note: str | None = None  # why the supervisor killed it, for the restart's last_error

    def alive(self) -> bool:
        return self.handle is not None and self.placement.poll(self.handle) is None

    def forget_failures(self) -> None:
        """A fresh start on request (`fleet restart`): no crash history, no pending retry."""
        self.crashes.clear()
        self.start_failures = 0
        self.ever_ready = False
        self.rec.last_error = None
        self.retry_at = self.rec.retry_at = None
        self.probing = self.rejoin = False
        self.cooldown = FAILED_COOLDOWN_S

    def resume_retry(self, now: float) -> None:
        """An adopted failed instance keeps the retry time its record names (or gets a full cool-down)."""
        left = self.rec.retry_at - time.time() if self.rec.retry_at else self.cooldown
        self.retry_at = now + max(0.0, min(left, FAILED_COOLDOWN_MAX_S))


class BackgroundStarts:
    """The starts of a placement that starts in the background (a remote one): each in a worker thread,
    off the supervisor's lock; `Instances.tick` collects them."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None

    def submit(self, placement: Placement, inst: Instance, restart: bool) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="llama-tui-start")
        inst.spawned = time.monotonic()
        inst.pending = self._pool.submit(placement.start, inst.rec, restart)

    @staticmethod
    def result(inst: Instance) -> InstanceHandle | PlacementError | None:
        """The started instance's handle, or why it did not start; None while it is starting."""
        pending = inst.pending
        if pending is None or not pending.done():
            return None
        inst.pending = None
        try:
            return pending.result()
        except PlacementError as exc:
            return exc
        except Exception as exc:  # a bug or a lost cluster: the instance cannot start
            return PlacementError(f"{type(exc).__name__}: {exc}")

    @staticmethod
    def abandon(placement: Placement, insts: list[Instance], timeout: float) -> list[InstanceHandle]:
        """Cancel the starts still in progress; the handles of those that finished anyway (to stop)."""
        pending = [i for i in insts if i.pending is not None]
        cancel = getattr(placement, "cancel", None)
        for i in pending:
            if cancel is not None:
                cancel(i.rec.index)
        out = []
        for i in pending:
            fut, i.pending = i.pending, None
            try:
                out.append(fut.result(timeout=timeout))  # type: ignore[union-attr]
            except Exception:
                pass  # it did not start: nothing to stop
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class Instances:
    """Every instance of the fleet (`items`), as the supervisor's watch loop and operations see them.
    `placement` starts, watches and stops them (set once the supervisor knows its spec)."""

    def __init__(self, sup: "Supervisor") -> None:
        self.sup = sup
        self.items: list[Instance] = []
        self.placement: Placement
        self._mon: Monitor | None = None
        self._starts = BackgroundStarts()

    def use(self, placement: Placement, api_key: str | None = None) -> None:
        """`api_key`: the fleet's internal key, for /slots and /metrics (`busy`)."""
        self.placement = placement
        self._mon = Monitor(http_timeout=1.0, placement=placement, api_key=api_key)

    def close(self) -> None:
        self._starts.close()
        if self._mon is not None:  # (set with the placement)
            self._mon.close()
            self.placement.close()

    def instance(self, rec: InstanceState) -> Instance:
        """The supervisor's view of a recorded instance, attached to its process when that still runs."""
        return Instance(rec, self.placement, self.placement.attach(rec))

    def sorted(self) -> list[Instance]:
        return sorted(self.items, key=lambda x: x.rec.index)

    def new(self, indices: range | list[int], threads: int) -> list[Instance]:
        """Records for new instances; with `pin_cpus`, each gets physical cores no other instance holds."""
        spec = self.sup.spec
        taken = {c for i in self.items for c in (i.rec.cpus or ())}
        out = []
        for index in indices:
            cpus = None
            if spec.pin_cpus:
                cpus = hardware.allocate_cores(threads, taken)
                if cpus is None:
                    free = len(hardware.core_groups()) - sum(1 for g in hardware.core_groups() if taken & set(g))
                    raise UserError(f"--pin-cpus: instance {index} needs {threads} physical core(s) of its own and "
                                    f"{free} of {len(hardware.core_groups())} are free",
                                    "scale to fewer instances, or restart the fleet without --pin-cpus")
                taken.update(cpus)
            port = 0 if self.placement.starts_in_background else spec.port_of(index)  # 0: its node picks one
            rec = InstanceState(index=index, port=port, threads=threads,
                                log_path=str(st_mod.instance_log_path(self.sup.dir, index)), gpu=spec.gpu_of(index),
                                cpus=list(cpus) if cpus else None,
                                cmd=spec.command(self.sup.state.llama_server or "llama-server", index, threads))
            out.append(Instance(rec, self.placement))
        return out

    # ------------------------------------------------------------------------------------ processes

    def spawn(self, inst: Instance, restart: bool = False) -> None:
        rec = inst.rec
        rec.cmd = self.sup.spec.command(self.sup.state.llama_server or "llama-server", rec.index, rec.threads)
        inst.next_start = None
        rec.ready_at = None
        rec.exit_code = None
        if restart:
            rec.restarts += 1
            rec.state = "restarting"
        else:
            rec.state = "starting"
        if self.placement.starts_in_background:  # `tick` collects the handle (or the error) when it comes
            self._starts.submit(self.placement, inst, restart)
            return
        try:
            handle = self.placement.start(rec, restart=restart)
        except PlacementError as exc:
            self._start_failed(inst, exc)
            return
        self._started(inst, handle)

    def _started(self, inst: Instance, handle: InstanceHandle) -> None:
        rec = inst.rec
        inst.handle = handle
        inst.spawned = time.monotonic()
        rec.pid = handle.pid
        rec.pid_started = handle.started
        rec.host = handle.endpoint.host
        rec.port = handle.endpoint.port  # a remote placement picks the port on its node
        rec.node = handle.endpoint.node
        rec.started_at = time.time()

    def _start_failed(self, inst: Instance, exc: PlacementError) -> None:
        rec = inst.rec
        rec.state = "failed"
        rec.last_error = str(exc)
        rec.pid = None
        log(f"instance {rec.index}: {rec.last_error}")
        self._leave_upstream(rec)

    def _collect(self, inst: Instance) -> bool:
        """Take the result of a start that ran in the background, once it is there."""
        got = self._starts.result(inst)
        if got is None:
            return False
        if isinstance(got, PlacementError):
            self._start_failed(inst, got)
            return True
        self._started(inst, got)
        log(f"instance {inst.rec.index} placed at {got.endpoint.host}:{got.endpoint.port} "
            f"(node {got.endpoint.node}, pid {got.pid})")
        return True

    def _release(self, inst: Instance, timeout: float) -> None:
        """Stop what is left of `inst` (nothing, after a crash) and forget its handle."""
        if inst.handle is not None:
            self.placement.stop([inst.handle], timeout=timeout)
        inst.handle = None
        inst.rec.pid = None

    def _leave_upstream(self, rec: InstanceState) -> None:
        if rec.in_upstream:
            rec.in_upstream = False
            self.sup.door.reload()

    def _serving_others(self, inst: Instance) -> bool:
        return any(o is not inst and o.rec.state == "ready" and o.rec.in_upstream and not o.held and o.alive()
                   for o in self.items)

    def _fail(self, inst: Instance, why: str, now: float) -> None:
        """Mark `inst` failed (it leaves NGINX) and schedule its retry after the cool-down."""
        rec = inst.rec
        rec.state = "failed"
        rec.last_error = why
        inst.probing = False
        inst.next_start = None
        inst.retry_at = now + inst.cooldown
        rec.retry_at = time.time() + inst.cooldown
        log(f"instance {rec.index} failed: {why}; trying it again in {inst.cooldown:.0f}s")
        inst.cooldown = min(FAILED_COOLDOWN_MAX_S, inst.cooldown * 2)
        self._leave_upstream(rec)

    def _retry_failed(self, inst: Instance) -> None:
        """A failed instance's cool-down is over: start it once (half-open)."""
        inst.crashes.clear()
        inst.start_failures = 0
        inst.retry_at = None
        inst.rec.retry_at = None
        inst.probing = inst.rejoin = True
        log(f"instance {inst.rec.index}: trying it again after its cool-down")
        self.spawn(inst, restart=True)

    def _crashed(self, inst: Instance, code: int | None, now: float) -> None:
        rec = inst.rec
        serving = rec.state == "ready"  # it exited while it served: a request may have crashed it
        self._release(inst, timeout=1)
        rec.exit_code = code
        inst.crashes.append(now)
        while inst.crashes and now - inst.crashes[0] > CRASH_WINDOW_S:
            inst.crashes.popleft()
        tail = st_mod.error_summary(rec.log_path)
        how, inst.hung_note = inst.hung_note or _exit_text(code), None
        if not serving:
            inst.start_failures += 1
        if inst.probing:
            self._fail(inst, f"{how} on its retry after a cool-down: {tail}", now)
            return
        cannot_start = inst.start_failures >= (CRASH_LIMIT if inst.ever_ready else START_ATTEMPTS)
        crash_loop = len(inst.crashes) >= CRASH_LIMIT
        if cannot_start or (crash_loop and not (serving and not self._serving_others(inst))):
            why = (f"{how} before it was ready ({inst.start_failures} attempts)" if cannot_start
                   else f"{how}; {len(inst.crashes)} crashes within {CRASH_WINDOW_S:.0f}s")
            self._fail(inst, f"{why}: {tail}", now)
            return
        if crash_loop:
            log(f"instance {rec.index} crashed {len(inst.crashes)} times within {CRASH_WINDOW_S:.0f}s but is the "
                "last serving instance: restarting it, not failing it")
        if rec.in_upstream and self._serving_others(inst):
            # Out of NGINX until it is ready again: while its port is free, another local process could
            # bind it and would receive requests (with the fleet's internal key).
            inst.rejoin = True
            self._leave_upstream(rec)
        elif self.placement.starts_in_background:
            self.sup.door.follow()  # its endpoint is gone (it comes back elsewhere): NGINX stops trying it
        delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (len(inst.crashes) - 1))
        rec.state = "restarting"
        rec.last_error = how if how.startswith("hung") else f"{how}: {tail}"  # a hung one's log says nothing
        inst.next_start = now + delay
        log(f"instance {rec.index} {how}; restarting on port {rec.port} in {delay:.1f}s")

    def stop(self, insts: list[Instance], timeout: float = STOP_TIMEOUT_S) -> None:
        started_anyway = self._starts.abandon(self.placement, insts, timeout)
        self.placement.stop([i.handle for i in insts if i.handle is not None] + started_anyway, timeout=timeout)
        with self.sup.lock:
            for i in insts:
                i.handle = None
                i.rec.pid = None
                if i.rec.state != "failed":  # a failed instance stays failed (with its error)
                    i.rec.state = "stopped"
                i.rec.in_upstream = False
                i.next_start = None

    # ------------------------------------------------------------------------------------ watching

    def tick(self, now: float) -> bool:
        """Restart what waited out its backoff, notice exits, promote instances that answer /health.
        Runs under the supervisor's lock; returns whether anything changed."""
        changed = False
        for inst in list(self.items):
            rec = inst.rec
            if rec.state == "failed" and not inst.held and inst.retry_at is not None and now >= inst.retry_at \
                    and self.sup.phase == "running":
                self._retry_failed(inst)
                changed = True
                continue
            if inst.held or rec.state in ("failed", "stopped"):
                continue
            if inst.pending is not None:
                changed |= self._collect(inst)
                continue
            if inst.next_start is not None:
                if now >= inst.next_start:
                    self.spawn(inst, restart=True)
                    changed = True
                continue
            gone = self.placement.poll(inst.handle) if inst.handle is not None else None
            if inst.handle is None or gone is not None:
                self._crashed(inst, gone.code if gone is not None else None, now)
                changed = True
                continue
            if rec.state in ("starting", "restarting"):
                changed |= self._check_started(inst, now)
        return changed

    def _check_started(self, inst: Instance, now: float) -> bool:
        rec = inst.rec
        code = health(*self.probe_address(inst), timeout=0.5)
        if code == 200 and inst.handle is not None and not self.placement.listens(inst.handle):
            if not inst.squatted_noted:  # someone else's process answers on its port: not ready, ever
                inst.squatted_noted = True
                log(f"instance {rec.index}: port {rec.port} answers, but not from the instance (another process "
                    "holds it); it does not join NGINX")
            code = None
        if code == 200:
            rec.state = "ready"
            rec.ready_at = time.time()
            rec.last_error = None if not rec.restarts else rec.last_error
            inst.ever_ready = True
            inst.start_failures = 0
            log(f"instance {rec.index} ready on port {rec.port} after {now - inst.spawned:.2f}s (pid {rec.pid})")
            if inst.probing:
                inst.probing, inst.cooldown = False, FAILED_COOLDOWN_S
            if inst.rejoin and not inst.held:
                inst.rejoin = False
                rec.in_upstream = True
                self.sup.door.reload()
            else:
                self.sup.door.follow()  # a re-placed remote instance serves elsewhere now
            return True
        ready_timeout = self.sup.spec.ready_timeout
        if now - inst.spawned <= ready_timeout:
            return False
        self._release(inst, timeout=3)
        self._fail(inst, f"not ready within {ready_timeout:.0f}s: {st_mod.error_summary(rec.log_path)}", now)
        return True

    def probe_address(self, inst: Instance) -> tuple[str, int]:
        """Where to probe an instance: its endpoint ("localhost" probed on 127.0.0.1)."""
        ep = self.endpoint(inst)
        return ("127.0.0.1" if ep.host == "localhost" else ep.host), ep.port

    def endpoint(self, inst: Instance) -> Endpoint:
        return inst.handle.endpoint if inst.handle is not None else endpoint_of(inst.rec, self.sup.spec.host)

    def rotate_logs(self) -> None:
        for inst in list(self.items):
            st_mod.rotate_log(Path(inst.rec.log_path), LOG_MAX_BYTES)

    # ------------------------------------------------------------------------------------ for operations

    def wait_ready(self, insts: list[Instance]) -> list[Instance]:
        """Wait until every instance is ready (the watch loop probes them); returns those that failed."""
        deadline = time.monotonic() + self.sup.spec.ready_timeout + 10
        while time.monotonic() < deadline and not self.sup.shutting_down:
            with self.sup.lock:
                failed = [i for i in insts if i.rec.state in ("failed", "stopped")]
                if failed:
                    return failed
                if all(i.rec.state == "ready" for i in insts):
                    return []
            time.sleep(0.05)
        return [i for i in insts if i.rec.state != "ready"]

    def busy(self, inst: Instance) -> bool:
        assert self._mon is not None
        host, port = self.probe_address(inst)
        ep = Endpoint(host, port)
        s = self._mon.servers([ep]).get(ep)
        if s is None or not s.reachable:
            return False
        return bool(s.requests_processing or s.requests_deferred or s.slots_busy)


class HangWatch:
    """The supervisor's hang check, in a thread of its own: every few seconds it probes each ready
    instance's /health (outside the lock) and kills one that is hung (see `Liveness`); the watch loop then
    restarts it like a crash."""

    def __init__(self, instances: Instances) -> None:
        self.instances = instances

    def check(self) -> None:
        """Probe every ready instance's /health (outside the lock); kill one that is hung (see Liveness)."""
        sup = self.instances.sup
        with sup.lock:
            if sup.shutting_down:
                return
            targets = [(i, i.handle) for i in self.instances.items
                       if i.rec.state == "ready" and not i.held and i.handle]
        timeout = min(2.0, HANG_S / 3)
        for inst, handle in targets:
            assert handle is not None
            answered = health(*self.instances.probe_address(inst), timeout=timeout) is not None
            verdict = inst.liveness.observe(time.monotonic(), answered, None if answered else self._cpu_seconds(handle))
            if verdict is None:
                continue
            kind, waited, used = verdict
            if kind == "busy":
                log(f"instance {inst.rec.index} answered no /health for {waited:.0f}s but used {used:.1f}s of CPU: "
                    "busy, not hung (its HTTP threads are taken by streams); left running")
                continue
            with sup.lock:
                if inst.handle != handle or inst.rec.state != "ready" or inst.held or sup.shutting_down:
                    continue
                inst.hung_note = (f"hung (no /health answer for {waited:.0f}s, {used:.2f}s of CPU meanwhile), "
                                  "killed by the supervisor")
                log(f"instance {inst.rec.index} (pid {handle.pid}) is {inst.hung_note}")
                self.instances.placement.kill(handle)  # the watch loop sees the exit and restarts it like a crash

    def _cpu_seconds(self, handle: InstanceHandle) -> float | None:
        st = self.instances.placement.stats([handle]).get(handle)
        return st.cpu_seconds if st is not None else None

    def loop(self, stop: threading.Event) -> None:
        while not stop.wait(min(2.0, HANG_S / 3)):
            try:
                self.check()
            except Exception:
                log(f"liveness check error:\n{traceback.format_exc()}")
