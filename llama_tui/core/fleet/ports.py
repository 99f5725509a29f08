"""The ports a fleet needs: free now on their host, checked before anything starts."""

from __future__ import annotations

import random
import socket

from llama_tui.core.errors import UserError
from llama_tui.core.fleet.spec import FleetSpec


def port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT leftover is not "in use"
        try:
            s.bind((host.strip("[]"), port))
        except OSError:
            return False
    return True


def free_port_block(n: int, host: str = "127.0.0.1", lo: int = 20000, hi: int = 60000) -> int:
    """The first port of `n` consecutive ports free on `host` now (for scripts that start fleets)."""
    for _ in range(500):
        base = random.randrange(lo, hi - n)
        if all(port_free(host, p) for p in range(base, base + n)):
            return base
    raise UserError(f"no block of {n} free ports between {lo} and {hi} on {host}", "stop some servers and retry")


def check_ports(spec: FleetSpec, indices: range | None = None, nginx: bool = True) -> None:
    """Every port the fleet needs is free, checked before anything starts."""
    indices = range(spec.instances) if indices is None else indices
    if spec.engine == "ray":
        indices = range(0)  # each instance takes a free port on the node Ray places it on
    host = "127.0.0.1" if spec.host == "localhost" else spec.host
    for i in indices:
        if not port_free(host, spec.port_of(i)):
            raise UserError(f"port {spec.port_of(i)} (instance {i}) is already in use on {host}",
                            "stop what uses it, or pick another --base-port")
    if nginx and not port_free(spec.listen, spec.nginx_port):
        raise UserError(f"port {spec.nginx_port} (NGINX) is already in use on {spec.listen}",
                        "stop what uses it, or pick another --nginx-port")
