"""The core and the headless CLI never load textual (or rich): checked in fresh interpreters."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import llama_tui.commands
import llama_tui.core

from conftest import REPO

# Every module of the core, its packages (core/fleet/ ...) and their modules included.
CORE_MODULES = sorted(m.name for m in pkgutil.walk_packages(llama_tui.core.__path__, "llama_tui.core."))
COMMAND_MODULES = sorted(f"llama_tui.commands.{m.name}" for m in pkgutil.iter_modules(llama_tui.commands.__path__))

_CHECK = (
    "import sys; loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich')); "
    "print('LOADED:' + ','.join(loaded))"
)


def _loaded_after(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", f"{code}\n{_CHECK}"], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split("LOADED:", 1)[1]


def test_there_are_core_modules():
    assert "llama_tui.core.config" in CORE_MODULES and len(CORE_MODULES) >= 8
    assert "llama_tui.core.sweep.orchestrator" in CORE_MODULES  # the packages' modules are checked too
    assert {"llama_tui.core.fleet", "llama_tui.core.fleet.supervisor", "llama_tui.core.fleet.monitor"} <= set(CORE_MODULES)
    assert "llama_tui.core.bench.client" in CORE_MODULES  # modules inside the core's packages count too


@pytest.mark.parametrize("module", CORE_MODULES + COMMAND_MODULES + ["llama_tui.cli"])
def test_module_does_not_load_textual(module):
    assert _loaded_after(f"import {module}") == ""


def test_ui_does_load_textual():
    # The check above can fail: importing the UI really does pull textual in.
    assert "textual" in _loaded_after("import llama_tui.ui.app")


def test_headless_fleet_status_json_loads_no_textual():
    code = (
        "import runpy, sys\n"
        "sys.argv = ['llama-tui', 'fleet', 'status', '--json']\n"
        "try:\n    runpy.run_module('llama_tui', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
    )
    assert _loaded_after(code) == ""
