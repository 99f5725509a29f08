"""The GPU check's figures and tables: per-instance GPU memory against nvidia-smi, the fleet-gain figure,
and the markdown summary of `benchmarks/gpu_check.py`'s results. Pure functions, stdlib only.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

MIB = 1 << 20
TOLERANCE_MIB = 1.0  # nvidia-smi prints whole MiB; NVML gives bytes
STEP_KEYS = ("concurrency", "output_tok_s", "server_output_tok_s", "ttft_p50_ms", "ttft_p95_ms", "tpot_p50_ms",
             "errors", "requests_ok", "valid", "invalid_reason")
CELL_KEYS = ("instances", "parallel", "concurrency", "threads", "output_tok_s", "ttft_p95_ms", "errors",
             "requests_ok", "valid", "invalid_reason")


def parse_compute_apps(text: str) -> list[tuple[int, int]]:
    """`nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits` -> [(pid, MiB)].
    A value nvidia-smi cannot read ("[N/A]", "[Insufficient Permissions]") counts as 0 MiB."""
    rows = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not parts[0].isdigit():
            continue
        rows.append((int(parts[0]), int(parts[1]) if parts[1].isdigit() else 0))
    return rows


def compare_gpu_memory(instances: Iterable[Mapping[str, Any]], smi: list[tuple[int, int]] | None,
                       parent_of: Callable[[int], int | None]) -> dict[str, Any]:
    """Each instance's GPU memory as `fleet status --json` gives it (NVML, the instance's process and its
    children) against nvidia-smi's per-process figures, attributed to the instance whose process is
    the reporting pid or one of its ancestors. `smi` None means there was no nvidia-smi to ask."""
    insts = [dict(i) for i in instances]
    by_pid = {i["pid"]: i for i in insts if i.get("pid")}

    def owner(pid: int | None) -> int | None:
        for _ in range(64):
            if pid is None or pid <= 1:
                return None
            if pid in by_pid:
                return pid
            pid = parent_of(pid)
        return None

    smi_mib: dict[int, int] = {}
    unattributed = []
    for pid, mib in smi or ():
        o = owner(pid)
        if o is None:
            unattributed.append({"pid": pid, "mib": mib})
        else:
            smi_mib[o] = smi_mib.get(o, 0) + mib
    rows = []
    for i in insts:
        ours = i.get("gpu_memory_bytes")
        ours_mib = None if ours is None else round(ours / MIB, 1)
        theirs = None if smi is None else smi_mib.get(i.get("pid"), 0)  # type: ignore[arg-type]
        match = (ours_mib is not None and theirs is not None and ours_mib > 0 and theirs > 0
                 and abs(ours_mib - theirs) <= TOLERANCE_MIB)
        rows.append({"index": i.get("index"), "pid": i.get("pid"), "state": i.get("state"),
                     "llama_tui_mib": ours_mib, "nvidia_smi_mib": theirs, "match": match})
    return {"checked": smi is not None, "instances": rows, "unattributed": unattributed,
            "llama_tui_total_mib": round(sum(r["llama_tui_mib"] or 0 for r in rows), 1),
            "nvidia_smi_total_mib": sum(smi_mib.values()) if smi is not None else None,
            "ok": smi is not None and bool(rows) and all(r["match"] for r in rows)}


def describe_memory(check: Mapping[str, Any]) -> str:
    rows = check["instances"]
    if not check["checked"]:
        return f"not checked (no nvidia-smi); llama-tui reports {[r['llama_tui_mib'] for r in rows]} MiB"
    bad = [r["index"] for r in rows if not r["match"]]
    text = (f"llama-tui {check['llama_tui_total_mib']} MiB vs nvidia-smi {check['nvidia_smi_total_mib']} MiB over "
            f"{len(rows)} instances; " + ("every instance matches" if not bad else f"instances {bad} do not match"))
    if check["unattributed"]:
        others = check["unattributed"]
        text += f"; {len(others)} other GPU processes ({sum(o['mib'] for o in others)} MiB)"
    return text


def _pick(row: Mapping[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any] | None:
    if row is None:
        return None
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in ((k, row.get(k)) for k in keys)}


def step_summary(step: Mapping[str, Any]) -> dict[str, Any]:
    return _pick(step, STEP_KEYS)  # type: ignore[return-value]


def cell_summary(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return _pick(row, CELL_KEYS)


def _shape(c: Mapping[str, Any]) -> str:
    return f"{c['instances']}x{c['parallel']} c={c['concurrency']}"


def fleet_gain(best: Mapping[str, Any] | None, best_single: Mapping[str, Any] | None) -> dict[str, Any]:
    """The best cell's output tok/s over the best single-instance cell's (both error-free and valid)."""
    b, s = cell_summary(best), cell_summary(best_single)
    if not b or not s or not s.get("output_tok_s"):
        return {"value": None, "best": b, "best_single": s,
                "text": "n/a (no error-free valid cell" + ("" if b else " at all") + (
                    " with one instance)" if b else ")")}
    value = round(float(b["output_tok_s"]) / float(s["output_tok_s"]), 2)
    return {"value": value, "best": b, "best_single": s,
            "text": f"{value}x ({_shape(b)} {b['output_tok_s']:,} tok/s over {_shape(s)} {s['output_tok_s']:,} tok/s)"}


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(v: Any) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, bool):
            return "yes" if v else "NO"
        if isinstance(v, float):
            return f"{v:,.1f}"
        return str(v)

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return out + [""]


def markdown(res: Mapping[str, Any]) -> str:
    """A short summary of one run: machine, build, model, per-instance GPU memory, benches, sweep, gain."""
    lines = [f"# GPU check ({'dry run on the CPU' if res.get('mode') == 'dry' else 'GPU run'}), {res.get('started')}", "",
             f"- command: `{res.get('command')}`"]
    for g in res.get("gpus") or []:
        lines.append(f"- card: {g['name']}, driver {g['driver_version']}, {g['memory_total_mib']} MiB, "
                     f"compute capability {g['compute_cap']}")
    m = res.get("machine") or {}
    lines.append(f"- machine: {m.get('logical_cores')} logical cores, {m.get('memory_gib')} GiB, "
                 f"Python {m.get('python')}")
    b = res.get("build") or {}
    bj = b.get("build_json") or {}
    built = b.get("cuda_build") or f"{bj.get('build_seconds', b.get('wall_s'))} s"
    progress = f"; build progress when it stopped: [{b['progress']}]" if b.get("progress") else ""
    lines.append(f"- build: {built}; CMake args: `{' '.join(b.get('cmake_args') or [])}`; -j{b.get('jobs')}{progress}")
    if b.get("devices"):
        lines.append(f"- llama-server: {b.get('version', '').splitlines()[-1:]}; devices: {b['devices']}")
    md = res.get("model") or {}
    if md:
        lines.append(f"- model: random {md['parameters']:,} parameters, {md['weight_type']}, vocabulary {md['vocab']}, "
                     f"{md['bytes'] / 2**30:.2f} GiB, written in {md['seconds']} s")
    lines.append("")
    fleets = res.get("fleets") or []
    if fleets:
        lines += ["## Per-instance GPU memory: `fleet status --json` (NVML) against nvidia-smi", ""]
        rows = [[f["shape"], r["index"], r["pid"], r["state"], r["llama_tui_mib"], r["nvidia_smi_mib"],
                 r["match"] if f["gpu_memory"]["checked"] else None, (f.get("gpu_util_under_load") or {}).get(str(r["index"]))]
                for f in fleets if f.get("gpu_memory") for r in f["gpu_memory"]["instances"]]
        lines += _table(["fleet", "instance", "pid", "state", "llama-tui MiB", "nvidia-smi MiB", "match",
                         "GPU % under load"], rows)
        rows = [[f["shape"], s["concurrency"], s["output_tok_s"], s["ttft_p95_ms"], s["errors"], s["valid"]]
                for f in fleets for s in f.get("bench") or []]
        lines += ["## Short bench through NGINX (streaming)", ""] + _table(
            ["fleet", "concurrency", "output tok/s", "TTFT p95 ms", "errors", "valid"], rows)
    sw = res.get("sweep") or {}
    if sw:
        rows = [[c["instances"], c["parallel"], c["concurrency"], c["threads"], c["output_tok_s"], c["ttft_p95_ms"],
                 c["errors"], c["valid"]] for c in sw.get("cells") or []]
        lines += [f"## Sweep ({sw.get('status')}, {sw.get('wall_s')} s)", "", f"`{sw.get('command')}`", ""] + _table(
            ["instances", "parallel", "concurrency", "threads", "output tok/s", "TTFT p95 ms", "errors", "valid"], rows)
    gain = res.get("fleet_gain")
    if gain:
        lines += [f"**Fleet gain: {gain['text']}**", ""]
    lines += ["## Phases", ""] + _table(["phase", "status", "seconds", "note"],
                                         [[p["phase"], p["status"], p.get("seconds"), p.get("note", "")]
                                          for p in res.get("phases") or [] if p["phase"] != "report"])
    if res.get("findings"):
        lines += ["## Findings", ""] + [f"- {f}" for f in res["findings"]] + [""]
    return "\n".join(lines)
