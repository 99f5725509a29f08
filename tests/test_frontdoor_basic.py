"""The generated NGINX config is valid for every policy and proxies real streams from real llama-server."""

from __future__ import annotations

import httpx
import pytest

from llama_tui.core.config import POLICIES
from llama_tui.core.frontdoor import Backend, FrontDoor, FrontDoorSpec, render


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_passes_nginx_t(policy, nginx_bin, tmp_path):
    spec = FrontDoorSpec(port=18999, policy=policy, backends=(Backend("127.0.0.1", 18080, 2),
                                                               Backend("127.0.0.1", 18081, 2)), max_conns=True)
    door = FrontDoor(nginx_bin, prefix=tmp_path / "nginx")
    check = door.test(render(spec, door.prefix))
    assert check.ok, check.error


def test_a_broken_config_is_reported_not_installed(nginx_bin, tmp_path):
    door = FrontDoor(nginx_bin, prefix=tmp_path / "nginx")
    check = door.test("events {}\nhttp { bogus_directive on; }\n")
    assert not check.ok and "bogus_directive" in check.error
    assert not door.conf_path.exists()


@pytest.mark.integration
def test_streams_through_nginx(llama_server, nginx_front):
    urls = [llama_server(parallel=1), llama_server(parallel=1)]
    door, front = nginx_front(urls, policy="round_robin", slots=1)
    seen = set()
    for _ in range(4):
        with httpx.stream("POST", f"{front}/completion", timeout=30,
                          json={"prompt": "hi", "n_predict": 16, "stream": True, "ignore_eos": True}) as r:
            assert r.status_code == 200
            seen.add(r.headers["x-upstream"])
            body = r.read().decode()
        assert '"stop":true' in body
    assert seen == {u.removeprefix("http://") for u in urls}
    assert httpx.get(f"{front}/slots").status_code == 403
