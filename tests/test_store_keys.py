"""The store's keys name results by content: a rebuilt base model, a changed data file, a changed
line of world code or changed stage code gives a new key (never an old result), with no number to
bump by hand; and a defense's code keys only the runs that name it."""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys

import pytest

from panacea_lab.config import AlignConfig, AttackConfig, DefenseConfig, EvalConfig, ModelConfig, config_hash, to_dict
from panacea_lab.pipeline import keys
from panacea_lab.pipeline.keys import key
from panacea_lab.testing import write_package_data


@pytest.fixture(autouse=True)
def fresh_fingerprints():
    """Code hashes are read once per process; these tests edit code between keys, so each starts fresh."""
    keys.clear_fingerprints()
    yield
    keys.clear_fingerprints()


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
    cfg = AttackConfig(align=AlignConfig(model=tiny_cfg, data="packages", prevalence="uniform"))
    before = config_hash(key("attack", cfg))
    some_file = next(p for p in sorted((tmp_path / "home" / "data").rglob("*")) if p.is_file()
                     and p.name != "manifest.json")
    some_file.write_text(some_file.read_text()[: len(some_file.read_text()) // 2])
    assert config_hash(key("attack", cfg)) != before


def test_an_edited_fetched_file_changes_the_key_even_with_its_manifest_unchanged(tiny_cfg, tmp_path, monkeypatch):
    """The key hashes the files a world reads, not the fetch manifest that lists them."""
    root = tmp_path / "home" / "data"
    monkeypatch.setenv("PANACEA_HOME", str(tmp_path / "home"))
    write_package_data(root)
    (root / "manifest.json").write_text('{"files": {}}')
    cfg = AttackConfig(align=AlignConfig(model=tiny_cfg, data="packages", prevalence="uniform"))
    before = config_hash(key("attack", cfg))
    manifest = (root / "manifest.json").read_bytes()
    prompts = next(p for p in sorted(root.rglob("*")) if p.is_file() and p.name != "manifest.json")
    prompts.write_bytes(prompts.read_bytes() + b" ")
    assert (root / "manifest.json").read_bytes() == manifest and config_hash(key("attack", cfg)) != before


def _world_edited(monkeypatch, edited: str):
    """Keys computed as if one line of `edited` (a module under panacea_lab/) changed."""
    read = keys._read_source
    monkeypatch.setattr(keys, "_read_source", lambda path: read(path) + (
        "\nEDITED = 1\n" if path.relative_to(keys.PACKAGE).as_posix() == edited else ""))
    keys.clear_fingerprints()  # as a new process would read the edited code


def test_a_line_of_world_code_rekeys_every_embedded_stage_evaluations_included(tiny_cfg, monkeypatch):
    from panacea_lab.pipeline.evaluations import EvalJob

    plain = AttackConfig(align=AlignConfig(model=tiny_cfg))
    jobs = {"align": plain.align, "attack": plain, "eval": EvalJob("attack", to_dict(plain), EvalConfig(n_harmful=4))}
    before = {s: config_hash(key(s, c, model=tiny_cfg)) for s, c in jobs.items()}
    _world_edited(monkeypatch, "data/lexicon.py")
    after = {s: config_hash(key(s, c, model=tiny_cfg)) for s, c in jobs.items()}
    assert all(after[s] != before[s] for s in jobs), (before, after)


def test_a_process_keys_with_the_code_it_read_first_even_if_a_file_changes_meanwhile(tiny_cfg, monkeypatch):
    """A sweep that is running when its source is edited keeps naming its results by the code it runs."""
    cfg = AlignConfig(model=tiny_cfg)
    before = config_hash(key("align", cfg))
    read = keys._read_source
    monkeypatch.setattr(keys, "_read_source", lambda path: read(path) + "\nEDITED = 1\n")
    assert config_hash(key("align", cfg)) == before
    keys.clear_fingerprints()
    assert config_hash(key("align", cfg)) != before


def test_a_line_of_stage_code_is_part_of_the_key(tiny_cfg, monkeypatch):
    cfg = AlignConfig(model=tiny_cfg)
    before = config_hash(key("align", cfg))
    _world_edited(monkeypatch, "training/loop.py")
    assert config_hash(key("align", cfg)) != before


def test_fingerprints_ignore_docstrings_but_not_code(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text('"""doc"""\ndef f():\n    """doc"""\n    return 1  # note\n')
    monkeypatch.setattr(keys, "PACKAGE", pkg)
    monkeypatch.setitem(keys.STAGE_CODE, "align", ["m.py"])
    first = keys.code_fingerprint("align")
    (pkg / "m.py").write_text('"""other doc"""\ndef f():\n    return 1\n')
    keys.clear_fingerprints()
    assert keys.code_fingerprint("align") == first
    (pkg / "m.py").write_text('def f():\n    return 2\n')
    keys.clear_fingerprints()
    assert keys.code_fingerprint("align") != first


def test_result_records_its_inputs(tiny_cfg, store):
    from panacea_lab import pipeline

    cfg = AlignConfig(model=tiny_cfg, n_refusal=16, n_replay_per_task=2, epochs=1)
    result = pipeline.align(cfg, store)
    inputs = result["provenance"]["inputs"]
    assert set(inputs) == {"base_weights", "data", "code"} and inputs["code"] == f"align:{keys.code_fingerprint('align')}"
    assert result["config"] == json.loads(json.dumps(result["config"])) and "model" in result["config"]


TOY = """from dataclasses import dataclass

from panacea_lab.config import FINETUNING, DefenseConfig
from panacea_lab.defenses.registry import Defense


@dataclass(frozen=True)
class ToyConfig(DefenseConfig):
    name = "toy_keys"
    stage = FINETUNING

    scale: float = 1.0


def rule(cfg, ctx):
    return None  # OFFSET


DEFENSE = Defense("toy_keys", FINETUNING, ToyConfig, "toy", rule=rule)
"""


def _import_toy(path, monkeypatch):
    """The toy defense module at `path`, imported under its own name; its config class registered
    only for this test."""
    monkeypatch.setattr(DefenseConfig, "_classes", dict(DefenseConfig._classes))
    spec = importlib.util.spec_from_file_location("toy_defense_keys", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_editing_one_defense_rekeys_only_the_runs_that_name_it(tiny_cfg, tmp_path, monkeypatch):
    from panacea_lab.defenses.random_noise import NoiseConfig
    from panacea_lab.pipeline.evaluations import EvalJob

    toy = tmp_path / "toy_defense_keys.py"
    toy.write_text(TOY)
    module = _import_toy(toy, monkeypatch)
    plain = AttackConfig(align=AlignConfig(model=tiny_cfg))
    defended = AttackConfig(align=AlignConfig(model=tiny_cfg), defense=module.ToyConfig())
    ev = EvalConfig(n_harmful=4)
    jobs = {"plain": ("attack", plain), "defended": ("attack", defended),
            "noise_eval": ("eval", EvalJob("attack", to_dict(plain), ev, post=NoiseConfig(std=0.01))),
            "defended_eval": ("eval", EvalJob("attack", to_dict(defended), ev))}  # its target as a dict

    def hashes():
        return {name: config_hash(key(stage, cfg, model=tiny_cfg)) for name, (stage, cfg) in jobs.items()}

    before = hashes()
    assert dict(key("attack", plain).inputs).keys() == {"base_weights", "data", "code"}  # as before defenses counted
    assert dict(key("attack", defended).inputs)["defense_code"].startswith("toy_keys:")
    assert dict(key("eval", jobs["noise_eval"][1], model=tiny_cfg).inputs)["defense_code"].startswith("noise:")
    toy.write_text(TOY.replace("return None  # OFFSET", "return None  # the offset, explained"))
    keys.clear_fingerprints()
    assert hashes() == before  # a comment is not code
    toy.write_text(TOY.replace("return None  # OFFSET", "return rule"))
    keys.clear_fingerprints()
    after = hashes()
    assert {n for n in before if after[n] != before[n]} == {"defended", "defended_eval"}


def test_a_shared_defense_module_rekeys_the_defenses_that_import_it(tiny_cfg, monkeypatch):
    """panacea.py imports perturb.py, lisa.py does not; no stage's own code covers either."""
    from panacea_lab.defenses.lisa import LisaConfig
    from panacea_lab.defenses.panacea import PanaceaConfig

    align = AlignConfig(model=tiny_cfg)
    runs = {"plain": AttackConfig(align=align), "panacea": AttackConfig(align=align, defense=PanaceaConfig()),
            "lisa": AttackConfig(align=align, defense=LisaConfig())}
    before = {n: config_hash(key("attack", c)) for n, c in runs.items()}
    stage_code = {s: keys.code_fingerprint(s) for s in ("align", "attack", "eval")}
    read = keys._read_source

    def rekeyed(edited: str) -> set[str]:
        monkeypatch.setattr(keys, "_read_source", lambda path: read(path) + (
            "\nEDITED = 1\n" if path.name == edited and path.parent.name == "defenses" else ""))
        keys.clear_fingerprints()
        assert {s: keys.code_fingerprint(s) for s in stage_code} == stage_code  # no stage re-keys all its runs
        return {n for n, c in runs.items() if config_hash(key("attack", c)) != before[n]}

    assert rekeyed("perturb.py") == {"panacea"}
    assert rekeyed("lisa.py") == {"lisa"}
    assert rekeyed("vaccine.py") == set()
