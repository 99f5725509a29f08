"""Golden files: the config each policy renders from fixed inputs, and `nginx -t` on each of them.

Regenerate after an intended template change with `UPDATE_GOLDEN=1 pytest tests/unit/test_frontdoor_golden.py`
and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llama_tui import __version__
from llama_tui.core.config import POLICIES
from llama_tui.core.fleet.frontdoor import Backend, FrontDoorSpec, render
from llama_tui.core.fleet.frontdoor_nginx import FrontDoor

from conftest import skip_without_policy

GOLDEN = Path(__file__).parent.parent / "golden"
PREFIX = "/GOLDEN-PREFIX/nginx"
BACKENDS = (Backend("127.0.0.1", 18080, 4), Backend("127.0.0.1", 18081, 4), Backend("127.0.0.1", 18082, 2))

# (file name, spec): every policy plain, plus the options that change the shape of the file.
CASES = [(f"{p}.conf", FrontDoorSpec(port=18000, backends=BACKENDS, policy=p, max_concurrency=256, worker_processes=2))
         for p in POLICIES] + [
    ("least_conn_max_conns_key_admin.conf",
     FrontDoorSpec(port=18000, backends=BACKENDS, policy="least_conn", max_conns=True, max_concurrency=256,
                   worker_processes=2, api_key="golden-key-0123456789", expose_admin=True, listen="0.0.0.0")),
    ("hash_max_conns.conf",
     FrontDoorSpec(port=18000, backends=BACKENDS, policy="hash", max_conns=True, max_concurrency=4096,
                   worker_processes=4, hash_header="X-Conversation")),
    # a public listener: the internal key goes to the instances, a per-client limit, no X-Upstream
    ("least_conn_public_internal_key.conf",
     FrontDoorSpec(port=18000, backends=BACKENDS, policy="least_conn", max_concurrency=256, worker_processes=2,
                   api_key="golden-key-0123456789", listen="0.0.0.0", internal_key="golden-internal-key-0123456789")),
]


def rendered(spec: FrontDoorSpec) -> str:
    text = render(spec, Path(PREFIX), nofile=65536, as_root=False, modules_dir="/usr/lib/nginx/modules")
    return text.replace(f"llama-tui {__version__}.", "llama-tui VERSION.")


@pytest.mark.parametrize("name,spec", CASES, ids=[c[0] for c in CASES])
def test_rendering_matches_golden_file(name, spec):
    path = GOLDEN / name
    text = rendered(spec)
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.is_file(), f"missing {path}: run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from its golden file (UPDATE_GOLDEN=1 to accept)"


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_golden_file_passes_nginx_t(name, nginx_bin, tmp_path):
    skip_without_policy(name.removesuffix(".conf"))
    door = FrontDoor(nginx_bin, prefix=tmp_path / "nginx")
    text = (GOLDEN / name).read_text().replace(PREFIX, str(door.prefix))
    check = door.test(text)
    assert check.ok, f"{name}: {check.error}"


def test_golden_files_cover_every_policy():
    for policy in POLICIES:
        assert f"# policy={policy} " in (GOLDEN / f"{policy}.conf").read_text()
    # the policies really differ where they should
    assert "least_conn;" in (GOLDEN / "least_conn.conf").read_text()
    assert "random two least_conn;" in (GOLDEN / "random_two_least_conn.conf").read_text()
    assert "hash $llama_tui_hash_key consistent;" in (GOLDEN / "hash.conf").read_text()
    rr = (GOLDEN / "round_robin.conf").read_text()
    assert "least_conn" not in rr and "hash " not in rr and "max_conns" not in rr
