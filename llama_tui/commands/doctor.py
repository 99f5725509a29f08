from __future__ import annotations

import argparse

from llama_tui.commands.output import print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check llama-server, nginx, GPUs, CPU and memory; print fixes")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llama_tui.core import doctor

    data = doctor.report()
    if args.json:
        print_json(data)
    else:
        print(doctor.render_text(data))
    return 1 if data["problems"] else 0
