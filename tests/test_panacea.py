"""Panacea's step equals its formula, term by term, on a model small enough to check by hand."""
from __future__ import annotations

import pytest
import torch
from conftest import lora_with_random_b
from torch.func import functional_call

from panacea_lab.testing import cpu_accelerator
from panacea_lab.models.base_model import build_tokenizer
from panacea_lab.config import ConfigError
from panacea_lab.data.batching import BatchStream, encode
from panacea_lab.defenses.panacea import PanaceaConfig, PanaceaRule


def _setup(tiny_cfg, world, **cfg):
    tok = build_tokenizer(world.all_texts())
    model = lora_with_random_b(tiny_cfg)
    user = BatchStream([encode(tok, e, 96) for e in world.task_train["sentiment"][:6]], 6, tok.pad_token_id, 0)
    harm_rows = [encode(tok, e, 96) for e in world.defender_pool[:5]]
    rule = PanaceaRule(PanaceaConfig(harmful_batch_size=5, **cfg), BatchStream(harm_rows, 5, tok.pad_token_id, 7))
    harm_batch = next(BatchStream(harm_rows, 5, tok.pad_token_id, 7).epoch())  # the batch the rule will draw
    rule.prepare(model, cpu_accelerator())
    return model, rule, next(user.epoch()), harm_batch


def _expected(model, batch, harm, rho, lam, clamp, h_const=False):
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}

    def loss_at(delta, b):
        values = {n: params[n] + delta.get(n, 0) for n in names}
        return functional_call(model, values, args=(), kwargs=b.as_kwargs()).loss

    g_f = torch.autograd.grad(loss_at({}, batch), [params[n] for n in names])
    g_h = torch.autograd.grad(loss_at({}, harm), [params[n] for n in names])
    norm = torch.sqrt(sum((g ** 2).sum() for g in g_h))
    eps = {n: rho * g / norm for n, g in zip(names, g_h)}
    h_eps = torch.clamp(loss_at(eps, harm), max=clamp)
    g_h_eps = torch.autograd.grad(h_eps, [params[n] for n in names], allow_unused=True)
    g_h_eps = [torch.zeros_like(params[n]) if g is None else g for n, g in zip(names, g_h_eps)]
    grads = {n: gf - lam * (ghe if h_const else ghe - gh) for n, gf, gh, ghe in zip(names, g_f, g_h, g_h_eps)}
    return grads, eps


@pytest.mark.parametrize("clamp,h_const", [(5.0, False), (1e-3, False), (5.0, True)])
def test_step_leaves_the_formula_in_grad(tiny_cfg, world, clamp, h_const):
    rho, lam = 0.7, 0.5  # a large lambda so the correction term is far above float noise
    model, rule, batch, harm = _setup(tiny_cfg, world, rho=rho, lam=lam, clamp=clamp, h_const=h_const)
    expected, eps = _expected(model, batch, harm, rho, lam, clamp, h_const)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    logged = rule.gradient(model, batch, step=0)
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]), f"{n} not restored bit for bit"
        if p.requires_grad:
            torch.testing.assert_close(p.grad, expected[n], rtol=1e-4, atol=1e-6)
            assert rule.eps[rule.names.index(n)].data_ptr() != p.grad.data_ptr()
    norm = torch.sqrt(sum((e ** 2).sum() for e in rule.eps))
    assert norm.item() == pytest.approx(rho, rel=1e-5)
    assert {"loss", "h", "h_eps", "grad_h_norm"} <= set(logged)
    if clamp < 1:  # clamped: no gradient through h(w + eps), so the update is G_f + lambda * G_h
        assert logged["h_eps"] > clamp


def test_finalize_applies_the_last_eps(tiny_cfg, world):
    model, rule, batch, _ = _setup(tiny_cfg, world, rho=0.3)
    rule.gradient(model, batch, step=0)
    last = {n: e.clone() for n, e in zip(rule.names, rule.eps)}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    info = rule.finalize(model)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[n] + last[n] if n in last else before[n], rtol=0, atol=0)
    assert info["eps_norm"] == pytest.approx(0.3, rel=1e-5)


def test_amortized_steps_are_plain_sft_between_recomputes(tiny_cfg, world):
    model, rule, batch, _ = _setup(tiny_cfg, world, recompute_every=2)
    logged = rule.gradient(model, batch, step=1)
    assert set(logged) == {"loss"}
    params = [p for p in model.parameters() if p.requires_grad]
    plain = torch.autograd.grad(model(**batch.as_kwargs()).loss, params)
    for p, g in zip(params, plain):
        torch.testing.assert_close(p.grad, g)


@pytest.mark.parametrize("field,value", [("rho", -1.0), ("lam", -0.1), ("recompute_every", 0)])
def test_bad_panacea_config(field, value):
    with pytest.raises(ConfigError, match=f"^{field} = "):
        PanaceaConfig(**{field: value})
