"""Rendering the NGINX config: every policy and option passes `nginx -t`; bad input is refused
with a fix; limits follow the planned concurrency; stub_status text is parsed."""

from __future__ import annotations

import itertools
import os

import pytest

from llama_tui.core.fleet import frontdoor, frontdoor_nginx, frontdoor_rules
from llama_tui.core.config import POLICIES
from llama_tui.core.errors import UserError
from llama_tui.core.fleet.frontdoor import Backend, FrontDoorSpec, render
from llama_tui.core.fleet.frontdoor_nginx import FrontDoor

from conftest import skip_without_policy

BACKENDS = (Backend("127.0.0.1", 18080, 2), Backend("127.0.0.1", 18081, 3))


@pytest.mark.parametrize("policy,max_conns,admin", list(itertools.product(POLICIES, (False, True), (False, True))))
def test_every_policy_and_option_passes_nginx_t(policy, max_conns, admin, nginx_bin, tmp_path):
    skip_without_policy(policy)
    spec = FrontDoorSpec(port=18999, policy=policy, backends=BACKENDS, max_conns=max_conns, expose_admin=admin,
                         api_key="k" * 16 if admin else None)
    door = FrontDoor(nginx_bin, prefix=tmp_path / "nginx")
    text = render(spec, door.prefix)
    check = door.test(text)
    assert check.ok, check.error
    assert ("max_conns=3" in text) == max_conns
    assert ("upstream llama_overflow" in text) == max_conns
    assert ("location ~* ^/+(slots|metrics|props" in text) != admin


def test_streaming_safe_proxying_and_no_keepalive_pool(tmp_path):
    text = render(FrontDoorSpec(port=18999, backends=BACKENDS), tmp_path)
    for directive in ("proxy_buffering off;", "proxy_read_timeout 3600s;", "client_max_body_size 64m;",
                      "proxy_http_version 1.1;", "add_header X-Upstream $llama_tui_served_by always;",
                      "zone llama_fleet 1m;", "log_format llama_tui escape=json", "$upstream_header_time",
                      "listen 127.0.0.1:18999", "stub_status;", f"listen unix:{tmp_path}/status.sock;"):
        assert directive in text, directive
    # the trap from the field notes: an upstream keepalive pool made every backend look down
    directives = [ln.strip() for ln in text.splitlines() if not ln.strip().startswith("#")]
    assert not [d for d in directives if d.startswith("keepalive ")]
    assert "proxy_set_header Connection close;" in directives
    assert "max_fails=1 fail_timeout=2s" in text


def test_limits_follow_the_planned_concurrency(tmp_path):
    lim = frontdoor_rules.limits(FrontDoorSpec(port=1, backends=BACKENDS, max_concurrency=5000), nofile=1 << 20)
    assert lim.worker_connections >= 2 * 5000 and lim.rlimit_nofile >= lim.worker_connections and not lim.capped
    text = render(FrontDoorSpec(port=1, backends=BACKENDS, max_concurrency=5000), tmp_path, nofile=1 << 20)
    assert f"worker_connections {lim.worker_connections};" in text
    # an unprivileged process cannot raise its hard limit: NGINX is capped there, and says so
    lim = frontdoor_rules.limits(FrontDoorSpec(port=1, backends=BACKENDS, max_concurrency=5000), nofile=4096)
    assert lim.capped and lim.rlimit_nofile == 4096 and lim.worker_connections < 4096
    text = render(FrontDoorSpec(port=1, backends=BACKENDS, max_concurrency=5000), tmp_path, nofile=4096)
    assert "worker_rlimit_nofile 4096;" in text and "Capped by the open-files hard limit (4096)" in text
    small = frontdoor_rules.limits(FrontDoorSpec(port=1, backends=BACKENDS, max_concurrency=16), nofile=1 << 20)
    assert small.worker_connections == 1024


def test_root_runs_workers_as_root_so_they_can_use_the_private_prefix(tmp_path):
    assert "\nuser root;" in render(FrontDoorSpec(port=1, backends=BACKENDS), tmp_path, as_root=True)
    assert "\nuser " not in render(FrontDoorSpec(port=1, backends=BACKENDS), tmp_path, as_root=False)


@pytest.mark.parametrize("kw,needle", [
    ({"policy": "fastest"}, "unknown policy"),
    ({"backends": ()}, "no backends"),
    ({"api_key": "short"}, "API key must be"),
    ({"api_key": 'bad"key;return 200'}, "API key must be"),
    ({"listen": "localhost"}, "--listen must be an IP address"),
    ({"hash_header": "X Session"}, "bad hash header"),
    ({"backends": (Backend("127.0.0.1;", 1),)}, "bad backend"),
    ({"backends": (Backend("127.0.0.1", 8080, 0),)}, "bad backend"),
])
def test_bad_input_is_refused_with_a_fix(kw, needle, tmp_path):
    spec = FrontDoorSpec(**{"port": 18999, "backends": BACKENDS, **kw})
    with pytest.raises(UserError) as exc:
        render(spec, tmp_path)
    assert needle in exc.value.cause and exc.value.fix


def test_api_key_file(tmp_path):
    keyfile = tmp_path / "key"
    keyfile.write_text("\n  secret-key-from-file  \nignored\n")
    text = render(FrontDoorSpec(port=1, backends=BACKENDS, api_key_file=str(keyfile)), tmp_path)
    assert 'if ($http_authorization != "Bearer secret-key-from-file")' in text
    # an explicit key wins over the file
    text = render(FrontDoorSpec(port=1, backends=BACKENDS, api_key="explicit-key-0123456", api_key_file=str(keyfile)), tmp_path)
    assert "Bearer explicit-key" in text and "from-file" not in text
    for content, needle in (("", "is empty"), (None, "cannot read")):
        bad = tmp_path / "bad"
        bad.unlink(missing_ok=True)
        if content is not None:
            bad.write_text(content)
        with pytest.raises(UserError, match=needle):
            render(FrontDoorSpec(port=1, backends=BACKENDS, api_key_file=str(bad)), tmp_path)
    assert "http_authorization" not in render(FrontDoorSpec(port=1, backends=BACKENDS), tmp_path)


def test_ipv6_listen_and_backends(tmp_path):
    text = render(FrontDoorSpec(port=18000, listen="::1", backends=(Backend("::1", 18080, 1),)), tmp_path)
    assert "listen [::1]:18000" in text and "server [::1]:18080" in text


def test_status_socket_moves_to_a_private_dir_when_the_prefix_path_is_too_long(tmp_path):
    short = tmp_path / "p"
    assert frontdoor.status_socket(short) == short / "status.sock"
    deep = tmp_path / ("x" * 120) / "nginx"
    sock = frontdoor.status_socket(deep)
    assert len(str(sock)) < 108 and sock.parent.name == f"llama-tui-{os.geteuid()}"
    assert sock == frontdoor.status_socket(deep)  # stable: a later reader finds it again
    assert frontdoor.status_socket(tmp_path / ("y" * 120) / "nginx") != sock


def test_a_broken_config_is_reported_not_installed(nginx_bin, tmp_path):
    door = FrontDoor(nginx_bin, prefix=tmp_path / "nginx")
    check = door.test("events {}\nhttp { bogus_directive on; }\n")
    assert not check.ok and "bogus_directive" in check.error
    assert not door.conf_path.exists()


def test_parse_stub_status():
    text = ("Active connections: 17 \nserver accepts handled requests\n 120 120 4410 \n"
            "Reading: 0 Writing: 16 Waiting: 1 \n")
    assert frontdoor_nginx.parse_stub_status(text) == {"active": 17, "accepts": 120, "handled": 120, "requests": 4410,
                                                 "reading": 0, "writing": 16, "waiting": 1}
    assert frontdoor_nginx.parse_stub_status("<html>nope</html>") is None


def test_read_stub_status_without_nginx_is_none(tmp_path):
    assert frontdoor_nginx.read_stub_status(tmp_path / "nginx") is None
    # a stale socket file nobody listens on
    import socket

    (tmp_path / "nginx").mkdir()
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp_path / "nginx" / "status.sock"))
    s.close()
    assert frontdoor_nginx.read_stub_status(tmp_path / "nginx") is None


def test_a_candidate_that_cannot_be_written_is_a_failed_check_not_a_crash(nginx_bin, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the prefix should be")
    door = FrontDoor(nginx_bin, prefix=blocker / "nginx")
    check = door.test("events {}\nhttp {}\n")
    assert not check.ok and "cannot write" in check.error
