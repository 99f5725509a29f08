"""What the GPU check reads off the machine: the cards and their compute processes (nvidia-smi), process
parents (/proc), tool versions, the CMake options a llama.cpp sdist defines, and a build's progress.
Stdlib only.
"""

from __future__ import annotations

import re
import subprocess
import tarfile
import threading
from pathlib import Path
from typing import Any

import gpu_report  # benchmarks/ is this module's own directory


class BuildWatcher:
    """Prints the build's progress ("[n/N]" from ninja, "[ p%]" from make) every 30 s from its log."""

    def __init__(self, build_root: Path, say: Any) -> None:
        self.root, self.say = build_root, say
        self.progress: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _log(self) -> Path | None:
        logs = sorted(self.root.glob("*/build.log"), key=lambda p: p.stat().st_mtime)
        return logs[-1] if logs else None

    def tail(self, n: int) -> str:
        log = self._log()
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:]) + "\n" if log else ""

    def _run(self) -> None:
        while not self._stop.wait(30):
            marks = re.findall(r"^\[\s*(\d+(?:/\d+|%))\]", self.tail(50), re.M)
            if marks:
                self.progress = marks[-1]
                self.say(f"build progress [{self.progress}]")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        marks = re.findall(r"^\[\s*(\d+(?:/\d+|%))\]", self.tail(50), re.M)
        self.progress = marks[-1] if marks else self.progress


def missing_cmake_options(sdist: Path, args: list[str]) -> list[str]:
    """The -D options in `args` that llama.cpp's CMake files in the sdist never mention (CMAKE_* aside)."""
    names = [m.group(1) for a in args for m in [re.match(r"-D([A-Z0-9_]+)=", a)] if m and not m.group(1).startswith("CMAKE_")]
    text = ""
    with tarfile.open(sdist) as tf:
        for member in tf:
            if "/ggml/" in member.name and member.name.endswith(("CMakeLists.txt", ".cmake")):
                f = tf.extractfile(member)
                text += f.read().decode(errors="replace") if f else ""
    return [n for n in names if not re.search(rf"\b{n}\b", text)]


def query_gpus() -> list[dict[str, Any]]:
    text = output(["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total,compute_cap",
                    "--format=csv,noheader,nounits"]) or ""
    gpus = []
    for line in text.strip().splitlines():
        f = [x.strip() for x in line.split(",")]
        if len(f) == 5:
            gpus.append({"index": int(f[0]), "name": f[1], "driver_version": f[2],
                         "memory_total_mib": int(float(f[3])), "compute_cap": f[4]})
    return gpus


def query_compute_apps() -> list[tuple[int, int]]:
    """(pid, used MiB) of every compute process, as nvidia-smi reports them."""
    text = output(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]) or ""
    return gpu_report.parse_compute_apps(text)


def parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def output(cmd: list[str], env: dict[str, str] | None = None) -> str | None:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (p.stdout or "") + (p.stderr or "")
