"""A sweep in a child process: `spawn` starts it, `SweepProcess` reads its events, and the child's
entry point (`python -m llama_tui.core.sweep`) runs it and streams JSON lines back.

Protocol (one JSON object per stdout line): `{"event": SweepProgress}` while it runs, then
`{"result": summary}` or `{"error": "one line"}`. The config goes in on stdin; SIGTERM (or SIGINT)
asks the sweep to stop after its current step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from llama_tui.core import paths
from llama_tui.core.childproc import EventStream
from llama_tui.core.errors import UserError
from llama_tui.core.snapshots import SweepCellResult, SweepProgress
from llama_tui.core.sweep.config import SweepConfig
from llama_tui.core.sweep.orchestrator import SweepResult, run


def progress_to_json(ev: SweepProgress) -> dict[str, Any]:
    return asdict(ev)


def progress_from_json(d: Mapping[str, Any]) -> SweepProgress:
    d = dict(d)
    d["results"] = tuple(SweepCellResult(**r) for r in d.get("results") or ())
    names = {f.name for f in fields(SweepProgress)}
    return SweepProgress(**{k: v for k, v in d.items() if k in names})


class SweepProcess:
    """A sweep running in a child process (its own session), streaming `SweepProgress` events.

    `events()` blocks and yields every event until the sweep ends; `poll()` returns what has arrived
    without blocking (for a UI timer); `cancel()` asks the child to stop cleanly (it finishes the
    current step, tears its fleet down and leaves a resumable directory)."""

    def __init__(self, proc: subprocess.Popen, log_path: Path) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.log_path = log_path
        self._q: EventStream[SweepProgress] = EventStream()
        self._result: dict[str, Any] | None = None
        self._error: str | None = None
        self._reader = threading.Thread(target=self._read, name="sweep-events", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "event" in msg:
                self._q.put(progress_from_json(msg["event"]))
            elif "result" in msg:
                self._result = msg["result"]
            elif "error" in msg:
                self._error = msg["error"]
        self.proc.wait()
        self._q.close()

    def events(self, timeout: float | None = None) -> Iterator[SweepProgress]:
        return self._q.iter(timeout)

    def poll(self) -> list[SweepProgress]:
        return self._q.drain()

    def cancel(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float | None = None) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return rc

    def result(self) -> dict[str, Any] | None:
        """The final summary (status, measured, best, out_dir) once the child has ended."""
        return self._result

    @property
    def error(self) -> str | None:
        """The one-line error the child ended with (bad input, ports in use), if any."""
        return self._error


def spawn(config: SweepConfig) -> SweepProcess:
    """Run a sweep in a child process carrying LLAMA_TUI_OWNER; events stream back as JSON lines."""
    out = paths.ensure_private_dir(Path(config.out_dir))
    log_path = out / "sweep-child.log"
    env = paths.owner_env()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "llama_tui.core.sweep"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log, env=env, start_new_session=True, text=True)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(config.to_json()))
    proc.stdin.close()
    return SweepProcess(proc, log_path)


def install_stop_handlers(stop: threading.Event, on_first: Callable[[], None] | None = None) -> None:
    """SIGINT/SIGTERM: the first asks the sweep to stop after the current step; a second SIGINT
    interrupts at once (the fleet is still torn down on the way out)."""

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        if on_first is not None:
            on_first()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def summary(res: SweepResult) -> dict[str, Any]:
    return {"out_dir": str(res.out_dir), "status": res.status, "measured": res.measured,
            "skipped_standing": res.skipped_standing, "best": res.best, "damaged": res.damaged,
            "wall_s": round(res.wall_s, 3), "time": res.time}


def main() -> int:
    """The child's entry point (`python -m llama_tui.core.sweep`): config on stdin, JSON lines out."""

    def send(obj: Any) -> None:
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
        sys.stdout.flush()

    stop = threading.Event()
    install_stop_handlers(stop)
    try:
        cfg = SweepConfig.from_json(json.loads(sys.stdin.read()))
        res = run(cfg, on_event=lambda ev: send({"event": progress_to_json(ev)}), stop=stop)
    except UserError as exc:
        send({"error": exc.one_line()})
        return exc.exit_code
    except KeyboardInterrupt:
        send({"error": "interrupted"})
        return 130
    send({"result": summary(res)})
    return 0

