"""CPU and memory facts about this machine (GPUs live in `gpu`)."""

from __future__ import annotations

import os
import platform
from functools import lru_cache

import psutil


@lru_cache(maxsize=1)
def physical_cores() -> int:
    """Physical cores usable by this process (llama.cpp's thread default is per physical core)."""
    logical = logical_cores()
    phys = psutil.cpu_count(logical=False) or logical
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = logical
    # In a container limited to fewer CPUs than the host has, the affinity mask is the truth.
    return max(1, min(phys, affinity))


@lru_cache(maxsize=1)
def logical_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory() -> tuple[int, int]:
    """(total, available) bytes of RAM."""
    vm = psutil.virtual_memory()
    return int(vm.total), int(vm.available)


def thread_budget(instances: int, cores: int | None = None) -> int:
    """Threads per instance so that instances x threads <= physical cores (at least 1)."""
    cores = physical_cores() if cores is None else cores
    return max(1, cores // max(1, instances))


def _parse_cpu_list(text: str) -> set[int]:
    """A kernel CPU list ("0-3,8,10-11") as a set."""
    out: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _siblings(cpu: int) -> set[int]:
    try:
        with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list") as f:
            return _parse_cpu_list(f.read())
    except (OSError, ValueError):
        return {cpu}


def can_pin() -> bool:
    """Whether this OS lets a process restrict the CPUs it runs on (Linux does; macOS does not)."""
    return hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity")


@lru_cache(maxsize=1)
def core_groups() -> tuple[tuple[int, ...], ...]:
    """The logical CPUs this process may use, one group per physical core (SMT siblings together), in
    CPU order. Without topology (or affinity) every logical CPU is its own group."""
    try:
        allowed = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return tuple((c,) for c in range(logical_cores()))
    groups: list[tuple[int, ...]] = []
    seen: set[int] = set()
    for cpu in sorted(allowed):
        if cpu in seen:
            continue
        group = tuple(sorted((_siblings(cpu) & allowed) | {cpu}))
        seen.update(group)
        groups.append(group)
    return tuple(groups)


def allocate_cores(threads: int, used: set[int], groups: tuple[tuple[int, ...], ...] | None = None
                   ) -> tuple[int, ...] | None:
    """The logical CPUs of the first `threads` physical cores none of whose CPUs is in `used`, or None
    when fewer are free. An instance pinned to them gets one core per thread, disjoint from the others."""
    groups = core_groups() if groups is None else groups
    free = [g for g in groups if not used.intersection(g)]
    if len(free) < threads:
        return None
    return tuple(c for g in free[:threads] for c in g)


def format_cpus(cpus: tuple[int, ...] | list[int] | None) -> str:
    """CPUs as a kernel CPU list ("0-3,8"), or "-" for none."""
    if not cpus:
        return "-"
    cs = sorted(set(cpus))
    parts, start, prev = [], cs[0], cs[0]
    for c in cs[1:] + [None]:  # type: ignore[list-item]
        if c is not None and c == prev + 1:
            prev = c
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if c is not None:
            start = prev = c
    return ",".join(parts)
