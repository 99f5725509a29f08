"""The ports a fleet needs: free now on their host, checked before anything starts."""

from __future__ import annotations

import errno
import random
import socket
from pathlib import Path
from typing import Collection

from llama_tui.core.errors import UserError
from llama_tui.core.fleet.spec import FleetSpec, parse_metrics_listen


def bind_error(host: str, port: int) -> OSError | None:
    """Why `port` cannot be bound on `host` now, or None when it can."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT leftover is not "in use"
        try:
            s.bind((host.strip("[]"), port))
        except OSError as exc:
            return exc
    return None


def port_free(host: str, port: int) -> bool:
    return bind_error(host, port) is None


def ephemeral_low(default: int = 32768) -> int:
    """Where the kernel's ephemeral (client) ports start. Any process's outgoing connection can take a
    port at or above it at any moment, and its TIME_WAIT keeps it for a minute: on a box where load tests
    open thousands of connections, a fleet port picked there was busy again seconds later (measured: a
    sweep's NGINX port, between two cells). So free blocks are picked below it."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def free_port_block(n: int, host: str = "127.0.0.1", lo: int = 10000, hi: int | None = None,
                    exclude: Collection[int] = ()) -> int:
    """The first port of `n` consecutive ports free on `host` now, below the ephemeral range (for scripts
    and tests that start fleets); ports in `exclude` (handed out already) are never part of the block."""
    hi = hi or max(lo + 1000, ephemeral_low())
    for _ in range(500):
        base = random.randrange(lo, hi - n)
        block = range(base, base + n)
        if not any(p in exclude for p in block) and all(port_free(host, p) for p in block):
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
    error = bind_error(spec.listen, spec.nginx_port) if nginx else None
    if error is not None and error.errno == errno.EADDRNOTAVAIL:
        raise UserError(f"--listen {spec.listen} is not an address of this machine",
                        "use 127.0.0.1, 0.0.0.0 (every interface) or an address this machine has")
    if error is not None:
        raise UserError(f"port {spec.nginx_port} (NGINX) is already in use on {spec.listen}",
                        "stop what uses it, or pick another --nginx-port")
    if nginx and spec.metrics_listen:
        host, port = parse_metrics_listen(spec.metrics_listen, spec.metrics_public)
        if not port_free(host, port) or (host == spec.listen and port == spec.nginx_port):
            raise UserError(f"port {port} (--metrics-listen) is already in use on {host}",
                            "stop what uses it, or pick another --metrics-listen port")
