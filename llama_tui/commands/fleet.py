from __future__ import annotations

import argparse

from llama_tui.commands.output import print_json

# CLI option -> settings key; shared by `fleet up` and the TUI entry point.
FLEET_OPTIONS = {
    "model": "fleet.model",
    "instances": "fleet.instances",
    "parallel": "fleet.parallel",
    "ctx_per_slot": "fleet.ctx_per_slot",
    "threads": "fleet.threads",
    "gpu_layers": "fleet.gpu_layers",
    "gpus": "fleet.gpus",
    "base_port": "fleet.base_port",
    "host": "fleet.host",
    "nginx_port": "fleet.nginx_port",
    "policy": "fleet.policy",
    "extra_args": "fleet.extra_args",
}


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
    g.add_argument("--base-port", dest="base_port", metavar="PORT", help="port of instance 0")
    g.add_argument("--host", help="address instances bind to (loopback only; default 127.0.0.1)")
    g.add_argument("--nginx-port", dest="nginx_port", metavar="PORT", help="port NGINX listens on")
    g.add_argument("--policy", help="round_robin, least_conn, random_two_least_conn or hash")
    g.add_argument("--extra-args", dest="extra_args", metavar="ARGS", help='extra llama-server args, e.g. "--batch-size 512"')


def settings_from_args(args: argparse.Namespace):
    from llama_tui.core.config import load_settings

    cli = {key: getattr(args, opt, None) for opt, key in FLEET_OPTIONS.items()}
    return load_settings(preset=getattr(args, "preset", None), cli=cli)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fleet", help="start, inspect, scale, restart and stop a fleet of llama-server instances")
    fsub = p.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    s = fsub.add_parser("status", help="per-instance state, slots, tok/s, CPU, memory, GPU")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run_status)


def run_status(args: argparse.Namespace) -> int:
    from llama_tui.core import paths

    state = paths.state_dir() / "fleet.json"
    data = {"running": state.is_file(), "state_file": str(state), "instances": []}
    if args.json:
        print_json(data)
    else:
        print("no fleet running" if not data["running"] else f"fleet state: {state}")
    return 0
