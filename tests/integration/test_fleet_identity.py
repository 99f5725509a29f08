"""The state file is never trusted blindly (issue 13, items 3 and 6), on the real stack.

- a damaged fleet.json under a serving fleet: `status` says so (never "no fleet running"), `up`
  refuses without touching the fleet, `down` stops every process of the fleet, NGINX included,
  found by its owner marker;
- a pid in the file that now names a stranger's process is never signalled, whether its start time
  was recorded or not, and an adopted NGINX record that names one is not adopted;
- paths in the file (control socket, logs, NGINX's prefix) are never used: nothing outside the state
  dir is deleted or truncated;
- a state dir (or a socket dir) that is a link, someone else's or writable by others is refused.

The helpers here find the fleet's processes on their own (psutil, the owner marker, NGINX's
command line and its children), not through the code under test.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import pytest

from conftest import free_port, free_port_block, run_cli, wait_for

pytestmark = pytest.mark.integration


def cli_up_args(sd: Path | None, instances: int = 2) -> list[str]:
    return ["fleet", "up", "--model", "tiny", "--instances", str(instances), "--parallel", "1", "--threads", "1",
            "--ctx-per-slot", "256", "--base-port", str(free_port_block(instances)), "--nginx-port", str(free_port()),
            "--detach", *(["--state-dir", str(sd)] if sd is not None else [])]


def cli_up(sd: Path | None, instances: int = 2) -> subprocess.CompletedProcess[str]:
    return run_cli(*cli_up_args(sd, instances))


def fleet_processes(sd: Path) -> list[psutil.Process]:
    """Every live process of the fleet in `sd`: the owner marker, or NGINX with its prefix, and NGINX's
    workers (its children)."""
    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter():
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            ours = p.environ().get("LLAMA_TUI_OWNER") == str(sd)
            cmd = " ".join(p.cmdline())
            if ours and "python" in p.name() and "llama_tui.core.fleet.supervisor" not in cmd:
                continue  # the test's own helpers
            if ours or (p.name().startswith("nginx") and f"-p {sd}/nginx " in cmd + " "):
                found[p.pid] = p
                if not ours:
                    found.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.Error:
            continue
    return list(found.values())


def names(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            out.append(p.name())
        except psutil.Error:
            pass
    return sorted(out)


def state_json(sd: Path) -> dict[str, Any]:
    return orjson.loads((sd / "fleet.json").read_bytes())


def serves(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def nginx_url(data: dict[str, Any]) -> str:
    return f"http://127.0.0.1:{data['nginx']['port']}"


def one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, err)
    assert "Traceback" not in proc.stderr + proc.stdout, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and "(fix: " in err, err
    for f in fragments:
        assert f in err, (f, err)
    return err


def decoy(tmp_path: Path, child: Path | None = None) -> subprocess.Popen:
    """A stranger's process: no owner marker, its own session (it leads a process group), with a
    `child` program running in its group if given."""
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_TUI_OWNER"}
    code = (f"import subprocess; subprocess.Popen([{str(child)!r}, '600']); " if child else "") + \
        "import time; time.sleep(600)"
    return subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True, cwd=tmp_path)


def kill_supervisor(sd: Path) -> None:
    """SIGKILL the supervisor, so that it rewrites fleet.json no more (a test edits it)."""
    pid = state_json(sd)["supervisor_pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 10,
             "the supervisor to die")


def edit_state(sd: Path, change) -> None:
    data = state_json(sd)
    change(data)
    (sd / "fleet.json").write_bytes(orjson.dumps(data))


@pytest.fixture
def stopped(isolated_dirs: Path):
    """Stops a decoy list and whatever fleet is left (by the test's own scan) before the leak check."""
    decoys: list[subprocess.Popen] = []
    yield decoys
    for d in decoys:
        os.killpg(d.pid, signal.SIGKILL)  # with whatever runs in its group
        d.wait()
    for p in fleet_processes(isolated_dirs):
        try:
            p.kill()
        except psutil.Error:
            pass


# --------------------------------------------------------------------------------------------- damaged state


def test_a_damaged_state_file_never_kills_the_serving_fleet(isolated_dirs, stopped):
    sd = isolated_dirs
    up = cli_up(None)
    assert up.returncode == 0, up.stderr
    data = state_json(sd)
    url = nginx_url(data)
    before = fleet_processes(sd)
    assert names(before).count("llama-server") == 2 and "nginx" in names(before) and serves(url)

    # An unbounded timeout is refused in one line, and touches nothing.
    for bad in ("inf", "nan", "-1", "1e9"):
        one_line_error(run_cli("fleet", "down", "--timeout", bad), "--timeout")
    assert serves(url)

    path = sd / "fleet.json"
    damaged = path.read_bytes()[:50]
    path.write_bytes(damaged)  # truncated while the fleet serves

    for args in (["fleet", "status"], ["fleet", "status", "--json"]):
        err = one_line_error(run_cli(*args), "fleet state damaged", str(path), "llama-tui fleet down")
        assert "no fleet running" not in err
    doctor = orjson.loads(run_cli("doctor", "--json").stdout)
    assert "fleet state damaged" in doctor["fleet"]["error"], doctor["fleet"]
    assert any("fleet state damaged" in w for w in doctor["warnings"])
    logs = run_cli("fleet", "logs", "0")  # the logs stay readable
    assert logs.returncode == 0 and "--- llama-tui: instance 0 start" in logs.stdout, logs.stderr
    one_line_error(cli_up(None), "fleet state damaged")  # other ports: refused ...
    assert serves(url)  # ... and the serving fleet untouched
    assert sorted(p.pid for p in fleet_processes(sd)) == sorted(p.pid for p in before)

    down = run_cli("fleet", "down")
    assert down.returncode == 0 and "fleet stopped" in down.stderr, down.stderr
    wait_for(lambda: not fleet_processes(sd), 15, "every process of the fleet to be gone")
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in before)  # NGINX master included
    assert not serves(url)
    assert (sd / "fleet.json.damaged").read_bytes() == damaged and not path.exists()  # kept for a bug report
    assert run_cli("fleet", "status").stdout.strip() == "no fleet running"


def test_without_a_state_file_the_fleet_is_found_by_its_marker(isolated_dirs, stopped):
    sd = isolated_dirs
    assert cli_up(None).returncode == 0
    url = nginx_url(state_json(sd))
    (sd / "fleet.json").unlink()  # lost

    err = one_line_error(run_cli("fleet", "status"), "without a fleet state", "fleet down")
    assert "nginx" in err and "llama-server" in err
    one_line_error(cli_up(None), "without a fleet state")
    assert serves(url)

    down = run_cli("fleet", "down")
    assert down.returncode == 0 and "fleet stopped" in down.stderr, down.stderr
    wait_for(lambda: not fleet_processes(sd), 15, "every process of the fleet to be gone")
    assert not serves(url)


# --------------------------------------------------------------------------------------------- identity


def test_a_recorded_pid_that_names_a_stranger_is_never_signalled(isolated_dirs, tmp_path, stopped):
    sd = isolated_dirs
    assert cli_up(None).returncode == 0
    kill_supervisor(sd)
    fake_nginx = tmp_path / "nginx"  # a stranger's program that happens to be called nginx
    shutil.copy("/bin/sleep", fake_nginx)
    strangers = [decoy(tmp_path), decoy(tmp_path), decoy(tmp_path, child=fake_nginx)]
    stopped.extend(strangers)
    child = wait_for(lambda: psutil.Process(strangers[2].pid).children(), 10, "the stranger's child")[0]
    assert child.name() == "nginx" and os.getpgid(child.pid) == strangers[2].pid
    wait_for(lambda: all(psutil.Process(p.pid).environ() for p in strangers), 10, "the strangers to run")
    started = {p.pid: psutil.Process(p.pid).create_time() for p in strangers}

    def point_at_strangers(data: dict[str, Any]) -> None:
        a, b, c = strangers
        data["instances"][0].update(pid=a.pid, pid_started=started[a.pid])  # a recycled-looking pid
        data["instances"][1].update(pid=b.pid, pid_started=None)  # no start time recorded
        data["nginx"].update(pid=c.pid, pid_started=started[c.pid] - 100)  # a dead master's group id, reused

    edit_state(sd, point_at_strangers)
    down = run_cli("fleet", "down", "--timeout", "3")
    assert down.returncode == 0, down.stderr
    wait_for(lambda: not fleet_processes(sd), 15, "every process of the fleet to be gone")
    assert all(p.poll() is None for p in strangers), "a stranger's process was signalled"
    assert child.is_running() and child.status() != psutil.STATUS_ZOMBIE, \
        "a stranger's process group was killed as NGINX remnants"


def test_an_nginx_record_naming_a_stranger_is_not_adopted(isolated_dirs, tmp_path, stopped):
    sd = isolated_dirs
    assert cli_up(None).returncode == 0
    data = state_json(sd)
    url = nginx_url(data)
    kill_supervisor(sd)
    master = psutil.Process(data["nginx"]["pid"])
    workers = master.children()
    for p in [master, *workers]:
        p.kill()
    psutil.wait_procs([master, *workers], timeout=10)
    stranger = decoy(tmp_path)
    stopped.append(stranger)
    wait_for(lambda: psutil.Process(stranger.pid).environ(), 10, "the stranger to run")
    edit_state(sd, lambda d: d["nginx"].update(pid=stranger.pid, pid_started=psutil.Process(stranger.pid).create_time()))

    up = cli_up(None)  # adopts the fleet: the NGINX record names a stranger, so NGINX is started anew
    assert up.returncode == 0, up.stderr
    wait_for(lambda: serves(url), 20, "a new NGINX to serve")
    assert state_json(sd)["nginx"]["pid"] != stranger.pid
    assert run_cli("fleet", "policy", "round_robin").returncode == 0  # a reload (SIGHUP) goes to our NGINX
    assert run_cli("fleet", "down").returncode == 0
    wait_for(lambda: not fleet_processes(sd), 15, "every process of the fleet to be gone")
    assert stranger.poll() is None


def test_paths_in_the_state_file_are_never_used(isolated_dirs, tmp_path, stopped):
    sd = isolated_dirs
    precious = tmp_path / "precious.txt"
    victim_log = tmp_path / "victim.log"
    elsewhere = tmp_path / "elsewhere"
    precious.write_text("do not delete\n")
    victim_log.write_text("x" * 5000)
    assert cli_up(None).returncode == 0
    url = nginx_url(state_json(sd))
    kill_supervisor(sd)

    def point_outside(data: dict[str, Any]) -> None:
        data["control"] = str(precious)
        data["instances"][0]["log_path"] = str(victim_log)
        data["nginx"]["prefix"] = str(elsewhere)
        data["nginx"]["error_log"] = str(precious)

    edit_state(sd, point_outside)
    # A new supervisor adopts the fleet and caps its logs (here at 1000 bytes) every second.
    up = run_cli("fleet", "up", "--detach", env={"LLAMA_TUI_LOG_MAX_BYTES": "1000"})
    assert up.returncode == 0 and "adopting" in up.stderr, up.stderr
    time.sleep(2.5)
    assert victim_log.read_text() == "x" * 5000 and not victim_log.with_name("victim.log.1").exists()
    assert not elsewhere.exists() and serves(url)
    assert run_cli("fleet", "down").returncode == 0
    assert precious.read_text() == "do not delete\n"

    # Stale state (nothing runs) is removed, and only the files a state dir has.
    (sd / "fleet.json").write_bytes(orjson.dumps({"state_dir": str(sd), "spec": {}, "control": str(precious),
                                                  "supervisor_pid": 999999, "instances": []}))
    assert run_cli("fleet", "status").stdout.strip() == "no fleet running"
    assert precious.exists() and not (sd / "fleet.json").exists()


# --------------------------------------------------------------------------------------------- directories


def _others_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    os.chown(path, 65534, 65534)
    return path


@pytest.mark.parametrize("kind", ["symlink", "world-writable", "group-writable", "another user's"])
def test_a_state_or_out_dir_we_cannot_trust_is_refused(kind, tmp_path, isolated_dirs):
    if kind == "another user's" and os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    target = tmp_path / "real"
    if kind == "symlink":
        target.mkdir(mode=0o700)
        sd = tmp_path / "link"
        sd.symlink_to(target)
        cause = "symbolic link"
    elif kind == "another user's":
        sd = _others_dir(target)
        cause = "belongs to user id 65534"
    else:
        target.mkdir()
        os.chmod(target, 0o777 if kind == "world-writable" else 0o770)
        sd = target
        cause = "can be written by other users"
    for args in (["fleet", "status", "--state-dir", str(sd)], ["fleet", "down", "--state-dir", str(sd)]):
        one_line_error(run_cli(*args), str(sd), cause)
    one_line_error(cli_up(sd), str(sd), cause)
    env_err = run_cli("fleet", "status", env={"LLAMA_TUI_STATE_DIR": str(sd)})
    one_line_error(env_err, str(sd), cause)
    sweep = run_cli("sweep", "--model", "tiny", "--instances", "1", "--parallel", "1", "--concurrency", "1",
                    "--duration", "1", "--out", str(sd))
    one_line_error(sweep, str(sd), cause)
    assert sorted(os.listdir(target)) == []  # nothing written there
    assert fleet_processes(sd) == [] and fleet_processes(target) == []


def test_the_socket_dir_of_another_user_is_refused(tmp_path, isolated_dirs):
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    _others_dir(tmp / f"llama-tui-{os.geteuid()}")  # created first by someone else
    long_sd = tmp_path / ("s" * 100) / "state"  # too long for a socket inside it
    up = run_cli(*cli_up_args(long_sd, instances=1), env={"TMPDIR": str(tmp), "XDG_RUNTIME_DIR": ""})
    err = one_line_error(up, f"llama-tui-{os.geteuid()}", "belongs to user id 65534")
    assert str(tmp) in err
    assert fleet_processes(long_sd) == []


def test_sockets_go_under_xdg_runtime_dir(tmp_path, isolated_dirs, stopped):
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    long_sd = tmp_path / ("s" * 100) / "state"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"XDG_RUNTIME_DIR": str(xdg), "TMPDIR": str(tmp)}
    try:
        up = run_cli(*cli_up_args(long_sd), env=env)
        assert up.returncode == 0, up.stderr
        socks = sorted(p.name for p in (xdg / "llama-tui").iterdir())
        assert any(s.endswith(".ctl") for s in socks) and any(s.endswith(".sock") for s in socks), socks
        assert oct((xdg / "llama-tui").stat().st_mode & 0o777) == "0o700"
        assert not list(tmp.iterdir())  # nothing in the temp dir
        scale = run_cli("fleet", "scale", "1", "--state-dir", str(long_sd), env=env)  # through the control socket
        assert scale.returncode == 0, scale.stderr
    finally:
        assert run_cli("fleet", "down", "--state-dir", str(long_sd), env=env).returncode == 0
    assert not [p for p in (xdg / "llama-tui").iterdir() if p.name.endswith(".ctl")]

