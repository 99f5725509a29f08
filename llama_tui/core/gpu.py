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

    def process_memory(self) -> dict[int, int]:
        """pid -> GPU memory bytes, summed over devices (compute and graphics processes)."""
        nv = self._lib()
        out: dict[int, int] = {}
        for _, h in self._handles():
            for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
                fn = getattr(nv, getter, None)
                procs = _call(lambda fn=fn, h=h: fn(h)) if fn else None
                for p in procs or ():
                    used = getattr(p, "usedGpuMemory", None)
                    if isinstance(used, int) and used >= 0 and used < (1 << 62):
                        out[int(p.pid)] = out.get(int(p.pid), 0) + used
                    else:
                        out.setdefault(int(p.pid), 0)
        return out

    def process_utilization(self) -> dict[int, float]:
        """pid -> SM utilisation percent since the previous call (max over devices)."""
        nv = self._lib()
        out: dict[int, float] = {}
        for i, h in self._handles():
            since = self._last_util_ts.get(i, int((time.time() - 2) * 1e6))
            samples = _call(lambda h=h, since=since: nv.nvmlDeviceGetProcessUtilization(h, since))
            self._last_util_ts[i] = int(time.time() * 1e6)
            for s in samples or ():
                out[int(s.pid)] = max(out.get(int(s.pid), 0.0), float(s.smUtil))
        return out

    def shutdown(self) -> None:
        with self._lock:
            if self._nv is not None:
                _call(self._nv.nvmlShutdown)
            self._nv = None
            self._tried = False


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


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
