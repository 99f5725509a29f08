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
