"""Where the load goes: a base URL (a llama-server, or NGINX in front of several), parsed once."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from llama_tui.core.errors import UserError


@dataclass(frozen=True)
class Target:
    """One base URL the load goes to (a llama-server, or NGINX in front of several)."""

    url: str
    scheme: str
    host: str
    port: int
    path: str = ""  # base path prefix, without a trailing slash

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def parse(cls, url: str) -> "Target":
        text = url.strip()
        if "://" not in text:
            text = "http://" + text
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise UserError(f"bad URL {url!r}: {exc}", "write it as http://HOST:PORT") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"bad URL {url!r}", "write it as http://HOST:PORT (http or https)")
        if port is None:
            port = 443 if parts.scheme == "https" else 80
        path = parts.path.rstrip("/")
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        return cls(f"{parts.scheme}://{shown}:{port}{path}", parts.scheme, host, port, path)


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
