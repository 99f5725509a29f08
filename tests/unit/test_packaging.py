"""The wheel carries the templates and presets, so `pipx install .` works outside the checkout, and no
test code (the doubles live in tests/support)."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from conftest import REPO


def test_wheel_ships_templates_and_presets_and_works_outside_checkout(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    wheel = next(tmp_path.glob("llama_tui-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "llama_tui/nginx_templates/nginx.conf.j2" in names
    assert "llama_tui/presets/demo.toml" in names
    assert "llama_tui/ui/app.py" in names and "llama_tui/core/presets.py" in names
    modules = [n for n in names if n.endswith(".py")]
    test_code = [n for n in modules if n.startswith("tests/") or "/tests/" in n or n.rsplit("/", 1)[-1].startswith(
        ("test_", "conftest")) or n.rsplit("/", 1)[-1] in ("scripted.py", "terminal_harness.py", "screenshot.py")]
    assert test_code == [], f"test code in the wheel: {test_code}"
    assert all(n.startswith(("llama_tui/", "llama_tui-")) for n in names), [n for n in names if "llama_tui" not in n]
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c",
         "from llama_tui.core import resources, config; "
         "print(resources.presets_dir()); print(resources.templates_dir()); "
         "print(sorted(p.name for p in config.list_presets()))"],
        capture_output=True, text=True, cwd=elsewhere, env={"PYTHONPATH": str(unpacked), "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    presets_dir, templates_dir, names_line = proc.stdout.strip().splitlines()
    assert presets_dir.startswith(str(unpacked)) and templates_dir.startswith(str(unpacked))
    assert "mac-studio-64gb" in names_line
