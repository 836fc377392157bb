"""Models and adapters that are absent, partial or damaged: one line naming the path and the fix."""
from __future__ import annotations

import shutil

import pytest

from panacea_lab.config import ConfigError, ModelConfig
from panacea_lab.models.loading import attach_lora, load_adapter, load_base, load_tokenizer, resolve_model_path


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("path", ["/nonexistent", "./not/here", "~/no-such-model-dir-xyz", "bad id!!"])
def test_a_missing_local_directory_says_so_and_names_hf_download(path):
    with pytest.raises(ConfigError, match="no such local directory") as err:
        resolve_model_path(path)
    text = one_line(err)
    assert "hf download ORG/NAME --local-dir" in text and "huggingface-cli" not in text
    assert "alphanumeric" not in text  # the hub's id validation never surfaces


def test_an_uncached_hub_id_names_the_hf_download_command():
    expected = r"not in the Hugging Face cache.*`hf download someone/not-cached-xyz`"
    with pytest.raises(ConfigError, match=expected) as err:
        resolve_model_path("someone/not-cached-xyz")
    assert "huggingface-cli" not in one_line(err)


def copy_without(src, dst, *names):
    shutil.copytree(src, dst)
    for name in names:
        (dst / name).unlink()
    return dst


def test_a_partial_model_directory_names_what_is_missing(tiny_model_dir, tmp_path):
    only_config = tmp_path / "only-config"
    only_config.mkdir()
    shutil.copy(tiny_model_dir / "config.json", only_config)
    with pytest.raises(ConfigError, match=rf"{only_config} has no \*.safetensors weights") as err:
        load_tokenizer(ModelConfig(path=str(only_config)))
    one_line(err)
    pickled = copy_without(tiny_model_dir, tmp_path / "pickled", "model.safetensors")
    (pickled / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ConfigError, match=r"only pickled weights \(pytorch_model.bin\), which are never loaded"):
        load_base(ModelConfig(path=str(pickled)))
    no_tok = copy_without(tiny_model_dir, tmp_path / "no-tok", "tokenizer.json", "tokenizer_config.json")
    with pytest.raises(ConfigError, match="has no tokenizer files"):
        load_tokenizer(ModelConfig(path=str(no_tok)))


@pytest.mark.parametrize("keep", [0, 0.5])
def test_damaged_weights_are_one_line_naming_the_directory(tiny_model_dir, tmp_path, keep):
    damaged = copy_without(tiny_model_dir, tmp_path / "damaged")
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: int(weights.stat().st_size * keep)])
    with pytest.raises(ConfigError, match=rf"{damaged} could not be loaded \(.*\); .*complete and undamaged") as err:
        load_base(ModelConfig(path=str(damaged)))
    assert f"--local-dir {damaged}" in one_line(err)


@pytest.fixture(scope="module")
def saved_adapter(tiny_model_dir, tmp_path_factory):
    """An adapter saved as a run store saves it: <stage dir>/adapter beside result.json."""
    cfg = ModelConfig(path=str(tiny_model_dir), lora_r=4, lora_alpha=8, max_length=96)
    stage = tmp_path_factory.mktemp("stage")
    attach_lora(load_base(cfg), cfg, seed=0).save_pretrained(stage / "adapter")
    (stage / "result.json").write_text("{}")
    return cfg, stage


@pytest.mark.parametrize("damage", ["truncate", "delete", "delete-config", "pickled"])
def test_a_damaged_adapter_names_the_file_and_the_stage_to_delete(saved_adapter, tmp_path, damage):
    cfg, original = saved_adapter
    stage = shutil.copytree(original, tmp_path / "stage")
    weights = stage / "adapter" / "adapter_model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
        expected = rf"{weights} is damaged \(.*\): delete {stage} so that its stage is recomputed"
    elif damage == "delete":
        weights.unlink()
        expected = rf"{weights} is missing: delete {stage}"
    elif damage == "delete-config":
        (stage / "adapter" / "adapter_config.json").unlink()
        expected = rf"adapter_config.json is missing: delete {stage}"
    else:
        weights.rename(weights.with_name("adapter_model.bin"))
        expected = "pickled adapter_model.bin and no adapter_model.safetensors"
    with pytest.raises(FileNotFoundError, match=expected) as err:
        load_adapter(load_base(cfg), stage / "adapter", trainable=False)
    assert "refusing to load pickled" not in one_line(err)


def test_an_adapter_outside_a_run_store_is_never_told_to_delete_its_parent(saved_adapter, tmp_path):
    cfg, original = saved_adapter
    mine = shutil.copytree(original / "adapter", tmp_path / "home" / "my-adapter")
    (mine / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="save the adapter there again") as err:
        load_adapter(load_base(cfg), mine, trainable=False)
    assert "delete" not in one_line(err)
