"""Runs llama-tui in a pseudo-terminal, as a user's terminal would: for the end-to-end tests and
`benchmarks/tui_cost.py` (which measures the TUI's CPU while it draws to a real terminal).

Not used by the app itself. A `python_code` child finds `tests.support` (scripted content) through the
repository root, added at the end of its PYTHONPATH.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import sys
import termios
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ANSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>]")


class Terminal:
    """`python -m llama_tui ARGS` in a 120x40 pseudo-terminal; collects what it draws."""

    def __init__(self, args: list[str], cols: int = 120, rows: int = 40, python_code: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        """`args` for `python -m llama_tui`, or `python_code` to run instead (e.g. an app on scripted content)."""
        argv = [sys.executable, "-c", python_code] if python_code else [sys.executable, "-m", "llama_tui", *args]
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: its own session, the pty as its controlling terminal
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))  # before the app asks
                # An explicit environment: the C-level one can differ from os.environ (something in a test
                # run had put COLUMNS=80 there), and COLUMNS/LINES would override the pty's real size.
                child_env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
                child_env.update(env or {})
                if python_code:  # it may import tests.support
                    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (child_env.get("PYTHONPATH"), str(REPO)) if p)
                child_env["TERM"] = "xterm-256color"
                os.execve(sys.executable, argv, child_env)
            finally:
                os._exit(127)
        self.raw = bytearray()
        self.bytes_read = 0
        self.keep = True  # False: count what is drawn but do not keep it (long runs)
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.status: int | None = None

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self.lock:
                self.bytes_read += len(chunk)
                if self.keep:
                    self.raw.extend(chunk)

    def text(self) -> str:
        with self.lock:
            return ANSI.sub(b"", bytes(self.raw)).decode(errors="replace")

    def wait_text(self, pattern: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text()):
            if time.monotonic() > deadline or self.exited():
                raise AssertionError(f"{pattern!r} not on screen after {timeout}s; screen tail:\n{self.text()[-3000:]}")
            time.sleep(0.1)

    def send(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def exited(self) -> bool:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
        return self.status is not None

    def wait_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while not self.exited():
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                raise AssertionError(f"the TUI did not exit within {timeout}s; screen tail:\n{self.text()[-3000:]}")
            time.sleep(0.05)
        self.reader.join(timeout=5)
        assert self.status is not None
        return os.waitstatus_to_exitcode(self.status)

    def hang_up(self) -> None:
        """What an SSH drop does: the terminal goes away (the session gets SIGHUP)."""
        os.close(self.fd)

    def kill(self) -> None:
        if not self.exited():
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
