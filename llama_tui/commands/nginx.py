"""`llama-tui nginx render`: the NGINX config of the running fleet, or of a fleet described by options."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llama_tui.commands.fleet import add_fleet_options, settings_from_args
from llama_tui.core.config import FLEET_OPTIONS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("nginx", help="the NGINX front door: print the config it runs or would run")
    nsub = p.add_subparsers(dest="nginx_command", metavar="ACTION", required=True)
    r = nsub.add_parser(
        "render", help="print the NGINX config for the running fleet (or the fleet the options describe)",
        description="Print the nginx.conf llama-tui generates. With a fleet running and no fleet options other "
        "than --policy, it is the running fleet's config (with --policy P: what `fleet policy P` would apply). "
        "Otherwise it is the config of the fleet the options, preset and config file describe.")
    add_fleet_options(r)
    r.add_argument("--state-dir", dest="state_dir", type=Path, default=None,
                   help="the fleet's state dir (default: $LLAMA_TUI_STATE_DIR or ~/.local/state/llama-tui)")
    r.set_defaults(func=run_render)


def _described(args: argparse.Namespace) -> bool:
    """Whether the user described a fleet (an option other than --policy)."""
    if getattr(args, "preset", None) is not None:
        return True
    return any(getattr(args, opt, None) is not None for opt in FLEET_OPTIONS if opt != "policy")


def run_render(args: argparse.Namespace) -> int:
    from llama_tui.core import config, fleet, paths
    from llama_tui.core.fleet import frontdoor, keys
    from llama_tui.core.fleet.placement import Endpoint, endpoint_of
    from llama_tui.core.errors import UserError

    policy = args.policy.strip().replace("-", "_") if args.policy else None
    if policy is not None and policy not in config.POLICIES:
        raise UserError(f"unknown policy {args.policy!r}", f"use one of: {', '.join(config.POLICIES)}")
    state_dir = args.state_dir.expanduser() if args.state_dir else None
    state = None if _described(args) else fleet.load_state(state_dir)
    if state is not None and state.nginx is not None:
        spec = fleet.FleetSpec.from_dict(state.spec)
        members = [endpoint_of(i, spec.host) for i in sorted(state.instances, key=lambda i: i.index) if i.in_upstream]
        if not members:
            raise UserError("no instance of the running fleet is in NGINX's upstream yet",
                            "wait until `llama-tui fleet status` shows ready instances")
        door = frontdoor.FrontDoorSpec.for_fleet(spec, members, policy=policy or state.nginx.policy,
                                                 internal_key=keys.read_internal_key(state.state_dir))
        prefix = Path(state.nginx.prefix)
        print(f"# nginx render: the running fleet in {state.state_dir}", file=sys.stderr)
    else:
        spec = fleet.FleetSpec.from_settings(settings_from_args(args), check_extra_args=False)
        door = frontdoor.FrontDoorSpec.for_fleet(spec, [Endpoint(spec.host, spec.port_of(i)) for i in range(spec.instances)],
                                                 policy=policy)
        prefix = (state_dir or paths.state_dir()) / "nginx"
        print(f"# nginx render: a described fleet of {spec.instances} instances (none running)", file=sys.stderr)
    sys.stdout.write(frontdoor.render(door, prefix))
    return 0
