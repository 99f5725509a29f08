"""Security rules of issue 8: a private state dir, no shell, loopback-only instances, admin endpoints
refused and an API key enforced on a public listener."""

from __future__ import annotations

import ast
import stat
from pathlib import Path

import httpx
import psutil
import pytest

from llama_tui.core import fleet

from conftest import REPO, free_port, free_port_block, run_cli


def _python_files() -> list[Path]:
    return sorted((REPO / "llama_tui").rglob("*.py"))


def test_no_shell_is_ever_given_a_string():
    offenders = []
    for path in _python_files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = ast.unparse(node.func)
                if func in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
                    offenders.append(f"{path}:{node.lineno} {func}")
                for kw in node.keywords:
                    if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                        offenders.append(f"{path}:{node.lineno} shell=")
    assert offenders == []


@pytest.mark.integration
def test_state_dir_is_private_and_instances_stay_on_loopback(isolated_dirs, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-key-for-tests\n")
    port = free_port()
    up = run_cli("fleet", "up", "--model", "tiny", "--instances", "2", "--parallel", "1", "--threads", "1",
                 "--ctx-per-slot", "256", "--base-port", str(free_port_block(3)), "--nginx-port", str(port),
                 "--listen", "0.0.0.0", "--api-key-file", str(key_file), "--detach")
    try:
        assert up.returncode == 0, up.stderr
        # some traffic, so that every log exists
        r = httpx.post(f"http://127.0.0.1:{port}/completion", headers={"Authorization": "Bearer s3cret-key-for-tests"},
                       json={"prompt": "x", "n_predict": 4}, timeout=30)
        assert r.status_code == 200
        # the key is enforced and the admin endpoints are refused on the public listener
        assert httpx.post(f"http://127.0.0.1:{port}/completion", json={"prompt": "x", "n_predict": 1},
                          timeout=30).status_code == 401
        for admin in ("/slots", "/metrics", "/props"):
            resp = httpx.get(f"http://127.0.0.1:{port}{admin}",
                             headers={"Authorization": "Bearer s3cret-key-for-tests"}, timeout=10)
            assert resp.status_code == 403, admin
        # instances listen on loopback only, even though NGINX listens on every interface
        state = fleet.load_state(isolated_dirs)
        for inst in state.instances:
            addrs = {c.laddr.ip for c in psutil.Process(inst.pid).net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN}
            assert addrs and all(a.startswith("127.") or a == "::1" for a in addrs), addrs
        # everything under the state dir is private
        loose = []
        for p in [isolated_dirs, *isolated_dirs.rglob("*")]:
            st = p.lstat()
            if stat.S_ISDIR(st.st_mode):
                if stat.S_IMODE(st.st_mode) != 0o700:
                    loose.append(f"{p} {oct(stat.S_IMODE(st.st_mode))}")
            elif stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != 0o600:
                loose.append(f"{p} {oct(stat.S_IMODE(st.st_mode))}")
        assert loose == []
        assert "s3cret-key-for-tests" not in (isolated_dirs / "fleet.json").read_text()
    finally:
        fleet.down(isolated_dirs, timeout=5)
