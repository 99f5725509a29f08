"""The supervisor's control socket: a unix socket (0600, in a private directory), one JSON line in, one
JSON line out. `fleet/control.py` is its client; `Operations.dispatch` answers the requests (ping,
scale, restart, policy, down). Each connection gets its own thread, so `ping` answers while an
operation runs.
"""

from __future__ import annotations

import os
import socket
import threading
import traceback
from pathlib import Path
from typing import Any, Callable

import orjson

from llama_tui.core import paths
from llama_tui.core.errors import UserError
from llama_tui.core.fleet.state import log

MAX_REQUEST_BYTES = 65536


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
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            buf = b""
            while not buf.endswith(b"\n") and len(buf) < MAX_REQUEST_BYTES:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                buf += chunk
            conn.settimeout(None)
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
            conn.sendall(orjson.dumps(resp) + b"\n")
        except OSError:
            pass
        finally:
            conn.close()
            if self.exit_after_reply():
                self.stop.set()
