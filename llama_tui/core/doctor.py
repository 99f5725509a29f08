"""`llama-tui doctor`: what this machine has, and every problem with its exact fix."""

from __future__ import annotations

import platform
import sys
from dataclasses import asdict
from importlib import metadata
from typing import Any

from llama_tui import __version__
from llama_tui.core import amx, binaries, gpu, hardware, paths

def _pkg_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def report() -> dict[str, Any]:
    problems: list[dict[str, str]] = []
    warnings: list[str] = []

    ls = binaries.inspect_llama_server()
    if not ls.works:
        problems.append({"problem": ls.problem or "llama-server does not work", "fix": ls.fix or "run `make setup`"})
    ng = binaries.inspect_nginx()
    if not ng.works:
        problems.append({"problem": ng.problem or "nginx does not work", "fix": ng.fix or binaries.nginx_install_hint()})
    elif not ng.detail.get("stub_status"):
        warnings.append("nginx was built without http_stub_status_module: the live connection counters show n/a")

    facts = amx.machine()
    amx_choice = amx.for_llama_server(ls.path) if ls.works and ls.path else amx.Decision(False, "")
    nv = gpu.nvml()
    gpus = [asdict(g) for g in nv.devices()]
    total, available = hardware.memory()
    data: dict[str, Any] = {
        "llama_tui": {"version": __version__},
        "llama_server": {
            "path": ls.path, "source": ls.source, "works": ls.works, "version": ls.version,
            "build_info": ls.detail,
        },
        "nginx": {
            "path": ng.path, "source": ng.source, "works": ng.works, "version": ng.version,
            "modules": ng.detail.get("modules", []), "stub_status": ng.detail.get("stub_status", False),
        },
        "gpus": gpus,
        "nvml": {"available": nv.available, "driver_version": nv.driver_version(), "error": nv.error},
        "cpu": {
            "model": hardware.cpu_model(),
            "physical_cores": hardware.physical_cores(),
            "logical_cores": hardware.logical_cores(),
            "amx": {"advertised": facts.advertised, "tiledata_usable": facts.tiledata_usable,
                    "no_repack": amx_choice.no_repack, "reason": amx_choice.reason or None},
        },
        "memory": {"total_bytes": total, "available_bytes": available},
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "textual": {"version": _pkg_version("textual")},
        "paths": {
            "config_dir": str(paths.config_dir()),
            "state_dir": str(paths.state_dir()),
            "cache_dir": str(paths.cache_dir()),
        },
        "problems": problems,
        "warnings": warnings,
    }
    from llama_tui.core import fleet  # the running fleet, if any, and its thread budget

    fleet.doctor_check(data)
    return data


def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / (1 << 30):.1f} GiB"


def render_text(data: dict[str, Any]) -> str:
    ls, ng = data["llama_server"], data["nginx"]
    lines = [f"llama-tui {data['llama_tui']['version']}"]
    if ls["works"]:
        bi = ls["build_info"]
        extra = f", built with {bi['built_with']}" if bi.get("built_with") else ""
        lines.append(f"llama-server  {ls['path']}  ({ls['source']})  {ls['version']}{extra}")
    else:
        lines.append(f"llama-server  {ls['path'] or 'not found'}")
    if ng["works"]:
        stub = "stub_status: yes" if ng["stub_status"] else "stub_status: NO"
        lines.append(f"nginx         {ng['path']}  ({ng['source']})  {ng['version']}  {stub}, "
                     f"{len(ng['modules'])} modules")
    else:
        lines.append(f"nginx         {ng['path'] or 'not found'}")
    if data["gpus"]:
        drv = data["nvml"]["driver_version"] or "n/a"
        for g in data["gpus"]:
            lines.append(f"gpu {g['index']}         {g['name'] or 'n/a'}  {_gib(g['memory_total_bytes'])}  driver {drv}")
    else:
        why = data["nvml"]["error"] or "no devices"
        lines.append(f"gpus          none (NVML: {why})")
    cpu, mem = data["cpu"], data["memory"]
    lines.append(f"cpu           {cpu['model']}: {cpu['physical_cores']} physical / {cpu['logical_cores']} logical cores")
    if cpu.get("amx", {}).get("no_repack"):
        lines.append(f"amx           {cpu['amx']['reason']}")
    lines.append(f"memory        {_gib(mem['total_bytes'])} total, {_gib(mem['available_bytes'])} available")
    lines.append(f"python        {data['python']['version']}  textual {data['textual']['version'] or 'not installed'}")
    lines.append(f"state dir     {data['paths']['state_dir']}")
    for w in data["warnings"]:
        lines.append(f"warning: {w}")
    if data["problems"]:
        for p in data["problems"]:
            lines.append(f"problem: {p['problem']}  ->  fix: {p['fix']}")
    else:
        lines.append("ok: both binaries work")
    return "\n".join(lines)
