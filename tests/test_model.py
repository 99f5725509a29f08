from __future__ import annotations

import httpx
import orjson
import pytest

from llama_tui.core import model
from llama_tui.core.errors import UserError

from conftest import run_cli


def test_tiny_vocab_has_no_duplicates_and_covers_every_byte():
    tokens, scores, types = model.tiny_vocab()
    assert len(tokens) == len(set(tokens)) == len(scores) == len(types)
    assert all(f"<0x{b:02X}>" in tokens for b in range(256))
    assert 280 <= len(tokens) <= 320


def test_write_and_read_back(tmp_path):
    from gguf import GGUFReader

    spec = model.TinyModelSpec(layers=3, embd=32, ctx=1024)
    path = model.write_tiny_model(tmp_path / "m.gguf", spec)
    assert model.is_gguf(path)
    reader = GGUFReader(str(path))
    names = {t.name for t in reader.tensors}
    assert "blk.2.ffn_down.weight" in names and "blk.3.attn_q.weight" not in names
    assert reader.fields["llama.context_length"].parts[-1][0] == 1024


def test_is_gguf_rejects_other_files(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"PK\x03\x04not a model")
    assert not model.is_gguf(bad)
    with pytest.raises(UserError, match="bad magic"):
        model.resolve_model(bad)
    with pytest.raises(UserError, match="not found"):
        model.resolve_model(tmp_path / "missing.gguf")


def test_spaces_and_non_ascii_paths_resolve(tmp_path):
    path = model.write_tiny_model(tmp_path / "my models" / "modèle ü.gguf")
    assert model.resolve_model(str(path)) == path.resolve()


def test_invalid_spec_is_a_user_error():
    with pytest.raises(UserError):
        model.TinyModelSpec(embd=30).validate()


def test_cli_model_tiny_writes_and_reuses(tmp_path):
    out = tmp_path / "t.gguf"
    first = run_cli("model", "tiny", "--out", str(out), "--layers", "1", "--embd", "32")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == str(out) and model.is_gguf(out)
    mtime = out.stat().st_mtime_ns
    again = run_cli("model", "tiny", "--out", str(out), "--layers", "1", "--embd", "32")
    assert again.returncode == 0 and "reusing" in again.stderr and out.stat().st_mtime_ns == mtime


@pytest.mark.integration
def test_tiny_model_is_served_and_streams_tokens(llama_server):
    url = llama_server(parallel=1)
    n = 48
    predicted = []
    with httpx.stream("POST", f"{url}/completion", timeout=30,
                      json={"prompt": "hello", "n_predict": n, "stream": True, "ignore_eos": True,
                            "cache_prompt": False}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                event = orjson.loads(line[6:])
                predicted.append(event.get("tokens_predicted", 0))
                if event.get("stop"):
                    assert event["timings"]["predicted_n"] == n
                    break
    assert predicted[-1] == n
    assert len(predicted) > n // 4  # really streamed, in many events
