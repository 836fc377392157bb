"""Panacea as a cached stage, and post-fine-tuning transforms applied before evaluation."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import dataclasses

from panacea_lab import pipeline
from panacea_lab.config import ConfigError, EvalConfig
from panacea_lab.defenses.antidote import AntidoteConfig
from panacea_lab.defenses.panacea import EpsConfig, PanaceaConfig
from panacea_lab.defenses.perturb import gaussian_noise, global_norm
from panacea_lab.defenses.random_noise import NoiseConfig, RandomDirectionConfig
from panacea_lab.pipeline.context import EvalContext
from panacea_lab.pipeline.stages import artifact, stored
from panacea_lab.pipeline.evaluations import apply_post, lora_names

EVAL = EvalConfig(n_harmful=6, n_task=4, max_new_tokens=12, tasks=("sentiment",))


@pytest.fixture
def run(panacea_run):
    return panacea_run


def _plain(run):
    return dataclasses.replace(run, defense=None)


def _ctx(run, store, seed=0):
    return EvalContext(run.align, store, "attack", run, seed, [])


def _lora(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_panacea_stage_stores_w_and_its_last_eps(run, store):
    res = pipeline.attack(run, store)
    log = res["train"]["log"]
    assert len(log) == 2 and all({"h", "h_eps", "grad_h_norm"} <= set(r) for r in log)
    eps = load_file(str(artifact(store, "attack", run, "eps.safetensors")))
    assert global_norm(eps) == pytest.approx(0.4, rel=1e-5)
    assert res["train"]["finalize"] == {"eps_norm": pytest.approx(0.4, rel=1e-5), "eps_applied": False}

    plain = pipeline.load_stage_model("attack", run, store)
    w = _lora(plain)
    assert set(eps) == set(w)
    with_eps = _lora(apply_post(plain, EpsConfig(), _ctx(run, store)))
    for n in w:
        assert torch.equal(with_eps[n], w[n] + eps[n])


def test_plain_attack_and_panacea_are_separate_runs(run, store):
    pipeline.attack(run, store)
    assert stored(store, "attack", _plain(run)) is None
    pipeline.attack(_plain(run), store)
    assert stored(store, "attack", _plain(run)) is not None


def test_noise_and_same_norm_transforms(run, store):
    plain = _plain(run)
    pipeline.attack(plain, store)
    model = pipeline.load_stage_model("attack", plain, store)
    before = _lora(model)
    apply_post(model, NoiseConfig(std=0.05, seed=3), _ctx(plain, store))
    noise = gaussian_noise(before, 0.05, 3)
    for n, p in model.named_parameters():
        if n in before:
            torch.testing.assert_close(p.detach(), before[n] + noise[n], rtol=0, atol=0)
    model2 = pipeline.load_stage_model("attack", plain, store)
    apply_post(model2, RandomDirectionConfig(norm=2.5, seed=1), _ctx(plain, store))
    moved = {n: p.detach() - before[n] for n, p in model2.named_parameters() if n in before}
    assert global_norm(moved) == pytest.approx(2.5, rel=1e-4)


def test_eps_transform_refuses_a_run_without_eps(run, store, tmp_path):
    plain = _plain(run)
    pipeline.attack(plain, store)
    model = pipeline.load_stage_model("attack", plain, store)
    with pytest.raises(FileNotFoundError, match="eps"):
        apply_post(model, EpsConfig(), _ctx(plain, store))


def test_post_transforms_are_separately_cached_evaluations(run, store):
    pipeline.attack(run, store)
    plain = pipeline.evaluate("attack", run, store, EVAL)
    with_eps = pipeline.evaluate("attack", run, store, EVAL, EpsConfig())
    antidoted = pipeline.evaluate("attack", run, store, EVAL, AntidoteConfig(n_samples=16))
    assert len({plain["key"], with_eps["key"], antidoted["key"]}) == 3
    assert with_eps["config"]["post"]["name"] == "eps"


def test_lora_names_cover_every_adapter_tensor(run, store):
    pipeline.attack(_plain(run), store)
    model = pipeline.load_stage_model("attack", _plain(run), store)
    names = lora_names(model)
    assert names and all(("lora_A" in n) or ("lora_B" in n) for n in names)
    assert len(names) == 2 * 2 * len(run.align.model.lora_targets)  # A and B, 2 layers


@pytest.mark.parametrize("cls,kw,field", [(AntidoteConfig, {"method": "blur"}, "method"),
                                          (NoiseConfig, {"std": -1.0}, "std"),
                                          (AntidoteConfig, {"dense_ratio": 1.5}, "dense_ratio"),
                                          (EpsConfig, {"scale": "big"}, "scale")])
def test_bad_post_config(cls, kw, field):
    with pytest.raises(ConfigError, match=f"^{field} = "):
        cls(**kw)


def test_a_training_defense_is_refused_as_a_post_transform(run, store):
    pipeline.attack(_plain(run), store)
    with pytest.raises(ConfigError, match="post-fine-tuning"):
        pipeline.evaluate("attack", _plain(run), store, EVAL, PanaceaConfig())
