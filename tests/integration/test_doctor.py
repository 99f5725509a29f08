"""`llama-tui doctor`: it runs the real llama-server and nginx binaries to report their versions."""

from __future__ import annotations

import orjson
import pytest

from conftest import run_cli

pytestmark = pytest.mark.integration


def test_doctor_json_names_both_binaries():
    proc = run_cli("doctor", "--json")
    data = orjson.loads(proc.stdout)
    assert proc.returncode == 0, data["problems"]
    for key in ("llama_server", "nginx"):
        assert data[key]["path"] and data[key]["version"] and data[key]["works"]
    assert isinstance(data["gpus"], list) and data["problems"] == []
    assert data["cpu"]["physical_cores"] >= 1 and data["memory"]["total_bytes"] > 0
    assert data["python"]["version"].startswith("3.") and data["textual"]["version"]
    assert isinstance(data["nginx"]["stub_status"], bool)


def test_doctor_reports_a_broken_binary_with_its_fix(tmp_path):
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    proc = run_cli("doctor", "--json", env={"LLAMA_SERVER_BIN": str(fake), "NGINX_BIN": str(tmp_path / "none")})
    assert proc.returncode == 1
    problems = orjson.loads(proc.stdout)["problems"]
    assert len(problems) == 2
    assert any(str(fake) in p["problem"] and "LLAMA_SERVER_BIN" in p["fix"] for p in problems)
    assert any("NGINX_BIN" in p["problem"] and p["fix"] for p in problems)


def test_doctor_text_mode():
    proc = run_cli("doctor")
    assert proc.returncode == 0
    assert "llama-server" in proc.stdout and "nginx" in proc.stdout and "ok: both binaries work" in proc.stdout


def _executable(path, text="#!/bin/sh\nexit 0\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_one_lookup_order_for_both_binaries(tmp_path, monkeypatch):
    """$ENV (as given, even if broken), then PATH, then the fallbacks: the cached builds for llama-server,
    the sbin folders for nginx."""
    from llama_tui.core import binaries

    monkeypatch.setenv("LLAMA_TUI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setattr(binaries, "NGINX_SBIN_DIRS", (str(tmp_path / "sbin-a"), str(tmp_path / "sbin-b")))
    for var in ("LLAMA_SERVER_BIN", "NGINX_BIN"):
        monkeypatch.delenv(var, raising=False)
    assert binaries.find_llama_server() == (None, None) and binaries.find_nginx() == (None, None)
    assert binaries.inspect_nginx().problem == "nginx not found"

    other_build = _executable(tmp_path / "cache" / "llama-server" / "other-key" / "llama-server")
    assert binaries.find_llama_server() == (other_build, "cache")  # a build with other CMAKE_ARGS still serves
    ours = _executable(binaries.cached_llama_server())
    assert binaries.find_llama_server() == (ours, "cache")  # this build's key first
    (tmp_path / "sbin-a").mkdir()
    (tmp_path / "sbin-a" / "nginx").write_text("not executable")
    sbin_b = _executable(tmp_path / "sbin-b" / "nginx")
    assert binaries.find_nginx() == (sbin_b, "sbin")  # the first *executable* one

    on_path = _executable(tmp_path / "bin" / "llama-server")
    nginx_on_path = _executable(tmp_path / "bin" / "nginx")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert binaries.find_llama_server() == (on_path, "PATH") and binaries.find_nginx() == (nginx_on_path, "PATH")

    monkeypatch.setenv("LLAMA_SERVER_BIN", str(tmp_path / "missing"))
    monkeypatch.setenv("NGINX_BIN", str(tmp_path / "missing-nginx"))
    assert binaries.find_llama_server() == (tmp_path / "missing", "LLAMA_SERVER_BIN")
    assert binaries.find_nginx() == (tmp_path / "missing-nginx", "NGINX_BIN")
    for info, var in ((binaries.inspect_llama_server(), "LLAMA_SERVER_BIN"), (binaries.inspect_nginx(), "NGINX_BIN")):
        assert not info.works and "not an executable file" in info.problem and var in info.problem and var in info.fix
