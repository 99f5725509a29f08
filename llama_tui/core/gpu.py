"""NVIDIA GPUs through NVML, started lazily. Without a GPU (or a driver) every value is None.

Nothing here raises to the caller: a missing library, driver, device or value becomes None, which the
CLI prints as null and the UI as "n/a".
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str | None
    uuid: str | None
    memory_total_bytes: int | None
    memory_used_bytes: int | None
    util_percent: float | None


class Nvml:
    """A lazily initialised NVML session shared by one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nv: Any = None
        self._tried = False
        self.error: str | None = None
        self._last_util_ts: dict[int, int] = {}

    def _lib(self) -> Any:
        with self._lock:
            if not self._tried:
                self._tried = True
                try:
                    import pynvml

                    pynvml.nvmlInit()
                    self._nv = pynvml
                except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, driver errors
                    self.error = f"{type(exc).__name__}: {exc}"
                    self._nv = None
            return self._nv

    @property
    def available(self) -> bool:
        return self._lib() is not None

    def driver_version(self) -> str | None:
        nv = self._lib()
        return _call(lambda: _text(nv.nvmlSystemGetDriverVersion())) if nv else None

    def _handles(self) -> list[tuple[int, Any]]:
        nv = self._lib()
        if nv is None:
            return []
        count = _call(nv.nvmlDeviceGetCount) or 0
        out = []
        for i in range(count):
            h = _call(lambda i=i: nv.nvmlDeviceGetHandleByIndex(i))
            if h is not None:
                out.append((i, h))
        return out

    def devices(self) -> list[GpuInfo]:
        nv = self._lib()
        out = []
        for i, h in self._handles():
            mem = _call(lambda h=h: nv.nvmlDeviceGetMemoryInfo(h))
            util = _call(lambda h=h: nv.nvmlDeviceGetUtilizationRates(h))
            out.append(GpuInfo(
                index=i,
                name=_call(lambda h=h: _text(nv.nvmlDeviceGetName(h))),
                uuid=_call(lambda h=h: _text(nv.nvmlDeviceGetUUID(h))),
                memory_total_bytes=int(mem.total) if mem is not None else None,
                memory_used_bytes=int(mem.used) if mem is not None else None,
                util_percent=float(util.gpu) if util is not None else None,
            ))
        return out

    def process_memory(self) -> dict[int, int | None]:
        """pid -> GPU memory bytes, summed over devices (compute and graphics processes). A process NVML
        lists without a value (NVML_VALUE_NOT_AVAILABLE: no permission, some containers and MIG setups) maps
        to None, never 0; a process NVML does not list is left out (unknown to the caller, not 0 bytes)."""
        nv = self._lib()
        out: dict[int, int | None] = {}
        unknown: set[int] = set()
        for _, h in self._handles():
            seen: set[int] = set()  # per device: a process in both lists is one process
            for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
                fn = getattr(nv, getter, None)
                procs = _call(lambda fn=fn, h=h: fn(h)) if fn else None
                for p in procs or ():
                    pid = int(p.pid)
                    if pid in seen:
                        continue
                    seen.add(pid)
                    used = getattr(p, "usedGpuMemory", None)
                    if isinstance(used, int) and 0 <= used < (1 << 62):
                        out[pid] = (out.get(pid) or 0) + used
                    else:
                        unknown.add(pid)
        for pid in unknown:
            out[pid] = None  # part of its memory is unknown: so is the total
        return out

    def process_utilization(self) -> dict[int, float] | None:
        """pid -> SM utilisation percent since the previous call (max over devices); a process without a
        sample there was idle. None when no device could answer at all (not supported): unknown, not idle."""
        nv = self._lib()
        out: dict[int, float] = {}
        answered = False
        for i, h in self._handles():
            since = self._last_util_ts.get(i, int((time.time() - 2) * 1e6))
            samples, ok = _samples(lambda h=h, since=since: nv.nvmlDeviceGetProcessUtilization(h, since))
            self._last_util_ts[i] = int(time.time() * 1e6)
            answered = answered or ok
            for s in samples:
                out[int(s.pid)] = max(out.get(int(s.pid), 0.0), float(s.smUtil))
        return out if answered else None

    def shutdown(self) -> None:
        with self._lock:
            if self._nv is not None:
                _call(self._nv.nvmlShutdown)
            self._nv = None
            self._tried = False


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _samples(fn: Any) -> tuple[list[Any], bool]:
    """(samples, whether the device answered). NVML says NOT_FOUND when no process ran since the
    timestamp: an answer (idle), unlike NOT_SUPPORTED or any other error."""
    try:
        return list(fn() or ()), True
    except Exception as exc:
        return [], type(exc).__name__ in ("NVMLError_NotFound", "NVMLError_NoData")


def _call(fn: Any) -> Any:
    try:
        return fn()
    except Exception:
        return None


_shared: Nvml | None = None


def nvml() -> Nvml:
    """The process-wide NVML session."""
    global _shared
    if _shared is None:
        _shared = Nvml()
    return _shared
