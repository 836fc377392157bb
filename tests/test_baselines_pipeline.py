"""The paper's baselines run through the one pipeline: each alignment-stage defense and Lisa train,
are cached under their own keys, and leave their rule's signature in the per-step log."""
from __future__ import annotations

import pytest

from panacea_lab import pipeline
from panacea_lab.pipeline.stages import stored
from panacea_lab.config import (
    AlignConfig,
    AttackConfig,
    ConfigError,
    EvalConfig,
    config_hash,
)
from panacea_lab.defenses.booster import BoosterConfig
from panacea_lab.defenses.lisa import LisaConfig
from panacea_lab.defenses.repnoise import RepNoiseConfig
from panacea_lab.defenses.vaccine import VaccineConfig

EVAL = EvalConfig(n_harmful=4, n_task=4, max_new_tokens=8, tasks=("sentiment",))
SIGNATURE = {"sft": "grad_norm", "vaccine": "loss_perturbed", "repnoise": "mmd", "booster": "h_after"}


def _align(tiny_cfg, defense=None):
    return AlignConfig(model=tiny_cfg, n_refusal=16, n_replay_per_task=2, epochs=1, batch_size=8, defense=defense)


@pytest.mark.parametrize("name, defense", [("vaccine", VaccineConfig(rho=2.0)), ("repnoise", RepNoiseConfig()),
                                           ("booster", BoosterConfig(harmful_batch_size=4))])
def test_alignment_defense_trains_under_its_own_key(tiny_cfg, store, name, defense):
    cfg = _align(tiny_cfg, defense)
    assert cfg.method == name and config_hash(cfg) != config_hash(_align(tiny_cfg))
    result = pipeline.align(cfg, store)
    assert SIGNATURE[name] in result["train"]["log"][0]
    plain = pipeline.align(_align(tiny_cfg), store)
    assert SIGNATURE[name] not in plain["train"]["log"][0]
    ev = pipeline.evaluate("align", cfg, store, EVAL)
    assert ev["HS"] + ev["refusal"] + ev["other"] == pytest.approx(100.0)


def test_a_defense_acts_only_in_its_own_stage():
    with pytest.raises(ConfigError, match="^defense = 'lisa'"):
        AlignConfig(defense=LisaConfig())
    with pytest.raises(ConfigError, match="^defense = 'vaccine'"):
        AttackConfig(defense=VaccineConfig())


def test_lisa_runs_as_a_fine_tuning_stage(tiny_cfg, store):
    attack = AttackConfig(align=_align(tiny_cfg), n=20, p=0.2, epochs=2, batch_size=10)
    run = AttackConfig(align=_align(tiny_cfg), n=20, p=0.2, epochs=2, batch_size=10,
                       defense=LisaConfig(align_steps=1, finetune_steps=1, align_batch_size=4))
    result = pipeline.attack(run, store)
    states = [r["state"] for r in result["train"]["log"]]
    assert states == [0.0, 1.0, 0.0, 1.0]  # 4 steps alternate alignment and the user's fine-tuning
    assert stored(store, "attack", run) is not None and stored(store, "attack", attack) is None
    ev = pipeline.evaluate("attack", run, store, EVAL)
    assert set(ev["FA"]) == {"sentiment"}
