"""AMX: when the fleet adds --no-repack to llama-server, and what doctor says (unit tests, no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llama_tui.core import amx, doctor

ADVERTISED = amx.AmxFacts(advertised=True, tiledata_usable=True)
NO_TILEDATA = amx.AmxFacts(advertised=True, tiledata_usable=False)
NO_AMX = amx.AmxFacts(advertised=False, tiledata_usable=None)
FLAGS = frozenset({"--repack", "-nr", "--no-repack", "-m"})


def test_cpu_flags_come_from_the_flags_line() -> None:
    text = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx512f amx_bf16 amx_tile amx_int8\n"
    flags = amx.cpu_flags(text)
    assert {"amx_tile", "amx_int8", "avx512f"} <= flags and "processor" not in flags
    assert amx.cpu_flags("processor : 0\n") == frozenset()


def test_no_repack_when_amx_is_advertised_and_the_binary_has_the_kernels() -> None:
    d = amx.decide(ADVERTISED, True, (), FLAGS)
    assert d.no_repack and "PR #26954" in d.reason and "--no-repack" in d.reason
    d = amx.decide(NO_TILEDATA, True, (), FLAGS)
    assert d.no_repack and "XTILEDATA" in d.reason


@pytest.mark.parametrize("facts,kernels", [(NO_AMX, True), (ADVERTISED, False), (NO_TILEDATA, False)])
def test_nothing_added_without_amx_or_without_the_kernels(facts: amx.AmxFacts, kernels: bool) -> None:
    assert amx.decide(facts, kernels, (), FLAGS) == amx.Decision(False, "")


@pytest.mark.parametrize("args", [("--repack",), ("--no-repack",), ("-nr",), ("-c", "512", "--repack")])
def test_the_users_own_choice_wins(args: tuple[str, ...]) -> None:
    assert not amx.decide(ADVERTISED, True, args, FLAGS).no_repack
    assert not amx.decide(ADVERTISED, True, (), FLAGS, env_choice=True).no_repack  # $LLAMA_ARG_REPACK


def test_a_llama_server_without_the_flag_gets_nothing() -> None:
    assert not amx.decide(ADVERTISED, True, (), frozenset({"-m", "--port"})).no_repack
    assert amx.decide(ADVERTISED, True, (), None).no_repack  # flags unknown: a current build is assumed


def test_the_kernel_mark_is_found_in_the_binary_or_its_ggml_libraries(tmp_path: Path) -> None:
    plain = tmp_path / "a" / "llama-server"
    plain.parent.mkdir()
    plain.write_bytes(b"\x7fELF" + b"x" * 5000)
    assert not amx.binary_has_amx_kernels(plain)
    big = tmp_path / "b" / "llama-server"
    big.parent.mkdir()
    # across the 4 MiB read boundary, so a mark split between two reads is still found
    pad = (1 << 22) - 10
    big.write_bytes(b"\0" * pad + amx.AMX_KERNEL_MARK + b"\0" * 100)
    assert amx.binary_has_amx_kernels(big)
    shared = tmp_path / "c" / "llama-server"
    shared.parent.mkdir()
    shared.write_bytes(b"\x7fELF")
    (shared.parent / "libggml-cpu.so").write_bytes(b"lib " + amx.AMX_KERNEL_MARK)
    assert amx.binary_has_amx_kernels(shared)
    assert not amx.binary_has_amx_kernels(tmp_path / "missing")


def test_with_no_repack_appends_the_flag_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    binary = tmp_path / "llama-server"
    binary.write_bytes(amx.AMX_KERNEL_MARK)
    monkeypatch.setattr(amx, "machine", lambda: ADVERTISED)
    monkeypatch.delenv(amx.REPACK_ENV, raising=False)
    args, d = amx.with_no_repack(("-c", "512"), binary)
    assert args == ("-c", "512", "--no-repack") and d.no_repack
    again, d2 = amx.with_no_repack(args, binary)
    assert again == args and not d2.no_repack
    monkeypatch.setenv(amx.REPACK_ENV, "1")
    assert amx.with_no_repack((), binary)[0] == ()
    monkeypatch.setattr(amx, "machine", lambda: NO_AMX)
    monkeypatch.delenv(amx.REPACK_ENV)
    assert amx.with_no_repack((), binary) == ((), amx.Decision(False, ""))


def test_machine_reads_the_kernel_once_per_process() -> None:
    amx.machine.cache_clear()
    first = amx.machine()
    assert amx.machine() is first
    if first.advertised:  # this VM: AMX in /proc/cpuinfo, and the kernel can be asked about it
        assert first.tiledata_usable is not None


def test_doctor_prints_one_amx_line_when_it_adds_the_flag() -> None:
    base = {"llama_tui": {"version": "x"}, "llama_server": {"works": False, "path": None},
            "nginx": {"works": False, "path": None}, "gpus": [], "nvml": {"error": None},
            "memory": {"total_bytes": 1, "available_bytes": 1}, "python": {"version": "3"},
            "textual": {"version": None}, "paths": {"state_dir": "/s"}, "warnings": [], "problems": []}
    reason = amx.decide(ADVERTISED, True, (), FLAGS).reason
    on = dict(base, cpu={"model": "m", "physical_cores": 2, "logical_cores": 2,
                         "amx": {"advertised": True, "tiledata_usable": True, "no_repack": True, "reason": reason}})
    lines = [ln for ln in doctor.render_text(on).splitlines() if ln.startswith("amx")]
    assert lines == [f"amx           {reason}"]
    off = dict(base, cpu=dict(on["cpu"], amx={"advertised": False, "tiledata_usable": None, "no_repack": False,
                                              "reason": None}))
    assert not [ln for ln in doctor.render_text(off).splitlines() if ln.startswith("amx")]
