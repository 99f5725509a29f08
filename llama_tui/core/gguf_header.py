"""Read a GGUF file's header: its metadata and tensor table, without loading any weights.

The header is parsed straight from a read-only memory map, so only its pages are touched: reading a
multi-gigabyte model costs milliseconds. Long arrays (the vocabulary, merges, scores) are skipped and
only their length is kept. Every read is bounds-checked against the file, so a damaged or truncated
file raises one `GGUFHeaderError` that says what is wrong, and where, instead of a crash or a hang.

Layout (GGUF v2/v3; v1 used 32-bit counts): magic "GGUF", u32 version, tensor count, metadata
count, the metadata key/value pairs, one info record per tensor (name, dims, ggml type, offset),
then the tensor data, aligned to `general.alignment` (default 32).
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
KEEP_ARRAY_VALUES = 4096  # arrays up to this length keep their values (per-layer settings); longer ones their length
MAX_DIMS = 8

# GGUF metadata value types -> struct format (8 = string and 9 = array are read separately).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFHeaderError(ValueError):
    """The file is not a GGUF file, or its header is damaged or truncated."""


@dataclass(frozen=True)
class GGUFArray:
    """A metadata array: its element type and length; `values` only for arrays of up to KEEP_ARRAY_VALUES."""

    item_type: int
    length: int
    values: tuple[Any, ...] | None


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # from the start of the tensor data
    n_bytes: int | None  # None for a ggml type this gguf package does not know

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class GGUFHeader:
    path: Path
    version: int
    file_size: int
    fields: Mapping[str, Any]  # key -> int | float | bool | str | GGUFArray
    tensors: tuple[TensorInfo, ...]
    data_offset: int  # where the tensor data starts

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    @property
    def architecture(self) -> str | None:
        arch = self.fields.get("general.architecture")
        return arch if isinstance(arch, str) else None

    @property
    def name(self) -> str | None:
        name = self.fields.get("general.name")
        return name if isinstance(name, str) else None

    def arch_field(self, key: str) -> Any:
        """`{architecture}.{key}`, e.g. arch_field("block_count")."""
        return self.fields.get(f"{self.architecture}.{key}") if self.architecture else None

    def arch_int(self, key: str) -> int | None:
        """An integer architecture setting; for a per-layer array, its largest value (what a memory
        estimate must assume)."""
        return as_int(self.arch_field(key))

    def array_length(self, key: str) -> int | None:
        value = self.fields.get(key)
        return value.length if isinstance(value, GGUFArray) else None

    @property
    def context_length(self) -> int | None:
        return self.arch_int("context_length")

    @property
    def parameter_count(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def weights_bytes(self) -> int | None:
        sizes = [t.n_bytes for t in self.tensors]
        return None if None in sizes else sum(sizes)  # type: ignore[arg-type]

    @property
    def file_type(self) -> int | None:
        return as_int(self.fields.get("general.file_type"))

    @property
    def quantization(self) -> str | None:
        """"Q4_K_M", "F16", ... from `general.file_type`; without it, the type holding most weight bytes."""
        from gguf import GGMLQuantizationType, LlamaFileType

        ft = self.file_type
        if ft is not None:
            try:
                return LlamaFileType(ft).name.removeprefix("MOSTLY_").removeprefix("ALL_")
            except ValueError:
                return f"file type {ft}"
        by_type: dict[int, int] = {}
        for t in self.tensors:
            by_type[t.ggml_type] = by_type.get(t.ggml_type, 0) + (t.n_bytes or t.n_elements)
        if not by_type:
            return None
        top = max(by_type, key=by_type.__getitem__)
        try:
            return GGMLQuantizationType(top).name
        except ValueError:
            return f"ggml type {top}"

    def summary(self) -> dict[str, Any]:
        """What `llama-tui model list` shows of a model (the keys of SUMMARY_KEYS), as JSON-able values."""
        return {
            "architecture": self.architecture,
            "name": self.name,
            "parameters": self.parameter_count,
            "quantization": self.quantization,
            "file_type": self.file_type,
            "context_length": self.context_length,
            "tensors": len(self.tensors),
            "gguf_version": self.version,
        }


SUMMARY_KEYS = ("architecture", "name", "parameters", "quantization", "file_type", "context_length", "tensors",
                "gguf_version")


def as_int(value: Any) -> int | None:
    """An integer field's value; for an array of numbers, the largest one."""
    if isinstance(value, GGUFArray):
        numbers = [v for v in value.values or () if isinstance(v, (int, float)) and not isinstance(v, bool)]
        value = max(numbers) if numbers else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value)


class _Cursor:
    """Bounds-checked little-endian reads from a buffer; every overrun is a GGUFHeaderError."""

    def __init__(self, buf: "mmap.mmap | bytes", size: int, count_fmt: str) -> None:
        self.buf, self.size, self.pos, self.count_fmt = buf, size, 0, count_fmt
        self.what = "the header"

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFHeaderError(f"truncated or damaged header at byte {self.pos} (reading {self.what})")

    def unpack(self, fmt: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n)
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return value

    def count(self, min_item_bytes: int = 1) -> int:
        n = self.unpack(self.count_fmt)
        self.need(n * min_item_bytes)  # a count larger than the rest of the file is damage, not a loop
        return n

    def string(self) -> str:
        n = self.count()
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip(self, n: int) -> None:
        self.need(n)
        self.pos += n

    def skip_strings(self, count: int) -> None:
        """Skip `count` strings (a vocabulary has ~10^5): one tight loop, bounds checked as it goes."""
        length = struct.Struct(self.count_fmt)
        unpack, width, buf, pos, size = length.unpack_from, length.size, self.buf, self.pos, self.size
        for _ in range(count):
            if pos + width > size:
                break
            pos += width + unpack(buf, pos)[0]
        else:
            if pos <= size:
                self.pos = pos
                return
        self.pos = min(pos, size)
        raise GGUFHeaderError(f"truncated or damaged header at byte {self.pos} (reading {self.what})")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type = self.unpack("<I")
            if item_type == _ARRAY:
                raise GGUFHeaderError(f"nested arrays are not supported (in {self.what})")
            item_size = struct.calcsize(_SCALARS[item_type]) if item_type in _SCALARS else 8
            if item_type not in _SCALARS and item_type != _STRING:
                raise GGUFHeaderError(f"unknown array element type {item_type} in {self.what}")
            length = self.count(item_size)
            if length <= KEEP_ARRAY_VALUES:
                return GGUFArray(item_type, length, tuple(self.value(item_type) for _ in range(length)))
            if item_type == _STRING:
                self.skip_strings(length)
            else:
                self.skip(length * item_size)
            return GGUFArray(item_type, length, None)
        raise GGUFHeaderError(f"unknown metadata value type {vtype} in {self.what}")


def _tensor_bytes(ggml_type: int, n_elements: int) -> int | None:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        return None
    return n_elements // block * type_size


def read_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Parse `path`'s GGUF header. Raises GGUFHeaderError for a damaged file, OSError if unreadable."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            raise GGUFHeaderError(f"not a GGUF file: only {size} bytes")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(path, buf, size)


def _parse(path: Path, buf: mmap.mmap, size: int) -> GGUFHeader:
    if buf[:4] != GGUF_MAGIC:
        raise GGUFHeaderError(f"not a GGUF file (starts with {bytes(buf[:4])!r}, not b'GGUF')")
    version = struct.unpack_from("<I", buf, 4)[0]
    if version not in (1, 2, 3):
        raise GGUFHeaderError(f"unsupported GGUF version {version}")
    cur = _Cursor(buf, size, "<I" if version == 1 else "<Q")
    cur.pos = 8
    cur.what = "the tensor count"
    n_tensors = cur.count(4 * 5)  # a tensor info record takes at least ~20 bytes
    cur.what = "the metadata count"
    n_kv = cur.count(4 * 3)
    fields: dict[str, Any] = {}
    for i in range(n_kv):
        cur.what = f"metadata key #{i}"
        key = cur.string()
        cur.what = f"metadata {key!r}"
        fields[key] = cur.value(cur.unpack("<I"))
    tensors = []
    for i in range(n_tensors):
        cur.what = f"tensor info #{i}"
        name = cur.string()
        cur.what = f"tensor {name!r}"
        n_dims = cur.unpack("<I")
        if not 0 < n_dims <= MAX_DIMS:
            raise GGUFHeaderError(f"tensor {name!r} has {n_dims} dimensions (damaged header at byte {cur.pos})")
        shape = tuple(cur.unpack(cur.count_fmt) for _ in range(n_dims))
        ggml_type = cur.unpack("<I")
        offset = cur.unpack("<Q")
        n = 1
        for d in shape:
            n *= d
        tensors.append(TensorInfo(name, shape, ggml_type, offset, _tensor_bytes(ggml_type, n)))
    alignment = as_int(fields.get("general.alignment")) or DEFAULT_ALIGNMENT
    data_offset = cur.pos + (-cur.pos % alignment)
    known = [t for t in tensors if t.n_bytes is not None]
    if known:
        end = data_offset + max(t.offset + t.n_bytes for t in known)  # type: ignore[operator]
        if end > size:
            raise GGUFHeaderError(f"truncated: the tensor data needs {end:,} bytes, the file has {size:,}")
    return GGUFHeader(path, version, size, MappingProxyType(fields), tuple(tensors), data_offset)
