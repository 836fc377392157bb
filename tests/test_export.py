"""`panacea-lab export`: a stored run's w + eps as a PEFT adapter or a merged model that plain
transformers / peft load with the package's own logits; bad input fails in one line, writing nothing."""
from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from panacea_lab import defenses, pipeline, settings
from panacea_lab.studies.sweeps import attack_config
from panacea_lab.cli import main
from panacea_lab.config import AlignConfig, ConfigError, ModelConfig
from panacea_lab.defenses.panacea import EpsConfig
from panacea_lab.pipeline.context import EvalContext
from panacea_lab.pipeline.evaluations import apply_post
from panacea_lab.pipeline.export import export_run
from panacea_lab.training.store import RunStore

SMALL_ALIGN = {"n_refusal": 16, "n_replay_per_task": 2, "epochs": 1}
RUN_FLAGS = ["--ratio", "0.2", "--n", "20", "--epochs", "1", "--defense", "panacea:rho=0.5,harmful_batch_size=4"]
PROMPTS = ["### Instruction:\nhow do i pick a lock\n\n### Response:\n", "the movie was great"]


def _run(model_dir: str):
    """The run the CLI flags above name (with the small alignment the CLI is patched to build)."""
    align = AlignConfig(model=ModelConfig(path=model_dir), **SMALL_ALIGN)
    defense = settings.get("embedded").defense("panacea", rho=0.5, harmful_batch_size=4)
    return attack_config(align, "sentiment", 0.2, 0, "default", n=20, epochs=1, defense=defense)


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    store = RunStore(tmp_path_factory.mktemp("export-runs"))
    run = _run(str(tiny_model_dir))
    pipeline.attack(run, store)
    pipeline.attack(dataclasses.replace(run, defense=None), store)  # a run with no eps
    return run, store


@pytest.fixture
def small_align(monkeypatch):
    monkeypatch.setattr("panacea_lab.cli_flags.AlignConfig", lambda **kw: AlignConfig(**SMALL_ALIGN, **kw))


def _package_logits(run, store, post):
    model = apply_post(pipeline.load_stage_model("attack", run, store), post,
                       EvalContext(run.align, store, "attack", run, getattr(post, "seed", 0), []))
    return _logits(model, AutoTokenizer.from_pretrained(run.align.model.path))


def _logits(model, tok):
    with torch.no_grad():
        return [model(**tok(p, return_tensors="pt")).logits for p in PROMPTS]


def test_adapter_export_loads_with_plain_peft_and_gives_the_packages_logits(trained, tiny_model_dir, tmp_path):
    run, store = trained
    post = EpsConfig(layers=(1,), modules=("q_proj", "v_proj"), scale=2.0)
    out = export_run("attack", run, store, tmp_path / "adapter", post)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(out)).eval()
    expected = _package_logits(run, store, post)
    for got, want in zip(_logits(model, AutoTokenizer.from_pretrained(out)), expected):
        assert torch.allclose(got, want, rtol=0, atol=1e-6)
    w_only = _package_logits(run, store, None)
    assert not all(torch.allclose(a, b, atol=1e-4) for a, b in zip(expected, w_only))  # eps did change the model
    card = (out / "README.md").read_text()
    record = json.loads((out / "panacea_export.json").read_text())
    assert "library_name: peft" in card and record["key"] in card and '"rho": 0.5' in card
    assert record["post"] == {"name": "eps", "scale": 2.0, "layers": [1], "modules": ["q_proj", "v_proj"]}
    assert record["provenance"]["git"] and record["config"]["defense"]["name"] == "panacea"


def test_merged_export_loads_with_plain_transformers_and_gives_the_packages_logits(trained, tmp_path):
    run, store = trained
    out = export_run("attack", run, store, tmp_path / "merged", EpsConfig(), merged=True)
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    for got, want in zip(_logits(model, AutoTokenizer.from_pretrained(out)), _package_logits(run, store, EpsConfig())):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    assert "library_name: transformers" in (out / "README.md").read_text()


def test_a_transform_that_returns_a_plain_model_is_exported_merged_only(trained, tmp_path):
    run, store = trained
    antidote = defenses.get("antidote").make(dense_ratio=0.1, target="product")  # prunes B @ A: no longer an adapter
    with pytest.raises(ConfigError, match="--merged") as err:
        export_run("attack", run, store, tmp_path / "a", antidote)
    assert "post = 'antidote'" in str(err.value) and not (tmp_path / "a").exists()
    out = export_run("attack", run, store, tmp_path / "b", antidote, merged=True)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    for got, want in zip(_logits(model, AutoTokenizer.from_pretrained(out)), _package_logits(run, store, antidote)):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_fresh_adapter_run_is_exported_merged_only(trained, tmp_path):
    run, store = trained
    fresh = dataclasses.replace(run, adapter="fresh")  # its adapter sits on the merged aligned model
    pipeline.attack(fresh, store)
    with pytest.raises(ConfigError, match=r"^adapter = 'fresh'.*--merged"):
        export_run("attack", fresh, store, tmp_path / "a", EpsConfig())
    assert not (tmp_path / "a").exists()
    out = export_run("attack", fresh, store, tmp_path / "b", EpsConfig(), merged=True)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    for got, want in zip(_logits(model, AutoTokenizer.from_pretrained(out)), _package_logits(fresh, store, EpsConfig())):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


def test_the_cli_exports_a_stored_run(trained, tiny_model_dir, tmp_path, capsys, small_align):
    _, store = trained
    out = tmp_path / "cli-export"
    code = main(["export", "--model", str(tiny_model_dir), "--runs", str(store.root), *RUN_FLAGS,
                 "--layer-scales", "0", "2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "panacea_export.json").read_text())["post"]["layer_scales"] == [0.0, 2.0]


def _error_line(capsys) -> str:
    """The command's one error line (stderr's other lines are the libraries' progress bars)."""
    ours = [line for line in capsys.readouterr().err.splitlines() if line.startswith("panacea-lab:")]
    assert len(ours) == 1, ours
    return ours[0]


@pytest.mark.parametrize("flags, message", [
    (["--layers", "7"], r"^panacea-lab: layers = \(7,\).*\(0\.\.1\)"),
    (["--layer-scales", "1", "-1"], r"^panacea-lab: layer_scales\[1\] = -1\.0: .*>= 0"),
    (["--scale", "-0.5"], r"^panacea-lab: scale = -0\.5: .*>= 0"),
    (["--defense", "none"], r"^panacea-lab: post = 'eps': the run did not store .*--defense panacea"),
    (["--post", "none", "--layers", "0"], r"^panacea-lab: --layers: .*--post eps"),
])
def test_bad_export_input_fails_in_one_line_and_writes_nothing(trained, tiny_model_dir, tmp_path, capsys,
                                                               small_align, flags, message):
    _, store = trained
    out = tmp_path / "export"
    code = main(["export", "--model", str(tiny_model_dir), "--runs", str(store.root), *RUN_FLAGS, *flags,
                 "--out", str(out)])
    err = _error_line(capsys)
    assert code == 2 and re.search(message, err), err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary directory


@pytest.mark.parametrize("where", ["missing", "non-empty"])
def test_an_output_path_that_cannot_be_written_is_refused(trained, tiny_model_dir, tmp_path, capsys, small_align,
                                                          where):
    _, store = trained
    out = tmp_path / "no" / "such" / "dir" if where == "missing" else tmp_path / "full"
    if where == "non-empty":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    code = main(["export", "--model", str(tiny_model_dir), "--runs", str(store.root), *RUN_FLAGS, "--out", str(out)])
    err = _error_line(capsys)
    assert code == 2 and "--out" in err
    assert ("does not exist" in err and not (tmp_path / "no").exists() if where == "missing"
            else "new or empty directory" in err and [p.name for p in out.iterdir()] == ["notes.txt"])


def test_a_run_not_in_the_store_is_not_trained_by_export(tiny_model_dir, tmp_path, capsys, small_align):
    code = main(["export", "--model", str(tiny_model_dir), "--runs", str(tmp_path / "empty"), *RUN_FLAGS,
                 "--out", str(tmp_path / "x")])
    err = _error_line(capsys)
    assert code == 2 and "not in the run store" in err and "run it first" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "empty").exists()


def test_runs_lists_a_stored_run_and_export_takes_its_key_with_the_prompt_format(trained, tiny_model_dir, tmp_path,
                                                                                  capsys):
    from panacea_lab.config import config_hash
    from panacea_lab.data.batching import prompt_ids
    from panacea_lab.data.world import Example
    from panacea_lab.pipeline.context import get_tokenizer
    from panacea_lab.pipeline.keys import key

    run, store = trained
    stored = config_hash(key("attack", run))
    assert main(["runs", "--runs", str(store.root), "--stage", "attack"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if stored in line)
    assert "p=0.2" in line and "defense=panacea(rho=0.5," in line
    out = tmp_path / "by-key"
    assert main(["export", "--runs", str(store.root), "--run", stored[:8], "--out", str(out)]) == 0
    assert json.loads((out / "panacea_export.json").read_text())["key"] == stored
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_model_dir)  # no preset knows it: the path it was given
    exported = AutoTokenizer.from_pretrained(out)
    package = get_tokenizer(run.align.model)
    for ex in (Example("how do i pick a lock", "", "", "sentiment"), Example("Classify .", "a fine film", "", "sentiment")):
        message = {"role": "user", "content": ex.instruction, **({"input": ex.input} if ex.input else {})}
        ids = exported.apply_chat_template([message], tokenize=True, return_dict=False)
        assert list(ids) == prompt_ids(package, ex)
    card = (out / "README.md").read_text()
    assert "## Intended use" in card and "## Limitations" in card and "## Metrics" in card
    assert main(["export", "--runs", str(store.root), "--run", "zz", "--out", str(tmp_path / "x")]) == 2
    assert "panacea-lab runs" in _error_line(capsys) and not (tmp_path / "x").exists()


def test_an_exported_adapter_names_the_hub_id_of_a_known_model():
    from panacea_lab.pipeline.export import base_model_id

    assert base_model_id("/home/me/.cache/panacea-lab/models/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_model_id("embedded") == "data/models/tiny-llama-world"
    assert base_model_id("/somewhere/my-model") == "/somewhere/my-model"
