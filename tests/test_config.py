"""Bad configs fail early, name the field and what to change, and write nothing."""
from __future__ import annotations

import pytest

from panacea_lab.cli import main
from panacea_lab.pipeline.preflight import preflight
from panacea_lab.config import (
    AlignConfig,
    AttackConfig,
    ConfigError,
    EvalConfig,
    ModelConfig,
    config_hash,
    from_dict,
    to_dict,
)


@pytest.mark.parametrize("build,field", [
    (lambda m: AttackConfig(align=AlignConfig(model=m), p=1.5), "p"),
    (lambda m: AttackConfig(align=AlignConfig(model=m), p=-0.1), "p"),
    (lambda m: AttackConfig(align=AlignConfig(model=m), n=0), "n"),
    (lambda m: AttackConfig(align=AlignConfig(model=m), task="poetry"), "task"),
    (lambda m: AttackConfig(align=AlignConfig(model=m), adapter="reuse"), "adapter"),
    (lambda m: AlignConfig(model=m, lr=0), "lr"),
    (lambda m: preflight(ModelConfig(path="/nonexistent/model")), "path"),
    (lambda m: preflight(ModelConfig(path="someone/not-cached-model-xyz")), "path"),
    (lambda m: AttackConfig(n=20.5), "n"),
    (lambda m: AttackConfig(seed=0.5), "seed"),
    (lambda m: AttackConfig(p=True), "p"),
    (lambda m: AttackConfig(p=float("nan")), "p"),
    (lambda m: AttackConfig(lr="fast"), "lr"),
    (lambda m: ModelConfig(lora_r=16.0), "lora_r"),
    (lambda m: ModelConfig(lora_targets="q_proj"), "lora_targets"),
    (lambda m: AlignConfig(model={"lora_r": "x"}), "lora_r"),
    (lambda m: preflight(AttackConfig(align=AlignConfig(model=m), n=100000)), "n"),
    (lambda m: preflight(EvalConfig(), align=AlignConfig(model=m, data="packages", prevalence="uniform")), "judge"),
    (lambda m: ModelConfig(path=m.path, lora_r=0), "lora_r"),
    (lambda m: EvalConfig(judge="vibes"), "judge"),
])
def test_bad_config_names_the_field(tiny_cfg, build, field):
    with pytest.raises(ConfigError) as err:
        build(tiny_cfg)
    assert str(err.value).startswith(f"{field} = ")


def test_missing_model_error_says_how_to_provide_it():
    with pytest.raises(ConfigError, match="local model directory"):
        preflight(ModelConfig(path="/nonexistent/model"))


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        preflight(ModelConfig(path=str(tmp_path)))


def test_numeric_text_is_converted_and_a_config_reads_back_without_the_weights():
    cfg = AttackConfig(lr="1e-3", n="20", align=AlignConfig(model=ModelConfig(path="/weights/elsewhere")))
    assert (cfg.lr, cfg.n) == (1e-3, 20)
    assert from_dict(AttackConfig, to_dict(cfg)) == cfg  # no disk check on construction


def test_config_round_trip_and_hash(tiny_cfg):
    cfg = AttackConfig(align=AlignConfig(model=tiny_cfg), p=0.05)
    again = from_dict(AttackConfig, to_dict(cfg))
    assert again == cfg and config_hash(again) == config_hash(cfg)
    assert config_hash(cfg) != config_hash(AttackConfig(align=AlignConfig(model=tiny_cfg), p=0.1))


def test_unknown_field_is_refused(tiny_cfg):
    data = to_dict(AttackConfig(align=AlignConfig(model=tiny_cfg)))
    data["rho"] = 1.0
    with pytest.raises(ConfigError, match="rho"):
        from_dict(AttackConfig, data)


def test_cli_rejects_bad_input_and_writes_nothing(tmp_path, capsys):
    runs = tmp_path / "runs"
    code = main(["attack", "--model", str(tmp_path / "missing"), "--runs", str(runs), "--ratios", "0.1"])
    assert code == 2
    assert "path = " in capsys.readouterr().err
    assert not runs.exists()


def test_int_and_float_spellings_hash_alike(tiny_cfg):
    a = AttackConfig(align=AlignConfig(model=tiny_cfg, epochs=8), epochs=3)
    b = AttackConfig(align=AlignConfig(model=tiny_cfg, epochs=8.0), epochs=3.0)
    assert config_hash(a) == config_hash(b) and isinstance(a.epochs, float)


@pytest.mark.parametrize("args,field", [(["--n", "0"], "n = 0"), (["--ratios", "1.5"], "p = 1.5")])
def test_cli_bad_attack_setting_fails_before_any_stage_runs(tiny_model_dir, tmp_path, capsys, args, field):
    runs = tmp_path / "runs"
    code = main(["attack", "--model", str(tiny_model_dir), "--runs", str(runs), "--seeds", "0", *args])
    assert code == 2 and field in capsys.readouterr().err
    assert not runs.exists()  # not even the base evaluation or the alignment was written


def test_a_new_field_at_its_default_keeps_old_hashes_and_changes_them_when_set():
    from dataclasses import dataclass

    from panacea_lab.config import config_hash, new_field, to_dict

    @dataclass(frozen=True)
    class Old:
        a: int = 1

    @dataclass(frozen=True)
    class New:
        a: int = 1
        extra: str | None = new_field(None)

    assert to_dict(New()) == {"a": 1} and config_hash(New()) == config_hash(Old())
    assert config_hash(New(extra="vaccine")) != config_hash(Old())
    assert to_dict(New(extra="x")) == {"a": 1, "extra": "x"}
