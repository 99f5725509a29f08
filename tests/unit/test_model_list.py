"""`llama-tui model list` and the GGUF header reader under it (core/gguf_header.py)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from llama_tui.core import gguf_header, model

from conftest import run_cli

SPEC = model.TinyModelSpec(layers=2, embd=32, ctx=2048)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """A folder with one good tiny model, one cut inside its tensor data, one cut inside its header,
    and one that is not a GGUF file; nested deep, so the table must shorten the paths."""
    folder = tmp_path / ("a-rather-long-folder-name-" * 3) / "models"
    good = model.write_tiny_model(folder / "good.gguf", SPEC)
    blob = good.read_bytes()
    (folder / "cut-data.gguf").write_bytes(blob[:-1000])
    (folder / "cut-header.gguf").write_bytes(blob[:600])
    (folder / "zip.gguf").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    (folder / "notes.txt").write_text("not a model")
    return folder


def expected_parameters(spec: model.TinyModelSpec) -> int:
    n_vocab = len(model.tiny_vocab()[0])
    d, ff, d_kv = spec.embd, spec.ff, spec.embd // spec.heads * spec.kv_heads
    per_layer = d + d * d + 2 * d_kv * d + d * d + d + 3 * ff * d
    return 2 * n_vocab * d + d + spec.layers * per_layer


def test_header_agrees_with_the_gguf_package(models: Path):
    from gguf import GGUFReader

    path = models / "good.gguf"
    header = gguf_header.read_header(path)
    reader = GGUFReader(str(path))
    assert header.architecture == "llama" and header.context_length == 2048 and header.arch_int("block_count") == 2
    assert len(header.tensors) == len(reader.tensors)
    assert header.weights_bytes == sum(int(t.n_bytes) for t in reader.tensors)
    assert header.parameter_count == sum(int(t.n_elements) for t in reader.tensors) == expected_parameters(SPEC)
    assert header.data_offset == reader.data_offset
    assert header.array_length("tokenizer.ggml.tokens") == len(model.tiny_vocab()[0])
    assert header.quantization == "F32" and header.file_type == 0


def test_long_arrays_keep_only_their_length(models: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(gguf_header, "KEEP_ARRAY_VALUES", 10)  # the vocabulary is then skipped, as a real one is
    header = gguf_header.read_header(models / "good.gguf")
    tokens = header.get("tokenizer.ggml.tokens")
    assert tokens.values is None and tokens.length == len(model.tiny_vocab()[0])
    assert header.get("tokenizer.ggml.scores").values is None
    assert header.parameter_count == expected_parameters(SPEC)  # the tensor table was still found


@pytest.mark.parametrize("name,error", [
    ("cut-data.gguf", "truncated: the tensor data needs"),
    ("cut-header.gguf", "truncated or damaged header at byte"),
    ("zip.gguf", "not a GGUF file"),
])
def test_damaged_files_raise_one_error(models: Path, name: str, error: str):
    with pytest.raises(gguf_header.GGUFHeaderError, match=error):
        gguf_header.read_header(models / name)


def test_list_json_has_one_row_per_file_with_its_facts_or_its_error(models: Path):
    proc = run_cli("model", "list", "--json", str(models), str(models / "good.gguf"))  # good.gguf reached twice
    assert proc.returncode == 0, proc.stderr
    rows = {Path(r["path"]).name: r for r in orjson.loads(proc.stdout)}
    assert sorted(rows) == ["cut-data.gguf", "cut-header.gguf", "good.gguf", "zip.gguf"]
    good = rows["good.gguf"]
    assert good["architecture"] == "llama" and good["parameters"] == expected_parameters(SPEC)
    assert good["quantization"] == "F32" and good["context_length"] == 2048 and good["error"] is None
    assert good["size_bytes"] == (models / "good.gguf").stat().st_size
    for name in ("cut-data.gguf", "cut-header.gguf", "zip.gguf"):
        assert rows[name]["error"] and rows[name]["architecture"] is None and rows[name]["size_bytes"] > 0
    assert set(good) == set(rows["zip.gguf"])  # one schema for good and damaged rows


def test_list_table_fits_100_columns_and_shows_damage_in_its_row(models: Path):
    proc = run_cli("model", "list", str(models))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["MODEL", "ARCH", "PARAMS", "QUANT", "CTX", "SIZE"]
    assert len(lines) == 5 and all(len(line) <= 100 for line in lines), lines
    good = next(line for line in lines if "good.gguf" in line)
    assert good.split()[1:5] == ["llama", f"{expected_parameters(SPEC) / 1000:.0f}K", "F32", "2048"], good
    assert "error: truncated: the tensor data" in next(line for line in lines if "cut-data.gguf" in line)
    assert "error: not a GGUF file" in next(line for line in lines if "zip.gguf" in line)


def test_default_places_include_the_cache(tmp_path: Path):
    env = {"HOME": str(tmp_path / "home"), "LLAMA_TUI_CACHE_DIR": str(tmp_path / "cache")}
    (tmp_path / "home").mkdir()
    tiny = run_cli("model", "tiny", env=env)
    assert tiny.returncode == 0, tiny.stderr
    proc = run_cli("model", "list", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert [r["path"] for r in orjson.loads(proc.stdout)] == [tiny.stdout.strip()]
    empty = run_cli("model", "list", str(tmp_path / "home"), env=env)
    assert empty.returncode == 0 and empty.stdout == "" and "no GGUF files" in empty.stderr


def test_a_missing_folder_is_one_line_exit_2(tmp_path: Path):
    proc = run_cli("model", "list", str(tmp_path / "nowhere"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: no such file or folder") and "(fix: " in proc.stderr
