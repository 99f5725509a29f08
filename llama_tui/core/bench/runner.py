"""The step runner: one worker's share of a step (closed loop at a concurrency, or open-loop Poisson
arrivals at a rate) on one asyncio event loop, returning a mergeable `StepPartial`. Worker processes
(`core/bench/workers.py`) each run one; `run_plan` runs one from synchronous code.

- A request that fails before any response byte arrived (connection refused, reset or closed) is
  retried once on a fresh connection and counted in `reconnects`, not in errors.
- A closed-loop stream whose request failed within 50 ms waits 50 ms before the next one, so a target
  that refuses everything is not hammered in a tight loop (the errors are still counted).
- At the window's end a closed loop cancels what is in flight (the tally keeps what it received
  inside the window); an open loop awaits the requests sent inside the window, up to the drain time.
- A gated plan's window opens when the parent says so (`set_window`: after its warm-up reached a
  steady state); with `hold_s` the load stays on after the window until the parent releases it
  (`release`: the servers' counters have been read at the window's end), so the servers decode at the
  same pace on both sides of that read.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl as ssl_module
import threading
import time
from typing import Any, Callable

from llama_tui.core.bench.client import Exchange
from llama_tui.core.bench.step import LiveCounters, StepPartial, StepPlan
from llama_tui.core.bench.tally import Tally
from llama_tui.core.bench.target import Target, is_loopback
from llama_tui.core.bench.traffic import make_traffic
from llama_tui.core.bench.workload import RequestShape
from llama_tui.core.errors import UserError

monotonic = time.monotonic


class StepRunner:
    """Runs one StepPlan on the current event loop. `request_stop()` may be called from any thread."""

    TICK_S = 0.5
    LAG_PERIOD_S = 0.01

    def __init__(self, targets: list[Target], shape: RequestShape, plan: StepPlan,
                 on_live: Callable[[LiveCounters], None] | None = None) -> None:
        if not targets:
            raise UserError("no target URL", "pass --url http://HOST:PORT")
        self.targets = targets
        self.shape = shape
        self.plan = plan
        self.on_live = on_live
        self.tally = Tally(targets, shape, plan)
        self.traffic = make_traffic(shape, plan.seed, plan.worker, plan.workers)
        self.heads = [shape.head(t) for t in targets]
        self.peak_inflight = 0
        self.inflight: set[Exchange] = set()
        self.tasks: set[asyncio.Task] = set()
        self.arrivals: dict[asyncio.Task, float] = {}  # open loop: pending arrival -> intended time
        self.stopping = False
        self.drain_expired = False
        self._rr = plan.target_offset
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_evt: asyncio.Event | None = None
        self._window_evt: asyncio.Event | None = None
        self._release_evt: asyncio.Event | None = None
        self._early: list[tuple[Callable[..., None], tuple]] = []  # calls made before the loop ran
        self._early_lock = threading.Lock()
        self._addrs: list[tuple[str, int]] = []
        self._ssl: list[ssl_module.SSLContext | None] = []

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    # -- requests

    def _next_target(self) -> int:
        i = self._rr % len(self.targets)
        self._rr += 1
        return i

    async def _request(self, intended: float) -> None:
        ti = self._next_target()
        target = self.targets[ti]
        host, port = self._addrs[ti]
        turn = self.traffic.next_now() or await self.traffic.next()
        payload = self.shape.frame(self.heads[ti], turn.body, turn.extra)
        self.tally.part.requests_started += 1
        reconnects = 0
        ex: Exchange | None = None
        keep_text = turn.conversation is not None
        try:
            for attempt in (0, 1):
                ex = Exchange(self.tally, self.loop, payload, intended, ti, keep_text)
                ex.reconnects = reconnects
                self.inflight.add(ex)
                if len(self.inflight) > self.peak_inflight:
                    self.peak_inflight = len(self.inflight)
                try:
                    try:
                        async with asyncio.timeout(self.shape.connect_timeout_s):
                            await self.loop.create_connection(lambda ex=ex: ex, host, port, ssl=self._ssl[ti],
                                                              server_hostname=target.host if self._ssl[ti] else None)
                    except (OSError, TimeoutError, ssl_module.SSLError) as exc:
                        ex.fail("noresponse", f"cannot connect to {target.netloc}: {exc or type(exc).__name__}")
                    await ex.done
                finally:
                    self.inflight.discard(ex)
                if ex.error == "noresponse" and attempt == 0 and not self.stopping:
                    reconnects += 1
                    continue
                break
        except asyncio.CancelledError:
            if ex is not None and not ex.finished:
                late = self.drain_expired and self.tally.tw <= ex.intended < self.tally.te
                ex.fail("timeout" if late else "cancelled",
                         "not finished within the drain time" if late else "in flight when the step ended")
            if ex is not None:
                ex.reconnects = reconnects
                self.tally.finish(ex)
            self.traffic.finished(turn, ex)
            raise
        assert ex is not None
        if ex.error == "noresponse":
            ex.error = "connect"
        ex.reconnects = reconnects
        self.tally.finish(ex)
        self.traffic.finished(turn, ex)

    async def _closed_stream(self) -> None:
        while not self.stopping:
            t0 = monotonic()
            ex_errors = self.tally.live_errors
            await self._request(t0)
            if self.tally.live_errors != ex_errors and monotonic() - t0 < 0.05:
                await asyncio.sleep(0.05)  # do not spin on a target that refuses at once

    async def _open_arrival(self, intended: float, sem: asyncio.Semaphore) -> None:
        try:
            await sem.acquire()
        except asyncio.CancelledError:  # still queued in the client when the step ended
            if self.drain_expired and self.tally.tw <= intended < self.tally.te:
                self.tally.part.error("timeout", "queued in the client (in-flight cap) past the drain time")
            else:
                self.tally.part.cancelled += 1
            raise
        try:
            await self._request(intended)
        finally:
            sem.release()

    async def _open_scheduler(self) -> None:
        rng = random.Random(self.plan.seed)
        sem = asyncio.Semaphore(self.plan.max_inflight)
        t = self.plan.t_start
        rate = self.plan.rate
        while not self.stopping:
            t += rng.expovariate(rate)
            if t >= self.tally.te:
                break
            delay = t - monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.stopping:
                break
            task = self.loop.create_task(self._open_arrival(t, sem))
            self.tasks.add(task)
            self.arrivals[task] = t
            task.add_done_callback(self._arrival_done)

    def _arrival_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        self.arrivals.pop(task, None)

    # -- the clock

    async def _lag_probe(self) -> None:
        period = self.LAG_PERIOD_S
        tally = self.tally
        while True:
            t0 = monotonic()
            await asyncio.sleep(period)
            t1 = monotonic()
            if tally.tw <= t1 < tally.te and not tally.window_closed:
                tally.part.loop_lag.add(max(0.0, t1 - t0 - period))

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.TICK_S)
            now = monotonic()
            timeout = self.shape.timeout_s
            for ex in list(self.inflight):
                if now - ex.last_activity > timeout:
                    ex.fail("timeout", f"nothing received for {timeout:g} s")
            self.emit_live(now)

    def emit_live(self, now: float | None = None) -> None:
        if self.on_live is None:
            return
        tally = self.tally
        new, tally.ttft_new = tally.ttft_new, []
        e2e, tally.e2e_new = tally.e2e_new, []
        self.on_live(LiveCounters(self.plan.worker, now or monotonic(), tally.live_tokens, len(self.inflight),
                                  tally.live_done, tally.live_errors, new, self.peak_inflight, e2e))

    def request_stop(self) -> None:
        """End the step now (thread-safe): the window closes early and in-flight requests are cancelled."""
        loop, evt = self._loop, self._stop_evt
        if loop is None or evt is None:
            self.stopping = True
            return
        loop.call_soon_threadsafe(evt.set)

    def set_window(self, t_window: float, t_end: float) -> None:
        """Open a gated plan's window at `t_window` (thread-safe; a second call is ignored)."""
        self._call(self._set_window, t_window, t_end)

    def release(self) -> None:
        """End the hold after the window (thread-safe)."""
        self._call(lambda: self._release_evt.set() if self._release_evt is not None else None)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        with self._early_lock:
            loop = self._loop
            if loop is None:
                self._early.append((fn, args))
                return
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: the step is over
                loop.call_soon_threadsafe(fn, *args)

    def _set_window(self, t_window: float, t_end: float) -> None:
        assert self._window_evt is not None
        if self._window_evt.is_set():
            return
        self.tally.set_window(t_window, t_end)
        delay = t_window - monotonic()
        if delay <= 0:
            self.tally.open_window()
        else:
            self.loop.call_later(delay, self.tally.open_window)
        self._window_evt.set()

    async def _wait_until(self, t: float, evt: asyncio.Event | None = None) -> None:
        """Sleep until `t`, or until the step is stopped (or `evt` is set)."""
        assert self._stop_evt is not None
        delay = t - monotonic()
        if delay <= 0 or self._stop_evt.is_set() or (evt is not None and evt.is_set()):
            return
        waits = [asyncio.ensure_future(self._stop_evt.wait())]
        if evt is not None:
            waits.append(asyncio.ensure_future(evt.wait()))
        try:
            await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def _resolve(self) -> None:
        for t in self.targets:
            host = t.host
            try:
                infos = socket.getaddrinfo(host, t.port, type=socket.SOCK_STREAM)
                host = infos[0][4][0] if infos else host
            except OSError:
                pass  # connecting will report it
            self._addrs.append((host, t.port))
            if t.scheme == "https":
                ctx = ssl_module.create_default_context()
                if is_loopback(t.host):
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl_module.CERT_NONE
                self._ssl.append(ctx)
            else:
                self._ssl.append(None)

    async def run(self) -> StepPartial:
        self._stop_evt = asyncio.Event()
        self._window_evt = asyncio.Event()
        self._release_evt = asyncio.Event()
        with self._early_lock:
            self._loop = asyncio.get_running_loop()
            early, self._early = self._early, []
        if self.stopping:
            self._stop_evt.set()
        self._resolve()
        loop = self.loop
        plan = self.plan
        if not plan.gated:
            self._set_window(plan.t_window, plan.t_end)
        for fn, args in early:
            fn(*args)
        helpers = [loop.create_task(self._ticker()), loop.create_task(self._lag_probe())]
        try:
            await self._wait_until(plan.t_start)
            if plan.mode == "closed":
                for _ in range(plan.concurrency):
                    task = loop.create_task(self._closed_stream())
                    self.tasks.add(task)
            else:
                scheduler = loop.create_task(self._open_scheduler())
                self.tasks.add(scheduler)
            if plan.gated:  # the parent opens the window (a no-op then); at the latest at the planned time
                await self._wait_until(plan.t_window, self._window_evt)
                now = monotonic()
                self._set_window(now, now + plan.t_end - plan.t_window)
            await self._wait_until(self.tally.te)
            if monotonic() < self.tally.tw:  # stopped during warm-up
                self.tally.open_window()
            self.tally.close_window()
            if plan.mode == "open" and not self._stop_evt.is_set():
                scheduler.cancel()
                self.tasks.discard(scheduler)
                await self._drain(self.tally.te + plan.drain_s)
            if plan.hold_s > 0:
                await self._wait_until(self.tally.te + plan.hold_s, self._release_evt)
            self.stopping = True
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
        finally:
            self.stopping = True
            for h in helpers:
                h.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            for ex in list(self.inflight):
                ex.fail("cancelled", "step ended")
        self.emit_live()
        return self.tally.part

    async def _drain(self, deadline: float) -> None:
        """Open loop: wait until every request sent inside the window has finished (or the deadline)."""
        assert self._stop_evt is not None
        while not self._stop_evt.is_set():
            tw, te = self.tally.tw, self.tally.te
            if not any(not t.done() and tw <= i < te for t, i in self.arrivals.items()):
                return
            left = deadline - monotonic()
            if left <= 0:
                self.drain_expired = True
                return
            await asyncio.sleep(min(0.05, left))


def run_plan(targets: list[Target], shape: RequestShape, plan: StepPlan,
             on_live: Callable[[LiveCounters], None] | None = None,
             runner_ready: Callable[[StepRunner], None] | None = None) -> StepPartial:
    """Run one plan to completion from synchronous code (a fresh event loop; a helper thread when the
    caller's thread already runs one)."""
    runner = StepRunner(targets, shape, plan, on_live)
    if runner_ready is not None:
        runner_ready(runner)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(runner.run())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = asyncio.run(runner.run())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target, name="llama-tui-loadgen", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["result"]
