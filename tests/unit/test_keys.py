"""The per-fleet internal key: random, private, stable while the fleet lives."""

import os
import stat

from llama_tui.core.fleet import keys


def test_internal_key_is_made_once_private_and_random(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert keys.read_internal_key(a) is None
    key = keys.ensure_internal_key(a)
    assert len(key) == 64 and key.isalnum() and keys.ensure_internal_key(a) == key == keys.read_internal_key(a)
    assert stat.S_IMODE(os.stat(keys.internal_key_path(a)).st_mode) == 0o600
    assert keys.ensure_internal_key(b) != key
    env = keys.instance_env(key, {"PATH": "/bin"})
    assert env == {"PATH": "/bin", keys.INSTANCE_KEY_ENV: key}


def test_bench_sends_the_internal_key_only_to_the_fleets_own_instances(tmp_path, monkeypatch):
    from llama_tui.core import bench
    from llama_tui.core.bench import servers

    key = keys.ensure_internal_key(tmp_path)

    class State:
        state_dir = str(tmp_path)
        spec: dict = {}
        nginx = None

        def instance_urls(self):
            return ["http://127.0.0.1:18080", "http://127.0.0.1:18081"]

        def nginx_url(self):
            return "http://127.0.0.1:18000"

    monkeypatch.setattr(servers, "fleet_state", lambda d: State())
    via_nginx = bench.discover_servers(bench.BenchConfig(url="http://127.0.0.1:18000"))
    assert via_nginx.api_key == key and not via_nginx.targets_are_instances  # NGINX gets the public key
    direct = bench.discover_servers(bench.BenchConfig(url="http://localhost:18081"))
    assert direct.api_key == key and direct.targets_are_instances
    ours = bench.discover_servers(bench.BenchConfig(url="http://127.0.0.1:18000", server_urls=("127.0.0.1:18080",)))
    assert ours.api_key == key
    foreign = bench.discover_servers(bench.BenchConfig(url="http://127.0.0.1:18000",
                                                       server_urls=("127.0.0.1:18080", "10.0.0.5:8080")))
    assert foreign.api_key is None  # a server that is not the fleet's never sees its key
