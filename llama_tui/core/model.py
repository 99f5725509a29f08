"""GGUF models: the tiny random-weight demo model, magic-byte checks, and model discovery.

The tiny model is a real llama-architecture GGUF that llama-server loads and serves. Its weights
are random, so what it writes is noise, but it streams thousands of tokens per second on a CPU,
which is what the demo fleet and the test suite need. Nothing is downloaded.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from llama_tui.core import gguf_header, model_fetch, paths
from llama_tui.core.errors import UserError

GGUF_MAGIC = b"GGUF"
TINY_MODEL_NAME = "tiny"  # the name presets and the CLI use for the generated model

# Normal (non-byte) pieces of the vocabulary. SentencePiece marks a leading space with "▁".
_PIECES = ["▁"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + [
    "▁the", "▁a", "▁to", "▁of", "▁and", "▁in", "▁is", "▁it", "▁you", "▁that",
    "er", "in", "on", "an", "re", "at", "en", "ed", "es", "or",
]


@dataclass(frozen=True)
class TinyModelSpec:
    layers: int = 2
    embd: int = 64
    ctx: int = 4096
    heads: int = 4
    kv_heads: int = 4
    ff: int = 128
    seed: int = 1234

    def validate(self) -> None:
        for name in ("layers", "embd", "ctx", "heads", "kv_heads", "ff"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{name} must be a positive integer", f"pass --{name} 1 or more")
        if self.embd % self.heads or self.heads % self.kv_heads:
            raise UserError(
                f"--embd {self.embd} is not divisible by {self.heads} heads",
                "pass an --embd that is a multiple of 4, e.g. 64",
            )
        if (self.embd // self.heads) % 2:
            raise UserError("the head size (embd / 4) must be even for RoPE", "pass --embd as a multiple of 8")

    def file_name(self) -> str:
        return f"tiny-l{self.layers}-e{self.embd}-c{self.ctx}-s{self.seed}.gguf"


def tiny_vocab() -> tuple[list[str], list[float], list[int]]:
    """A byte-level SentencePiece vocabulary with no duplicate token strings.

    Duplicate strings make llama-server abort at load, so the list is checked here.
    """
    from gguf import TokenType

    tokens = ["<unk>", "<s>", "</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [TokenType.BYTE] * 256
    tokens += _PIECES
    types += [TokenType.NORMAL] * len(_PIECES)
    scores = [0.0] * (3 + 256) + [-float(i + 1) for i in range(len(_PIECES))]
    if len(set(tokens)) != len(tokens):  # pragma: no cover - guards edits to _PIECES
        raise AssertionError("tiny vocabulary has duplicate token strings")
    return tokens, scores, [int(t) for t in types]


# A ChatML template, so /v1/chat/completions works against the tiny model.
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_model(out: Path, spec: TinyModelSpec = TinyModelSpec()) -> Path:
    """Write a random-weight llama GGUF to `out` atomically and return the path."""
    import numpy as np
    from gguf import GGUFWriter

    spec.validate()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    rng = np.random.default_rng(spec.seed)
    tokens, scores, types = tiny_vocab()
    n_vocab, d, ff = len(tokens), spec.embd, spec.ff
    head_dim = d // spec.heads
    d_kv = head_dim * spec.kv_heads

    def mat(rows: int, cols: int) -> "np.ndarray":
        return (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)

    w = GGUFWriter(str(tmp), "llama")
    w.add_name("llama-tui tiny random model")
    w.add_context_length(spec.ctx)
    w.add_embedding_length(d)
    w.add_block_count(spec.layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(spec.heads)
    w.add_head_count_kv(spec.kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)  # all F32
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(_CHAT_TEMPLATE)

    w.add_tensor("token_embd.weight", mat(n_vocab, d))
    w.add_tensor("output_norm.weight", np.ones(d, dtype=np.float32))
    w.add_tensor("output.weight", mat(n_vocab, d))
    for i in range(spec.layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(d, dtype=np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", mat(d, d))
        w.add_tensor(f"blk.{i}.attn_k.weight", mat(d_kv, d))
        w.add_tensor(f"blk.{i}.attn_v.weight", mat(d_kv, d))
        w.add_tensor(f"blk.{i}.attn_output.weight", mat(d, d))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(d, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", mat(ff, d))
        w.add_tensor(f"blk.{i}.ffn_up.weight", mat(ff, d))
        w.add_tensor(f"blk.{i}.ffn_down.weight", mat(d, ff))
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    os.replace(tmp, out)
    return out


def default_tiny_path(spec: TinyModelSpec = TinyModelSpec()) -> Path:
    return paths.cache_dir() / "models" / spec.file_name()


def ensure_tiny_model(spec: TinyModelSpec = TinyModelSpec()) -> Path:
    """The cached tiny model, written on first use and reused afterwards."""
    path = default_tiny_path(spec)
    if not (path.is_file() and is_gguf(path)):
        write_tiny_model(path, spec)
    return path


def is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return len(head) == 8 and head[:4] == GGUF_MAGIC and struct.unpack("<I", head[4:])[0] in (1, 2, 3)


def resolve_model(value: str | os.PathLike[str] | None) -> Path:
    """Turn a user's model argument into a checked GGUF path.

    "tiny" (or nothing) means the generated demo model; a name from `model_fetch.CATALOG` (e.g.
    "gemma3-270m") means that model, once `llama-tui model fetch` has put it in the cache. Anything
    else must be an existing GGUF file;
    paths with spaces or non-ASCII characters are taken as they are.
    """
    if value is None or str(value) == TINY_MODEL_NAME:
        return ensure_tiny_model()
    if str(value) in model_fetch.CATALOG:  # a fetched real model, e.g. "gemma3-270m"
        return model_fetch.fetched_path(str(value))
    path = Path(os.path.expanduser(str(value)))
    if not path.exists():
        raise UserError(
            f"model file not found: {path}",
            "pass --model with the path of a .gguf file, or --model tiny for the demo model",
        )
    if path.is_dir():
        raise UserError(f"model path is a directory: {path}", "pass the .gguf file inside it")
    if not is_gguf(path):
        raise UserError(
            f"not a GGUF file (bad magic bytes): {path}",
            "pass a .gguf model; convert other formats with llama.cpp's convert_hf_to_gguf.py",
        )
    return path.resolve()


MODEL_SEARCH_DIRS = ("~/models", "~/.cache/lm-studio/models", "~/Downloads", "./models")


def find_models(dirs: tuple[str, ...] = MODEL_SEARCH_DIRS, limit: int = 500) -> list[Path]:
    """GGUF files found in the usual places (first shard only for split models)."""
    found: list[Path] = []
    for d in dirs:
        root = Path(os.path.expanduser(d))
        if not root.is_dir():
            continue
        for p in sorted(root.rglob("*.gguf")):
            if "-of-" in p.name and "-00001-of-" not in p.name:
                continue
            if p.is_file():
                found.append(p)
                if len(found) >= limit:
                    return found
    return found


def model_search_dirs() -> tuple[str, ...]:
    """Where `llama-tui model list` looks: the usual places plus the cache (the tiny and fetched models)."""
    return (*MODEL_SEARCH_DIRS, str(model_fetch.models_dir()))


@dataclass(frozen=True)
class ModelListing:
    """One GGUF file as `model list` shows it: its header's facts, or why they could not be read."""

    path: Path
    size_bytes: int | None
    header: gguf_header.GGUFHeader | None
    error: str | None = None

    def to_json(self) -> dict:
        facts = self.header.summary() if self.header else dict.fromkeys(gguf_header.SUMMARY_KEYS)
        return {"path": str(self.path), "size_bytes": self.size_bytes, **facts, "error": self.error}


def describe_model(path: Path) -> ModelListing:
    """Read one file's header; a damaged or unreadable file gives a listing with its error, not an exception."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        return ModelListing(path, None, None, f"cannot read: {exc.strerror or exc}")
    try:
        return ModelListing(path, size, gguf_header.read_header(path))
    except gguf_header.GGUFHeaderError as exc:
        return ModelListing(path, size, None, str(exc))
    except OSError as exc:
        return ModelListing(path, size, None, f"cannot read: {exc.strerror or exc}")


def list_models(places: tuple[str, ...] | None = None) -> list[ModelListing]:
    """Every GGUF file in `places` (folders searched recursively, or files), each once however many places
    reach it. Default: `model_search_dirs()`, skipping those that do not exist; a place given that does not
    exist is a UserError."""
    if places:
        missing = [p for p in places if not Path(os.path.expanduser(p)).exists()]
        if missing:
            raise UserError(f"no such file or folder: {missing[0]}", "pass folders that hold .gguf files, or GGUF files")
    places = places or model_search_dirs()
    files = [Path(os.path.expanduser(p)) for p in places if Path(os.path.expanduser(p)).is_file()]
    files += find_models(tuple(p for p in places if Path(os.path.expanduser(p)).is_dir()))
    seen: set[Path] = set()
    listings = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            listings.append(describe_model(f))
    return listings
