"""Will a fleet shape fit in memory? An estimate from the GGUF metadata, checked before launching.

    weights   the tensors' bytes (from the GGUF tensor table)
    KV cache  per slot = n_layers x ctx_per_slot x n_kv_heads x (head_dim_k x K size + head_dim_v x V size)
    overhead  per instance: compute buffers and the logits of one micro-batch (a rough allowance)

On a CPU the weights are memory-mapped and shared by every instance through the page cache, so the
fleet needs the weights once plus, per instance, its slots' KV cache and overhead. Layers offloaded
to a GPU (`--n-gpu-layers`) are copied into each instance's own VRAM together with their share of
the KV cache, plus a CUDA context per process and device; that is compared with free VRAM (NVML):
- pinned (`--gpus`): each instance sees one GPU (round-robin); the instances on a GPU add up there;
- not pinned: each instance sees every GPU and llama.cpp splits its layers across them in proportion
  to their free memory, so its weights and KV cache spread over the GPUs' summed free memory, while
  its compute buffers and CUDA context are paid on every device.

The estimate is deliberately simple: it exists to skip shapes that plainly cannot fit, not to
replace llama-server's own allocator. A launch that still fails for memory is recognised from the
instance's log (`is_memory_failure`) and recorded as such.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from llama_tui.core import gguf_header

MIB = 1 << 20
# Bytes per element of llama-server's KV cache types (--cache-type-k / --cache-type-v); quantised
# types store blocks of 32 values.
CACHE_TYPE_BYTES = {
    "f32": 4.0, "f16": 2.0, "bf16": 2.0,
    "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32, "iq4_nl": 18 / 32, "q5_0": 22 / 32, "q5_1": 24 / 32,
}
BASE_OVERHEAD = 96 * MIB  # per instance: compute graph, server state
# Per process and GPU: the CUDA context and its kernels, which NVML counts in the process's memory. An
# allowance, not a measurement: replace it with the figure `benchmarks/gpu_check.sh` measures.
GPU_CONTEXT = 256 * MIB
DEFAULT_UBATCH = 512
HEADROOM = 0.90  # use at most this share of the free memory


@dataclass(frozen=True)
class ModelFacts:
    arch: str | None
    name: str | None
    n_layers: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_vocab: int
    n_ctx_train: int | None
    weights_bytes: int

    def kv_bytes_per_slot(self, ctx_per_slot: int, k_type: str = "f16", v_type: str = "f16") -> int:
        k = CACHE_TYPE_BYTES.get(k_type, 2.0)
        v = CACHE_TYPE_BYTES.get(v_type, 2.0)
        per_token = self.n_layers * self.n_head_kv * (self.head_dim_k * k + self.head_dim_v * v)
        return int(per_token * ctx_per_slot)


def read_model_facts(model: Path) -> ModelFacts:
    """Read what the estimate needs from a GGUF file's header (`gguf_header`: the header alone, nothing
    loaded; 0.05-0.13 s for Gemma 3 270M where gguf's GGUFReader took 17 s on a loaded box)."""
    h = gguf_header.read_header(model)
    n_embd = h.arch_int("embedding_length") or 0
    n_head = h.arch_int("attention.head_count") or 1
    default_hd = n_embd // n_head if n_head else 0
    return ModelFacts(
        arch=h.architecture, name=h.name, n_layers=h.arch_int("block_count") or 0, n_embd=n_embd, n_head=n_head,
        n_head_kv=h.arch_int("attention.head_count_kv") or n_head,
        head_dim_k=h.arch_int("attention.key_length") or default_hd,
        head_dim_v=h.arch_int("attention.value_length") or default_hd,
        n_vocab=h.arch_int("vocab_size") or h.array_length("tokenizer.ggml.tokens") or 0,
        n_ctx_train=h.context_length, weights_bytes=h.weights_bytes or 0,
    )


# --------------------------------------------------------------------------------------------- estimates


@dataclass(frozen=True)
class Estimate:
    """What one shape needs. Bytes; `vram_per_instance` is 0 without GPU offload and holds one device's
    fixed costs (overhead and CUDA context); an instance spread over several GPUs pays those on each."""

    weights_bytes: int
    kv_per_slot_bytes: int
    ram_bytes: int  # the whole fleet, weights counted once (shared mmap)
    vram_per_instance_bytes: int
    overhead_per_instance_bytes: int


def cache_types(extra_args: Sequence[str] | str = ()) -> tuple[str, str]:
    """The KV cache element types named in llama-server arguments (default f16, f16)."""
    args = shlex.split(extra_args) if isinstance(extra_args, str) else list(extra_args)
    k = v = "f16"
    for i, a in enumerate(args[:-1]):
        if a in ("-ctk", "--cache-type-k"):
            k = args[i + 1]
        elif a in ("-ctv", "--cache-type-v"):
            v = args[i + 1]
    return k, v


def estimate(facts: ModelFacts, instances: int, parallel: int, ctx_per_slot: int, gpu_layers: int | None = None,
             ubatch: int | None = None, extra_args: Sequence[str] | str = ()) -> Estimate:
    k, v = cache_types(extra_args)
    kv_slot = facts.kv_bytes_per_slot(ctx_per_slot, k, v)
    kv_instance = kv_slot * parallel
    overhead = BASE_OVERHEAD + facts.n_vocab * (ubatch or DEFAULT_UBATCH) * 4  # logits of one micro-batch
    offloaded = 0.0
    if gpu_layers and facts.n_layers:
        offloaded = min(1.0, gpu_layers / facts.n_layers)
    vram = int((facts.weights_bytes + kv_instance) * offloaded + (overhead + GPU_CONTEXT if offloaded else 0))
    ram = int(facts.weights_bytes * (1 - offloaded)) + instances * (int(kv_instance * (1 - offloaded)) + overhead)
    return Estimate(facts.weights_bytes, kv_slot, ram, vram, overhead)


@dataclass(frozen=True)
class FitCheck:
    fits: bool
    where: str  # "RAM" or "VRAM gpu N"
    need_bytes: int
    free_bytes: int | None
    reason: str  # one line for results and the report


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / MIB:,.0f} MiB"


def check(est: Estimate, instances: int, free_ram: int, gpu_free: dict[int, int] | None = None,
          gpus: Sequence[int] = ()) -> FitCheck:
    """Compare an estimate with free memory. `gpu_free` maps GPU index -> free bytes (None: no NVML)."""
    budget = int(free_ram * HEADROOM)
    if est.ram_bytes > budget:
        return FitCheck(False, "RAM", est.ram_bytes, free_ram,
                        f"needs ~{_mib(est.ram_bytes)} of RAM, {_mib(free_ram)} free")
    if est.vram_per_instance_bytes and gpu_free:
        for d, n in sorted(vram_need(est, instances, gpu_free, gpus).items()):
            free = gpu_free.get(d)
            if free is not None and n > int(free * HEADROOM):
                return FitCheck(False, f"VRAM gpu {d}", n, free,
                                f"needs ~{_mib(n)} of VRAM on GPU {d}, {_mib(free)} free")
    return FitCheck(True, "RAM", est.ram_bytes, free_ram, f"needs ~{_mib(est.ram_bytes)} of RAM")


def vram_need(est: Estimate, instances: int, gpu_free: dict[int, int], gpus: Sequence[int] = ()) -> dict[int, int]:
    """GPU index -> bytes the fleet needs there. Pinned (`gpus`): instance i gets GPU gpus[i % len] alone.
    Not pinned: every instance spreads its layers over all GPUs in proportion to their free memory and
    pays its fixed costs (compute buffers, CUDA context) on each of them."""
    need: dict[int, int] = {}
    if gpus:
        for i in range(instances):
            d = gpus[i % len(gpus)]
            need[d] = need.get(d, 0) + est.vram_per_instance_bytes
        return need
    fixed = est.overhead_per_instance_bytes + GPU_CONTEXT
    spread = max(0, est.vram_per_instance_bytes - fixed)
    total_free = sum(max(0, f) for f in gpu_free.values())
    for d, free in gpu_free.items():
        share = max(0, free) / total_free if total_free else 1 / len(gpu_free)
        need[d] = instances * (int(spread * share) + fixed)
    return need


def free_memory(want_gpu: bool) -> tuple[int, dict[int, int] | None]:
    """(available RAM bytes, {gpu index: free VRAM bytes} or None when no GPU is asked for or known)."""
    from llama_tui.core import gpu, hardware

    _, available = hardware.memory()
    if not want_gpu:
        return available, None
    devices = gpu.nvml().devices()
    if not devices:
        return available, None
    out = {}
    for d in devices:
        if d.memory_total_bytes is not None and d.memory_used_bytes is not None:
            out[d.index] = d.memory_total_bytes - d.memory_used_bytes
    return available, out or None


# --------------------------------------------------------------------------------------------- failures

_MEMORY_PATTERNS = re.compile(
    r"out of memory|failed to allocate|unable to allocate|cannot allocate memory|std::bad_alloc|"
    r"cudaMalloc failed|ErrorOutOfDeviceMemory|insufficient memory|not enough memory|"
    r"kv cache.*(?:failed|too large)|mmap failed",
    re.IGNORECASE,
)


def is_memory_failure(text: str) -> bool:
    """Does a failed instance's log (or error message) say it ran out of memory?"""
    return bool(_MEMORY_PATTERNS.search(text or ""))
