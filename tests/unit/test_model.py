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


# ------------------------------------------------------------------------------------------ realistic sizes


def test_generated_vocabulary_has_the_exact_size_and_no_duplicates():
    tokens, scores, types = model.make_vocab(32000)
    assert len(tokens) == len(set(tokens)) == len(scores) == len(types) == 32000
    assert tokens[:3] == ["<unk>", "<s>", "</s>"] and tokens[3 + 0x41] == "<0x41>"
    assert scores[-1] < scores[300] < 0.0
    with pytest.raises(UserError):
        model.make_vocab(100)


def test_1b_shape_counts_like_tinyllama():
    spec = model.RandomModelSpec.named("1b")
    assert (spec.layers, spec.embd, spec.heads, spec.kv_heads, spec.ff, spec.vocab) == (22, 2048, 32, 4, 5632, 32000)
    assert spec.parameters() == 1_100_048_384


@pytest.mark.parametrize("weight_type, ggml_type, file_type", [("q8_0", "Q8_0", 7), ("f16", "F16", 1)])
def test_random_model_header_and_tensors(tmp_path, weight_type, ggml_type, file_type):
    from gguf import GGUFReader

    spec = model.RandomModelSpec.named("8m", weight_type=weight_type, vocab=1000, ctx=2048)
    path = model.write_random_model(tmp_path / "r.gguf", spec)
    reader = GGUFReader(str(path))

    def field(key):
        return reader.fields[key].parts[-1][0]

    assert field("llama.embedding_length") == 128 and field("llama.block_count") == 2
    assert field("llama.attention.head_count") == 4 and field("llama.attention.head_count_kv") == 4
    assert field("llama.feed_forward_length") == 384 and field("llama.context_length") == 2048
    assert field("general.file_type") == file_type
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == 1000
    by_name = {t.name: t for t in reader.tensors}
    assert len(by_name) == 3 + 9 * spec.layers
    assert by_name["blk.1.ffn_down.weight"].tensor_type.name == ggml_type
    assert by_name["blk.1.ffn_norm.weight"].tensor_type.name == "F32"
    assert [int(x) for x in by_name["token_embd.weight"].shape] == [128, 1000]  # ggml order: cols, rows
    assert sum(int(t.n_elements) for t in reader.tensors) == spec.parameters()


def test_random_model_rejects_shapes_q8_0_cannot_hold():
    with pytest.raises(UserError, match="q8_0"):
        model.RandomModelSpec(layers=1, embd=48, heads=4, kv_heads=4, ff=96).validate()
    with pytest.raises(UserError, match="unknown model size"):
        model.RandomModelSpec.named("3b")


def test_cli_model_random_writes_reuses_and_rejects_bad_input(tmp_path):
    out = tmp_path / "r.gguf"
    first = run_cli("model", "random", "--params", "8m", "--vocab", "512", "--out", str(out))
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == str(out) and model.is_gguf(out)
    assert "557,696 parameters" in first.stderr  # 8m's layers with a 512-token vocabulary
    again = run_cli("model", "random", "--params", "8m", "--vocab", "512", "--out", str(out))
    assert again.returncode == 0 and "reusing" in again.stderr
    bad = run_cli("model", "random", "--params", "8m", "--type", "q4_k", "--out", str(tmp_path / "x.gguf"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--type" in bad.stderr
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.integration
def test_random_model_loads_in_llama_server_with_its_vocabulary(llama_server, tmp_path):
    spec = model.RandomModelSpec.named("8m")
    path = model.write_random_model(tmp_path / "r8m.gguf", spec)
    # --no-repack: this CPU advertises AMX that its VM does not enable, and llama.cpp's AMX q8_0 kernel dies
    # with SIGILL on its first `tilezero` when weights are repacked for the CPU (f16 and f32 load either way).
    url = llama_server(parallel=1, model_path=path, extra=("--no-repack",))
    meta = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["meta"]
    assert meta["n_vocab"] == 32000 and meta["n_embd"] == 128
    assert meta["n_params"] == spec.parameters()
    body = httpx.post(f"{url}/completion", timeout=60, json={
        "prompt": "the cat sat on the mat", "n_predict": 16, "ignore_eos": True, "cache_prompt": False}).json()
    assert body["timings"]["predicted_n"] == 16 and body["tokens_evaluated"] > 1
