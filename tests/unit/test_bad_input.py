"""Issue 8's bad-input list, end to end through the CLI: each case gets one line that names the cause
and the fix, exit code 2, no traceback, nothing left running and nothing overwritten."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from llama_tui.core import fleet

from conftest import free_port, free_port_block, run_cli

SENTINEL = "precious results: must survive bad input\n"


@dataclass
class Case:
    args: list[str]
    cause: str  # a fragment the one-line message must contain (case-insensitive)
    env: dict[str, str] | None = None
    prepare: Callable[[Path], None] | None = None


def _write(rel: str, data: bytes | str) -> Callable[[Path], None]:
    def prep(tmp: Path) -> None:
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return prep


def _up(*extra: str) -> list[str]:
    return ["fleet", "up", "--model", "tiny", "--instances", "2", "--parallel", "1", "--threads", "1",
            "--ctx-per-slot", "256", "--detach", *extra]


def _bench(*extra: str) -> list[str]:
    return ["bench", "--url", "http://127.0.0.1:{free}", "--concurrency", "4", "--json", "{tmp}/results.json", *extra]


CASES: dict[str, Case] = {
    "model missing": Case(_up("--model", "{tmp}/no such model.gguf"), "model file not found"),
    "model not gguf": Case(_up("--model", "{tmp}/fake.gguf"), "not a gguf file",
                           prepare=_write("fake.gguf", b"PK\x03\x04 this is a zip, not a model")),
    "instances zero": Case(_up("--instances", "0"), "--instances"),
    "parallel negative": Case(_up("--parallel", "-1"), "--parallel"),
    "port out of range": Case(_up("--base-port", "70000"), "port"),
    "nginx port zero": Case(_up("--nginx-port", "0"), "port"),
    "port in use": Case(_up("--nginx-port", "{busy}"), "{busy}"),
    # NGINX just below the 999 instance ports (a random --nginx-port could fall inside their range)
    "more pinned cores than exist": Case(_up("--instances", "999", "--pin-cpus", "--nginx-port", "{free}",
                                             "--base-port", "{after_free}"), "--pin-cpus"),
    "unknown preset": Case(["fleet", "up", "--preset", "no-such-preset", "--detach"], "unknown preset"),
    "preset invalid toml": Case(["fleet", "up", "--preset", "broken", "--detach"], "broken.toml",
                                prepare=_write("config/presets/broken.toml", "[fleet]\ninstances = = 2\n")),
    "bad LLAMA_SERVER_BIN": Case(_up(), "LLAMA_SERVER_BIN", env={"LLAMA_SERVER_BIN": "{tmp}/nope/llama-server"}),
    "LLAMA_SERVER_BIN not working": Case(_up(), "llama-server", env={"LLAMA_SERVER_BIN": "{tmp}/broken-bin"},
                                         prepare=_write("broken-bin", "#!/bin/sh\nexit 1\n")),
    "bad NGINX_BIN": Case(_up(), "NGINX_BIN", env={"NGINX_BIN": "{tmp}/nope/nginx"}),
    "bench url unreachable": Case(["bench", "--url", "http://127.0.0.1:{free}", "--concurrency", "1",
                                   "--duration", "1", "--json", "{tmp}/results.json"], "127.0.0.1:{free}"),
    "bench list malformed": Case(["bench", "--url", "http://127.0.0.1:{free}", "--concurrency", "1,,4"],
                                 "--concurrency"),
    "bench unknown workload": Case(_bench("--workload", "agents"), "unknown workload 'agents'"),
    "bench dataset missing": Case(_bench("--workload", "dataset:{tmp}/none.jsonl"), "none.jsonl does not exist"),
    "bench dataset malformed": Case(_bench("--workload", "dataset:{tmp}/bad.jsonl"), "bad.jsonl line 2: not JSON",
                                    prepare=_write("bad.jsonl", '{"prompt": "fine"}\n{"prompt": "cut off\n')),
    "bench dataset line without prompt": Case(_bench("--workload", "dataset:{tmp}/odd.jsonl"), "odd.jsonl line 1",
                                              prepare=_write("odd.jsonl", '{"question": "?"}\n')),
    "bench prefix groups zero": Case(_bench("--workload", "shared-prefix", "--prefix-groups", "0"), "--prefix-groups"),
    "bench prefix tokens too many": Case(_bench("--workload", "shared-prefix", "--prefix-tokens", "999999999"),
                                         "--prefix-tokens"),
    "bench sessions below concurrency": Case(_bench("--workload", "sessions", "--sessions", "2"), "--sessions 2"),
    "bench turns zero": Case(_bench("--workload", "sessions", "--turns", "0"), "--turns"),
    "bench sessions without the workload": Case(_bench("--sessions", "8"), "--sessions applies"),
    "bench n-predict range malformed": Case(_bench("--n-predict", "64:x"), "--n-predict"),
    "bench unknown policy": Case(_bench("--policies", "least_conn,fastest"), "unknown policy 'fastest'"),
    "bench policies without a fleet": Case(_bench("--policies", "least_conn,hash"), "needs a running fleet"),
    "sweep sessions out of range": Case(["sweep", "--model", "tiny", "--instances", "1", "--parallel", "1",
                                         "--workload", "sessions", "--turns", "5000", "--out", "{tmp}/sweep"],
                                        "--turns"),
    "sweep list malformed": Case(["sweep", "--model", "tiny", "--instances", "1,x", "--parallel", "1",
                                  "--out", "{tmp}/sweep"], "instances"),
    "sweep model missing": Case(["sweep", "--model", "{tmp}/missing.gguf", "--instances", "1", "--parallel", "1",
                                 "--out", "{tmp}/sweep"], "model file not found"),
    # Durations have bounds: inf, nan, negative and huge values are refused (issue 13).
    "down timeout inf": Case(["fleet", "down", "--timeout", "inf"], "--timeout"),
    "down timeout nan": Case(["fleet", "down", "--timeout", "nan"], "--timeout"),
    "down timeout negative": Case(["fleet", "down", "--timeout", "-5"], "--timeout"),
    "down timeout huge": Case(["fleet", "down", "--timeout", "1e12"], "--timeout"),
    "ready timeout nan": Case(_up("--ready-timeout", "nan"), "--ready-timeout"),
    "ready timeout inf": Case(_up("--ready-timeout", "inf"), "--ready-timeout"),
    "bench timeout inf": Case(["bench", "--url", "http://127.0.0.1:{free}", "--timeout", "inf"], "--timeout"),
    "bench drain nan": Case(["bench", "--url", "http://127.0.0.1:{free}", "--drain", "nan"], "--drain"),
    "bench duration inf": Case(["bench", "--url", "http://127.0.0.1:{free}", "--duration", "inf"], "duration"),
    "sweep budget inf": Case(["sweep", "--model", "tiny", "--instances", "1", "--parallel", "1", "--budget", "inf",
                              "--out", "{tmp}/sweep"], "--budget"),
    "sweep warmup nan": Case(["sweep", "--model", "tiny", "--instances", "1", "--parallel", "1", "--warmup", "nan",
                              "--out", "{tmp}/sweep"], "warmup"),
    "sweep repeats zero": Case(["sweep", "--model", "tiny", "--repeats", "0", "--out", "{tmp}/sweep"], "--repeats"),
    "sweep budget negative": Case(["sweep", "--model", "tiny", "--budget", "-2", "--out", "{tmp}/sweep"], "--budget"),
    "sweep adaptive one shape": Case(["sweep", "--model", "tiny", "--adaptive", "--instances", "2", "--parallel", "4",
                                      "--out", "{tmp}/sweep"], "--adaptive"),
}


def _fill(text: str, tmp: Path, ports: dict[str, int]) -> str:
    return text.format(tmp=tmp, **ports)


# the NGINX_BIN case gets past the llama-server check first: it needs the real llama-server
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.binaries) if n == "bad NGINX_BIN" else n
                                  for n in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(name, tmp_path, isolated_dirs):
    case = CASES[name]
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    ports = {"busy": busy.getsockname()[1], "free": free_port()}
    ports["after_free"] = ports["free"] + 1
    try:
        if case.prepare:
            case.prepare(tmp_path)
        # results that bad input must not overwrite
        (tmp_path / "results.json").write_text(SENTINEL)
        (tmp_path / "sweep").mkdir()
        (tmp_path / "sweep" / "results.jsonl").write_text(SENTINEL)
        args = [_fill(a, tmp_path, ports) for a in case.args]
        env = {k: _fill(v, tmp_path, ports) for k, v in (case.env or {}).items()}
        if "--base-port" not in args and args[:2] == ["fleet", "up"]:
            args += ["--base-port", str(free_port_block(3))]
        if "--nginx-port" not in args and args[:2] == ["fleet", "up"]:
            args += ["--nginx-port", str(free_port())]
        proc = run_cli(*args, env=env, timeout=60)
    finally:
        busy.close()
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, err)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    line = lines[0]
    assert line.startswith("error: ") and "(fix: " in line, line
    assert _fill(case.cause, tmp_path, ports).lower() in line.lower(), line
    # nothing running, nothing written over
    assert fleet.load_state(isolated_dirs) is None
    assert (tmp_path / "results.json").read_text() == SENTINEL
    assert (tmp_path / "sweep" / "results.jsonl").read_text() == SENTINEL


@pytest.mark.integration
def test_fleet_up_while_one_runs_is_refused(tmp_path, isolated_dirs):
    base, nport = free_port_block(3), free_port()
    first = run_cli(*_up("--base-port", str(base), "--nginx-port", str(nport)))
    try:
        assert first.returncode == 0, first.stderr
        before = fleet.load_state(isolated_dirs)
        again = run_cli(*_up("--base-port", str(free_port_block(3)), "--nginx-port", str(free_port())))
        line = again.stderr.strip()
        assert again.returncode == 2 and len(line.splitlines()) == 1, line
        assert "already running" in line and "fleet scale" in line and "fleet down" in line
        after = fleet.load_state(isolated_dirs)
        assert [i.pid for i in after.instances] == [i.pid for i in before.instances]  # untouched
    finally:
        fleet.down(isolated_dirs, timeout=5)
