"""The front door's config: what NGINX in front of the fleet should do (`FrontDoorSpec`), rendered
from the templates into nginx.conf, with its file paths inside NGINX's private prefix directory.

The values are checked first (`frontdoor_rules`); `frontdoor_nginx.FrontDoor` runs, validates with
`nginx -t` and reloads what is rendered here. The private status listener (stub_status) is a unix socket
in a 0700 directory: `status_socket(prefix)`.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import jinja2

from llama_tui import __version__
from llama_tui.core import paths, resources
from llama_tui.core.errors import UserError
from llama_tui.core.fleet.frontdoor_rules import (SAFE_HEADER, SAFE_HOST, check_key, check_policy, conf_path, limits,
                                                  nofile_limit, parse_listen, read_api_key)

if TYPE_CHECKING:
    from llama_tui.core.fleet.placement import Endpoint

READ_TIMEOUT = "3600s"  # longest prompt processing + generation a stream may take
MAX_BODY = "64m"  # long prompts are large JSON bodies
BODY_IN_MEMORY = "128k"  # larger bodies go to a temp file in the private prefix
# The public listener: a client that sends its headers or body this slowly, or reads its response this
# slowly (between two writes, not per stream), is cut off instead of holding a connection.
CLIENT_HEADER_TIMEOUT = "10s"
CLIENT_BODY_TIMEOUT = "30s"
SEND_TIMEOUT = "60s"
PUBLIC_CONN_LIMIT = 64  # concurrent requests per remote client address on a non-loopback listener (default)
MAX_CONN_LIMIT = 65535  # NGINX refuses a larger limit_conn
# The only routes the listener serves (unless expose_admin): inference, the model list and /health.
PUBLIC_ROUTES = ("/v1/chat/completions", "/v1/completions", "/completion", "/v1/embeddings", "/v1/models",
                 "/health")
PREFIX_BYTES = 512  # the `prefix` policy keys each request by this much of its prompt's JSON


@dataclass(frozen=True)
class Backend:
    """One upstream server: an instance's endpoint and its slots."""

    host: str
    port: int
    slots: int = 1

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class FrontDoorSpec:
    """What NGINX should do. `max_conns`: cap each backend at its slots (excess goes to an uncapped
    overflow group and waits inside llama-server: open-source NGINX has no queue). `api_key` or
    `api_key_file` (first non-empty line; re-read at every render, so a reload rotates the key):
    requests without `Authorization: Bearer KEY` get 401 at NGINX. `internal_key`: the fleet's
    internal key (`keys.py`), which replaces the client's Authorization on the way to the instances.

    The listener serves only `PUBLIC_ROUTES` unless `expose_admin`. `upstream_header` (X-Upstream,
    the backend that answered): None = on for a loopback listener, off for a public one.
    `conn_limit`: concurrent requests per remote client address (loopback clients are not counted);
    None = `PUBLIC_CONN_LIMIT` on a public listener and no limit on a loopback one; 0 = no limit."""

    port: int
    backends: tuple[Backend, ...]
    policy: str = "least_conn"
    listen: str = "127.0.0.1"
    max_conns: bool = False
    max_concurrency: int = 1024
    expose_admin: bool = False
    api_key: str | None = None
    hash_header: str = "X-Session-Id"
    # Passive health: one refused connection (or 503 while loading) takes a backend out for 2 s; the
    # request itself is re-sent to the next backend. After 2 s one request probes it again.
    max_fails: int = 1
    fail_timeout: str = "2s"
    worker_processes: int | None = None
    api_key_file: str | None = None
    internal_key: str | None = None  # the instances require it: NGINX sends it in place of the client's
    upstream_header: bool | None = None
    conn_limit: int | None = None

    @classmethod
    def for_fleet(cls, fleet: Any, endpoints: Sequence[Endpoint], policy: str | None = None,
                  internal_key: str | None = None) -> "FrontDoorSpec":
        """The front door of a fleet (a `fleet.FleetSpec`, or anything with its attribute names) whose
        member instances serve at `endpoints` (`placement.Endpoint`: host, port, node); `policy`
        overrides the fleet's; `internal_key` is the key its instances require."""
        slots = int(getattr(fleet, "parallel", 1))
        return cls(port=fleet.nginx_port, backends=tuple(Backend(ep.host, ep.port, slots) for ep in endpoints),
                   policy=policy or getattr(fleet, "policy", "least_conn"),
                   listen=getattr(fleet, "listen", "127.0.0.1"), max_conns=bool(getattr(fleet, "max_conns", False)),
                   max_concurrency=int(getattr(fleet, "max_concurrency", 1024)),
                   expose_admin=bool(getattr(fleet, "expose_admin", False)), api_key=getattr(fleet, "api_key", None),
                   api_key_file=getattr(fleet, "api_key_file", None), internal_key=internal_key,
                   upstream_header=getattr(fleet, "upstream_header", None),
                   conn_limit=getattr(fleet, "conn_limit", None))


def _jinja() -> jinja2.Environment:
    return _jinja_for(str(resources.templates_dir()))


@functools.lru_cache(maxsize=4)
def _jinja_for(templates: str) -> jinja2.Environment:
    """One environment per templates dir: it keeps the compiled templates (and reloads a changed file)."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def status_socket(prefix: Path) -> Path:
    """The stub_status unix socket: in the prefix, or (when that path is too long for a socket)
    in the private runtime dir (`paths.runtime_dir()`), named after the prefix."""
    inside = Path(prefix) / "status.sock"
    if len(str(inside)) <= 100:
        return inside
    digest = hashlib.sha256(str(Path(prefix).resolve()).encode()).hexdigest()[:20]
    return paths.runtime_dir() / f"{digest}.sock"


def render(spec: FrontDoorSpec, prefix: Path, *, nofile: int | None = None, as_root: bool | None = None,
           modules_dir: str | None = None) -> str:
    """The full nginx.conf for `spec`, with file paths inside `prefix`.

    `nofile` (the open-files limit), `as_root` and `modules_dir` (NGINX's modules, for the `prefix`
    policy) default to this process's and this nginx's; pass them for a reproducible rendering (golden
    files)."""
    load_modules = check_policy(spec.policy, modules_dir)
    if not spec.backends:
        raise UserError("no backends to balance", "start at least one instance")
    for b in spec.backends:
        if (not isinstance(b.host, str) or not SAFE_HOST.match(b.host) or not _is_int(b.port)
                or not 1 <= b.port <= 65535 or not _is_int(b.slots) or b.slots < 1):
            raise UserError(f"bad backend {b.host!r}:{b.port} with {b.slots} slots",
                            "instances need a host name or IP, a port 1-65535 and at least one slot")
    if not _is_int(spec.port) or not 1 <= spec.port <= 65535:
        raise UserError(f"NGINX port {spec.port!r} is out of range", "pick --nginx-port between 1024 and 65535")
    if not _is_int(spec.max_concurrency) or not 1 <= spec.max_concurrency <= 1_000_000:
        raise UserError(f"--max-concurrency must be 1-1000000, got {spec.max_concurrency!r}",
                        "pass the largest concurrency you plan, e.g. --max-concurrency 1024")
    api_key = read_api_key(spec)
    internal_key = check_key(spec.internal_key) if spec.internal_key is not None else None
    if not isinstance(spec.hash_header, str) or not SAFE_HEADER.match(spec.hash_header):
        raise UserError(f"bad hash header name {spec.hash_header!r}", "use letters, digits and dashes, e.g. X-Session-Id")
    listen_ip = parse_listen(spec.listen)
    public = not listen_ip.is_loopback
    conn_limit = (PUBLIC_CONN_LIMIT if public else 0) if spec.conn_limit is None else spec.conn_limit
    if not _is_int(conn_limit) or not 0 <= conn_limit <= MAX_CONN_LIMIT:
        raise UserError(f"--conn-limit must be 0 (no limit) to {MAX_CONN_LIMIT}, got {spec.conn_limit!r}",
                        "pass the concurrent requests one client address may make, e.g. --conn-limit 64")
    listen_addr = f"[{listen_ip}]" if listen_ip.version == 6 else str(listen_ip)
    lim = limits(spec, nofile)
    as_root = (os.geteuid() == 0) if as_root is None else as_root
    return _jinja().get_template("nginx.conf.j2").render(
        version=__version__,
        prefix=conf_path(prefix),
        pid_path=conf_path(Path(prefix) / "nginx.pid"),
        error_log=conf_path(Path(prefix) / "logs" / "error.log"),
        access_log=conf_path(Path(prefix) / "logs" / "access.log"),
        temp_paths={name: conf_path(Path(prefix) / "tmp" / name)
                    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")},
        status_listen=conf_path(f"unix:{status_socket(prefix)}"),
        policy=spec.policy,
        backends=spec.backends,
        listen=str(listen_ip),
        listen_addr=listen_addr,
        port=spec.port,
        max_conns=spec.max_conns,
        max_concurrency=spec.max_concurrency,
        expose_admin=spec.expose_admin,
        routes=PUBLIC_ROUTES,
        api_key=api_key,
        internal_key=internal_key,
        upstream_header=(not public) if spec.upstream_header is None else bool(spec.upstream_header),
        conn_limit=conn_limit,
        hash_header=spec.hash_header,
        max_fails=spec.max_fails,
        fail_timeout=spec.fail_timeout,
        worker_user="root" if as_root else None,
        worker_processes=lim.workers,
        worker_connections=lim.worker_connections,
        rlimit_nofile=lim.rlimit_nofile,
        nofile_limit=nofile_limit() if nofile is None else nofile,
        connections_capped=lim.capped,
        stream_capacity=lim.stream_capacity,
        backlog=max(511, min(4096, spec.max_concurrency * 2)),
        read_timeout=READ_TIMEOUT,
        max_body=MAX_BODY,
        body_in_memory=BODY_IN_MEMORY,
        client_header_timeout=CLIENT_HEADER_TIMEOUT,
        client_body_timeout=CLIENT_BODY_TIMEOUT,
        send_timeout=SEND_TIMEOUT,
        load_modules=load_modules,
        prefix_bytes=PREFIX_BYTES,
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def config_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]
