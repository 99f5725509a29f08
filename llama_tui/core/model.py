"""GGUF models: the tiny random-weight demo model, random models of realistic size, magic-byte checks,
and model discovery.

The tiny model is a real llama-architecture GGUF that llama-server loads and serves. Its weights
are random, so what it writes is noise, but it streams thousands of tokens per second on a CPU,
which is what the demo fleet and the test suite need. Nothing is downloaded.

`RandomModelSpec` writes the same architecture at realistic sizes (up to TinyLlama-1.1B's shape, with a
32000-token vocabulary, in q8_0, f16 or f32) for measuring a GPU fleet without downloading a model.
The writer streams one tensor at a time, so memory stays at the size of the largest tensor.
"""

from __future__ import annotations

import itertools
import math
import os
import string
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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
    spec.validate()
    shape = RandomModelSpec(layers=spec.layers, embd=spec.embd, heads=spec.heads, kv_heads=spec.kv_heads,
                            ff=spec.ff, vocab=len(tiny_vocab()[0]), ctx=spec.ctx, weight_type="f32", seed=spec.seed)
    return _write_llama(out, shape, tiny_vocab(), "llama-tui tiny random model")


# ---------------------------------------------------------------------------------------------- realistic sizes

# Named shapes of `llama-tui model random --params NAME`: (layers, embd, heads, kv_heads, ff). "1b" is
# TinyLlama-1.1B's shape (grouped-query attention, 4 KV heads), so it sizes like a real 1B model.
RANDOM_MODEL_SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "8m": (2, 128, 4, 4, 384),
    "125m": (12, 768, 12, 4, 2048),
    "1b": (22, 2048, 32, 4, 5632),
}
WEIGHT_TYPES = ("q8_0", "f16", "f32")
_FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7}  # llama.cpp's LLAMA_FTYPE_ALL_F32 / MOSTLY_F16 / MOSTLY_Q8_0
_Q8_0_BLOCK = 32  # weights per q8_0 block: an f16 scale, then 32 int8 values


@dataclass(frozen=True)
class RandomModelSpec:
    """A llama-architecture model of any size with random weights and a generated vocabulary."""

    layers: int
    embd: int
    heads: int
    kv_heads: int
    ff: int
    vocab: int = 32000
    ctx: int = 4096
    weight_type: str = "q8_0"
    seed: int = 1234
    size_name: str = "custom"

    @classmethod
    def named(cls, size: str, **overrides: object) -> "RandomModelSpec":
        if size not in RANDOM_MODEL_SIZES:
            raise UserError(f"unknown model size {size!r}", f"pass --params one of {', '.join(RANDOM_MODEL_SIZES)}")
        layers, embd, heads, kv_heads, ff = RANDOM_MODEL_SIZES[size]
        return cls(layers, embd, heads, kv_heads, ff, size_name=size, **overrides)  # type: ignore[arg-type]

    def validate(self) -> None:
        if self.weight_type not in WEIGHT_TYPES:
            raise UserError(f"unknown weight type {self.weight_type!r}", f"pass --type one of {', '.join(WEIGHT_TYPES)}")
        if self.vocab < _MIN_VOCAB or self.vocab > _MAX_VOCAB:
            raise UserError(f"--vocab {self.vocab} is out of range",
                            f"pass a vocabulary size from {_MIN_VOCAB} to {_MAX_VOCAB}, e.g. 32000")
        if self.ctx <= 0 or self.seed < 0:
            raise UserError("--ctx must be positive and --seed not negative", "e.g. --ctx 4096 --seed 1234")
        if min(self.layers, self.embd, self.heads, self.kv_heads, self.ff) <= 0:
            raise UserError("every dimension of the model must be positive", "use a size from --params")
        if self.embd % self.heads or self.heads % self.kv_heads or (self.embd // self.heads) % 2:
            raise UserError(f"embd {self.embd} does not split into {self.heads} even-sized heads "
                            f"({self.kv_heads} KV heads)", "use a size from --params")
        if self.weight_type == "q8_0" and (self.embd % _Q8_0_BLOCK or self.ff % _Q8_0_BLOCK):
            raise UserError(f"q8_0 needs embd and ff divisible by {_Q8_0_BLOCK}", "pass --type f16 or f32")

    @property
    def head_dim(self) -> int:
        return self.embd // self.heads

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, numpy shape) of every tensor, in file order; matrices are (rows = out, cols = in)."""
        d, d_kv, ff = self.embd, self.head_dim * self.kv_heads, self.ff
        out: list[tuple[str, tuple[int, ...]]] = [
            ("token_embd.weight", (self.vocab, d)), ("output_norm.weight", (d,)), ("output.weight", (self.vocab, d))]
        for i in range(self.layers):
            out += [(f"blk.{i}.attn_norm.weight", (d,)), (f"blk.{i}.attn_q.weight", (d, d)),
                    (f"blk.{i}.attn_k.weight", (d_kv, d)), (f"blk.{i}.attn_v.weight", (d_kv, d)),
                    (f"blk.{i}.attn_output.weight", (d, d)), (f"blk.{i}.ffn_norm.weight", (d,)),
                    (f"blk.{i}.ffn_gate.weight", (ff, d)), (f"blk.{i}.ffn_up.weight", (ff, d)),
                    (f"blk.{i}.ffn_down.weight", (d, ff))]
        return out

    def parameters(self) -> int:
        return sum(math.prod(shape) for _, shape in self.tensors())

    def file_name(self) -> str:
        return f"random-{self.size_name}-{self.weight_type}-v{self.vocab}-c{self.ctx}-s{self.seed}.gguf"


_MIN_VOCAB, _MAX_VOCAB = 300, 1 << 18
_SPECIALS = ["<unk>", "<s>", "</s>"]


def make_vocab(size: int) -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece-style vocabulary of exactly `size` distinct tokens: the three specials, the 256
    byte tokens, then "▁" and letter strings of growing length, each alone and with a leading "▁"."""
    from gguf import TokenType

    if size < _MIN_VOCAB:
        raise UserError(f"vocabulary size {size} is too small", f"pass at least {_MIN_VOCAB}")
    tokens = _SPECIALS + [f"<0x{b:02X}>" for b in range(256)]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    n_fixed = len(tokens)

    def pieces() -> Iterator[str]:
        yield "▁"
        for length in itertools.count(1):
            for letters in itertools.product(string.ascii_lowercase, repeat=length):
                word = "".join(letters)
                yield "▁" + word
                yield word

    tokens += itertools.islice(pieces(), size - n_fixed)
    types += [TokenType.NORMAL] * (size - n_fixed)
    scores = [0.0] * n_fixed + [-float(i + 1) for i in range(size - n_fixed)]
    if len(set(tokens)) != size:  # pragma: no cover - guards edits to the generator
        raise AssertionError("generated vocabulary has duplicate token strings")
    return tokens, scores, [int(t) for t in types]


def write_random_model(out: Path, spec: RandomModelSpec) -> Path:
    """Write `spec` as a random-weight llama GGUF to `out` atomically and return the path."""
    spec.validate()
    return _write_llama(out, spec, make_vocab(spec.vocab), f"llama-tui random {spec.size_name} model")


def default_random_path(spec: RandomModelSpec) -> Path:
    return paths.cache_dir() / "models" / spec.file_name()


def _write_llama(out: Path, spec: RandomModelSpec, vocab: tuple[list[str], list[float], list[int]],
                 title: str) -> Path:
    """Stream a llama GGUF to disk one tensor at a time (a 1B model never sits in memory whole)."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    rng = np.random.default_rng(spec.seed)
    tokens, scores, types = vocab

    w = GGUFWriter(str(tmp), "llama")
    w.add_name(title)
    w.add_context_length(spec.ctx)
    w.add_embedding_length(spec.embd)
    w.add_block_count(spec.layers)
    w.add_feed_forward_length(spec.ff)
    w.add_head_count(spec.heads)
    w.add_head_count_kv(spec.kv_heads)
    w.add_rope_dimension_count(spec.head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(_FILE_TYPES[spec.weight_type])
    w.add_vocab_size(len(tokens))
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

    def weights(shape: tuple[int, ...]) -> "np.ndarray":
        if len(shape) == 1:  # norms stay F32 and start at one
            return np.ones(shape, dtype=np.float32)
        rows, cols = shape
        if spec.weight_type == "f32":
            return (rng.standard_normal(shape) * 0.02).astype(np.float32)
        if spec.weight_type == "f16":
            return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)
        # q8_0 written directly: one f16 scale per block, then random int8 values (std ~74 x scale = 0.02)
        blocks = rows * cols // _Q8_0_BLOCK
        buf = np.empty((blocks, 2 + _Q8_0_BLOCK), dtype=np.uint8)
        buf[:, :2] = np.frombuffer(np.float16(0.02 / 74).tobytes(), dtype=np.uint8)
        buf[:, 2:] = np.frombuffer(rng.bytes(blocks * _Q8_0_BLOCK), dtype=np.uint8).reshape(blocks, -1)
        return buf.reshape(rows, -1)

    def info(shape: tuple[int, ...]) -> tuple[tuple[int, ...], "np.dtype", int, object]:
        n = math.prod(shape)
        if len(shape) == 1 or spec.weight_type == "f32":
            return shape, np.dtype(np.float32), 4 * n, None
        if spec.weight_type == "f16":
            return shape, np.dtype(np.float16), 2 * n, None
        byte_shape = (shape[0], shape[1] // _Q8_0_BLOCK * (2 + _Q8_0_BLOCK))
        return byte_shape, np.dtype(np.uint8), math.prod(byte_shape), GGMLQuantizationType.Q8_0

    layout = spec.tensors()
    try:
        for name, shape in layout:
            stored, dtype, nbytes, raw = info(shape)
            w.add_tensor_info(name, stored, dtype, nbytes, raw_dtype=raw)  # type: ignore[arg-type]
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for _, shape in layout:
            w.write_tensor_data(weights(shape))
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
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
