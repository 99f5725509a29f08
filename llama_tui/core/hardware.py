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
