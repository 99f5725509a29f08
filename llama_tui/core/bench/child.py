"""A benchmark in a child process (what the TUI runs), and that child's side: both ends of its pipe.

The parent writes the `BenchConfig` as one JSON line on the child's stdin; any further line ("stop"),
or the pipe closing, ends the run after the current step's window. The child writes JSON lines on
stdout: {"t": "sample", "sample": BenchSample}, {"t": "step", "step": {...}}, then {"t": "result",
"result": {...}} or {"t": "error", "cause": ..., "fix": ...}.

Entry point: `python -m llama_tui.core.bench.child` (what `spawn` starts).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import orjson

from llama_tui.core import paths
from llama_tui.core.bench.config import BenchConfig
from llama_tui.core.bench.outputs import default_result_path, write_outputs
from llama_tui.core.bench.pipes import json_lines, write_line
from llama_tui.core.bench.session import run
from llama_tui.core.childproc import EventStream
from llama_tui.core.errors import UserError
from llama_tui.core.snapshots import BenchSample

CHILD_COMMAND = [sys.executable, "-m", "llama_tui.core.bench.child"]


class BenchProcess:
    """A benchmark running in a child process (own process group, LLAMA_TUI_OWNER set), streaming back
    JSON lines: samples, steps, then the result. The parent never shares an event loop or GIL with the load."""

    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self._samples: EventStream[BenchSample] = EventStream()
        self.steps: list[dict[str, Any]] = []
        self._result: dict[str, Any] | None = None
        self._error: UserError | None = None
        self._done = threading.Event()
        self._stderr: list[str] = []
        self.latest: BenchSample | None = None
        self.proc = subprocess.Popen(CHILD_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=paths.owner_env(), start_new_session=True)
        assert self.proc.stdin is not None
        write_line(self.proc.stdin, config.to_json())
        threading.Thread(target=self._read, daemon=True, name="llama-tui-bench-child").start()
        threading.Thread(target=self._read_err, daemon=True, name="llama-tui-bench-stderr").start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr = (self._stderr + [line.decode(errors="replace").rstrip()])[-20:]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for msg in json_lines(self.proc.stdout):
                kind = msg.get("t")
                if kind == "sample":
                    s = BenchSample(**msg["sample"])
                    self.latest = s
                    self._samples.put(s)
                elif kind == "step":
                    self.steps.append(msg["step"])
                elif kind == "result":
                    self._result = msg["result"]
                elif kind == "error":
                    self._error = UserError(msg.get("cause", "benchmark failed"), msg.get("fix", ""))
        finally:
            self.proc.wait()
            if self._result is None and self._error is None:
                tail = " | ".join(self._stderr[-3:])
                self._error = UserError(f"benchmark process exited with code {self.proc.returncode}"
                                        + (f": {tail}" if tail else ""), "see the message above")
            self._done.set()
            self._samples.close()

    def samples(self, timeout: float | None = None) -> Iterator[BenchSample]:
        """Live samples until the benchmark ends (blocks between them)."""
        return self._samples.iter(timeout)

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """The finished result ({"metadata", "steps", "out", ...}); raises UserError if the run failed."""
        if not self._done.wait(timeout):
            raise TimeoutError("benchmark still running")
        if self._result is None:
            assert self._error is not None
            raise self._error
        return self._result

    def stop(self) -> None:
        """Ask the child to end the current step now and return what it measured."""
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"stop\n")
            self.proc.stdin.flush()

    def cancel(self, timeout: float = 10.0) -> None:
        """Kill the child and its workers (its whole process group); returns when they are gone."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        self._done.wait(timeout)
        for f in (self.proc.stdin,):
            with contextlib.suppress(OSError, ValueError):
                if f:
                    f.close()


def spawn(config: BenchConfig) -> BenchProcess:
    """Run `run(config)` in a child process; see BenchProcess."""
    config.validated()
    return BenchProcess(config)


def child_main() -> int:
    out = sys.stdout.buffer
    lock = threading.Lock()

    def send(obj: dict[str, Any]) -> None:
        with lock:
            with contextlib.suppress(BrokenPipeError, ValueError):
                write_line(out, obj, orjson.OPT_NON_STR_KEYS)

    # stdin is read with os.read: a daemon thread blocked in a buffered reader aborts interpreter shutdown.
    pending = b""
    while b"\n" not in pending:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        pending += chunk
    line, _, rest = pending.partition(b"\n")
    stop = threading.Event()

    def watch_stdin() -> None:  # any further line ("stop"), or the parent's end of the pipe closing, ends the run
        if not rest:
            with contextlib.suppress(OSError):
                os.read(0, 1)
        stop.set()

    try:
        config = BenchConfig.from_json(orjson.loads(line))
        threading.Thread(target=watch_stdin, daemon=True).start()
        result = run(config, on_sample=lambda s: send({"t": "sample", "sample": asdict(s)}), stop=stop,
                     on_step=lambda st: send({"t": "step", "step": st}))
        out_path = Path(config.json_path).expanduser() if config.json_path else default_result_path()
        result["out"] = str(out_path)
        write_outputs(result, str(out_path), config.csv_path)
        send({"t": "result", "result": result})
        return 0
    except UserError as exc:
        send({"t": "error", "cause": exc.cause, "fix": exc.fix})
        return exc.exit_code
    except Exception as exc:  # report instead of a silent death
        send({"t": "error", "cause": f"{type(exc).__name__}: {exc}", "fix": "report this as a bug"})
        return 1



if __name__ == "__main__":
    raise SystemExit(child_main())
