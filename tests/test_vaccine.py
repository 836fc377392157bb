"""Vaccine's step: eps of norm rho at every hook site, the gradient at the perturbed hidden states,
computed here independently, and no hook left behind."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import lora_with_random_b

from panacea_lab.testing import cpu_accelerator
from panacea_lab.models.base_model import build_tokenizer
from panacea_lab.config import ConfigError
from panacea_lab.data.batching import Batch, BatchStream, encode
from panacea_lab.defenses.vaccine import VaccineConfig, VaccineRule
from panacea_lab.training.loop import LoopSettings, train_loop


def _setup(tiny_cfg, world, **cfg):
    tok = build_tokenizer(world.all_texts())
    model = lora_with_random_b(tiny_cfg)
    user = BatchStream([encode(tok, e, 96) for e in world.defender_pool[:6]], 6, tok.pad_token_id, 0)
    rule = VaccineRule(VaccineConfig(**cfg))
    rule.prepare(model, cpu_accelerator())
    return model, rule, user


def _sites(model, site):
    """The hook sites, found by their Llama path (independently of the module under test)."""
    layers = model.base_model.model.model.layers
    return [layer if site == "layer" else layer.self_attn for layer in layers]


def _first(output):
    return output if isinstance(output, torch.Tensor) else output[0]


def _independent(model, batch, site, rho):
    """eps from dL/d(site outputs) and the parameter gradient with eps added, via autograd.grad."""
    params = [p for p in model.parameters() if p.requires_grad]
    sites, outs = _sites(model, site), []
    handles = [m.register_forward_hook(lambda _m, _a, o: outs.append(_first(o))) for m in sites]
    try:
        loss = model(**batch.as_kwargs()).loss
    finally:
        for h in handles:
            h.remove()
    g = torch.autograd.grad(loss, outs)
    norm = torch.sqrt(sum((x.double() ** 2).sum() for x in g)).float()
    eps = [rho * x / norm for x in g]

    def add(e):
        def hook(_m, _a, o):
            return o + e if isinstance(o, torch.Tensor) else (o[0] + e, *o[1:])
        return hook

    handles = [m.register_forward_hook(add(e)) for m, e in zip(sites, eps)]
    try:
        perturbed = model(**batch.as_kwargs()).loss
    finally:
        for h in handles:
            h.remove()
    return eps, torch.autograd.grad(perturbed, params), perturbed.item()


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("site", ["attention", "layer"])
@pytest.mark.parametrize("rho", [2.0, 20.0])
def test_step_is_the_gradient_at_the_perturbed_hidden_states(tiny_cfg, world, site, rho):
    model, rule, user = _setup(tiny_cfg, world, rho=rho, site=site)
    batch = next(user.epoch())
    eps, expected, perturbed = _independent(model, batch, site, rho)
    plain = torch.autograd.grad(model(**batch.as_kwargs()).loss, rule.params)
    logged = rule.gradient(model, batch, step=0)
    assert len(rule.eps) == len(eps) == 2
    for mine, theirs in zip(rule.eps, eps):
        assert mine.shape == (*batch.input_ids.shape, 32)
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-7)
    norm = math.sqrt(sum(float((e.double() ** 2).sum()) for e in rule.eps))
    assert norm == pytest.approx(rho, rel=1e-4)
    assert rule.eps_norm == pytest.approx(rho, rel=1e-4)
    for p, g, g0 in zip(rule.params, expected, plain):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    # the perturbation matters: the update is not the plain SFT gradient
    assert math.sqrt(sum(float(((p.grad - g0) ** 2).sum()) for p, g0 in zip(rule.params, plain))) > 1e-3
    assert set(logged) == {"loss", "loss_perturbed", "hidden_grad_norm", "eps_norm"}
    assert logged["loss_perturbed"] == pytest.approx(perturbed, rel=1e-5)
    assert logged["loss_perturbed"] > logged["loss"]  # eps follows the loss gradient


@pytest.mark.parametrize("site", ["attention", "layer"])
def test_hooks_are_gone_after_the_step(tiny_cfg, world, site):
    model, rule, user = _setup(tiny_cfg, world, rho=5.0, site=site)
    batch = next(user.epoch())
    hooks_before = _hook_count(model)
    with torch.no_grad():
        before = model(**batch.as_kwargs()).logits
    rule.gradient(model, batch, step=0)
    with torch.no_grad():
        after = model(**batch.as_kwargs()).logits
    assert torch.equal(before, after)
    assert _hook_count(model) == hooks_before
    assert all(not m._forward_hooks for m in _sites(model, site))


def test_hooks_are_gone_after_an_exception(tiny_cfg, world):
    model, rule, user = _setup(tiny_cfg, world)
    batch = next(user.epoch())
    hooks_before = _hook_count(model)
    broken = Batch(batch.input_ids, batch.attention_mask, batch.labels[:, :3])  # labels of the wrong length
    with pytest.raises(Exception):
        rule.gradient(model, broken, step=0)
    assert _hook_count(model) == hooks_before
    rule.gradient(model, batch, step=1)  # and the next step still works
    assert rule.eps_norm == pytest.approx(20.0, rel=1e-4)


@pytest.mark.parametrize("site", ["attention", "layer"])
def test_rho_zero_is_exactly_plain_sft(tiny_cfg, world, site):
    model, rule, user = _setup(tiny_cfg, world, rho=0.0, site=site)
    batch = next(user.epoch())
    plain = torch.autograd.grad(model(**batch.as_kwargs()).loss, rule.params)
    logged = rule.gradient(model, batch, step=0)
    for p, g in zip(rule.params, plain):
        assert torch.equal(p.grad, g)
    assert logged["loss"] == logged["loss_perturbed"] and rule.eps_norm == 0.0


def test_runs_in_the_training_loop(tiny_cfg, world):
    model, rule, user = _setup(tiny_cfg, world)
    hooks_before = _hook_count(model)
    out = train_loop(model, user, LoopSettings(epochs=2, lr=1e-3, batch_size=6), rule=rule,
                     accelerator=cpu_accelerator())
    assert out["steps"] == 2 and out["finalize"] == {}
    assert all(math.isfinite(row[k]) for row in out["log"] for k in ("loss", "loss_perturbed", "eps_norm"))
    assert _hook_count(model) == hooks_before


@pytest.mark.parametrize("field,value", [("rho", -1.0), ("site", "mlp")])
def test_bad_vaccine_config(field, value):
    with pytest.raises(ConfigError, match=f"^{field} = "):
        VaccineConfig(**{field: value})


def test_vaccine_defaults():
    from panacea_lab.defenses.vaccine import DEFENSE

    assert VaccineConfig() == VaccineConfig(rho=20.0, site="attention")  # script/alignment/vaccine.sh:3
    assert isinstance(VaccineConfig(rho=2).rho, float)
    assert DEFENSE.finetune_adapter == "fresh"
