"""The supervisor's control socket: a unix socket (0600, in a private directory), one JSON line in, one
JSON line out. `fleet/control.py` is its client; `Operations.dispatch` answers the requests (ping,
scale, restart, policy, down). Each connection gets its own thread, so `ping` answers while an
operation runs.

Bounded, so a stuck or hostile client cannot wear the supervisor down: at most `MAX_CONNECTIONS`
open at once (more get a one-line "busy" answer), a request line of at most `MAX_REQUEST_BYTES`
that must arrive within `READ_TIMEOUT_S`, and an answer the client must take within `SEND_TIMEOUT_S`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import orjson

from llama_tui.core import paths
from llama_tui.core.errors import UserError
from llama_tui.core.fleet.state import log

MAX_REQUEST_BYTES = 65536
MAX_CONNECTIONS = 8
READ_TIMEOUT_S = 5.0  # for the whole request line, not per read
SEND_TIMEOUT_S = 10.0


class ControlServer:
    """Serves `dispatch` on the unix socket at `path` until `stop` is set. After an answer, when
    `exit_after_reply()` says so (a `down`), it sets `stop`."""

    def __init__(self, path: Path, dispatch: Callable[[dict[str, Any]], dict[str, Any]], stop: threading.Event,
                 exit_after_reply: Callable[[], bool], log_hint: str) -> None:
        self.path = path
        self.dispatch = dispatch
        self.stop = stop
        self.exit_after_reply = exit_after_reply
        self.log_hint = log_hint  # where the supervisor's log is, for an unexpected error's fix
        self._server: socket.socket | None = None
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def open(self) -> None:
        paths.ensure_private_dir(self.path.parent)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(self.path))
        os.chmod(self.path, 0o600)
        srv.listen(16)
        srv.settimeout(0.5)
        self._server = srv
        threading.Thread(target=self._serve, name="control", daemon=True).start()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    def _serve(self) -> None:
        assert self._server is not None
        while not self.stop.is_set():
            try:
                conn, _ = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                self._refuse(conn, f"the supervisor is busy ({MAX_CONNECTIONS} requests open)")
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    @staticmethod
    def _refuse(conn: socket.socket, error: str) -> None:
        try:
            conn.settimeout(1.0)
            conn.sendall(orjson.dumps({"ok": False, "error": error, "fix": "try again in a moment"}) + b"\n")
        except OSError:
            pass
        finally:
            conn.close()

    def _read_request(self, conn: socket.socket) -> bytes | None:
        """The request line, or None when it is too long or too slow to arrive."""
        deadline = time.monotonic() + READ_TIMEOUT_S
        buf = b""
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or len(buf) > MAX_REQUEST_BYTES:
                return None
            conn.settimeout(left)
            chunk = conn.recv(4096)
            if not chunk:
                break
            buf += chunk
        return buf if len(buf) <= MAX_REQUEST_BYTES else None

    def _handle(self, conn: socket.socket) -> None:
        try:
            try:
                buf = self._read_request(conn)
            except socket.timeout:
                buf = None
            if buf is None:
                resp = {"ok": False, "error": f"request over {MAX_REQUEST_BYTES} bytes or slower than "
                        f"{READ_TIMEOUT_S:.0f}s", "fix": "send one JSON line"}
                conn.settimeout(1.0)
                conn.sendall(orjson.dumps(resp) + b"\n")
                return
            conn.settimeout(None)  # an operation (scale) may take as long as instances need to start
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
                        "fix": f"see {self.log_hint}"}
            conn.settimeout(SEND_TIMEOUT_S)
            conn.sendall(orjson.dumps(resp) + b"\n")
        except OSError:
            pass
        finally:
            conn.close()
            self._slots.release()
            if self.exit_after_reply():
                self.stop.set()
