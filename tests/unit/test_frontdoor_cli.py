"""`llama-tui nginx render`: for a described fleet, and for the running fleet (equal to its live config)."""

from __future__ import annotations

import pytest

from llama_tui.core.fleet.frontdoor_nginx import FrontDoor

from conftest import free_port, free_port_block, run_cli


def test_render_a_described_fleet(nginx_bin, isolated_dirs):
    proc = run_cli("nginx", "render", "--instances", "3", "--parallel", "4", "--policy", "hash", "--max-conns",
                   "--base-port", "18600", "--nginx-port", "18500", "--model", "tiny")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "# policy=hash backends=3 listen=127.0.0.1:18500" in text
    assert [ln.strip() for ln in text.splitlines() if ln.strip().startswith("server 127.0.0.1:186")][:3] == [
        f"server 127.0.0.1:{p} max_conns=4 max_fails=1 fail_timeout=2s;" for p in (18600, 18601, 18602)]
    assert str(isolated_dirs / "nginx" / "logs" / "access.log") in text
    assert "described fleet of 3 instances" in proc.stderr
    door = FrontDoor(nginx_bin, prefix=isolated_dirs / "nginx")
    assert door.test(text).ok


@pytest.mark.parametrize("args,needle", [
    (("--policy", "fastest"), "unknown policy 'fastest'"),
    (("--listen", "example.com"), "--listen must be an IP address"),
    (("--api-key", "short"), "API key must be"),
])
def test_render_bad_input_is_one_line(args, needle):
    proc = run_cli("nginx", "render", "--model", "tiny", *args)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and needle in lines[-1] and "(fix: " in lines[-1]
    assert "Traceback" not in proc.stderr


@pytest.mark.integration
def test_render_the_running_fleet_equals_its_live_config(isolated_dirs):
    base = free_port_block(2)
    up = run_cli("fleet", "up", "--detach", "--model", "tiny", "--instances", "2", "--parallel", "1", "--threads", "1",
                 "--base-port", str(base), "--nginx-port", str(free_port()), "--policy", "least_conn")
    try:
        assert up.returncode == 0, up.stderr
        live = (isolated_dirs / "nginx" / "nginx.conf").read_text()
        proc = run_cli("nginx", "render")
        assert proc.returncode == 0 and "the running fleet" in proc.stderr
        assert proc.stdout == live
        other = run_cli("nginx", "render", "--policy", "round-robin").stdout
        assert "# policy=round_robin backends=2" in other and "least_conn;" not in other.split("upstream llama_fleet")[1]
        assert other.replace("round_robin", "least_conn") != live  # the upstream block differs, not just a label
    finally:
        run_cli("fleet", "down")
