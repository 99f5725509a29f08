"""The child-process protocol (core/childproc.py): the wire, the event stream, stopping by signal,
and both ends against a tiny job (tests/support/tiny_child.py), no llama-server needed."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from pathlib import Path

import orjson
import psutil
import pytest

from llama_tui.core import paths
from llama_tui.core.childproc import EventStream, EventWriter, json_lines, stop_on_signals, write_line
from llama_tui.core.errors import UserError
from llama_tui.core.snapshots import StepVerdict
from tests.support.tiny_child import Tick, TinyProcess


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _first(proc: TinyProcess) -> Tick:
    tick = next(iter(proc.events(timeout=30)), None)
    assert tick is not None, proc.error
    return tick


# ------------------------------------------------------------------------------------------------ the wire


def test_pipes_carry_one_object_per_line_and_skip_the_rest():
    buf = io.BytesIO()
    write_line(buf, {"t": "live", "n": 1})
    buf.write(b"not json\n[1, 2]\n")
    write_line(buf, {"t": "partial", 3: "x"}, orjson.OPT_NON_STR_KEYS)
    assert list(json_lines(io.BytesIO(buf.getvalue()))) == [{"t": "live", "n": 1}, {"t": "partial", "3": "x"}]


def test_every_event_is_its_tag_and_a_payload_under_it():
    buf = io.BytesIO()
    writer = EventWriter(buf)
    verdict = StepVerdict(1, "c=4", 90.5, False, "client saturated")
    writer.send("verdict", verdict)  # a snapshot goes as its to_json()
    writer.send("result", {"out": Path("/x/r.json"), "by": {2: 1}})  # paths as text, int keys as strings
    first, second = json_lines(io.BytesIO(buf.getvalue()))
    assert first == {"t": "verdict", "verdict": verdict.to_json()}
    assert StepVerdict.from_json(first["verdict"]) == verdict
    assert second == {"t": "result", "result": {"out": "/x/r.json", "by": {"2": 1}}}


def test_every_consumer_sees_the_end_and_drain_does_not_block():
    s: EventStream[int] = EventStream()
    s.put(1)
    s.put(2)
    assert s.drain() == [1, 2] and s.drain() == []
    t = threading.Timer(0.05, lambda: (s.put(3), s.close()))
    t.start()
    assert list(s.iter()) == [3]
    assert list(s.iter()) == [] and s.drain() == []  # a later consumer stops at once too
    t.join()


def test_iter_gives_up_after_the_timeout():
    s: EventStream[int] = EventStream()
    s.put(7)
    assert list(s.iter(timeout=0.05)) == [7]


# ------------------------------------------------------------------------------------------------ signals


def test_sigterm_and_sigint_ask_for_a_graceful_stop_and_a_second_sigint_interrupts():
    stop = threading.Event()
    told: list[str] = []
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with stop_on_signals(stop, lambda: told.append("stopping")):
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stop.is_set() and told == ["stopping"]
        os.kill(os.getpid(), signal.SIGTERM)  # again: still graceful, told once
        time.sleep(0.05)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    assert told == ["stopping"]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_off_the_main_thread_signals_are_left_alone():
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def other() -> None:
        with stop_on_signals(threading.Event()):
            seen.append(signal.getsignal(signal.SIGTERM))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen == [before]


# ------------------------------------------------------------------------------------------------ both ends


def test_events_stream_typed_and_stop_ends_gracefully_with_the_result():
    proc = TinyProcess({"do": "tick"})
    try:
        assert os.getpgid(proc.pid) == proc.pid  # its own process group
        assert psutil.Process(proc.pid).environ().get(paths.OWNER_ENV) == paths.owner_marker()
        assert _first(proc) == Tick(1) and not proc.done()
        proc.stop()
        result = proc.result(timeout=30)
    finally:
        proc.cancel()
    ticks = proc.drain()
    assert all(isinstance(t, Tick) for t in ticks) and result["stopped"] is True
    assert result["ticks"] == 1 + len(ticks) and proc.wait(timeout=5) == 0 and proc.error is None
    assert list(proc.events()) == []  # the stream has ended


@pytest.mark.parametrize("how", ["sigterm", "stdin closed"])
def test_sigterm_and_the_parent_going_away_stop_it_like_the_stop_line(how):
    proc = TinyProcess({"do": "tick"})
    try:
        _first(proc)
        if how == "sigterm":
            os.kill(proc.pid, signal.SIGTERM)
        else:
            assert proc.proc.stdin is not None
            proc.proc.stdin.close()
            proc.stop()  # stdin is closed: it falls back to SIGTERM, which changes nothing here
        assert proc.result(timeout=30)["stopped"] is True and proc.wait(timeout=5) == 0
    finally:
        proc.cancel()


def test_the_error_end_event_becomes_the_same_user_error(tmp_path):
    proc = TinyProcess({"do": "fail"})
    with pytest.raises(UserError) as err:
        proc.result(timeout=30)
    assert err.value.cause == "the tiny job was told to fail" and err.value.fix == "do not tell it to"
    assert err.value.exit_code == 3 and proc.wait(timeout=5) == 3 and proc.error is err.value
    logged = TinyProcess({"do": "fail"}, log_path=tmp_path / "child.log")
    with pytest.raises(UserError) as err:
        logged.result(timeout=30)
    assert err.value.fix == f"do not tell it to; see {tmp_path / 'child.log'}"


def test_a_death_without_an_end_event_is_an_error_naming_its_stderr(tmp_path):
    proc = TinyProcess({"do": "crash"})
    with pytest.raises(UserError) as err:
        proc.result(timeout=30)
    assert err.value.cause == "tiny job process exited with code 5: first line | the tiny job crashed"
    log = tmp_path / "child.log"
    logged = TinyProcess({"do": "crash"}, log_path=log)
    with pytest.raises(UserError) as err:
        logged.result(timeout=30)
    assert "the tiny job crashed" in err.value.cause and err.value.fix == f"see {log}"
    assert "the tiny job crashed" in log.read_text()


def test_stray_output_and_unknown_tags_stay_out_of_the_events_and_a_malformed_one_fails(tmp_path):
    log = tmp_path / "child.log"
    proc = TinyProcess({"do": "noise"}, log_path=log)
    assert list(proc.events(timeout=30)) == [Tick(1)] and proc.result(timeout=30) == {"ticks": 1, "stopped": False}
    assert "stray output on stdout" in log.read_text()  # stdout is the events' own: prints go to stderr
    bad = TinyProcess({"do": "noise", "malformed": True})
    assert list(bad.events(timeout=30)) == [Tick(1)]
    with pytest.raises(UserError, match="malformed 'tick' event"):
        bad.result(timeout=30)


def test_cancel_kills_the_whole_group_when_the_child_will_not_stop():
    proc = TinyProcess({"do": "stubborn"})
    grandchild = _first(proc).grandchild
    assert grandchild is not None and os.getpgid(grandchild) == proc.pid
    t0 = time.monotonic()
    proc.cancel(grace=0.5)  # the stop line is ignored: after the grace, SIGKILL to the group
    assert 0.5 <= time.monotonic() - t0 < 15
    assert proc.done() and _gone(proc.pid) and _gone(grandchild)
    with pytest.raises(UserError, match="exited with code -9"):
        proc.result(timeout=5)


def test_cancel_lets_a_cooperative_child_finish_within_the_grace():
    proc = TinyProcess({"do": "tick"})
    _first(proc)
    proc.cancel(grace=30)
    assert proc.result(timeout=0)["stopped"] is True and proc.wait(timeout=0) == 0
