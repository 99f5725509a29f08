"""The GPU review's fixes, without a GPU: fake NVML objects, a captured Popen, the fit estimator."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import orjson
import pytest

from llama_tui.core import binaries, config, gpu
from llama_tui.core.fleet import local, prometheus
from llama_tui.core.fleet.placement import PlacementError
from llama_tui.core.fleet.process_stats import ProcessSampler, gpu_numbers
from llama_tui.core.fleet.state import InstanceState
from llama_tui.core.snapshots import FleetSnapshot, InstanceSnapshot
from llama_tui.core.sweep import fit

GIB = 1 << 30
P = types.SimpleNamespace


def fake_pynvml(compute: dict[str, list], graphics: dict[str, list] | None = None,
                util: dict[str, list] | Exception | None = None) -> types.ModuleType:
    """A pynvml with one device per key of `compute` ("gpu0", "gpu1", ...)."""
    m = types.ModuleType("pynvml")
    m.nvmlInit = lambda: None
    m.nvmlShutdown = lambda: None
    m.nvmlDeviceGetCount = lambda: len(compute)
    m.nvmlDeviceGetHandleByIndex = lambda i: f"gpu{i}"
    m.nvmlDeviceGetComputeRunningProcesses = lambda h: compute[h]
    m.nvmlDeviceGetGraphicsRunningProcesses = lambda h: (graphics or {}).get(h, [])

    def utilization(h: str, since: int) -> list:
        if isinstance(util, Exception):
            raise util
        return (util or {}).get(h, [])

    m.nvmlDeviceGetProcessUtilization = utilization
    return m


def nvml_with(monkeypatch: pytest.MonkeyPatch, module: types.ModuleType) -> gpu.Nvml:
    monkeypatch.setitem(sys.modules, "pynvml", module)
    nv = gpu.Nvml()
    assert nv.available
    return nv


# ------------------------------------------------------------------------ 1. unknown GPU memory is None


def test_nvml_memory_unknown_stays_none_and_is_never_counted_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    nv = nvml_with(monkeypatch, fake_pynvml(
        {"gpu0": [P(pid=10, usedGpuMemory=2 * GIB), P(pid=11, usedGpuMemory=None), P(pid=12, usedGpuMemory=GIB)],
         "gpu1": [P(pid=10, usedGpuMemory=GIB), P(pid=12, usedGpuMemory=None)]},
        graphics={"gpu0": [P(pid=10, usedGpuMemory=2 * GIB)]}))  # the same process in both lists
    mem = nv.process_memory()
    assert mem[10] == 3 * GIB  # two devices add up; compute + graphics on one device is one process
    assert mem[11] is None  # listed, value not available: unknown, not 0
    assert mem[12] is None  # one device does not know: the total is unknown
    assert 99 not in mem  # not listed at all


def test_instance_gpu_numbers_keep_unknown_as_none() -> None:
    memory = {1: 2 * GIB, 2: None, 3: GIB}
    assert gpu_numbers([7, 8], memory, {}) == (None, None)  # not on any GPU NVML lists
    assert gpu_numbers([1, 8], memory, {}) == (2 * GIB, 0.0)  # on a GPU, no sample: idle
    assert gpu_numbers([1, 3], memory, {3: 40.0}) == (3 * GIB, 40.0)  # a child on the GPU adds up
    assert gpu_numbers([1, 2], memory, {1: 5.0}) == (None, 5.0)  # a member NVML cannot measure
    assert gpu_numbers([1], memory, None) == (2 * GIB, None)  # utilisation not supported


def test_utilisation_not_found_is_idle_but_not_supported_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    NotFound = type("NVMLError_NotFound", (Exception,), {})
    NotSupported = type("NVMLError_NotSupported", (Exception,), {})
    procs = {"gpu0": [P(pid=10, usedGpuMemory=GIB)]}
    assert nvml_with(monkeypatch, fake_pynvml(procs, util=NotFound())).process_utilization() == {}
    assert nvml_with(monkeypatch, fake_pynvml(procs, util=NotSupported())).process_utilization() is None
    nv = nvml_with(monkeypatch, fake_pynvml(procs, util={"gpu0": [P(pid=10, smUtil=33)]}))
    assert nv.process_utilization() == {10: 33.0}


def test_unknown_gpu_memory_reaches_json_tui_and_prometheus_as_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    me = os.getpid()
    nv = nvml_with(monkeypatch, fake_pynvml({"gpu0": [P(pid=me + 1_000_000, usedGpuMemory=GIB)]}))
    stats = ProcessSampler(nv).processes([me])[me]
    assert stats.gpu_memory_bytes is None and stats.gpu_util_percent is None  # NVML up, this pid not listed
    nv = nvml_with(monkeypatch, fake_pynvml({"gpu0": [P(pid=me, usedGpuMemory=None)]}))
    stats = ProcessSampler(nv).processes([me])[me]
    assert stats.gpu_memory_bytes is None and stats.gpu_util_percent == 0.0  # listed, memory not available
    inst = InstanceSnapshot(index=0, port=8080, pid=me, state="ready", gpu_memory_bytes=stats.gpu_memory_bytes,
                            gpu_util_percent=None)
    snap = FleetSnapshot(taken_at=0.0, running=True, instances=(inst,))
    assert b'"gpu_memory_bytes":null' in orjson.dumps(snap.to_json())
    names = {s.name for fam in prometheus.instance_families(snap) for s in fam.samples}
    assert "llama_tui_instance_gpu_memory_bytes" not in names and "llama_tui_instance_threads" not in names
    assert "llama_tui_instance_state" in names
    known = FleetSnapshot(taken_at=0.0, running=True, instances=(
        InstanceSnapshot(index=0, port=8080, pid=me, state="ready", gpu_memory_bytes=GIB),))
    assert "llama_tui_instance_gpu_memory_bytes" in {s.name for fam in prometheus.instance_families(known)
                                                     for s in fam.samples}
    from llama_tui.ui.widgets import fleet_table

    cell = {c.key: c.cell for c in fleet_table.COLUMNS}
    assert cell["gpu_mem"](inst) == "n/a" and cell["gpu_util"](inst) == "n/a"
    assert fleet_table.totals(snap)["gpu_mem"] == "n/a"
    assert cell["gpu_mem"](known.instances[0]) != "n/a"


# ------------------------------------------------------------------------ 2. CUDA counts GPUs as NVML does


def test_a_pinned_instance_gets_pci_bus_order_with_its_nvml_index(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    seen: list[dict[str, str]] = []

    def popen(cmd: list[str], **kw: object) -> None:
        seen.append(dict(kw["env"]))  # type: ignore[arg-type]
        raise OSError("not started in this test")

    monkeypatch.setattr(local.subprocess, "Popen", popen)
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    placement = local.LocalPlacement(tmp_path)
    for gpu_index in (3, None):
        rec = InstanceState(index=0, port=1, threads=1, log_path=str(tmp_path / "i.log"), cmd=["true"], gpu=gpu_index)
        with pytest.raises(PlacementError):
            placement.start(rec)
    pinned, free = seen
    assert pinned["CUDA_VISIBLE_DEVICES"] == "3" and pinned["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert "CUDA_VISIBLE_DEVICES" not in free or free["CUDA_VISIBLE_DEVICES"] == os.environ.get("CUDA_VISIBLE_DEVICES")


# ------------------------------------------------------------------------ 3. fit across several GPUs

LLAMA3_8B_Q4 = fit.ModelFacts(arch="llama", name="Llama 3 8B Q4_K_M", n_layers=32, n_embd=4096, n_head=32,
                              n_head_kv=8, head_dim_k=128, head_dim_v=128, n_vocab=128256, n_ctx_train=8192,
                              weights_bytes=4_920_000_000)


def test_an_unpinned_instance_spreads_over_every_gpu() -> None:
    est = fit.estimate(LLAMA3_8B_Q4, 1, 32, 8192, gpu_layers=999)  # ~37 GiB: more than one 24 GiB card
    assert est.vram_per_instance_bytes > 30 * GIB
    two = {0: 24 * GIB, 1: 24 * GIB}
    assert not fit.check(est, 1, free_ram=1 << 40, gpu_free=two, gpus=(0,)).fits  # pinned to one card
    res = fit.check(est, 1, free_ram=1 << 40, gpu_free=two)  # llama.cpp splits its layers over both
    assert res.fits, res.reason
    need = fit.vram_need(est, 1, two)
    fixed = est.overhead_per_instance_bytes + fit.GPU_CONTEXT
    assert need[0] == need[1] and sum(need.values()) == pytest.approx(est.vram_per_instance_bytes + fixed, abs=2)
    # uneven free memory: the split follows it
    need = fit.vram_need(est, 1, {0: 30 * GIB, 1: 10 * GIB})
    assert need[0] - fixed == pytest.approx(3 * (need[1] - fixed), rel=1e-6)


def test_instances_sharing_gpus_add_up() -> None:
    est = fit.estimate(LLAMA3_8B_Q4, 3, 8, 4096, gpu_layers=999)
    per = est.vram_per_instance_bytes
    assert fit.vram_need(est, 3, {0: 80 * GIB, 1: 80 * GIB}, gpus=(0, 1)) == {0: 2 * per, 1: per}
    assert fit.vram_need(est, 3, {0: 80 * GIB, 1: 80 * GIB}, gpus=(1,)) == {1: 3 * per}
    spread = fit.vram_need(est, 3, {0: 80 * GIB, 1: 80 * GIB})  # unpinned: every instance on both
    fixed = est.overhead_per_instance_bytes + fit.GPU_CONTEXT
    assert spread[0] == spread[1] and spread[0] == 3 * ((per - fixed) // 2 + fixed)
    # two pinned instances that each fit a GPU alone do not fit it together
    small = {0: int(per * 1.5)}
    assert fit.check(est, 1, free_ram=1 << 40, gpu_free=small, gpus=(0,)).fits
    res = fit.check(est, 2, free_ram=1 << 40, gpu_free=small, gpus=(0,))
    assert not res.fits and res.where == "VRAM gpu 0" and res.need_bytes == 2 * per


# ------------------------------------------------------------------------ 4. the nvidia presets fit their cards


@pytest.mark.parametrize("preset,card_gib", [("nvidia-24gb", 24), ("nvidia-80gb", 80)])
def test_nvidia_presets_fit_their_card_with_an_8b_model(preset: str, card_gib: int) -> None:
    s = config.load_settings(preset=preset, env={})
    n, parallel, ctx = s.get("fleet.instances"), s.get("fleet.parallel"), s.get("fleet.ctx_per_slot")
    est = fit.estimate(LLAMA3_8B_Q4, n, parallel, ctx, gpu_layers=s.get("fleet.gpu_layers"))
    card = {0: card_gib * GIB}
    res = fit.check(est, n, free_ram=1 << 40, gpu_free=card)
    assert res.fits, f"{preset}: {n} x {parallel} slots x {ctx}: {res.reason}"
    # twice the context per slot would not fit: the preset is sized, not arbitrary
    est2 = fit.estimate(LLAMA3_8B_Q4, n, parallel, ctx * 2, gpu_layers=s.get("fleet.gpu_layers"))
    assert not fit.check(est2, n, free_ram=1 << 40, gpu_free=card).fits
    # the sweep's largest shape is refused by the fit check with a reason, not launched
    big_n, big_p = max(s.get("sweep.instances")), max(s.get("sweep.parallel"))
    big = fit.check(fit.estimate(LLAMA3_8B_Q4, big_n, big_p, ctx, gpu_layers=999), big_n, 1 << 40, card)
    assert not big.fits and "VRAM on GPU 0" in big.reason


# ------------------------------------------------------------------------ 5. the cached CUDA build finds its libraries


@pytest.mark.binaries  # builds with cmake and a C compiler
@pytest.mark.skipif(not (shutil.which("cmake") and shutil.which("cc")), reason="needs cmake and a C compiler")
def test_build_rpath_keeps_outside_library_dirs_so_a_copied_binary_runs(tmp_path: Path) -> None:
    """As libcudart/libcublas from a CUDA toolkit outside the loader's paths: the build copies llama-server
    into the cache, and the copy must still find them (RUNPATH), with BASE_CMAKE_ARGS' RPATH options."""
    ext = tmp_path / "toolkit" / "lib64"
    ext.mkdir(parents=True)
    (tmp_path / "f.c").write_text("int f(void) { return 3; }\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-Wl,-soname,libfext.so.1", "-o", str(ext / "libfext.so.1"),
                    str(tmp_path / "f.c")], check=True)
    (ext / "libfext.so").symlink_to("libfext.so.1")
    src = tmp_path / "src"
    src.mkdir()
    (src / "main.c").write_text("int f(void);\nint main(void) { return f() - 3; }\n")
    (src / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.14)\nproject(rp C)\nadd_library(fext SHARED IMPORTED)\n"
        f"set_target_properties(fext PROPERTIES IMPORTED_LOCATION {ext / 'libfext.so'})\n"
        "add_executable(app main.c)\ntarget_link_libraries(app fext)\n")
    rpath_args = [a for a in binaries.BASE_CMAKE_ARGS if "RPATH" in a]
    build = tmp_path / "build"
    subprocess.run(["cmake", "-S", str(src), "-B", str(build), *rpath_args], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True)
    cached = tmp_path / "cache" / "app"
    cached.parent.mkdir()
    shutil.copy2(build / "app", cached)
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    run = subprocess.run([str(cached)], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_totals_with_an_unknown_instance_are_unknown_not_short() -> None:
    from llama_tui.core.fleet.placement import ProcessStats
    from llama_tui.core.sweep import runner
    from llama_tui.ui.widgets import fleet_table

    peaks = runner.PeakSampler([1, 2])
    mon = types.SimpleNamespace(processes=lambda pids: {1: ProcessStats(1, 0.0, 10, GIB, 0.0, 0, 0.0),
                                                        2: ProcessStats(2, 0.0, 10, None, None, 0, 0.0)})
    peaks._sample(mon)
    f = peaks.fields()
    assert f["gpu_mem_peak_bytes"] == [GIB, None] and f["gpu_mem_peak_total_bytes"] is None
    assert f["rss_peak_total_bytes"] == 20
    both = runner.PeakSampler([1])
    both._sample(mon)
    assert both.fields()["gpu_mem_peak_total_bytes"] == GIB

    def inst(i: int, pid: int | None, mem: int | None) -> InstanceSnapshot:
        return InstanceSnapshot(index=i, port=8080 + i, pid=pid, state="ready" if pid else "stopped",
                                gpu_memory_bytes=mem)

    live_unknown = FleetSnapshot(taken_at=0.0, running=True, instances=(inst(0, 10, GIB), inst(1, 11, None)))
    assert fleet_table.totals(live_unknown)["gpu_mem"] == "n/a"
    one_stopped = FleetSnapshot(taken_at=0.0, running=True, instances=(inst(0, 10, GIB), inst(1, None, None)))
    assert fleet_table.totals(one_stopped)["gpu_mem"] == "1.0G"
