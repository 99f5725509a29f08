"""`llama-tui fleet ...`: up, status, scale, restart, policy, logs, down."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from llama_tui.commands.output import info, print_json
from llama_tui.core.config import seconds_arg


def add_fleet_options(parser: argparse.ArgumentParser, for_tui: bool = False) -> None:
    g = parser.add_argument_group("fleet options" + (" (start this fleet when none is running)" if for_tui else ""))
    g.add_argument("--preset", help="preset name (see `llama-tui presets`)")
    g.add_argument("--model", help="GGUF model path, or 'tiny' for the generated demo model")
    g.add_argument("--instances", metavar="N", help="llama-server instances")
    g.add_argument("--parallel", metavar="P", help="slots per instance (--parallel)")
    g.add_argument("--ctx-per-slot", dest="ctx_per_slot", metavar="C", help="context per slot; --ctx-size = C x P")
    g.add_argument("--threads", metavar="T", help="threads per instance (default: physical cores // instances)")
    g.add_argument("--gpu-layers", dest="gpu_layers", metavar="L", help="--n-gpu-layers for every instance")
    g.add_argument("--gpus", metavar="0,1,...", help="pin instances to GPUs round-robin (CUDA_VISIBLE_DEVICES)")
    g.add_argument("--pin-cpus", dest="pin_cpus", action=argparse.BooleanOptionalAction, default=None,
                   help="give each instance its own physical cores (Linux CPU affinity; needs instances x threads <= cores)")
    g.add_argument("--base-port", dest="base_port", metavar="PORT", help="port of instance 0")
    g.add_argument("--host", help="address instances bind to (loopback only; default 127.0.0.1)")
    g.add_argument("--nginx-port", dest="nginx_port", metavar="PORT", help="port NGINX listens on")
    g.add_argument("--policy", help="round_robin, least_conn, random_two_least_conn or hash")
    g.add_argument("--extra-args", dest="extra_args", metavar="ARGS", help='extra llama-server args, e.g. "--batch-size 512"')
    g.add_argument("--listen", metavar="ADDR", help="address NGINX listens on (default 127.0.0.1; 0.0.0.0 = public)")
    g.add_argument("--api-key", dest="api_key", metavar="KEY",
                   help="API key NGINX requires (Authorization: Bearer KEY; 16+ characters). Visible in `ps`: "
                   "prefer --api-key-file or $LLAMA_TUI_FLEET_API_KEY")
    g.add_argument("--api-key-file", dest="api_key_file", metavar="FILE", help="file holding the API key (safer than --api-key)")
    g.add_argument("--insecure-public", dest="insecure_public", action=argparse.BooleanOptionalAction, default=None,
                   help="let a non-loopback --listen serve WITHOUT an API key (refused otherwise)")
    g.add_argument("--expose-admin", dest="expose_admin", action=argparse.BooleanOptionalAction, default=None,
                   help="serve every llama-server route (/slots, /metrics, /props, /tokenize, the web UI ...) on "
                   "the NGINX listener, not only the inference routes")
    g.add_argument("--upstream-header", dest="upstream_header", action=argparse.BooleanOptionalAction, default=None,
                   help="add X-Upstream (the backend that answered) to responses (default: on for a loopback "
                   "--listen, off for a public one)")
    g.add_argument("--conn-limit", dest="conn_limit", metavar="N",
                   help="concurrent requests per remote client address (default: 64 on a public --listen, none "
                   "on loopback; 0 = no limit)")
    g.add_argument("--allow-unsafe-args", dest="allow_unsafe_args", action=argparse.BooleanOptionalAction,
                   default=None, help="let --extra-args publish files, tools or proxies (--path, --tools, ...)")
    g.add_argument("--max-conns", dest="max_conns", action=argparse.BooleanOptionalAction, default=None,
                   help="cap each backend at its slot count in NGINX")
    g.add_argument("--max-concurrency", dest="max_concurrency", metavar="N", help="largest concurrency planned; sizes NGINX")
    g.add_argument("--ready-timeout", dest="ready_timeout", metavar="S", help="seconds an instance may take to get ready")
    g.add_argument("--metrics-listen", dest="metrics_listen", metavar="IP:PORT",
                   help="the supervisor serves Prometheus metrics here (off by default; loopback only)")
    g.add_argument("--metrics-public", dest="metrics_public", action=argparse.BooleanOptionalAction, default=None,
                   help="allow a --metrics-listen address that is not loopback")
    add_engine_options(parser)


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """Where instances run: local processes (default) or Ray actors across a cluster (`fleet up`, `sweep`)."""
    g = parser.add_argument_group("engine (instances on several machines through a Ray cluster)")
    g.add_argument("--engine", help="local (default): processes on this machine; ray: actors across a Ray cluster")
    g.add_argument("--ray-address", dest="ray_address", metavar="ADDR",
                   help="ray: the cluster's HOST:PORT (default: $RAY_ADDRESS)")
    g.add_argument("--placement", help="ray: spread (default) instances over nodes, or pack them onto few")
    g.add_argument("--gpus-per-instance", dest="gpus_per_instance", metavar="G", help="ray: GPUs each instance reserves")
    g.add_argument("--node-resource", dest="node_resource", metavar="NAME",
                   help="ray: only nodes that have this custom resource (`ray start --resources`) get instances")
    g.add_argument("--model-dir", dest="model_dir", metavar="LABEL=DIR", action="append",
                   help="ray: an instance on a node that has the custom resource LABEL loads the model file of the "
                   "same name from DIR (an absolute path on that node) instead of --model; repeatable, the first "
                   "label a node has wins; nodes with none load --model as given")


def settings_from_args(args: argparse.Namespace):
    from llama_tui.core.config import fleet_overrides, load_settings

    return load_settings(preset=getattr(args, "preset", None), cli=fleet_overrides(args))


def warn_api_key_argv(args: argparse.Namespace) -> None:
    """A key given as --api-key shows in `ps` to every local user for as long as the command runs."""
    if getattr(args, "api_key", None):
        info("WARNING: --api-key KEY on a command line is visible to every local user (`ps`): "
             "use --api-key-file FILE (or $LLAMA_TUI_FLEET_API_KEY) instead")


def _state_dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", dest="state_dir", type=Path, default=None,
                   help="the fleet's state dir (default: $LLAMA_TUI_STATE_DIR or ~/.local/state/llama-tui)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fleet", help="start, inspect, scale, restart and stop a fleet of llama-server instances")
    fsub = p.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)

    u = fsub.add_parser("up", help="start a fleet (instances in parallel, NGINX in front); Ctrl-C stops it")
    add_fleet_options(u)
    u.add_argument("--detach", action="store_true", help="return once every instance is ready; the fleet keeps running")
    _state_dir_option(u)
    u.set_defaults(func=run_up)

    s = fsub.add_parser("status", help="per-instance state, slots, tok/s, CPU, memory, GPU")
    s.add_argument("--json", action="store_true")
    _state_dir_option(s)
    s.set_defaults(func=run_status)

    sc = fsub.add_parser("scale", help="add or remove instances (leaving ones drain first)")
    sc.add_argument("n", type=int, metavar="N", help="instances wanted")
    _state_dir_option(sc)
    sc.set_defaults(func=run_scale)

    r = fsub.add_parser("restart", help="restart one instance, or all one after another")
    r.add_argument("index", type=int, nargs="?", metavar="INDEX")
    _state_dir_option(r)
    r.set_defaults(func=run_restart)

    po = fsub.add_parser("policy", help="change NGINX's balancing policy (reload, no dropped streams)")
    po.add_argument("policy", metavar="POLICY", help="round_robin, least_conn, random_two_least_conn or hash")
    _state_dir_option(po)
    po.set_defaults(func=run_policy)

    lg = fsub.add_parser("logs", help="show an instance's log (or nginx, access, supervisor)")
    lg.add_argument("target", metavar="INDEX|nginx|access|supervisor")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    lg.add_argument("-n", "--lines", type=int, default=50, help="lines to show first (default 50)")
    _state_dir_option(lg)
    lg.set_defaults(func=run_logs)

    d = fsub.add_parser("down", help="stop every process of the fleet (SIGTERM, then SIGKILL)")
    d.add_argument("--timeout", type=seconds_arg(0, 3600), default=10.0, help="seconds before SIGKILL (default 10)")
    _state_dir_option(d)
    d.set_defaults(func=run_down)


# --------------------------------------------------------------------------------------------- up


def run_up(args: argparse.Namespace) -> int:
    from llama_tui.core import fleet

    existing = fleet.load_state(args.state_dir)
    if existing is not None and not existing.supervisor_alive:
        info(f"a fleet of {len(existing.instances)} instances runs without its supervisor: adopting it "
             "(its own settings stay; change them with `fleet scale` / `fleet policy`)")
        snap = fleet.adopt(args.state_dir, on_progress=lambda m: info(f"  {m}"))
        print(render_status(snap))
        return _stay(args) if not args.detach else 0
    spec = fleet.FleetSpec.from_settings(settings_from_args(args))
    warn_api_key_argv(args)  # once the input is known to be good: bad input gets one line
    threads = spec.threads_for(spec.instances)
    local = spec.engine == "local"  # (Ray budgets each node's CPUs itself)
    for warning in (fleet.oversubscription(spec.instances, threads) if local else None, fleet.exposure_warning(spec),
                    fleet.unsafe_args_warning(spec)):
        if warning:
            info(f"WARNING: {warning}")
    t0 = time.monotonic()
    snap = fleet.up(spec, state_dir=args.state_dir, on_progress=lambda m: info(f"  {m}"))
    info(f"fleet ready in {time.monotonic() - t0:.1f}s")
    print(render_status(snap))
    if args.detach:
        info("detached: `llama-tui fleet status` shows it, `llama-tui fleet down` stops it")
        return 0
    return _stay(args)


def _stay(args: argparse.Namespace) -> int:
    """Foreground mode: wait for Ctrl-C (or SIGTERM), then stop the fleet."""
    from llama_tui.core import fleet

    info("running in the foreground; Ctrl-C stops the fleet")

    def _term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    try:
        while True:
            time.sleep(1.0)
            if fleet.load_state(args.state_dir) is None:
                info("the fleet was stopped elsewhere")
                return 0
    except KeyboardInterrupt:
        info("stopping the fleet ...")
        fleet.down(args.state_dir)
        info("fleet stopped")
        return 0


# --------------------------------------------------------------------------------------------- status


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _fmt(v: Any, suffix: str = "", digits: int = 0) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}{suffix}"
    return f"{v}{suffix}"


def _fmt_uptime(s: float | None) -> str:
    if s is None:
        return "n/a"
    s = int(s)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _system_text(sysm) -> str:  # sysm: SystemSample
    gpus = ", ".join(f"gpu{g.index} {_fmt_bytes(g.memory_used_bytes)}/{_fmt_bytes(g.memory_total_bytes)} "
                     f"{_fmt(g.util_percent, '%')}" for g in sysm.gpus) or "no GPU"
    return (f"cpu {_fmt(sysm.cpu_percent, '%', 0)} of {sysm.cores} cores, ram "
            f"{_fmt_bytes(sysm.memory_used_bytes)}/{_fmt_bytes(sysm.memory_total_bytes)}; {gpus}")


def render_status(snap) -> str:  # snap: FleetSnapshot
    if not snap.running:
        return "no fleet running"
    ready = sum(1 for i in snap.instances if i.state == "ready")
    sup = f"supervisor pid {snap.supervisor_pid} ({'alive' if snap.supervisor_alive else 'GONE'})"
    lines = [f"fleet: {len(snap.instances)} instances ({ready} ready), parallel {snap.parallel}, "
             f"model {Path(snap.model).name if snap.model else 'n/a'}; {sup}"]
    ng = snap.nginx
    if ng is not None:
        state = f"pid {ng.pid}" if ng.pid else "DOWN"
        valid = "" if ng.config_valid in (None, True) else f"  config error: {ng.config_error}"
        lines.append(f"nginx: {ng.listen}:{ng.port} {state}, policy {ng.policy}{valid}")
        if ng.stub_status:
            ss = ng.stub_status
            lines.append(f"       active {ss.get('active')} (reading {ss.get('reading')}, writing {ss.get('writing')}, "
                         f"waiting {ss.get('waiting')}), requests {ss.get('requests')}")
    header = ("  #", "port", "pid", "state", "rst", "uptime", "thr", "slots", "proc/def", "tok/s", "cpu%", "rss",
              "gpu mem", "gpu%")
    rows = [header]
    for i in snap.instances:
        slots = f"{_fmt(i.slots_busy)}/{_fmt(i.slots_total)}"
        procdef = f"{_fmt(i.requests_processing)}/{_fmt(i.requests_deferred)}"
        rows.append((f"  {i.index}", str(i.port or "n/a"), _fmt(i.pid), i.state, str(i.restarts), _fmt_uptime(i.uptime_s),
                     _fmt(i.threads), slots, procdef, _fmt(i.server_tok_s), _fmt(i.cpu_percent, digits=1),
                     _fmt_bytes(i.rss_bytes), _fmt_bytes(i.gpu_memory_bytes), _fmt(i.gpu_util_percent)))
    if any(i.node not in (None, "local") for i in snap.instances):  # on other machines: where each one serves
        rows = [r[:2] + (h,) + r[2:] for r, h in zip(rows, ["host"] + [i.host or "n/a" for i in snap.instances])]
        header = rows[0]
    if any(i.cpus for i in snap.instances):  # pinned (--pin-cpus): which CPUs each instance runs on
        from llama_tui.core.hardware import format_cpus

        rows = [r + (c,) for r, c in zip(rows, ["cpus"] + [format_cpus(i.cpus) for i in snap.instances])]
        header = rows[0]
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    for r in rows:
        lines.append("  ".join(cell.ljust(widths[c]) for c, cell in enumerate(r)).rstrip())
    for i in snap.instances:
        if i.state in ("failed", "restarting") and i.last_error:
            retry = f" (next try in {i.retry_in_s:.0f}s)" if i.retry_in_s is not None else ""
            lines.append(f"  instance {i.index}: {i.last_error}{retry}")
    if snap.system is not None:
        lines.append(f"system: {_system_text(snap.system)}")
    for node in snap.nodes:  # a fleet on several machines: each node's own numbers
        lines.append(f"node {node.host} ({node.node[:8]}): {_system_text(node.system) if node.system else 'n/a'}")
    for w in snap.warnings:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def run_status(args: argparse.Namespace) -> int:
    from llama_tui.core import fleet

    snap = fleet.snapshot(args.state_dir)
    if args.json:
        print_json(fleet.status_json(snap, args.state_dir))
    else:
        print(render_status(snap))
    return 0


# --------------------------------------------------------------------------------------------- changes


def run_scale(args: argparse.Namespace) -> int:
    from llama_tui.core import fleet

    before = fleet.load_state(args.state_dir)
    t0 = time.monotonic()
    snap = fleet.scale(args.n, state_dir=args.state_dir, on_progress=info)
    was = len(before.instances) if before else "?"
    info(f"scaled {was} -> {len(snap.instances)} instances in {time.monotonic() - t0:.1f}s")
    print(render_status(snap))
    return 0


def run_restart(args: argparse.Namespace) -> int:
    from llama_tui.core import fleet

    t0 = time.monotonic()
    snap = fleet.restart(args.index, state_dir=args.state_dir, on_progress=info)
    what = f"instance {args.index}" if args.index is not None else "every instance"
    info(f"restarted {what} in {time.monotonic() - t0:.1f}s")
    print(render_status(snap))
    return 0


def run_policy(args: argparse.Namespace) -> int:
    from llama_tui.core import fleet

    snap = fleet.set_policy(args.policy, state_dir=args.state_dir, on_progress=info)
    info(f"nginx policy is now {snap.nginx.policy if snap.nginx else args.policy}")
    return 0


def run_down(args: argparse.Namespace) -> int:
    from llama_tui.core import fleet

    if fleet.down(args.state_dir, timeout=args.timeout):
        info("fleet stopped")
    else:
        info("no fleet running")
    return 0


# --------------------------------------------------------------------------------------------- logs


def _log_path(target: str, state_dir: Path | None) -> Path:
    from llama_tui.core import fleet
    from llama_tui.core.errors import UserError
    from llama_tui.core.fleet import state as st_mod
    from llama_tui.core.fleet.processes import NGINX_DIR

    sd = st_mod.resolve_dir(state_dir)
    if target == "supervisor":
        return st_mod.supervisor_log_path(sd)
    if target in ("nginx", "access"):
        return sd / NGINX_DIR / "logs" / ("error.log" if target == "nginx" else "access.log")
    try:
        index = int(target)
    except ValueError:
        raise UserError(f"unknown log {target!r}", "pass an instance index, nginx, access or supervisor") from None
    path = st_mod.instance_log_path(sd, index)  # computed, never a path the state file names
    if not path.exists():  # (the logs stay readable when the state file is damaged)
        s = fleet.load_state(sd)
        have = ", ".join(str(i.index) for i in (s.instances if s else [])) or "none running"
        raise UserError(f"no log for instance {index} in {sd / st_mod.LOG_DIR}", f"instances: {have}")
    return path


def run_logs(args: argparse.Namespace) -> int:
    from llama_tui.core.errors import UserError

    path = _log_path(args.target, args.state_dir)
    if not path.exists():
        raise UserError(f"{path} does not exist (yet)", "start the fleet with `llama-tui fleet up`")
    out = sys.stdout
    with open(path, "rb") as f:  # the tail and the follow position come from the same read
        ino = os.fstat(f.fileno()).st_ino
        f.seek(max(0, os.fstat(f.fileno()).st_size - (256 << 10)))
        data = f.read()
        pos = f.tell()
    lines = data.decode(errors="replace").splitlines()
    for line in lines[-args.lines:] if args.lines > 0 else []:
        out.write(line + "\n")
    out.flush()
    if not args.follow:
        return 0
    try:
        while True:
            time.sleep(0.25)
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                continue
            if stat.st_ino != ino or stat.st_size < pos:  # rotated (renamed or truncated): start over
                ino, pos = stat.st_ino, 0
            if stat.st_size > pos:
                with open(path, "rb") as f:
                    f.seek(pos)
                    data = f.read()
                pos += len(data)
                out.write(data.decode(errors="replace"))
                out.flush()
    except KeyboardInterrupt:
        return 0
