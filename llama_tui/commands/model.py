from __future__ import annotations

import argparse
from pathlib import Path

from llama_tui.commands.output import info


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="models: generate the tiny random-weight demo model")
    msub = p.add_subparsers(dest="model_command", metavar="WHAT", required=True)
    t = msub.add_parser("tiny", help="write a tiny random-weight llama GGUF (no download); prints its path")
    t.add_argument("--out", type=Path, help="where to write it (default: reused file in the cache dir)")
    t.add_argument("--layers", type=int, default=2)
    t.add_argument("--embd", type=int, default=64)
    t.add_argument("--ctx", type=int, default=4096, help="training context length recorded in the model")
    t.add_argument("--seed", type=int, default=1234)
    t.add_argument("--force", action="store_true", help="rewrite even if the file exists")
    t.set_defaults(func=run_tiny)


def run_tiny(args: argparse.Namespace) -> int:
    from llama_tui.core import model

    spec = model.TinyModelSpec(layers=args.layers, embd=args.embd, ctx=args.ctx, seed=args.seed)
    spec.validate()
    out = args.out or model.default_tiny_path(spec)
    if args.force or not (out.is_file() and model.is_gguf(out)):
        model.write_tiny_model(out, spec)
        info(f"wrote {out} ({out.stat().st_size} bytes)")
    else:
        info(f"reusing {out}")
    print(out)
    return 0
