"""The store's keys name results by content: a rebuilt base model, a changed data file or changed
stage code gives a new key (never an old result); and stage code cannot change without a version bump."""
from __future__ import annotations

import json
import shutil

import pytest

from panacea_lab.config import AlignConfig, AttackConfig, ModelConfig, config_hash
from panacea_lab.pipeline import keys
from panacea_lab.pipeline.keys import key
from panacea_lab.testing import write_package_data


def _copy_model(src, dst):
    shutil.copytree(src, dst)
    return ModelConfig(path=str(dst), lora_r=4, lora_alpha=8)


def test_a_rebuilt_base_model_changes_the_key(tiny_model_dir, tmp_path):
    model = _copy_model(tiny_model_dir, tmp_path / "m")
    before = key("align", AlignConfig(model=model))
    weights = next((tmp_path / "m").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    keys.model_hash.cache_clear()
    after = key("align", AlignConfig(model=model))
    assert before.config == after.config and config_hash(before) != config_hash(after)
    assert dict(after.inputs)["base_weights"] != dict(before.inputs)["base_weights"]


def test_a_changed_data_file_changes_the_key(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("PANACEA_HOME", str(tmp_path / "home"))
    write_package_data(tmp_path / "home" / "data")
    keys.data_hash.cache_clear()
    cfg = AttackConfig(align=AlignConfig(model=tiny_cfg, data="packages", prevalence="uniform"))
    before = config_hash(key("attack", cfg))
    some_file = next(p for p in sorted((tmp_path / "home" / "data").rglob("*")) if p.is_file()
                     and p.name != "manifest.json")
    some_file.write_text(some_file.read_text()[: len(some_file.read_text()) // 2])
    keys.data_hash.cache_clear()
    assert config_hash(key("attack", cfg)) != before
    keys.data_hash.cache_clear()


def test_stage_code_version_is_part_of_the_key(tiny_cfg, monkeypatch):
    cfg = AlignConfig(model=tiny_cfg)
    before = config_hash(key("align", cfg))
    version, modules = keys.STAGE_CODE["align"]
    monkeypatch.setitem(keys.STAGE_CODE, "align", (version + 1, modules))
    assert config_hash(key("align", cfg)) != before


def test_stage_code_did_not_change_without_a_version_bump():
    stale = keys.stale_stages()
    assert not stale, (f"the code of stage(s) {stale} changed but their version in panacea_lab/pipeline/keys.py "
                       "did not: bump it (results will be recomputed), then run "
                       "`python -m panacea_lab.pipeline.keys --update`")


def test_fingerprints_ignore_docstrings_but_not_code(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text('"""doc"""\ndef f():\n    """doc"""\n    return 1  # note\n')
    monkeypatch.setattr(keys, "PACKAGE", pkg)
    monkeypatch.setitem(keys.STAGE_CODE, "align", (1, ["m.py"]))
    first = keys.code_fingerprint("align")
    (pkg / "m.py").write_text('"""other doc"""\ndef f():\n    return 1\n')
    assert keys.code_fingerprint("align") == first
    (pkg / "m.py").write_text('def f():\n    return 2\n')
    assert keys.code_fingerprint("align") != first


def test_result_records_its_inputs(tiny_cfg, store):
    from panacea_lab import pipeline

    cfg = AlignConfig(model=tiny_cfg, n_refusal=16, n_replay_per_task=2, epochs=1)
    result = pipeline.align(cfg, store)
    inputs = result["provenance"]["inputs"]
    assert set(inputs) == {"base_weights", "data", "code"} and inputs["code"].startswith("align-v")
    assert result["config"] == json.loads(json.dumps(result["config"])) and "model" in result["config"]
