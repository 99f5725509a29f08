from __future__ import annotations

import argparse

from llama_tui.commands.output import print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list presets (shipped and user) and where each comes from")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llama_tui.core import config, paths

    items = config.list_presets()
    if args.json:
        print_json([{"name": i.name, "origin": i.origin, "path": str(i.path), "description": i.description}
                    for i in items])
        return 0
    width = max((len(i.name) for i in items), default=4)
    for i in items:
        print(f"{i.name:<{width}}  {i.origin:<7}  {i.description}")
        print(f"{'':<{width}}           {i.path}")
    print(f"\nuser presets go in {paths.user_presets_dir()} (same TOML shape; a user preset overrides a shipped one)")
    return 0
