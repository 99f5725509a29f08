"""The hardened front door, rendered (issue 13): an allowlist of routes, the internal key towards the
instances, retries that never re-send a request an instance received, limits on the public listener,
X-Upstream only where asked, plain listen addresses, quoted paths, keys of 16+ characters."""

from __future__ import annotations

import re

import pytest

from llama_tui.core.errors import UserError
from llama_tui.core.fleet import frontdoor
from llama_tui.core.fleet.frontdoor import PUBLIC_ROUTES, Backend, FrontDoorSpec, render
from llama_tui.core.fleet.frontdoor_nginx import FrontDoor

BACKENDS = (Backend("127.0.0.1", 18080, 2), Backend("127.0.0.1", 18081, 3))
KEY = "public-key-0123456789"
INTERNAL = "internal-key-0123456789abcdef"


def conf(tmp_path, **kw) -> str:
    return render(FrontDoorSpec(**{"port": 18999, "backends": BACKENDS, **kw}), tmp_path / "nginx")


def directives(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_only_the_inference_routes_and_health_are_proxied(tmp_path):
    text = conf(tmp_path)
    proxied = re.findall(r"location = (\S+) \{\n\s+proxy_pass http://llama_fleet(\S+);", text)
    assert proxied == [(r, r) for r in PUBLIC_ROUTES]  # the backend sees exactly the route's path
    assert set(PUBLIC_ROUTES) == {"/v1/chat/completions", "/v1/completions", "/completion", "/v1/embeddings",
                                  "/v1/models", "/health"}
    catch_all = text.split("location / {", 1)[1].split("}", 1)[0]
    assert "return 404" in catch_all and "proxy_pass" not in catch_all
    # --expose-admin publishes the rest again
    admin = conf(tmp_path, expose_admin=True)
    assert "proxy_pass http://llama_fleet;" in admin.split("location / {", 1)[1].split("}", 1)[0]


def test_the_internal_key_replaces_the_clients_authorization(tmp_path):
    text = conf(tmp_path, api_key=KEY, internal_key=INTERNAL)
    assert f'proxy_set_header Authorization "Bearer {INTERNAL}";' in directives(text)
    assert f'if ($http_authorization != "Bearer {KEY}")' in text  # the public key is checked first
    assert "Authorization" not in conf(tmp_path).replace("$http_authorization", "")  # keyless instances
    for bad in ("short", 'bad"key-0123456789;return 200', "x" * 201):
        with pytest.raises(UserError, match="API key must be"):
            conf(tmp_path, internal_key=bad)


def test_retries_never_resend_a_request_an_instance_received(tmp_path):
    for kw in ({}, {"max_conns": True}, {"policy": "hash"}, {"expose_admin": True, "max_conns": True}):
        d = directives(conf(tmp_path, **kw))
        # connect errors (the request never reached a backend): one other backend, no more
        assert "proxy_next_upstream error timeout;" in d and "proxy_next_upstream_tries 2;" in d
        # a 503 (loading: nothing processed) is retried on one other backend; an error there is not
        assert "proxy_next_upstream http_503 non_idempotent;" in d
        nexts = [x for x in d if x.startswith("proxy_next_upstream ")]
        assert not [x for x in nexts if "non_idempotent" in x and "error" in x], nexts
        assert all(x == "proxy_next_upstream_tries 2;" for x in d if x.startswith("proxy_next_upstream_tries"))
    # max_conns: only "no live upstreams" overflows; a backend that failed is not tried again there
    overflow = conf(tmp_path, max_conns=True).split("location @overflow {", 1)[1]
    assert 'if ($upstream_addr !~ "llama_fleet$")' in overflow and "return 502" in overflow


def test_public_listener_limits(tmp_path):
    d = directives(conf(tmp_path, listen="0.0.0.0", api_key=KEY))
    for directive in ("client_header_timeout 10s;", "client_body_timeout 30s;", "send_timeout 60s;",
                      f"limit_conn llama_tui_per_client {frontdoor.PUBLIC_CONN_LIMIT};", "limit_conn_status 429;",
                      "client_body_buffer_size 128k;"):
        assert directive in d, directive
    assert "limit_conn_zone $llama_tui_client zone=llama_tui_per_client:10m;" in d
    # loopback: the timeouts, no per-client limit unless asked; 0 switches it off
    loop = directives(conf(tmp_path))
    assert "client_header_timeout 10s;" in loop and not [x for x in loop if x.startswith("limit_conn")]
    assert "limit_conn llama_tui_per_client 5;" in directives(conf(tmp_path, conn_limit=5))
    assert not [x for x in directives(conf(tmp_path, listen="0.0.0.0", api_key=KEY, conn_limit=0))
                if x.startswith("limit_conn")]
    for bad in (-1, frontdoor.MAX_CONN_LIMIT + 1, "8", True):
        with pytest.raises(UserError, match="--conn-limit"):
            conf(tmp_path, conn_limit=bad)


def test_the_largest_conn_limit_passes_nginx_t(nginx_bin, tmp_path):
    door = FrontDoor(nginx_bin, prefix=tmp_path / "nginx")
    check = door.test(render(FrontDoorSpec(port=18999, backends=BACKENDS, conn_limit=frontdoor.MAX_CONN_LIMIT),
                             door.prefix))
    assert check.ok, check.error


def test_x_upstream_is_opt_in_on_a_public_listener(tmp_path):
    header = "add_header X-Upstream $llama_tui_served_by always;"
    assert header in directives(conf(tmp_path))  # loopback: on (the TUI and benchmarks attribute by it)
    assert header not in directives(conf(tmp_path, listen="0.0.0.0", api_key=KEY))
    assert header in directives(conf(tmp_path, listen="0.0.0.0", api_key=KEY, upstream_header=True))
    assert header not in directives(conf(tmp_path, upstream_header=False))


@pytest.mark.parametrize("listen", ["::1%lo", "fe80::1%eth0", "::1%1", "127.0.0.1%lo", "localhost", "", " 127.0.0.1",
                                    "127.0.0.1\n", "[::1]", "0x7f.0.0.1"])
def test_listen_must_be_a_plain_ip(listen, tmp_path):
    with pytest.raises(UserError) as exc:
        conf(tmp_path, listen=listen)
    assert "--listen must be an IP address" in exc.value.cause and exc.value.fix


@pytest.mark.parametrize("listen", ["::ffff:127.0.0.1", "::ffff:235.193.103.203"])
def test_an_ipv4_mapped_listen_address_is_refused_with_its_ipv4_form(listen, tmp_path):
    # (the fuzz test found it: Python binds such an address, NGINX's IPv6-only socket fails with EINVAL)
    with pytest.raises(UserError) as exc:
        conf(tmp_path, listen=listen)
    assert "IPv4 address written as IPv6" in exc.value.cause and exc.value.fix == f"write it as IPv4: --listen {listen[7:]}"


def test_paths_are_quoted_or_refused(nginx_bin, tmp_path):
    spaced = tmp_path / "my runs" / "state {x}; #1" / "nginx"
    text = render(FrontDoorSpec(port=18999, backends=BACKENDS), spaced)
    assert f'pid "{spaced}/nginx.pid";' in text and f'access_log "{spaced}/logs/access.log" llama_tui;' in text
    door = FrontDoor(nginx_bin, prefix=spaced)
    check = door.test(text)
    assert check.ok, check.error
    for bad in ('a"b', "a$b", "a\\b", "a\nb"):
        with pytest.raises(UserError) as exc:
            render(FrontDoorSpec(port=18999, backends=BACKENDS), tmp_path / bad / "nginx")
        assert "cannot be written into nginx.conf" in exc.value.cause and "--state-dir" in exc.value.fix


def test_keys_have_at_least_16_characters(tmp_path):
    with pytest.raises(UserError, match="16-200 characters"):
        conf(tmp_path, api_key="k" * 15)
    assert f'"Bearer {"k" * 16}"' in conf(tmp_path, api_key="k" * 16)
