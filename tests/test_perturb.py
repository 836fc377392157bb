"""Perturbation algebra: seeded draws, exact norms, bit-exact undo, and the per-layer/module breakdown."""
from __future__ import annotations

import math

import pytest
import torch

from panacea_lab.defenses.random_noise import (
    apply_random_noise_,
    noise_perturbation,
    same_norm_control,
)
from panacea_lab.models.loading import attach_lora, load_base
from panacea_lab.defenses.perturb import (
    add_,
    applied,
    gaussian_noise,
    global_norm,
    named_trainable,
    norms_by_layer_module,
    parse_param_name,
    random_direction,
)


@pytest.fixture
def peft_model(tiny_cfg):
    return attach_lora(load_base(tiny_cfg, torch.device("cpu")), tiny_cfg, seed=0)


def _state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_named_trainable_is_the_lora_tensors_in_model_order(peft_model):
    sel = named_trainable(peft_model)
    assert list(sel) == [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert sel and all("lora_A" in n or "lora_B" in n for n in sel)
    assert all(sel[n] is p for n, p in peft_model.named_parameters() if n in sel)  # live tensors, not copies


def test_named_trainable_on_a_frozen_model_needs_names(tiny_cfg):
    base = load_base(tiny_cfg, torch.device("cpu"))
    with pytest.raises(ValueError, match="names="):
        named_trainable(base)
    name = "model.layers.1.self_attn.q_proj.weight"
    assert list(named_trainable(base, names=[name])) == [name]
    with pytest.raises(ValueError, match="names"):
        named_trainable(base, names=["model.layers.9.nope.weight"])


def test_gaussian_noise_is_seeded_and_ignores_global_rng(peft_model):
    params = named_trainable(peft_model)
    torch.manual_seed(1)
    a = gaussian_noise(params, 0.1, seed=5)
    torch.manual_seed(2)
    torch.randn(100)
    b = gaussian_noise(params, 0.1, seed=5)
    c = gaussian_noise(params, 0.1, seed=6)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert all(not torch.equal(a[n], c[n]) for n in a)
    assert all(a[n].shape == p.shape and a[n].dtype == p.dtype and a[n].device == p.device for n, p in params.items())


def test_gaussian_noise_has_the_requested_std_and_keeps_dtype():
    params = {"w": torch.zeros(1000, 1000), "h": torch.zeros(10, dtype=torch.bfloat16)}
    noise = gaussian_noise(params, 0.3, seed=0)
    assert noise["h"].dtype == torch.bfloat16
    assert noise["w"].std().item() == pytest.approx(0.3, rel=0.01)
    assert abs(noise["w"].mean().item()) < 0.003
    assert all(float(t.abs().max()) == 0.0 for t in gaussian_noise(params, 0.0, seed=0).values())


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_negative_or_non_finite_std_and_norm_are_rejected(bad):
    params = {"w": torch.zeros(3)}
    with pytest.raises(ValueError, match="std"):
        gaussian_noise(params, bad, seed=0)
    with pytest.raises(ValueError, match="norm"):
        random_direction(params, bad, seed=0)


def test_random_direction_has_exactly_the_requested_global_norm(peft_model):
    params = named_trainable(peft_model)
    d = random_direction(params, 2.5, seed=3)
    assert global_norm(d) == pytest.approx(2.5, rel=1e-6)
    assert global_norm(random_direction(params, 0.0, seed=3)) == 0.0
    assert not torch.equal(next(iter(d.values())), next(iter(random_direction(params, 2.5, seed=4).values())))


def test_global_norm_is_one_norm_over_all_tensors():
    delta = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([[4.0]])}
    assert global_norm(delta) == 5.0


def test_applied_adds_then_restores_bit_for_bit_even_on_error(peft_model):
    # B starts at zero; give every LoRA tensor non-trivial values so (w + d) - d != w in float32
    add_(peft_model, gaussian_noise(named_trainable(peft_model), 0.37, seed=1))
    before = _state(peft_model)
    delta = gaussian_noise(named_trainable(peft_model), 1234.5, seed=2)
    name = next(iter(delta))
    assert not torch.equal((before[name] + delta[name]) - delta[name], before[name])  # subtraction would fail
    with pytest.raises(RuntimeError, match="boom"):
        with applied(peft_model, delta):
            now = dict(peft_model.named_parameters())
            assert torch.equal(now[name].detach(), before[name] + delta[name])
            raise RuntimeError("boom")
    after = _state(peft_model)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_applied_with_scale_and_on_a_frozen_model(tiny_cfg):
    base = load_base(tiny_cfg, torch.device("cpu"))
    before = _state(base)
    name = "model.layers.0.mlp.down_proj.weight"
    delta = gaussian_noise(named_trainable(base, names=[name]), 1.0, seed=0)
    with applied(base, delta, scale=-2.0):
        assert torch.allclose(dict(base.named_parameters())[name], before[name] - 2.0 * delta[name])
    assert all(torch.equal(before[n], p) for n, p in base.named_parameters())


def test_delta_that_does_not_match_the_model_is_rejected(peft_model):
    name, p = next(iter(named_trainable(peft_model).items()))
    with pytest.raises(ValueError, match="does not have"):
        add_(peft_model, {"model.layers.0.not_here.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="shape"):
        with applied(peft_model, {name: torch.zeros(p.shape[0] + 1, p.shape[1])}):
            pass


def test_parse_param_name():
    assert parse_param_name("base_model.model.model.layers.3.self_attn.v_proj.lora_A.default.weight") == \
        (3, "v_proj", "lora_A")
    assert parse_param_name("base_model.model.model.layers.12.mlp.down_proj.lora_B.default.weight") == \
        (12, "down_proj", "lora_B")
    assert parse_param_name("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight") == \
        (0, "q_proj", "weight")
    assert parse_param_name("model.layers.1.input_layernorm.weight") == (1, "input_layernorm", "weight")
    assert parse_param_name("lm_head.weight") == (-1, "lm_head", "weight")
    assert parse_param_name("transformer.h.5.attn.c_attn.weight") == (5, "c_attn", "weight")


def test_norms_by_layer_module_on_a_peft_model(peft_model, tiny_cfg):
    delta = gaussian_noise(named_trainable(peft_model), 0.2, seed=0)
    df = norms_by_layer_module(delta)
    assert list(df.columns) == ["name", "layer", "module", "part", "sq_norm", "norm"]
    assert list(df["name"]) == list(delta)
    assert set(df["layer"]) == {0, 1}
    assert set(df["module"]) == set(tiny_cfg.lora_targets)
    assert set(df["part"]) == {"lora_A", "lora_B"}
    assert (df.groupby(["layer", "module"]).size() == 2).all()  # one A and one B each
    assert df["sq_norm"].sum() == pytest.approx(global_norm(delta) ** 2, rel=1e-9)
    assert math.isclose(df["norm"].iloc[0], float(delta[df["name"].iloc[0]].norm()), rel_tol=1e-5)


def test_random_noise_defense_and_its_same_norm_control(peft_model):
    noise = noise_perturbation(peft_model, 0.05, seed=7)
    control = same_norm_control(noise, seed=8)
    assert list(control) == list(noise)
    assert global_norm(control) == pytest.approx(global_norm(noise), rel=1e-6)
    before = _state(peft_model)
    record = apply_random_noise_(peft_model, 0.05, seed=7)
    assert record["norm"] == pytest.approx(global_norm(noise))
    for n, p in peft_model.named_parameters():
        if n in noise:
            assert torch.equal(p.detach(), before[n] + noise[n])
        else:
            assert torch.equal(p.detach(), before[n])
