"""The wheel carries the templates and presets, so `pipx install .` works outside the checkout."""

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
