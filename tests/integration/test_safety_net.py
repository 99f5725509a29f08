"""The test safety net finds what a test leaks: processes by their owner marker, nginx by its prefix."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from llama_tui.core.fleet.frontdoor import Backend, FrontDoorSpec
from llama_tui.core.fleet.frontdoor_nginx import FrontDoor

from conftest import free_port, reap_owned, wait_for


@pytest.mark.integration
def test_reaper_finds_marked_processes_and_nginx(isolated_dirs, nginx_bin):
    owner = str(isolated_dirs)
    marked = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                              env={**os.environ, "LLAMA_TUI_OWNER": owner}, start_new_session=True)
    door = FrontDoor(nginx_bin, prefix=isolated_dirs / "nginx")
    door.start(FrontDoorSpec(port=free_port(), backends=(Backend("127.0.0.1", free_port(), 1),)))
    nginx_pids = {door.pid} | {c.pid for c in psutil.Process(door.pid).children()}
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        reaped = set(reap_owned(owner))
        assert marked.pid in reaped
        assert nginx_pids <= reaped
        assert unrelated.pid not in reaped and unrelated.poll() is None
        assert marked.wait(timeout=5) is not None
    finally:
        unrelated.kill()
        unrelated.wait()
        door.stop(timeout=2)


def test_reaper_covers_state_dirs_below_the_owner(tmp_path):
    sweep_fleet = tmp_path / "out" / "fleet-state"  # where a sweep runs its fleets
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             env={**os.environ, "LLAMA_TUI_OWNER": str(sweep_fleet)}, start_new_session=True)
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                               env={**os.environ, "LLAMA_TUI_OWNER": str(tmp_path) + "-other"},
                               start_new_session=True)
    try:
        wait_for(lambda: psutil.Process(child.pid).environ().get("LLAMA_TUI_OWNER") == str(sweep_fleet), 10,
                 "the child to exec with its marker")
        assert reap_owned(str(tmp_path)) == [child.pid]
        assert child.wait(timeout=5) is not None and sibling.poll() is None
    finally:
        sibling.kill()
        sibling.wait()
