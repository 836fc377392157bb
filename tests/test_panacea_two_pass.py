"""Panacea's two-pass step equals its formula, computed by hand with functional_call: the first step
(no previous eps: the harmful pass at w), a later step (at w + the previous step's eps), the clamp,
and the exact eps at the final weights."""
from __future__ import annotations

import pytest
import torch
from conftest import lora_with_random_b
from torch.func import functional_call

from panacea_lab.config import ConfigError
from panacea_lab.data.batching import BatchStream, encode
from panacea_lab.defenses.panacea import PanaceaConfig, PanaceaRule
from panacea_lab.models.base_model import build_tokenizer
from panacea_lab.testing import cpu_accelerator

RHO, LAM = 0.7, 0.5  # a large lambda so the correction term is far above float noise


def _setup(tiny_cfg, world, clamp):
    tok = build_tokenizer(world.all_texts())
    model = lora_with_random_b(tiny_cfg)
    user = BatchStream([encode(tok, e, 96) for e in world.task_train["sentiment"][:6]], 6, tok.pad_token_id, 0)
    rows = [encode(tok, e, 96) for e in world.defender_pool[:10]]
    cfg = PanaceaConfig(rho=RHO, lam=LAM, clamp=clamp, harmful_batch_size=5, h_const=True, step="two_pass")
    rule = PanaceaRule(cfg, BatchStream(rows, 5, tok.pad_token_id, 7))
    harmful = BatchStream(rows, 5, tok.pad_token_id, 7).forever()  # the batches the rule will draw, in order
    rule.prepare(model, cpu_accelerator())
    return model, rule, next(user.epoch()), harmful


class _ByHand:
    """Losses and gradients of the model's trainable tensors at w + delta, by functional_call."""

    def __init__(self, model):
        self.model = model
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.names = list(self.params)

    def loss(self, batch, delta=None):
        values = {n: self.params[n] + (delta or {}).get(n, 0) for n in self.names}
        return functional_call(self.model, values, args=(), kwargs=batch.as_kwargs()).loss

    def grad(self, loss):
        return dict(zip(self.names, torch.autograd.grad(loss, [self.params[n] for n in self.names])))

    def direction(self, g):
        norm = torch.sqrt(sum((x ** 2).sum() for x in g.values()))
        return {n: RHO * x / norm for n, x in g.items()}


def _expected_step(hand, batch, harm, eps, clamp):
    """(expected .grad, expected next eps, h at the shifted point) of one two-pass step."""
    g_f = hand.grad(hand.loss(batch))
    h = hand.loss(harm, eps)
    g_h = hand.grad(h)
    kept = 1.0 if h.item() <= clamp else 0.0
    return {n: g_f[n] - LAM * kept * g_h[n] for n in hand.names}, hand.direction(g_h), h.item()


@pytest.mark.parametrize("clamp", [5.0, 1e-3])
def test_the_first_and_a_later_step_leave_the_formula_in_grad(tiny_cfg, world, clamp):
    model, rule, batch, harmful = _setup(tiny_cfg, world, clamp)
    hand = _ByHand(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    eps = None
    for step in range(2):  # step 0: no previous eps, the harmful pass is at w; step 1: at w + eps_0
        grads, next_eps, h = _expected_step(hand, batch, next(harmful), eps, clamp)
        logged = rule.gradient(model, batch, step=step)
        for n, p in model.named_parameters():
            assert torch.equal(p.detach(), before[n]), f"{n} not restored bit for bit"
            if p.requires_grad:
                torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6)
        for n, e in zip(rule.names, rule.eps):
            torch.testing.assert_close(e, next_eps[n], rtol=1e-4, atol=1e-7)
        assert logged["h_eps"] == pytest.approx(h, rel=1e-5) and "h" not in logged  # h(w) is never computed
        eps = {n: e.detach() for n, e in next_eps.items()}
    if clamp < 1:  # clamped: the update is G_f alone, yet eps still turned (from the unclamped gradient)
        assert logged["h_eps"] > clamp


def test_finalize_adds_the_exact_eps_of_the_final_weights(tiny_cfg, world):
    model, rule, batch, harmful = _setup(tiny_cfg, world, 5.0)
    rule.gradient(model, batch, step=0)
    next(harmful)  # the step's batch; finalize draws the next one
    stale = [e.clone() for e in rule.eps]
    model.eval()
    hand = _ByHand(model)
    exact = hand.direction(hand.grad(hand.loss(next(harmful))))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    info = rule.finalize(model)
    for n, p in model.named_parameters():
        added = exact[n] if n in exact else 0
        torch.testing.assert_close(p.detach(), before[n] + added, rtol=1e-4, atol=1e-7)
        assert p.grad is None
    assert info["eps_norm"] == pytest.approx(RHO, rel=1e-5)
    assert any(not torch.allclose(s, e) for s, e in zip(stale, rule.eps))  # not the stale direction


@pytest.mark.parametrize("fields,named", [({"step": "three_pass"}, "step"),
                                          ({"step": "two_pass"}, "h_const"),
                                          ({"step": "two_pass", "h_const": True, "recompute_every": 2},
                                           "recompute_every")])
def test_a_step_the_config_cannot_honour_is_refused_naming_the_field(fields, named):
    with pytest.raises(ConfigError, match=f"^{named} = ") as err:
        PanaceaConfig(**fields)
    assert "\n" not in str(err.value)


def test_the_exact_step_keeps_its_key():
    """The option is off by default and left out of the config's dict there, so stored runs keep their keys."""
    from panacea_lab.config import to_dict

    assert "step" not in to_dict(PanaceaConfig()) and to_dict(PanaceaConfig(step="two_pass", h_const=True))["step"]
