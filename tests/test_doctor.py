from __future__ import annotations

import orjson

from conftest import run_cli


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
