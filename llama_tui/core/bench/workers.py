"""Load-worker processes: each runs its share of every step on its own event loop (and core) and sends
back its raw samples, which the parent merges exactly.

The pipe protocol, one JSON object per line (`core.childproc`'s wire):
- parent -> worker: {"cmd": "step", "targets": [...], "shape": {...}, "plan": {...}} runs a step;
  {"cmd": "window", "t_window": T, "t_end": T} opens a gated step's window; {"cmd": "release"} ends
  the hold after it; {"cmd": "stop"} ends a running step early; {"cmd": "exit"} or end of input exits.
- worker -> parent: {"t": "live", "live": LiveCounters} every 0.5 s, then {"t": "partial", "partial": ...}
  (a StepPartial), or {"t": "error", "error": "..."}.

Entry point: `python -m llama_tui.core.bench.workers` (what `WorkerPool` starts).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from llama_tui.core import paths
from llama_tui.core.bench.runner import StepRunner
from llama_tui.core.bench.step import LiveCounters, StepPartial, StepPlan
from llama_tui.core.bench.target import Target
from llama_tui.core.bench.workload import RequestShape
from llama_tui.core.childproc import json_lines, write_line
from llama_tui.core.errors import UserError

if TYPE_CHECKING:
    from llama_tui.core.bench.steady import StepWindow

WORKER_COMMAND = [sys.executable, "-m", "llama_tui.core.bench.workers"]


def worker_main() -> int:
    """A load worker: reads one JSON command per line on stdin, writes JSON lines on stdout (see the
    module's docstring); end of input exits, so a worker never outlives its parent's pipe."""
    lock = threading.Lock()
    current: dict[str, Any] = {}

    def live(c: LiveCounters) -> None:
        with lock:
            write_line(sys.stdout.buffer, {"t": "live", "live": asdict(c)})

    def run_step(runner: StepRunner) -> None:
        try:
            part = asyncio.run(runner.run())
            with lock:
                write_line(sys.stdout.buffer, {"t": "partial", "partial": part.to_json()})
        except Exception as exc:  # report, do not die silently
            with lock:
                write_line(sys.stdout.buffer, {"t": "error", "error": f"{type(exc).__name__}: {exc}"})
        finally:
            current.pop("runner", None)

    thread: threading.Thread | None = None
    for cmd in json_lines(sys.stdin.buffer):
        what = cmd.get("cmd")
        if what == "step":
            if thread is not None:
                thread.join()
            try:  # made here, so a window or release that follows at once finds it
                runner = StepRunner([Target(**t) for t in cmd["targets"]], RequestShape(**cmd["shape"]),
                                    StepPlan(**cmd["plan"]), live)
            except Exception as exc:
                with lock:
                    write_line(sys.stdout.buffer, {"t": "error", "error": f"{type(exc).__name__}: {exc}"})
                continue
            current["runner"] = runner
            thread = threading.Thread(target=run_step, args=(runner,), daemon=True)
            thread.start()
        elif what in ("stop", "window", "release"):
            runner = current.get("runner")
            if runner is None:
                continue
            if what == "stop":
                runner.request_stop()
            elif what == "window":
                runner.set_window(float(cmd["t_window"]), float(cmd["t_end"]))
            else:
                runner.release()
        elif what == "exit":
            break
    runner = current.get("runner")
    if runner is not None:
        runner.request_stop()
    if thread is not None:
        thread.join(timeout=5)
    return 0


class WorkerPool:
    """N load-worker processes (`python -m llama_tui.core.bench.workers`), kept across steps."""

    def __init__(self, n: int) -> None:
        self.procs: list[subprocess.Popen] = []
        self.lines: queue.Queue = queue.Queue()
        env = paths.owner_env()
        try:
            for i in range(n):
                p = subprocess.Popen(WORKER_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env)
                self.procs.append(p)
                threading.Thread(target=self._reader, args=(i, p), daemon=True).start()
        except OSError as exc:
            self.close()
            raise UserError(f"cannot start load workers: {exc}", "use --workers 1") from None

    def _reader(self, i: int, p: subprocess.Popen) -> None:
        assert p.stdout is not None
        for msg in json_lines(p.stdout):
            self.lines.put((i, msg))
        err = p.stderr.read().decode(errors="replace")[-500:] if p.stderr else ""
        self.lines.put((i, {"t": "eof", "stderr": err}))

    def send(self, i: int, cmd: dict[str, Any]) -> None:
        p = self.procs[i]
        assert p.stdin is not None
        try:
            write_line(p.stdin, cmd)
        except (BrokenPipeError, OSError):
            pass

    def run(self, targets: list[Target], shape: RequestShape, plans: list[StepPlan], window: "StepWindow",
            stop: threading.Event | None) -> StepPartial:
        for i, plan in enumerate(plans):
            self.send(i, {"cmd": "step", "targets": [asdict(t) for t in targets], "shape": asdict(shape),
                          "plan": asdict(plan)})
        parts: dict[int, StepPartial] = {}
        stop_sent = release_sent = False
        live = window.live
        next_emit = time.monotonic() + 0.5
        while len(parts) < len(plans):
            try:
                i, msg = self.lines.get(timeout=max(0.01, next_emit - time.monotonic()))
            except queue.Empty:
                msg = None
            if msg is not None:
                kind = msg.get("t")
                if kind == "live":
                    opened = window.observe(LiveCounters(**msg["live"]))
                    if opened is not None:
                        for j in range(len(plans)):
                            self.send(j, {"cmd": "window", "t_window": opened[0], "t_end": opened[1]})
                elif kind == "partial":
                    parts[i] = StepPartial.from_json(msg["partial"])
                elif kind == "error":
                    raise UserError(f"load worker {i} failed: {msg.get('error')}", "run with --workers 1",
                                    exit_code=1)
                elif kind == "eof" and i not in parts and i < len(plans):
                    raise UserError(f"load worker {i} exited: {msg.get('stderr') or 'no output'}",
                                    "run with --workers 1", exit_code=1)
            now = time.monotonic()
            if now >= next_emit:
                live.emit(now)
                next_emit = now + 0.5
            if window.released.is_set() and not release_sent:
                release_sent = True
                for j in range(len(plans)):
                    self.send(j, {"cmd": "release"})
            if stop is not None and stop.is_set() and not stop_sent:
                stop_sent = True
                for j in range(len(plans)):
                    self.send(j, {"cmd": "stop"})
        merged = StepPartial()
        for i in sorted(parts):
            merged.merge(parts[i])
        return merged

    def close(self) -> None:
        for i in range(len(self.procs)):
            self.send(i, {"cmd": "exit"})
        for p in self.procs:
            with contextlib.suppress(OSError):
                if p.stdin:
                    p.stdin.close()
        deadline = time.monotonic() + 3
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        self.procs = []

def main() -> int:
    # Ctrl-C reaches the whole foreground group: the parent stops its workers over the pipe instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        return worker_main()
    return 130


if __name__ == "__main__":
    raise SystemExit(main())
