"""Issue 13's front-door and key findings, on a real fleet started through the CLI (llama-server x N +
NGINX + the tiny model): authenticated instances, the allowlist listener, unsafe --extra-args, the public
listener's rules, where the key is kept, and paths with spaces."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import orjson
import psutil
import pytest

from llama_tui.core import fleet
from llama_tui.core.fleet import keys, state

from conftest import free_port, free_port_block, run_cli

pytestmark = pytest.mark.integration

PUBLIC_KEY = "public-key-for-tests-0123"


def up(*extra: str, instances: int = 2) -> tuple[subprocess.CompletedProcess[str], str, int]:
    """`fleet up --detach` of a small fleet: (the process, NGINX's URL, the first instance's port)."""
    base, nport = free_port_block(instances + 1), free_port()
    proc = run_cli("fleet", "up", "--model", "tiny", "--instances", str(instances), "--parallel", "1",
                   "--threads", "1", "--ctx-per-slot", "256", "--base-port", str(base), "--nginx-port", str(nport),
                   "--detach", *extra)
    return proc, f"http://127.0.0.1:{nport}", base


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "(fix: " in lines[0], lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def fleet_dir(isolated_dirs: Path):
    yield isolated_dirs
    fleet.down(isolated_dirs, timeout=5)


def test_instances_answer_only_the_internal_key_and_nginx_serves_only_inference(fleet_dir, tiny_model):
    proc, front, base = up()
    assert proc.returncode == 0, proc.stderr
    key = keys.read_internal_key(fleet_dir)
    assert key and len(key) >= 32
    st = fleet.load_state(fleet_dir)
    for inst in st.instances:
        url = f"http://127.0.0.1:{inst.port}"
        # anyone on loopback: no prompts from /slots, no completions, no metrics; /health stays open
        assert httpx.get(f"{url}/slots", timeout=10).status_code == 401
        assert httpx.get(f"{url}/metrics", timeout=10).status_code == 401
        assert httpx.post(f"{url}/completion", json={"prompt": "x", "n_predict": 2}, timeout=30).status_code == 401
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        assert httpx.get(f"{url}/slots", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code == 200
        # the key travels in the environment, never on the command line
        p = psutil.Process(inst.pid)
        assert key not in " ".join(p.cmdline()) and p.environ()[keys.INSTANCE_KEY_ENV] == key
        assert p.cmdline()[p.cmdline().index("--alias") + 1] == tiny_model.name
    for name in (state.STATE_FILE, state.SPEC_FILE):
        assert key not in (fleet_dir / name).read_text()
    # NGINX sends the internal key for the client (whatever Authorization the client sent)
    for headers in (None, {"Authorization": "Bearer not-the-key-0123456789"}):
        r = httpx.post(f"{front}/completion", json={"prompt": "x", "n_predict": 2}, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
    # the monitor reads /slots with the key: `fleet status` knows the slots
    data = orjson.loads(run_cli("fleet", "status", "--json").stdout)
    assert [i["slots_total"] for i in data["instances"]] == [1, 1]
    # the listener serves the inference routes and /health, nothing else
    for path in ("/tokenize", "/", "/index.html", "/infill", "/apply-template", "/embedding", "/rerank", "/v1/rerank"):
        r = httpx.post(f"{front}{path}", json={"content": "x"}, timeout=10)
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found", path
    for path in ("/props", "/slots", "/metrics"):
        assert httpx.get(f"{front}{path}", timeout=10).status_code == 403, path
    assert httpx.get(f"{front}/health", timeout=10).status_code == 200
    # /v1/models names the model by its file name: no path leaks
    r = httpx.get(f"{front}/v1/models", timeout=10)
    assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == [tiny_model.name]
    assert str(tiny_model.parent) not in r.text


@pytest.mark.parametrize("extra, named", [
    ("--path /etc", ["--path"]),
    ("--tools all --slot-save-path /tmp/slots", ["--tools", "--slot-save-path"]),
    ("--webui-mcp-proxy --media-path /etc --props", ["--webui-mcp-proxy", "--media-path", "--props"]),
    ("--agent", ["--agent"]),
])
def test_unsafe_extra_args_are_refused_naming_each(extra, named, isolated_dirs):
    proc, _, _ = up(f"--extra-args={extra}")  # (`=`: argparse takes a lone "--agent" for an option)
    line = one_line_error(proc, *named, "--allow-unsafe-args")
    assert "--extra-args" in line
    assert not (isolated_dirs / state.STATE_FILE).exists() and state.owned_processes(isolated_dirs) == []


def test_allow_unsafe_args_warns_and_the_listener_still_serves_no_files(fleet_dir, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "secret.txt").write_text("the contents of a private file\n")
    proc, front, base = up("--extra-args", f"--path {shared}", "--allow-unsafe-args", instances=1)
    assert proc.returncode == 0, proc.stderr
    assert "WARNING: --allow-unsafe-args" in proc.stderr and "--path serves the files" in proc.stderr
    key = keys.read_internal_key(fleet_dir)
    direct = httpx.get(f"http://127.0.0.1:{base}/secret.txt", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert direct.status_code == 200 and "private file" in direct.text  # the flag took effect ...
    r = httpx.get(f"{front}/secret.txt", timeout=10)
    assert r.status_code == 404 and "private file" not in r.text  # ... and the listener does not publish it


def test_bad_public_listener_settings_are_refused(isolated_dirs, tmp_path):
    one_line_error(up("--listen", "0.0.0.0")[0], "no API key", "--api-key-file", "--insecure-public")
    one_line_error(up("--listen", "::1%lo")[0], "--listen must be an IP address")
    one_line_error(up("--listen", "fe80::1%eth0", "--api-key", PUBLIC_KEY)[0], "--listen must be an IP address")
    key_file = tmp_path / "good.key"
    key_file.write_text(PUBLIC_KEY + "\n")
    one_line_error(up("--listen", "192.0.2.1", "--api-key-file", str(key_file))[0],  # TEST-NET: not ours
                   "--listen 192.0.2.1 is not an address of this machine")
    one_line_error(up("--api-key", "fifteen-chars-k")[0], "16-200 characters")
    short = tmp_path / "short.key"
    short.write_text("only-12-char\n")
    one_line_error(up("--api-key-file", str(short))[0], "16-200 characters")
    assert not (isolated_dirs / state.STATE_FILE).exists() and state.owned_processes(isolated_dirs) == []


def test_a_public_listener_needs_its_key_keeps_it_out_of_the_state_and_hides_upstreams(fleet_dir):
    proc, front, _ = up("--listen", "0.0.0.0", "--api-key", PUBLIC_KEY)
    assert proc.returncode == 0, proc.stderr
    assert "--api-key KEY on a command line is visible" in proc.stderr and "--api-key-file" in proc.stderr
    body = {"prompt": "x", "n_predict": 2}
    assert httpx.post(f"{front}/completion", json=body, timeout=30).status_code == 401
    r = httpx.post(f"{front}/completion", json=body, headers={"Authorization": f"Bearer {PUBLIC_KEY}"}, timeout=30)
    assert r.status_code == 200 and "x-upstream" not in r.headers  # the internal addresses stay inside
    # the state names a private key file, never the key
    st = fleet.load_state(fleet_dir)
    for name in (state.STATE_FILE, state.SPEC_FILE):
        assert PUBLIC_KEY not in (fleet_dir / name).read_text(), name
    key_file = Path(st.spec["api_key_file"])
    assert st.spec["api_key"] is None and key_file.read_text().strip() == PUBLIC_KEY
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    conf = Path(st.nginx.config_path).read_text()
    assert "limit_conn llama_tui_per_client" in conf and "send_timeout" in conf
    # bench takes the key from a file (nothing in `ps`), and warns about one on its command line
    out = fleet_dir.parent / "bench.json"
    common = ("bench", "--url", front, "--concurrency", "1", "--duration", "1", "--warmup", "0", "--n-predict", "4")
    b = run_cli(*common, "--api-key-file", str(key_file), "--json", str(out))
    assert b.returncode == 0 and "visible to every local user" not in b.stderr, b.stderr
    [step] = orjson.loads(out.read_bytes())["steps"]
    assert step["requests_ok"] > 0 and step["errors"] == 0
    b = run_cli(*common, "--api-key", PUBLIC_KEY)
    assert b.returncode == 0 and "--api-key KEY on a command line is visible" in b.stderr, b.stderr


def test_a_state_dir_with_a_space_works(tmp_path, isolated_dirs):
    sd = tmp_path / "my state; {dir}"
    proc, front, _ = up("--state-dir", str(sd))
    try:
        assert proc.returncode == 0, proc.stderr
        assert httpx.post(f"{front}/completion", json={"prompt": "x", "n_predict": 2}, timeout=30).status_code == 200
    finally:
        fleet.down(sd, timeout=5)
    bad = tmp_path / "cost $HOME"
    one_line_error(up("--state-dir", str(bad))[0], "cannot be written into nginx.conf")
    assert state.owned_processes(bad) == []


@pytest.mark.parametrize("args, needle", [
    (["--out", "{tmp}/cost $HOME"], "cannot be written into nginx.conf"),
    (["--out", "{tmp}/out", "--extra-args=--path /etc"], "--path serves the files"),
])
def test_a_sweep_refuses_what_its_fleets_would_refuse_before_it_starts(args, needle, tmp_path):
    proc = run_cli("sweep", "--model", "tiny", "--instances", "1", "--parallel", "1",
                   *[a.replace("{tmp}", str(tmp_path)) for a in args])
    one_line_error(proc, needle)
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_a_sweep_into_an_out_dir_with_a_space_runs(tmp_path):
    out = tmp_path / "my runs"
    proc = run_cli("sweep", "--model", "tiny", "--instances", "1", "--parallel", "1", "--threads", "1",
                   "--concurrency", "1", "--duration", "1", "--warmup", "0", "--ctx-per-slot", "256",
                   "--base-port", str(free_port_block(2)), "--nginx-port", str(free_port()), "--out", str(out),
                   timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [orjson.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines()]
    assert rows and rows[0]["requests_ok"] > 0 and rows[0]["errors"] == 0
    meta = orjson.loads((out / "metadata.json").read_bytes())
    assert meta["llama_server"]["build_info"]  # read from /props of an instance, with the internal key
    assert os.path.isdir(out)
