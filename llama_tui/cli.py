"""The `llama-tui` command line. Headless commands never import textual; only the TUI does.

Each command group lives in `llama_tui/commands/<name>.py` with a `register(subparsers)` function.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from llama_tui import __version__
from llama_tui.core.errors import UserError

COMMAND_MODULES = ("fleet", "nginx", "bench", "sweep", "model", "presets", "doctor", "setup", "export")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad usage on one line, naming the fix, with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (fix: see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="llama-tui",
        # No abbreviations at the top: its --api-key/--api-key-file made a command's own --api ambiguous.
        allow_abbrev=False,
        description="Run, balance, benchmark and sweep fleets of llama-server behind NGINX. "
        "With no command, opens the terminal UI (starting the preset's fleet if none runs).",
    )
    parser.add_argument("--version", action="version", version=f"llama-tui {__version__}")
    from llama_tui.commands import fleet as fleet_cmd

    fleet_cmd.add_fleet_options(parser, for_tui=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"llama_tui.commands.{name}").register(sub)
    return parser


def run_tui(args: argparse.Namespace) -> int:
    from llama_tui.commands.fleet import warn_api_key_argv
    from llama_tui.ui.app import run as run_app  # the only place the CLI reaches textual

    warn_api_key_argv(args)

    return run_app(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command is None:
            return run_tui(args)
        return int(args.func(args) or 0)
    except UserError as exc:
        print(exc.one_line(), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
