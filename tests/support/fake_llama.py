"""A stand-in llama-server for what a real one cannot do on demand: die while it handles a request
(`crash`), or answer 503 as if it were loading its model (`loading`). `ok` answers 200. Every request
it receives is appended to HITS (one line: METHOD PATH), so a test counts who got what.

    python tests/support/fake_llama.py MODE PORT HITS
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    mode, port, hits = sys.argv[1], int(sys.argv[2]), sys.argv[3]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            with open(hits, "a") as f:
                f.write(f"{self.command} {self.path} {self.headers.get('Authorization')}\n")
            if mode == "crash":
                os._exit(1)  # dies before any byte of a response, like llama-server killed by a request
            status, body = ((503, {"error": {"code": 503, "message": "Loading model"}}) if mode == "loading"
                            else (200, {"served_by": port, "path": self.path}))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _handle

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
