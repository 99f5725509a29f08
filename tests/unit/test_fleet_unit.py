"""Fleet pieces that need no running fleet: spec validation, commands, state file, liveness, logs."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from llama_tui import cli
from llama_tui.core import config, fleet, hardware, paths
from llama_tui.core.fleet import processes
from llama_tui.core.fleet import state
from llama_tui.core.errors import UserError

from conftest import free_port, free_port_block, run_cli


def _spec(tiny_model: Path, **kw) -> fleet.FleetSpec:
    base = dict(model=tiny_model, instances=2, parallel=2, ctx_per_slot=512, threads=1, base_port=30000,
                nginx_port=29000)
    base.update(kw)
    return fleet.FleetSpec(**base)


def test_command_line_has_host_port_metrics_and_budgeted_threads(tiny_model):
    spec = _spec(tiny_model, threads=None, gpu_layers=99, gpus=(0, 1), extra_args=("--batch-size", "256"))
    t = spec.threads_for(4)
    assert t == max(1, hardware.physical_cores() // 4)
    cmd = spec.command("/bin/llama-server", 3, t)
    assert cmd[:3] == ["/bin/llama-server", "-m", str(tiny_model)]
    for flag, value in (("--host", "127.0.0.1"), ("--port", "30003"), ("-np", "2"), ("-c", "1024"),
                        ("-t", str(t)), ("-tb", str(t)), ("-ngl", "99"), ("--batch-size", "256")):
        assert cmd[cmd.index(flag) + 1] == value
    assert "--metrics" in cmd
    assert [spec.gpu_of(i) for i in range(4)] == [0, 1, 0, 1]
    assert _spec(tiny_model, threads=3).threads_for(8) == 3  # an explicit value wins over the budget


def test_spec_round_trips_and_hides_the_key(tiny_model):
    spec = _spec(tiny_model, api_key="secret-key-123", extra_args=("--batch-size", "64"), gpus=(1,))
    again = fleet.FleetSpec.from_dict(orjson.loads(orjson.dumps(spec.to_dict())))
    assert again == spec
    assert spec.public_dict()["api_key"] == "(set)" and "secret" not in orjson.dumps(spec.public_dict()).decode()


def test_oversubscription_warning():
    assert fleet.oversubscription(2, 1, cores=2) is None
    w = fleet.oversubscription(4, 2, cores=4)
    assert w and "8 threads on 4 physical cores" in w and "--threads 1" in w
    assert "at most 2 instances" in fleet.oversubscription(4, 1, cores=2)


def _settings(**fleet_values):
    cli_values = {f"fleet.{k}": v for k, v in fleet_values.items()}
    return config.load_settings(env={}, cli=cli_values)


@pytest.mark.parametrize("values, cause", [
    ({"host": "0.0.0.0"}, "not a loopback address"),
    ({"host": "192.168.1.5"}, "not a loopback address"),
    ({"extra_args": "--port 9999"}, "must not set --port"),
    ({"extra_args": "-t 4"}, "must not set -t"),
    ({"extra_args": "--ctx-size=8192"}, "must not set --ctx-size"),
    ({"extra_args": "--metrics"}, "must not set --metrics"),
    ({"extra_args": "--no-such-flag 3"}, "--no-such-flag is not a flag"),
    ({"extra_args": "--batch-size '512"}, "cannot parse --extra-args"),
    ({"base_port": 65535, "instances": 2}, "beyond 65535"),
    ({"base_port": 30000, "instances": 4, "nginx_port": 30002}, "collides with the instance ports"),
    ({"listen": "not-an-ip"}, "--listen must be an IP address"),
    ({"model": "/no/such/model.gguf"}, "model file not found"),
    ({"api_key_file": "/no/such/keyfile"}, "cannot read API key file"),
])
@pytest.mark.binaries  # extra args are checked against llama-server --help
def test_bad_fleet_settings_are_one_line_user_errors(values, cause):
    with pytest.raises(UserError) as exc:
        fleet.FleetSpec.from_settings(_settings(**{"model": "tiny", **values}))
    assert cause in exc.value.cause and exc.value.fix


@pytest.mark.binaries
def test_unknown_flag_gets_a_suggestion():
    with pytest.raises(UserError) as exc:
        fleet.FleetSpec.from_settings(_settings(model="tiny", extra_args="--batch-sise 512"))
    assert "did you mean --batch-size" in exc.value.fix


@pytest.mark.binaries
def test_valid_extra_args_and_key_file_are_accepted(tmp_path):
    key = tmp_path / "key"
    key.write_text("\n  abcdefgh12345678  \n")
    spec = fleet.FleetSpec.from_settings(_settings(model="tiny", extra_args="--batch-size 256 --no-warmup",
                                                   api_key_file=str(key), listen="0.0.0.0"))
    assert spec.extra_args == ("--batch-size", "256", "--no-warmup")
    assert spec.api_key_file == str(key) and fleet.exposure_warning(spec) is None
    with pytest.raises(UserError, match="no API key is set"):  # a public listener needs a key ...
        fleet.FleetSpec.from_settings(_settings(model="tiny", listen="0.0.0.0"))
    open_spec = fleet.FleetSpec.from_settings(_settings(model="tiny", listen="0.0.0.0", insecure_public=True))
    assert "WITHOUT an API key" in fleet.exposure_warning(open_spec)  # ... unless --insecure-public, with a warning


def test_a_port_in_use_is_refused_before_anything_starts(tiny_model, isolated_dirs):
    base = free_port_block(2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", base + 1))
        s.listen(1)
        with pytest.raises(UserError) as exc:
            fleet.up(_spec(tiny_model, base_port=base, nginx_port=free_port()), state_dir=isolated_dirs)
    assert f"port {base + 1} (instance 1) is already in use" in exc.value.cause
    assert not (isolated_dirs / state.STATE_FILE).exists()
    assert processes.owned_processes(isolated_dirs) == []


@pytest.mark.parametrize("args, cause", [
    (["--instances", "0"], "--instances"),
    (["--parallel", "-1"], "--parallel"),
    (["--host", "10.0.0.1"], "loopback"),
    (["--extra-args", "--model other.gguf"], "must not set --model"),
    (["--preset", "no-such-preset"], "unknown preset"),
])
@pytest.mark.binaries
def test_cli_bad_input_exits_2_with_one_line(args, cause, capsys):
    code = cli.main(["fleet", "up", "--model", "tiny", "--detach", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and cause in err[0] and "(fix: " in err[0]


@pytest.mark.parametrize("var, cause", [("LLAMA_SERVER_BIN", "LLAMA_SERVER_BIN points at"), ("NGINX_BIN", "NGINX_BIN points at")])
@pytest.mark.binaries  # a broken nginx is found after a working llama-server
def test_a_broken_binary_is_refused_before_anything_starts(var, cause, monkeypatch, tmp_path, isolated_dirs, capsys):
    monkeypatch.setenv(var, str(tmp_path / "no-such-binary"))
    code = cli.main(["fleet", "up", "--model", "tiny", "--detach", "--base-port", str(free_port_block(2)),
                     "--nginx-port", str(free_port())])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and cause in err[0]
    assert processes.owned_processes(isolated_dirs) == [] and not (isolated_dirs / state.STATE_FILE).exists()


def test_logs_follow_survives_rotation(isolated_dirs):
    log = state.instance_log_path(isolated_dirs, 0)
    log.parent.mkdir(parents=True)
    log.write_text("first\n")
    proc = subprocess.Popen([sys.executable, "-m", "llama_tui", "fleet", "logs", "0", "-f"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in iter(proc.stdout.readline, "")], daemon=True).start()
    try:
        assert lines.get(timeout=30) == "first\n"
        with open(log, "a") as f:
            f.write("second\n")
        assert lines.get(timeout=10) == "second\n"
        assert state.rotate_log(log, 3)  # copy + truncate, as the supervisor does
        with open(log, "a") as f:
            f.write("third\n")
        assert lines.get(timeout=10) == "third\n"
    finally:
        proc.send_signal(2)
        proc.wait(timeout=10)
    assert proc.returncode == 0


def test_commands_without_a_fleet(isolated_dirs, capsys):
    for argv in (["fleet", "scale", "3"], ["fleet", "restart"], ["fleet", "policy", "round_robin"]):
        assert cli.main(argv) == 2
        assert "no fleet is running" in capsys.readouterr().err
    assert cli.main(["fleet", "policy", "fastest"]) == 2
    assert "unknown policy" in capsys.readouterr().err
    assert cli.main(["fleet", "down"]) == 0
    assert "no fleet running" in capsys.readouterr().err
    assert cli.main(["fleet", "status"]) == 0
    assert capsys.readouterr().out.strip() == "no fleet running"


# --------------------------------------------------------------------------------------------- state file


def _dead_pid() -> tuple[int, float]:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    started = processes.process_start_time(proc.pid) or time.time()
    proc.wait()
    return proc.pid, started


@pytest.fixture
def stand_in(started, isolated_dirs):
    """Factory: a process standing in for a fleet process (pid, start time), with the fleet's owner
    marker (or, `marker=False`, a stranger's process)."""

    def make(marker: bool = True) -> tuple[int, float]:
        env = {k: v for k, v in os.environ.items() if k != paths.OWNER_ENV}
        if marker:
            env = paths.owner_env(isolated_dirs, env)
        proc = started.add(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], env=env,
                                            start_new_session=True))
        return proc.pid, processes.process_start_time(proc.pid)

    return make


def _write(sd: Path, pid: int | None, started: float | None, supervisor: tuple[int | None, float | None] = (None, None),
           threads: int = 1, n: int = 2) -> None:
    st = state.FleetState(state_dir=str(sd), spec={"host": "127.0.0.1", "parallel": 2, "model": "m.gguf"},
                          status="running", supervisor_pid=supervisor[0], supervisor_started=supervisor[1])
    st.instances = [state.InstanceState(index=i, port=30000 + i, threads=threads, log_path="x", pid=pid,
                                        pid_started=started, state="ready") for i in range(n)]
    st.nginx = state.NginxState(port=29000, listen="0.0.0.0", policy="least_conn", prefix=str(sd / "nginx"))
    state.write_state(sd, st)


def test_state_file_is_private_and_round_trips(isolated_dirs, stand_in):
    _write(isolated_dirs, *stand_in())
    path = isolated_dirs / state.STATE_FILE
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    st = fleet.load_state(isolated_dirs)
    assert st is not None and not st.supervisor_alive and len(st.instances) == 2
    assert st.instance_urls() == ["http://127.0.0.1:30000", "http://127.0.0.1:30001"]
    assert st.nginx_url() == "http://127.0.0.1:29000"  # a wildcard listen is reached on loopback


def test_stale_state_is_detected_and_removed(isolated_dirs):
    pid, started = _dead_pid()
    _write(isolated_dirs, pid, started, supervisor=(pid, started))
    assert fleet.load_state(isolated_dirs) is None
    assert not (isolated_dirs / state.STATE_FILE).exists()


def test_a_reused_pid_is_not_trusted(isolated_dirs, stand_in):
    pid, real = stand_in()
    assert processes.alive(pid, real) and not processes.alive(pid, real - 3600)
    _write(isolated_dirs, pid, real - 3600)  # "our" instance pid now belongs to another process
    assert fleet.load_state(isolated_dirs) is None


def test_a_process_without_our_marker_is_not_ours(isolated_dirs, stand_in):
    stranger, started = stand_in(marker=False)  # the right pid and start time, but not ours
    _write(isolated_dirs, stranger, started)
    assert fleet.load_state(isolated_dirs) is None
    ref = processes.ProcRef(stranger, started, True, "llama-server", paths.owner_marker(isolated_dirs))
    assert not ref.alive() and not ref.signal(signal.SIGKILL)
    assert processes.alive(stranger, started)
    ours, started = stand_in()
    assert processes.ProcRef(ours, started, True, "llama-server", paths.owner_marker(isolated_dirs)).alive()
    assert not processes.ProcRef(ours, started, True, "llama-server", paths.owner_marker(isolated_dirs / "x")).alive()


def test_snapshot_of_an_orphaned_fleet_says_the_supervisor_is_gone(isolated_dirs, stand_in):
    pid, started = _dead_pid()
    _write(isolated_dirs, *stand_in(), supervisor=(pid, started), n=1)
    snap = fleet.snapshot(isolated_dirs, interval=0.05)
    assert snap.running and snap.supervisor_alive is False
    assert any("supervisor" in w and "fleet up" in w for w in snap.warnings)
    assert snap.instances[0].rss_bytes and snap.instances[0].gpu_memory_bytes is None


def test_doctor_warns_about_an_oversubscribed_fleet(isolated_dirs, stand_in):
    threads = hardware.physical_cores()
    _write(isolated_dirs, *stand_in(), threads=threads, n=2)
    proc = run_cli("doctor", "--json")
    data = orjson.loads(proc.stdout)
    assert data["fleet"]["running"] and data["fleet"]["threads"] == 2 * threads
    assert any("oversubscribed" in w for w in data["warnings"])
    assert any("without its supervisor" in w for w in data["warnings"])


def test_doctor_without_a_fleet_has_no_fleet_warning(isolated_dirs):
    data = orjson.loads(run_cli("doctor", "--json").stdout)
    assert data["fleet"] == {"running": False}


# --------------------------------------------------------------------------------------------- logs and paths


def test_rotate_log_caps_size_and_keeps_the_writer(tmp_path):
    log = tmp_path / "instance-0.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.write(fd, b"x" * 5000 + b"\nlast old line\n")
    assert state.rotate_log(log, 1000)
    assert log.stat().st_size == 0
    old = log.with_name("instance-0.log.1")
    assert old.stat().st_size <= 1000 and old.read_bytes().endswith(b"last old line\n")
    os.write(fd, b"new line\n")  # the child keeps writing through its descriptor, at the new start
    os.close(fd)
    assert log.read_bytes() == b"new line\n"
    assert not state.rotate_log(log, 1000)


def test_error_summary_prefers_errors_of_the_last_run(tmp_path):
    log = tmp_path / "i.log"
    log.write_text("--- llama-tui: instance 0 start\nold E error from before\n"
                   "--- llama-tui: instance 0 restart\n0.00.001.000 I srv loading\n"
                   "0.00.002.000 E gguf_init_from_reader: failed to read header\n"
                   "0.00.002.100 E gguf_init_from_reader: failed to read header\n"
                   "0.00.003.000 E srv llama_server: exiting due to model loading error\n")
    text = state.error_summary(log)
    assert text == "gguf_init_from_reader: failed to read header | srv llama_server: exiting due to model loading error"
    assert state.error_summary(tmp_path / "missing.log") == "(the log is empty)"


def test_control_socket_path_stays_short(tmp_path):
    deep = tmp_path / ("d" * 90) / "state"
    p = state.control_path(deep)
    assert len(str(p).encode()) <= 104
    assert state.control_path(tmp_path) == tmp_path.absolute() / "control.sock" or len(str(tmp_path)) > 80


# ------------------------------------------------------------------------------------- CPU pinning

SMT = ((0, 4), (1, 5), (2, 6), (3, 7))  # four physical cores with two hardware threads each


def test_cpu_lists_parse_and_format_like_the_kernel():
    assert hardware._parse_cpu_list("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert hardware.format_cpus([11, 0, 1, 2, 3, 8, 10]) == "0-3,8,10-11"
    assert hardware.format_cpus([5]) == "5" and hardware.format_cpus(None) == "-"


def test_cores_are_allocated_whole_disjoint_and_first_free_first():
    first = hardware.allocate_cores(2, set(), SMT)
    assert first == (0, 4, 1, 5)  # two physical cores with their SMT siblings
    second = hardware.allocate_cores(1, set(first), SMT)
    assert second == (2, 6)
    assert hardware.allocate_cores(2, set(first) | set(second), SMT) is None  # one core left
    assert hardware.allocate_cores(1, {4}, SMT) == (1, 5)  # a core is taken when any of its CPUs is


def test_this_machines_core_groups_cover_its_cpus_once():
    groups = hardware.core_groups()
    cpus = [c for g in groups for c in g]
    assert len(cpus) == len(set(cpus)) == hardware.logical_cores()
    assert len(groups) >= hardware.physical_cores()


def test_pinning_needs_a_core_per_thread(monkeypatch):
    monkeypatch.setattr(hardware, "core_groups", lambda: SMT)
    fleet.FleetSpec.from_settings(_settings(model="tiny", instances=4, threads=1, pin_cpus=True))
    fleet.FleetSpec.from_settings(_settings(model="tiny", instances=2, threads=2, pin_cpus=True))
    with pytest.raises(UserError) as exc:
        fleet.FleetSpec.from_settings(_settings(model="tiny", instances=3, threads=2, pin_cpus=True))
    assert "3 instances x 2 threads need 6 physical cores" in exc.value.cause
    assert "at most 2 instance(s) at --threads 2" in exc.value.fix
    monkeypatch.setattr(hardware, "can_pin", lambda: False)  # macOS
    with pytest.raises(UserError) as exc:
        fleet.FleetSpec.from_settings(_settings(model="tiny", instances=1, pin_cpus=True))
    assert "does not offer" in exc.value.cause and exc.value.fix == "drop --pin-cpus"
    fleet.FleetSpec.from_settings(_settings(model="tiny", instances=1, pin_cpus=False))  # unpinned: fine anywhere


def test_the_pin_trampoline_sets_affinity_then_becomes_the_command(tmp_path):
    from llama_tui.core.fleet.local import pinned

    assert pinned(["/bin/true"], None) == ["/bin/true"]
    cpu = sorted(os.sched_getaffinity(0))[-1]
    proc = subprocess.Popen(pinned([sys.executable, "-c", "import os; print(os.getpid(), sorted(os.sched_getaffinity(0)))"],
                                   [cpu]), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert stdout.split() == [str(proc.pid), f"[{cpu}]"]  # exec, not a child: the recorded pid is the server
    missing = subprocess.run(pinned([str(tmp_path / "no-such-server"), "-m", "x"], [cpu]), capture_output=True,
                             text=True, timeout=30)
    assert missing.returncode == 127 and "cannot start" in missing.stderr and "no-such-server" in missing.stderr


# ------------------------------------------------------------------------------------- hang detection

def test_liveness_tells_a_hung_instance_from_a_busy_one():
    from llama_tui.core.fleet.instances import Liveness

    hung = Liveness(hang_s=10, cpu_fraction=0.05)
    assert hung.observe(0, False, 100.0) is None  # the first unanswered probe opens the window
    assert hung.observe(5, False, 100.1) is None  # not long enough yet
    kind, waited, used = hung.observe(10, False, 100.2)
    assert kind == "hung" and waited == 10 and used == pytest.approx(0.2)

    busy = Liveness(hang_s=10, cpu_fraction=0.05)  # /health queued behind streams, CPU flat out
    busy.observe(0, False, 0.0)
    assert busy.observe(10, False, 8.0) == ("busy", 10, 8.0)
    assert busy.observe(20, False, 16.0) is None  # said once per episode; the window starts again
    kind, waited, used = busy.observe(30, False, 16.1)  # then it stopped using CPU too: hung
    assert kind == "hung" and waited == 10 and used == pytest.approx(0.1)

    flaky = Liveness(hang_s=10, cpu_fraction=0.05)  # an answer in between closes the episode
    flaky.observe(0, False, 0.0)
    assert flaky.observe(9, True, None) is None
    assert flaky.observe(15, False, 0.0) is None and flaky.observe(20, False, 0.0) is None
    assert flaky.observe(25, False, 0.0)[0] == "hung"
    gone = Liveness(hang_s=10)  # a process that is gone is the watch loop's (a crash), not a hang
    gone.observe(0, False, 0.0)
    assert gone.observe(30, False, None) is None


def test_the_control_socket_bounds_connections_request_sizes_and_slow_clients(tmp_path, monkeypatch):
    from llama_tui.core.fleet import control_server

    monkeypatch.setattr(control_server, "READ_TIMEOUT_S", 1.0)
    stop = threading.Event()
    path = tmp_path / "c.sock"
    srv = control_server.ControlServer(path, lambda req: {"echo": req.get("op")}, stop, lambda: False, "log")
    srv.open()

    def ask(payload: bytes, timeout: float = 10.0) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(timeout)
            c.connect(str(path))
            try:
                c.sendall(payload)
            except BrokenPipeError:
                pass  # refused before the request was read: the answer is there to read
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = c.recv(65536)
                if not chunk:
                    break
                buf += chunk
        return orjson.loads(buf)

    try:
        assert ask(b'{"op": "ping"}\n') == {"ok": True, "echo": "ping"}
        # A request larger than the limit is answered with an error, not read forever.
        big = ask(b'{"op": "' + b"x" * (control_server.MAX_REQUEST_BYTES + 10) + b'"}\n')
        assert not big["ok"] and "bytes" in big["error"]
        # Idle connections hold at most MAX_CONNECTIONS slots; one more is told the supervisor is busy.
        idle = []
        for _ in range(control_server.MAX_CONNECTIONS):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(str(path))
            idle.append(c)
        time.sleep(0.3)
        busy = ask(b'{"op": "ping"}\n')
        assert not busy["ok"] and "busy" in busy["error"]
        # A client that never finishes its line is cut off after READ_TIMEOUT_S, freeing its slot.
        t0 = time.monotonic()
        assert idle[0].recv(65536)  # the server's answer to a request that never came
        assert time.monotonic() - t0 < 5
        for c in idle:
            c.close()
        time.sleep(0.3)
        assert ask(b'{"op": "ping"}\n') == {"ok": True, "echo": "ping"}
    finally:
        stop.set()
        srv.close()
