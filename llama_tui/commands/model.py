from __future__ import annotations

import argparse
import time
from pathlib import Path

from llama_tui.commands.output import info


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="models: generate random-weight models (the tiny demo model, or realistic sizes)")
    msub = p.add_subparsers(dest="model_command", metavar="WHAT", required=True)
    t = msub.add_parser("tiny", help="write a tiny random-weight llama GGUF (no download); prints its path")
    t.add_argument("--out", type=Path, help="where to write it (default: reused file in the cache dir)")
    t.add_argument("--layers", type=int, default=2)
    t.add_argument("--embd", type=int, default=64)
    t.add_argument("--ctx", type=int, default=4096, help="training context length recorded in the model")
    t.add_argument("--seed", type=int, default=1234)
    t.add_argument("--force", action="store_true", help="rewrite even if the file exists")
    t.set_defaults(func=run_tiny)
    r = msub.add_parser("random", help="write a random-weight llama GGUF of realistic size, e.g. 1B parameters "
                        "with a 32000-token vocabulary (no download); prints its path")
    r.add_argument("--params", default="1b", metavar="SIZE",
                   help="model size: 8m, 125m or 1b (TinyLlama-1.1B's shape; default)")
    r.add_argument("--type", dest="weight_type", default="q8_0", metavar="TYPE",
                   help="weight type of the matrices: q8_0 (default), f16 or f32")
    r.add_argument("--vocab", type=int, default=32000, help="vocabulary size (default 32000)")
    r.add_argument("--ctx", type=int, default=4096, help="training context length recorded in the model")
    r.add_argument("--seed", type=int, default=1234)
    r.add_argument("--out", type=Path, help="where to write it (default: reused file in the cache dir)")
    r.add_argument("--force", action="store_true", help="rewrite even if the file exists")
    r.set_defaults(func=run_random)


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


def run_random(args: argparse.Namespace) -> int:
    from llama_tui.core import model

    spec = model.RandomModelSpec.named(args.params, weight_type=args.weight_type, vocab=args.vocab, ctx=args.ctx,
                                       seed=args.seed)
    spec.validate()
    out = args.out or model.default_random_path(spec)
    if args.force or not (out.is_file() and model.is_gguf(out)):
        t0 = time.monotonic()
        model.write_random_model(out, spec)
        info(f"wrote {out} ({out.stat().st_size:,} bytes, {spec.parameters():,} parameters, {spec.weight_type}, "
             f"vocabulary {spec.vocab}) in {time.monotonic() - t0:.1f}s")
    else:
        info(f"reusing {out}")
    print(out)
    return 0
