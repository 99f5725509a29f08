"""What one step counted: each exchange's tokens and latencies, sorted into the measured window.

The window is [t_window, t_end) on the machine-wide monotonic clock. A token counts toward throughput
when the read that delivered it falls inside the window; inter-token gaps count when their later
token does. The latency population is, in a closed loop, the requests that finished inside the
window; in an open loop, the requests whose intended start lies inside it. Latency is measured from
the request's intended start (open loop: its scheduled arrival), so a late send shows up as latency
instead of being omitted (coordinated omission).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from llama_tui.core.bench.step import StepPartial, StepPlan, upstream_entry
from llama_tui.core.bench.target import Target
from llama_tui.core.bench.workload import RequestShape

if TYPE_CHECKING:
    from llama_tui.core.bench.client import Exchange

monotonic = time.monotonic


class Tally:
    """One worker's counts for one step. The exchanges call `add_tokens`/`add_whole` as tokens arrive
    and `reads` per socket read; the runner calls `finish` once per exchange and opens/closes the window."""

    # Slots: the exchanges update these on every event.
    __slots__ = ('netlocs', 'chat', 'stream', 'open_loop', 'tw', 'te', 'part', 'window_closed', 'live_tokens',
                 'live_done', 'live_errors', 'ttft_new', 'e2e_new', 'events', 'reads', '_reads0', '_events0', '_cpu0')

    def __init__(self, targets: list[Target], shape: RequestShape, plan: StepPlan) -> None:
        self.netlocs = [t.netloc for t in targets]
        self.chat = shape.api == "chat"
        self.stream = shape.stream
        self.open_loop = plan.mode == "open"
        # A gated step's window is unknown until the parent opens it: nothing counts until then.
        self.tw = plan.t_window if not plan.gated else float("inf")
        self.te = plan.t_end if not plan.gated else float("inf")
        self.part = StepPartial()
        self.window_closed = False
        self.live_tokens = 0
        self.live_done = 0
        self.live_errors = 0
        self.ttft_new: list[float] = []
        self.e2e_new: list[float] = []
        self.events = 0
        self.reads = 0
        self._reads0 = 0
        self._events0 = 0
        self._cpu0: float | None = None

    # -- tokens, from the exchanges (the hot path)

    def add_tokens(self, ex: "Exchange", k: int, now: float) -> None:
        self.live_tokens += k
        self.events += 1
        inside = self.tw <= now < self.te
        if ex.t_first is None:
            ex.t_first = now
        elif inside:
            gap = (now - ex.t_last) / k
            itl = self.part.itl.values
            if k == 1:
                itl.append(gap)
            else:
                itl.extend((gap,) * k)
        if inside:
            ex.win_n += k
        ex.n += k
        ex.t_last = now

    def add_whole(self, ex: "Exchange", n: int, now: float) -> None:
        """A non-streamed response: all of its tokens arrive at once, at its end."""
        self.live_tokens += n
        self.events += 1
        ex.n = n
        if self.tw <= now < self.te:
            ex.win_n = n

    # -- one exchange's end

    def finish(self, ex: "Exchange") -> None:
        part = self.part
        t_end = ex.t_end if ex.t_end is not None else monotonic()
        ok = ex.error is None
        if self.chat and self.stream and ex.final_n is not None:
            # Chat chunks may carry several tokens: spread the server's count over the content chunks.
            if ex.n:
                win_tokens = ex.final_n * ex.win_n / ex.n
            else:
                win_tokens = float(ex.final_n) if self.tw <= t_end < self.te else 0.0
            received = ex.final_n
        else:
            win_tokens = float(ex.win_n)
            received = ex.n
        part.output_tokens += win_tokens
        part.tokens_received += received
        if win_tokens:
            self._upstream(ex)["output_tokens"] += win_tokens
        if ok:
            self.live_done += 1
        elif ex.error != "cancelled":
            self.live_errors += 1
        if ex.error != "cancelled":
            self.e2e_new.append(t_end - ex.intended)  # a lifetime, for the warm-up (core/bench/steady.py)
        if self.open_loop:
            in_pop = self.tw <= ex.intended < self.te
        else:
            in_pop = ex.error != "cancelled" and self.tw <= t_end < self.te
        if ex.error == "cancelled":
            part.cancelled += 1
            return
        if not in_pop:
            if not ok:
                part.errors_outside_window += 1
            return
        if not ok:
            part.error(ex.error or "unknown", ex.detail)
            self._upstream(ex)["errors"] += 1
            return
        part.requests_ok += 1
        part.reconnects += ex.reconnects  # it failed before any byte, then succeeded on a fresh connection
        self._upstream(ex)["requests_ok"] += 1
        e2e = t_end - ex.intended
        part.e2e.add(e2e)
        n = ex.final_n if ex.final_n is not None else ex.n
        if ex.t_first is not None and self.stream:
            ttft = ex.t_first - ex.intended
            part.ttft.add(ttft)
            self.ttft_new.append(ttft)
            if n >= 2:
                part.tpot.add((e2e - ttft) / (n - 1))
        if isinstance(ex.prompt_n, int):
            part.prompt_tokens += ex.prompt_n
        if isinstance(ex.cache_n, int):
            part.cache_n += ex.cache_n
            part.cache_reports += 1

    def _upstream(self, ex: "Exchange") -> dict[str, Any]:
        """Per-backend counters: NGINX's X-Upstream, else the target the request went to."""
        addr = ex.upstream or self.netlocs[ex.target_index]
        up = self.part.per_upstream.get(addr)
        if up is None:
            up = self.part.per_upstream[addr] = upstream_entry()
        return up


    # -- the window

    def set_window(self, tw: float, te: float) -> None:
        self.tw, self.te = tw, te

    def open_window(self) -> None:
        self._cpu0 = time.thread_time()
        self._events0 = self.events
        self._reads0 = self.reads

    def close_window(self) -> None:
        if self.window_closed:
            return
        self.window_closed = True
        now = monotonic()
        if now < self.te:
            self.te = max(now, self.tw)  # stopped early: the window ends now
        self.part.window_s = max(0.0, self.te - self.tw)
        if self._cpu0 is not None:
            self.part.worker_cpu_s.append(time.thread_time() - self._cpu0)
            self.part.worker_events.append(self.events - self._events0)
            self.part.window_reads += self.reads - self._reads0
        else:
            self.part.worker_cpu_s.append(0.0)
            self.part.worker_events.append(0)
