"""Intel AMX: does llama-server's AMX path work on this machine, or must the fleet pass `--no-repack`?

ggml moves quantised weights into an AMX buffer ("repack") when its build carries the AMX kernels
and the CPU advertises AMX. That path crashes llama-server with SIGILL in two cases:

- the kernel (or the hypervisor under it) does not let processes use the AMX tile data
  (`arch_prctl(ARCH_GET_XCOMP_SUPP)` lacks XTILEDATA, bit 18), although /proc/cpuinfo says `amx_tile`;
- the build's tile configuration is a stack struct that GCC optimises away, so `ldtilecfg` loads an
  empty configuration and the next tile instruction raises #UD (llama.cpp PR #26954, open). Seen here:
  gdb stops in `tinygemm_kernel_amx` at `tilezero %tmm4` with a tile config of all zero rows.

Either way `--no-repack` keeps the weights in the plain CPU buffer and the model serves. `decide`
is the pure rule; `machine` and `binary_has_amx_kernels` read the facts once per process.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

SYS_ARCH_PRCTL = 158  # x86-64
ARCH_GET_XCOMP_SUPP = 0x1021
XFEATURE_XTILEDATA = 18
# A string that ggml compiles only together with its AMX kernels (ggml-cpu/amx/amx.cpp, inside
# `#if defined(__AMX_INT8__) && defined(__AVX512VNNI__)`).
AMX_KERNEL_MARK = b"AMX is not ready to be used!"
REPACK_FLAGS = ("--repack", "--no-repack", "-nr")  # -nr: llama-server's short --no-repack
REPACK_ENV = "LLAMA_ARG_REPACK"  # llama-server reads the same choice from its environment


@dataclass(frozen=True)
class AmxFacts:
    advertised: bool  # /proc/cpuinfo has amx_tile (and amx_int8)
    tiledata_usable: bool | None  # the kernel offers XTILEDATA; None: cannot ask (not Linux x86-64)


@dataclass(frozen=True)
class Decision:
    no_repack: bool  # add --no-repack to llama-server's arguments
    reason: str  # one line for doctor and the fleet's progress output; "" when nothing is done


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The `flags` of the first processor in /proc/cpuinfo's text."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def xcomp_supported() -> int | None:
    """The kernel's supported extended-state features (ARCH_GET_XCOMP_SUPP), or None when it cannot be
    asked. Asking changes nothing in this process (unlike ARCH_REQ_XCOMP_PERM)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        mask = ctypes.c_uint64(0)
        if libc.syscall(SYS_ARCH_PRCTL, ARCH_GET_XCOMP_SUPP, ctypes.byref(mask)) != 0:
            return None
        return int(mask.value)
    except (OSError, AttributeError):
        return None


@functools.lru_cache(maxsize=1)
def machine() -> AmxFacts:
    """This machine's AMX facts, read once per process."""
    try:
        flags = cpu_flags(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        flags = frozenset()
    advertised = "amx_tile" in flags and "amx_int8" in flags
    supp = xcomp_supported() if advertised else None
    return AmxFacts(advertised, None if supp is None else bool(supp >> XFEATURE_XTILEDATA & 1))


def _has_mark(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            tail = b""
            while chunk := f.read(1 << 22):
                if AMX_KERNEL_MARK in tail + chunk:
                    return True
                tail = chunk[-len(AMX_KERNEL_MARK):]
    except OSError:
        return False
    return False


@functools.lru_cache(maxsize=8)
def _kernels_cached(path: str, mtime: float) -> bool:
    p = Path(path)
    libs = sorted(p.parent.glob("libggml-cpu*.so*")) + sorted(p.parent.glob("libggml*.so*"))
    return any(_has_mark(f) for f in [p, *dict.fromkeys(libs)])


def binary_has_amx_kernels(llama_server: Path | str) -> bool:
    """Was this llama-server (or the ggml libraries next to it) built with ggml's AMX kernels?"""
    p = Path(llama_server)
    try:
        mtime = p.stat().st_mtime
    except OSError:
        return False
    return _kernels_cached(str(p.resolve()), mtime)


def decide(facts: AmxFacts, has_kernels: bool, extra_args: Sequence[str] = (),
           flags: frozenset[str] | None = None, env_choice: bool = False) -> Decision:
    """Should llama-server get `--no-repack`? `flags`: what this llama-server accepts (None: unknown,
    assumed current). The user's own choice (--repack, --no-repack, -nr, or $LLAMA_ARG_REPACK:
    `env_choice`) always wins."""
    if not facts.advertised or not has_kernels:
        return Decision(False, "")
    if env_choice or any(a in REPACK_FLAGS for a in extra_args):
        return Decision(False, "")
    if flags is not None and "--no-repack" not in flags:
        return Decision(False, "")
    if facts.tiledata_usable is False:
        why = "the CPU advertises AMX but the kernel does not offer its tile data (XTILEDATA)"
    else:
        why = ("this llama-server carries ggml's AMX kernels, which crash with SIGILL on AMX CPUs "
               "(tile config optimised away by the compiler, llama.cpp PR #26954)")
    return Decision(True, f"AMX: {why}; llama-server gets --no-repack (pass --extra-args=--repack to try AMX)")


def for_llama_server(llama_server: Path | str, extra_args: Sequence[str] = ()) -> Decision:
    """The decision for this machine and this llama-server binary (cheap after the first call)."""
    facts = machine()
    if not facts.advertised:
        return Decision(False, "")
    flags = None
    try:
        from llama_tui.core import binaries

        flags = binaries.llama_server_flags(Path(llama_server))
    except Exception:
        flags = None  # cannot read --help: assume a current build
    return decide(facts, binary_has_amx_kernels(llama_server), extra_args, flags or None,
                  env_choice=REPACK_ENV in os.environ)


def with_no_repack(extra_args: Sequence[str], llama_server: Path | str) -> tuple[tuple[str, ...], Decision]:
    """`extra_args` plus `--no-repack` when this machine needs it, and the decision."""
    d = for_llama_server(llama_server, extra_args)
    return ((*extra_args, "--no-repack") if d.no_repack else tuple(extra_args)), d
