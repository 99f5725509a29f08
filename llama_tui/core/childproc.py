"""Work that runs in a child process and streams events back (benchmarks, sweeps): both ends of one protocol.

The wire (`write_line`, `json_lines`; orjson): one JSON object per line, written whole and flushed.
- parent -> child, stdin: the job's configuration as the first line. Any later input ("stop"), or
  stdin closing (the parent went away), asks for a graceful end.
- child -> parent, stdout: `{"t": TAG, TAG: payload}` per line. Events first, of the job's own tags
  (bench: "sample" and "verdict"; sweep: "progress"), then exactly one end event, the same in every
  job: `{"t": "result", "result": {...}}` or `{"t": "error", "error": {"cause", "fix", "exit_code"}}`.
  A child that dies without an end event failed; the tail of its stderr says why.
- stderr: a log file (`log_path`), or an anonymous file that only that tail is read from.
The bench's load workers speak the same wire (JSON lines with a "t" tag) over their own pipes.

Stopping, the same for every job:
- `stop()`: graceful. The child finishes the unit in progress as its job defines it (bench: ends the
  current step's window; sweep: drops the cell in progress and tears its fleet down), then sends its result.
- SIGTERM and SIGINT mean the same to the child (and to `llama-tui bench` / `sweep` in a terminal,
  `stop_on_signals`); `stop()` falls back to SIGTERM when the child's stdin is closed. A second SIGINT
  interrupts at once.
- `cancel()`: `stop()`, `CANCEL_GRACE_S` seconds to finish (0 for a job whose processes all live in
  its process group), then SIGKILL to the child's whole process group; returns once it is gone.

`serve(job)` is the child's side; `ChildProcess` the parent's (a child in its own process group with
the owner marker, its events read by a thread into an `EventStream`).
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Callable, ClassVar, Generic, Iterator, Mapping, Sequence, TypeVar

import orjson

from llama_tui.core import paths
from llama_tui.core.errors import UserError

T = TypeVar("T")

_END = object()

# ------------------------------------------------------------------------------------------------ the wire


def json_lines(stream: Any) -> Iterator[dict[str, Any]]:
    """The JSON objects of a line-per-object stream; other lines (not JSON, not an object) are skipped."""
    for line in stream:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            yield obj


def write_line(out: IO[bytes], obj: Any, option: int = 0) -> None:
    """One object as one line, flushed so the reader sees it now."""
    out.write(orjson.dumps(obj, option=option) + b"\n")
    out.flush()


def _plain(payload: Any) -> Any:
    to_json = getattr(payload, "to_json", None)  # a snapshot (core/snapshots.py)
    return to_json() if callable(to_json) else payload


class EventWriter:
    """The child's stdout: `send(tag, payload)` from any thread; a parent that went away is ignored."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self._lock = threading.Lock()

    def send(self, tag: str, payload: Any) -> None:
        line = orjson.dumps({"t": tag, tag: _plain(payload)}, default=str, option=orjson.OPT_NON_STR_KEYS)
        with self._lock, contextlib.suppress(BrokenPipeError, ValueError):
            self.out.write(line + b"\n")
            self.out.flush()


def error_payload(exc: UserError) -> dict[str, Any]:
    return {"cause": exc.cause, "fix": exc.fix, "exit_code": exc.exit_code}


def error_from(payload: Any, what: str) -> UserError:
    p = payload if isinstance(payload, Mapping) else {"cause": str(payload)}
    code = p.get("exit_code")
    return UserError(str(p.get("cause") or f"{what} failed"), str(p.get("fix") or ""),
                     exit_code=code if isinstance(code, int) else 1)


class EventStream(Generic[T]):
    """Events from a reader thread to any number of consumers: iterate it (blocking) or `drain()` it
    (for a UI timer); `close()` ends every iteration, now and later."""

    def __init__(self) -> None:
        self._q: queue.Queue = queue.Queue()

    def put(self, item: T) -> None:
        self._q.put(item)

    def close(self) -> None:
        self._q.put(_END)

    def iter(self, timeout: float | None = None) -> Iterator[T]:
        """Events until the stream is closed, or until none arrives for `timeout` seconds."""
        while True:
            try:
                item = self._q.get(timeout=timeout)
            except queue.Empty:
                return
            if item is _END:
                self._q.put(_END)  # later consumers see the end too
                return
            yield item

    def drain(self) -> list[T]:
        """What has arrived so far, without blocking."""
        out: list[T] = []
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return out
            if item is _END:
                self._q.put(_END)
                return out
            out.append(item)


# ------------------------------------------------------------------------------------------------ stopping


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event, on_first: Callable[[], None] | None = None) -> Iterator[None]:
    """SIGINT and SIGTERM set `stop` (a graceful end; the first one also calls `on_first`); a second
    SIGINT interrupts at once (KeyboardInterrupt). The old handlers come back on the way out. Only the
    main thread can take signals: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        first = not stop.is_set()
        stop.set()
        if first and on_first is not None:
            on_first()

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, was in old.items():
            signal.signal(sig, was)


# ------------------------------------------------------------------------------------------------ the child's side

Emit = Callable[[str, Any], None]
Job = Callable[[Mapping[str, Any], Emit, threading.Event], Mapping[str, Any]]


def _read_config() -> tuple[bytes, bytes]:
    """The first line on stdin, and what came after it. Read with os.read: a daemon thread blocked in
    a buffered reader aborts interpreter shutdown."""
    pending = b""
    while b"\n" not in pending:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        pending += chunk
    line, _, rest = pending.partition(b"\n")
    return line, rest


def _watch_stdin(rest: bytes, stop: threading.Event) -> None:
    if not rest:
        with contextlib.suppress(OSError):
            os.read(0, 1)  # any input ("stop"), or end of input
    stop.set()


def serve(job: Job) -> int:
    """The child's side: run `job(config, send, stop)` on the configuration line and end with its
    result, or with its error; returns the exit status. Stray prints go to stderr, never into the events."""
    out = os.fdopen(os.dup(1), "wb")  # not inherited by the job's own children
    os.dup2(2, 1)
    send = EventWriter(out).send
    stop = threading.Event()
    try:
        with stop_on_signals(stop):
            line, rest = _read_config()
            if not line.strip():
                raise UserError("no configuration on stdin", "this entry point is started by llama-tui "
                                "(bench.spawn, sweep.spawn)", exit_code=1)
            config = orjson.loads(line)
            threading.Thread(target=_watch_stdin, args=(rest, stop), daemon=True, name="stdin-stop").start()
            result = job(config, send, stop)
    except UserError as exc:
        send("error", error_payload(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        send("error", error_payload(UserError("interrupted", exit_code=130)))
        return 130
    except Exception as exc:  # report instead of a silent death
        send("error", error_payload(UserError(f"{type(exc).__name__}: {exc}", "report this as a bug", exit_code=1)))
        return 1
    send("result", result)
    return 0


# ------------------------------------------------------------------------------------------------ the parent's side


class ChildProcess(Generic[T]):
    """A job in a child process: its own process group, the owner marker in its environment, the
    configuration on its stdin, its events (decoded by `EVENTS`, tag -> payload -> event) read by a
    thread into an `EventStream`. A subclass names its `COMMAND`, `EVENTS`, `NAME` and `CANCEL_GRACE_S`."""

    COMMAND: ClassVar[Sequence[str]] = ()
    EVENTS: ClassVar[Mapping[str, Callable[[Any], Any]]] = {}
    NAME: ClassVar[str] = "child"  # in messages: "benchmark", "sweep"
    CANCEL_GRACE_S: ClassVar[float] = 0.0  # how long cancel() lets the child finish on its own first

    def __init__(self, config: Mapping[str, Any], log_path: Path | None = None) -> None:
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "a+b") if log_path is not None else tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(list(self.COMMAND), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._log, env=paths.owner_env(), start_new_session=True)
        except OSError:
            self._log.close()
            raise
        self._events: EventStream[T] = EventStream()
        self._result: dict[str, Any] | None = None
        self._error: UserError | None = None
        self._done = threading.Event()
        self._stdin_lock = threading.Lock()
        self._write_stdin(orjson.dumps(config, default=str) + b"\n")
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"llama-tui-{self.NAME}-events")
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _write_stdin(self, data: bytes) -> bool:
        with self._stdin_lock:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
                return True
            except (OSError, ValueError):
                return False

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for msg in json_lines(self.proc.stdout):
                tag = msg.get("t")
                if isinstance(tag, str) and self._error is None and self._result is None:
                    self._take(tag, msg.get(tag))
        finally:
            self.proc.wait()
            if self._result is None and self._error is None:
                self._error = self._died()
            with self._stdin_lock, contextlib.suppress(OSError):
                if self.proc.stdin:
                    self.proc.stdin.close()
            self.proc.stdout.close()
            self._log.close()
            self._done.set()
            self._events.close()

    def _take(self, tag: str, payload: Any) -> None:
        if tag == "result":
            self._result = dict(payload) if isinstance(payload, Mapping) else {}
        elif tag == "error":
            self._error = self._with_log(error_from(payload, self.NAME))
        elif tag in self.EVENTS:
            try:
                event = self.EVENTS[tag](payload)
            except Exception as exc:  # a protocol bug: fail loudly, and keep draining the pipe so the child can end
                self._error = UserError(f"the {self.NAME} process sent a malformed {tag!r} event "
                                        f"({type(exc).__name__}: {exc})", "report this as a bug", exit_code=1)
                return
            self._events.put(event)

    def _died(self) -> UserError:
        """The child ended without an end event: its exit status and the last lines of its stderr."""
        tail = ""
        with contextlib.suppress(OSError):
            size = os.fstat(self._log.fileno()).st_size
            text = os.pread(self._log.fileno(), 4096, max(0, size - 4096)).decode(errors="replace")
            tail = " | ".join(line.strip() for line in text.strip().splitlines()[-3:])
        cause = f"{self.NAME} process exited with code {self.proc.returncode}"
        fix = "" if self.log_path is not None else "see the message above"
        return self._with_log(UserError(cause + (f": {tail}" if tail else ""), fix, exit_code=1))

    def _with_log(self, exc: UserError) -> UserError:
        """`exc` with its fix pointing at the child's log, when it has one."""
        if self.log_path is None:
            return exc
        fix = f"{exc.fix}; see {self.log_path}" if exc.fix else f"see {self.log_path}"
        return UserError(exc.cause, fix, exit_code=exc.exit_code)

    # ---------------------------------------------------------------- what the owner calls

    def events(self, timeout: float | None = None) -> Iterator[T]:
        """Every event until the child ends (blocks between them), or until none came for `timeout` s."""
        return self._events.iter(timeout)

    def drain(self) -> list[T]:
        """The events that have arrived, without blocking (for a UI timer)."""
        return self._events.drain()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> int:
        """The child's exit status once it and the event reader have ended (subprocess.TimeoutExpired)."""
        rc = self.proc.wait(timeout=timeout)
        self._done.wait(5.0)
        return rc

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """The job's result; raises the job's UserError if it failed, TimeoutError if it still runs."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"the {self.NAME} is still running")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    @property
    def error(self) -> UserError | None:
        """Why the job failed, once it has ended (None while it runs, and after a result)."""
        return self._error if self._done.is_set() else None

    def stop(self) -> None:
        """Ask for a graceful end: the child finishes the unit in progress and sends its result."""
        if not self._write_stdin(b"stop\n"):
            self.proc.send_signal(signal.SIGTERM)  # the same to the child; a no-op once it has been reaped

    def cancel(self, timeout: float = 10.0, grace: float | None = None) -> None:
        """End it now: `stop()`, `grace` seconds (default CANCEL_GRACE_S) to finish on its own, then
        SIGKILL to its whole process group. Returns once it is gone (or after `timeout` more seconds)."""
        grace = self.CANCEL_GRACE_S if grace is None else grace
        if grace > 0 and self.proc.poll() is None:
            self.stop()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        self._done.wait(timeout)
