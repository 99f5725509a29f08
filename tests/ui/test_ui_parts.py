"""The TUI's pieces that need no screen: number formats, the keymap file, presets saved from the form,
log following, step verdicts, the policy cycle."""

from __future__ import annotations

import pytest

from llama_tui.core import config
from llama_tui.core.errors import UserError
from llama_tui.core.snapshots import GpuSample, StepVerdict, SystemSample
from llama_tui.ui import units
from llama_tui.ui.keymap import load_keymap
from llama_tui.ui.controller import CoreController, FleetForm, next_policy
from llama_tui.ui.screens.fleet_form import parse_gpus, parse_int
from llama_tui.ui.screens.logs import read_from
from llama_tui.ui.widgets.fleet_table import system_line
from llama_tui.ui.widgets.throughput_chart import nice_ceiling


@pytest.mark.parametrize("value, text", [(None, "n/a"), (0, "0B"), (999, "999B"), (182 * 1024**2, "182M"),
                                         (int(1.4 * 1024**3), "1.4G"), (12 * 1024**3, "12G")])
def test_sizes(value, text):
    assert units.size(value) == text


@pytest.mark.parametrize("value, text", [(None, "n/a"), (42, "42s"), (754, "12m"), (7620, "2h07m"), (273600, "3d04h")])
def test_uptime_has_seconds_only_in_its_first_minute(value, text):
    assert units.age(value) == text


def test_missing_values_are_na_never_zero():
    assert units.num(None) == units.pct(None) == units.ms(None) == units.ratio(None, None) == "n/a"
    assert units.ratio(1, None) == "1/n/a"
    assert units.num(0) == "0" and units.pct(0.0) == "0%"


def test_system_line_names_each_gpu_or_says_none():
    assert "GPU n/a" in system_line(SystemSample(12.0, 2, 1024**3, 8 * 1024**3))
    gpus = (GpuSample(0, "H100", 20 * 1024**3, 80 * 1024**3, 55.0), GpuSample(1, "H100", None, None, None))
    line = system_line(SystemSample(None, 32, None, None, gpus))
    assert "CPU n/a of 32 cores" in line and "GPU0 20G/80G 55%" in line and "GPU1 n/a/n/a n/a" in line


def test_chart_scale_rounds_up_to_a_nice_number():
    assert [nice_ceiling(v) for v in (0, 0.7, 5047, 6100, 12001)] == [1.0, 0.8, 6000, 8000, 15000]


def test_policy_cycle_covers_every_policy_and_wraps():
    seen = ["least_conn"]
    for _ in range(len(config.POLICIES)):
        seen.append(next_policy(seen[-1]))
    assert seen[-1] == "least_conn" and set(seen) == set(config.POLICIES)
    assert next_policy(None) == config.POLICIES[0]


def test_step_verdict_from_a_bench_step():
    v = StepVerdict.from_step({"step": 2, "concurrency": 4, "output_tok_s": 5120.5, "valid": False,
                               "invalid_reason": "client CPU 98%"})
    assert (v.step, v.load, v.tok_s, v.valid, v.reason) == (2, "c=4", 5120.5, False, "client CPU 98%")
    assert StepVerdict.from_step({"step": 0, "concurrency": None, "rate": 2.0}).load == "rate 2.0/s"


def test_the_tuis_run_handles_relay_the_child_protocol(tmp_path):
    from llama_tui.ui.controller import _BenchRun, _SweepRun
    from tests.support.tiny_child import Tick, TinyProcess

    log = tmp_path / "sweep-child.log"
    sweep = _SweepRun(TinyProcess({"do": "tick"}, log_path=log))
    bench = _BenchRun(TinyProcess({"do": "tick"}))
    try:
        assert next(iter(sweep.events())) == Tick(1) and next(iter(bench.events())) == Tick(1)
        sweep.cancel()  # q or c on a sweep: the graceful stop (only the sweep can take its fleet down)
        assert sweep.summary() == f"sweep ended: results in {tmp_path}" and sweep.proc.result()["stopped"]
        assert sweep.proc.wait(timeout=5) == 0
        bench.cancel()  # a benchmark is killed with its process group, and says so
        with pytest.raises(UserError, match="exited with code -9"):
            bench.summary()
    finally:
        sweep.proc.cancel(grace=0)
        bench.proc.cancel()
    failed = _SweepRun(TinyProcess({"do": "fail"}, log_path=log))
    with pytest.raises(UserError) as err:
        failed.summary()
    assert err.value.one_line() == f"error: the tiny job was told to fail (fix: do not tell it to; see {log})"


def test_form_fields_parse_or_say_what_is_wrong():
    assert parse_int(" 4 ", "instances", 1) == 4
    assert parse_int("auto", "GPU layers", 0, optional=True) is None
    with pytest.raises(UserError, match="instances must be >= 1"):
        parse_int("0", "instances", 1)
    assert parse_gpus("0, 1") == (0, 1) and parse_gpus("") == ()
    with pytest.raises(UserError, match="GPUs must be indices"):
        parse_gpus("first")


# ------------------------------------------------------------------------------------------------ keymap


def test_keymap_file_flat_and_nested(tmp_path):
    path = tmp_path / "keymap.toml"
    path.write_text('"fleet.start" = "S"\n[bench]\nramp = "ctrl+b"\n')
    assert load_keymap(path) == {"fleet.start": "S", "bench.ramp": "ctrl+b"}
    assert load_keymap(tmp_path / "missing.toml") == {}


@pytest.mark.parametrize("text, match", [("fleet.start = 3\n", "must be a key name"), ("fleet.start = \n", "cannot read")])
def test_keymap_file_errors_name_the_file(tmp_path, text, match):
    path = tmp_path / "keymap.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=match) as info:
        load_keymap(path)
    assert str(path) in info.value.one_line()


# ------------------------------------------------------------------------------------------------ presets from the form


def test_save_preset_writes_a_loadable_user_preset(isolated_dirs):
    ctrl = CoreController(preset="demo", cli={"fleet.base_port": 31000})
    form = FleetForm(model="tiny", instances=3, parallel=4, ctx_per_slot=1024, gpu_layers=None, gpus=(0, 1),
                     policy="round_robin", preset="demo")
    path = ctrl.save_preset("my-box", form)
    assert path.parent == config.paths.user_presets_dir() and path.name == "my-box.toml"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    settings = config.load_settings(preset="my-box")
    f = settings.section("fleet")
    assert (f["instances"], f["parallel"], f["ctx_per_slot"], f["gpus"], f["policy"], f["gpu_layers"]) == \
        (3, 4, 1024, (0, 1), "round_robin", None)
    assert settings.get("bench.concurrency") == (1, 2, 4, 8)  # the demo preset's [bench] came along
    assert "api_key" not in path.read_text()
    assert "my-box" in [p.name for p in ctrl.presets()]
    loaded = ctrl.load_preset("my-box")
    assert (loaded.instances, loaded.parallel, loaded.gpus, loaded.policy) == (3, 4, (0, 1), "round_robin")


# Quotes, backslashes and newlines: what broke the hand-written TOML writer (a newline made an unparsable file).
ODD_MODEL = '/models/a "quoted" dir\\with\\backslashes/it\'s "q4"\nsecond line.gguf'
ODD_EXTRA = '--alias "my model" --chat-template-file C:\\tmp\\t.jinja\n'


def test_saved_preset_round_trips_quotes_backslashes_and_newlines(isolated_dirs):
    ctrl = CoreController(preset="demo", cli={"fleet.extra_args": ODD_EXTRA, "fleet.api_key": 'k3y"s3cr3t\n'})
    form = FleetForm(model=ODD_MODEL, instances=2, parallel=3, ctx_per_slot=512, gpus=(1,), policy="hash",
                     preset="demo")
    path = ctrl.save_preset("odd", form)
    expected = ctrl._settings_for(form)
    loaded = config.load_settings(preset="odd")
    for section in ("bench", "sweep"):
        assert loaded.section(section) == expected.section(section), section
    fleet = loaded.section("fleet")
    assert fleet["api_key"] is None and "s3cr3t" not in path.read_text()  # secrets stay out of preset files
    assert {k: v for k, v in fleet.items() if k != "api_key"} == \
        {k: v for k, v in expected.section("fleet").items() if k != "api_key"}
    assert (fleet["model"], fleet["extra_args"]) == (ODD_MODEL, ODD_EXTRA)
    info = next(p for p in config.list_presets() if p.name == "odd")
    assert info.description == f"saved from the llama-tui fleet form: {form.describe()}"
    assert 'it\'s "q4"\nsecond line.gguf' in info.description
    back = ctrl.load_preset("odd")
    assert (back.model, back.parallel, back.gpus, back.policy) == (ODD_MODEL, 3, (1,), "hash")


def test_save_preset_refuses_bad_names_and_bad_values(isolated_dirs):
    ctrl = CoreController(preset="demo")
    with pytest.raises(UserError, match="bad preset name"):
        ctrl.save_preset("../escape", FleetForm(model="tiny"))
    with pytest.raises(UserError, match="bad value for --policy"):
        ctrl.save_preset("ok", FleetForm(model="tiny", policy="fastest"))
    assert not (config.paths.user_presets_dir() / "ok.toml").exists()


def test_controller_from_args_autostarts_only_when_asked(isolated_dirs):
    from llama_tui import cli

    parser = cli.build_parser()
    assert not CoreController.from_args(parser.parse_args([])).autostart
    assert CoreController.from_args(parser.parse_args(["--preset", "demo"])).autostart
    ctrl = CoreController.from_args(parser.parse_args(["--instances", "3"]))
    assert ctrl.autostart and ctrl.form().instances == 3
    with pytest.raises(UserError):
        CoreController.from_args(parser.parse_args(["--instances", "zero"]))


# ------------------------------------------------------------------------------------------------ logs


def test_log_follow_reads_whole_lines_and_restarts_after_truncation(tmp_path):
    log = tmp_path / "a.log"
    log.write_bytes(b"one\ntwo\npart")
    offset, lines, reset = read_from(log, -1)
    assert (lines, reset) == (["one", "two"], True)
    assert read_from(log, offset)[1] == []  # "part" is not a line yet
    with log.open("ab") as f:
        f.write(b"ial\nthree\n")
    offset, lines, reset = read_from(log, offset)
    assert (lines, reset) == (["partial", "three"], False)
    log.write_bytes(b"new\n")  # truncated (rotated)
    assert read_from(log, offset)[1:] == (["new"], True)
    assert read_from(tmp_path / "missing.log", -1) == (-1, [], False)


def test_log_follow_starts_at_the_tail_of_a_big_file(tmp_path):
    log = tmp_path / "big.log"
    log.write_text("".join(f"line {i:06d}\n" for i in range(20000)))
    _, lines, _ = read_from(log, -1)
    assert lines[-1] == "line 019999" and 1000 < len(lines) < 20000
    assert all(line.startswith("line ") and len(line) == 11 for line in lines)  # no partial first line


def test_readme_screenshot_script_writes_the_bench_state(tmp_path):
    from tests.support import screenshot

    out = tmp_path / "docs" / "screenshot.svg"
    assert screenshot.main([str(out), "--scripted"]) == 0
    svg = out.read_text()
    assert svg.startswith("<svg") and "Throughput" in svg and "step&#160;3/4" in svg
