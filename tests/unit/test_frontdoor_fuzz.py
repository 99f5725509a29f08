"""A property test of the whole path from settings to NGINX (issue 13): hostile listen addresses, keys,
key files, state paths, header names, policies, ports, limits, flags and extra args go through
config -> FleetSpec -> FrontDoorSpec -> render. Each example either fails with a clean UserError (one
line, naming a fix) or yields a config

- whose statements are exactly those of the same fleet rendered from benign values (so no value added,
  removed or split a directive: nothing we did not write), and
- that `nginx -t` accepts (checked on a deduplicated sample: one example per shape of config and kind
  of characters in its values; `nginx -t` is the costly part).

HYPOTHESIS_PROFILE=dev runs a few hundred examples; the default (CI) runs a few thousand in well under
a minute.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from llama_tui.core import binaries, config
from llama_tui.core.errors import UserError
from llama_tui.core.fleet import FleetSpec, check_ports, frontdoor_rules, validate_extra_args
from llama_tui.core.fleet.frontdoor import Backend, FrontDoorSpec, render
from llama_tui.core.fleet.frontdoor_nginx import FrontDoor
from llama_tui.core.fleet.placement import Endpoint
from llama_tui.core.fleet.spec import MANAGED_FLAGS, UNSAFE_FLAGS

settings.register_profile("ci", max_examples=3000, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("dev", max_examples=300, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
NGINX_T_SAMPLE = 150  # at most this many `nginx -t` runs per test run (~30 ms each)

NASTY = list("\"';{}#$\\\n\r\t %`()|&<>*?~=/.:@,[]!^") + ["\x00", "\x7f", "é", "\u2028", "\ufeff", "\u202e"]
INJECTIONS = ['"; return 200 "x', "x; } server { listen 80; } #", "$host", "${x}", "x\nlisten 80;",
              '" always; add_header X 1', "a'b", "k" * 16 + ";", "k" * 16 + " x", "k" * 16 + "\n", "k" * 16 + "$x",
              "k" * 16 + "\"", "k" * 16 + "}"]


def hostile(max_size: int = 40, min_size: int = 0, no: str = "") -> st.SearchStrategy[str]:
    any_char = st.characters(blacklist_categories=("Cs",), blacklist_characters=no)
    nasty = st.sampled_from([c for c in NASTY + list("abcXYZ019-_") if c not in no])
    return st.one_of(st.text(any_char, min_size=min_size, max_size=max_size),
                     st.text(nasty, min_size=min_size, max_size=max_size),
                     st.sampled_from([i for i in INJECTIONS if not set(i) & set(no)] or ["x"]))


def flags(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), values)


ips = st.one_of(st.ip_addresses().map(str), st.sampled_from(["0.0.0.0", "::", "127.0.0.1", "::1", "127.9.9.9"]))
listens = st.one_of(
    ips, ips.map(lambda ip: f"{ip}%lo"), st.ip_addresses(v=6).map(lambda ip: f"{ip}%eth0"),
    st.sampled_from(["localhost", "::1%1", "127.0.0.1; listen 80", "[::1]", " 127.0.0.1", "127.0.0.1 ", "0x7f.1",
                     "127.0.0.1:80", "0.0.0.0\n"]),
    hostile(30))
KEY_CHARS = "ABCXYZabcxyz0189._~+/=-"
keys = st.one_of(st.none(), st.text(KEY_CHARS, min_size=14, max_size=202), hostile(60))
extra_tokens = st.one_of(st.sampled_from(sorted(UNSAFE_FLAGS) + sorted(MANAGED_FLAGS) +
                                         ["--batch-size", "512", "--path=/etc", "--no-webui", "-ub", "64",
                                          "--cont-batching", "--no-such-flag", "-", "--"]),
                         hostile(15))
extra_args = st.one_of(st.just(""), st.lists(extra_tokens, max_size=5).map(shlex.join), hostile(30))
toggles = flags(st.one_of(st.booleans(), st.sampled_from(["yes", "off", "maybe", "", "1; x"])))
ports = st.one_of(st.integers(-5, 70000), st.integers(1, 65535).map(str), hostile(8))
segments = hostile(60, min_size=1, no="/\x00").filter(lambda s: s not in (".", "..") and len(s.encode()) < 200)

# Every field has a plain value; each example makes a few of them hostile (all at once, almost every
# example would be refused by the first check and the later ones would never be reached).
PLAIN: dict[str, st.SearchStrategy[Any]] = {
    "fleet.listen": st.one_of(st.sampled_from(["127.0.0.1", "::1", "0.0.0.0", "::", "127.0.0.2"]), ips),
    "fleet.api_key": st.one_of(st.none(), st.text(KEY_CHARS, min_size=16, max_size=200)),
    "fleet.policy": st.sampled_from(config.POLICIES),
    "fleet.nginx_port": st.integers(1, 19999),
    "fleet.base_port": st.integers(20000, 60000),
    "fleet.instances": st.integers(1, 4),
    "fleet.extra_args": st.one_of(st.just(""), st.sampled_from(["--batch-size 512", "-ub 64 --no-webui",
                                                                "--cont-batching"])),
    "fleet.conn_limit": flags(st.integers(0, 1000)),
    "fleet.max_concurrency": flags(st.integers(1, 100_000)),
    "fleet.upstream_header": flags(st.booleans()),
    "fleet.expose_admin": flags(st.booleans()),
    "fleet.max_conns": flags(st.booleans()),
    "fleet.insecure_public": flags(st.booleans()),
    "fleet.allow_unsafe_args": flags(st.booleans()),
    "key_in_file": st.booleans(),
    "internal": st.one_of(st.none(), st.text("AZaz09_-", min_size=16, max_size=64)),
    "header": st.one_of(st.just("X-Session-Id"), st.text("AXaz09-", min_size=1, max_size=64)),
    "segment": st.one_of(st.just("state"), st.text("abc XYZ-_.,;{}#'()é", min_size=1, max_size=20)
                         .filter(lambda s: s.strip(".") != "")),
}
HOSTILE: dict[str, st.SearchStrategy[Any]] = {
    "fleet.listen": listens,
    "fleet.api_key": keys,
    "fleet.policy": st.one_of(st.sampled_from(["least-conn", "LEAST_CONN", "hash;"]), hostile(12)),
    "fleet.nginx_port": ports,
    "fleet.base_port": ports,
    "fleet.instances": st.sampled_from(["2", "0", "-1", "two", 10**6]),
    "fleet.extra_args": extra_args,
    "fleet.conn_limit": st.one_of(st.integers(-3, 2_000_000), st.sampled_from(["auto", "0", "64", "1e3"]), hostile(6)),
    "fleet.max_concurrency": st.one_of(st.integers(-1, 3_000_000), hostile(6)),
    "fleet.upstream_header": toggles,
    "fleet.expose_admin": toggles,
    "fleet.max_conns": toggles,
    "fleet.insecure_public": toggles,
    "fleet.allow_unsafe_args": toggles,
    "internal": keys,
    "header": hostile(20),
    "segment": segments,
}


@st.composite
def fleets(draw: Any) -> dict[str, Any]:
    values = {name: draw(plain) for name, plain in PLAIN.items()}
    for name in draw(st.lists(st.sampled_from(sorted(HOSTILE)), min_size=1, max_size=3, unique=True)):
        values[name] = draw(HOSTILE[name])
    return values


def statements(text: str) -> list[tuple[int, str, int]]:
    """(depth, directive, number of arguments) of every statement and block of an nginx.conf, in order:
    quoted strings are one argument, comments are skipped (NGINX's own tokenizer, reduced)."""
    out: list[tuple[int, str, int]] = []
    depth, words, i, n = 0, [], 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#" and not words:
            i = text.find("\n", i) if "\n" in text[i:] else n
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            words.append(text[i:j + 1])
            i = j + 1
        elif c in ";{":
            out.append((depth, words[0] if words else "", len(words) - 1))
            depth += c == "{"
            words, i = [], i + 1
        elif c == "}":
            depth -= 1
            out.append((depth, "}", 0))
            i += 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in ";{}":
                j += 1
            words.append(text[i:j])
            i = j
    assert depth == 0 and not words, "unbalanced config"
    return out


def benign(door: FrontDoorSpec) -> FrontDoorSpec:
    """The same front door with plain values in every free-text field (same shape, same options)."""
    public = frontdoor_rules.is_public(door.listen)
    return replace(door, listen="0.0.0.0" if public else "127.0.0.1", port=18000,
                   backends=tuple(Backend("127.0.0.1", 20000 + i, b.slots) for i, b in enumerate(door.backends)),
                   api_key="k" * 16 if frontdoor_rules.read_api_key(door) else None, api_key_file=None,
                   internal_key="i" * 16 if door.internal_key else None, hash_header="X-H")


def char_kinds(text: str) -> frozenset[str]:
    return frozenset("a" if c.isascii() and c.isalnum() else c if c.isascii() else "u" for c in text)


@pytest.fixture(scope="module")
def llama_server_path() -> Path:
    return binaries.require_llama_server()


@pytest.mark.timeout(240)
def test_hostile_settings_fail_cleanly_or_render_only_our_directives(tmp_path, nginx_bin, llama_server_path,
                                                                       tiny_model):
    tested: set[Any] = set()
    expected: dict[FrontDoorSpec, list[tuple[int, str, int]]] = {}  # statements of each benign rendering
    outcomes = {"refused": 0, "rendered": 0, "nginx -t": 0}

    @settings(settings.get_profile(PROFILE))
    @given(fleets())
    def check(values: dict[str, Any]) -> None:
        internal, header, segment = values.pop("internal"), values.pop("header"), values.pop("segment")
        key_in_file = values.pop("key_in_file")
        cli = {"fleet.model": "tiny", **values}
        if key_in_file and values["fleet.api_key"] is not None:
            key_file = tmp_path / "key-file"
            key_file.write_text(values["fleet.api_key"], errors="surrogateescape")
            cli["fleet.api_key"], cli["fleet.api_key_file"] = None, str(key_file)
        prefix = tmp_path / "states" / segment / "nginx"
        try:
            spec = FleetSpec.from_settings(config.load_settings(env={}, cli=cli), check_extra_args=False)
            if spec.extra_args:
                validate_extra_args(spec.extra_args, llama_server_path, spec.allow_unsafe_args)
            check_ports(spec, indices=range(0))  # as `fleet up` does: the listen address and port can be bound
            door = replace(FrontDoorSpec.for_fleet(spec, [Endpoint(spec.host, spec.port_of(i))
                                                          for i in range(spec.instances)], internal_key=internal),
                           hash_header=header)
            text = render(door, prefix, nofile=65536, as_root=False)
        except UserError as exc:
            line = exc.one_line()
            assert line.startswith("error: ") and "(fix: " in line and exc.fix.strip(), line
            outcomes["refused"] += 1
            return
        outcomes["rendered"] += 1
        note(text)
        plain = benign(door)
        if plain not in expected:
            expected[plain] = statements(render(plain, Path("/benign/state/nginx"), nofile=65536, as_root=False))
        assert statements(text) == expected[plain], "a value changed the config's statements"
        shape = (tuple(statements(text)), char_kinds(segment), char_kinds(door.listen), door.internal_key is None,
                 len(str(door.conn_limit)), len(str(door.max_concurrency)))  # and the size of the numbers
        if shape not in tested and len(tested) < NGINX_T_SAMPLE:
            tested.add(shape)
            check_ = FrontDoor(nginx_bin, prefix=prefix).test(text)
            outcomes["nginx -t"] += 1
            assert check_.ok, check_.error

    check()
    print(outcomes)
    # the run explored both sides: hostile values refused, and accepted ones rendered and checked
    assert outcomes["refused"] > 0 and outcomes["rendered"] > 0 and outcomes["nginx -t"] > 0, outcomes
