"""Booster's step equals its formula, term by term, and leaves the weights exactly as it found them."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import lora_with_random_b
from torch.func import functional_call

from panacea_lab.testing import cpu_accelerator
from panacea_lab.models.base_model import build_tokenizer
from panacea_lab.config import ConfigError
from panacea_lab.data.batching import BatchStream, encode
from panacea_lab.defenses.booster import BoosterConfig, BoosterRule
from panacea_lab.training.loop import LoopSettings, train_loop


def _setup(tiny_cfg, world, **cfg):
    tok = build_tokenizer(world.all_texts())
    model = lora_with_random_b(tiny_cfg)
    user = BatchStream([encode(tok, e, 96) for e in world.task_train["sentiment"][:6]], 6, tok.pad_token_id, 0)
    harm_rows = [encode(tok, e, 96) for e in world.defender_pool[:5]]
    rule = BoosterRule(BoosterConfig(harmful_batch_size=5, **cfg), BatchStream(harm_rows, 5, tok.pad_token_id, 7))
    harm_batch = next(BatchStream(harm_rows, 5, tok.pad_token_id, 7).epoch())  # the batch the rule will draw
    rule.prepare(model, cpu_accelerator())
    return model, rule, user, harm_batch


def _expected(model, batch, harm, lam, alpha):
    """grad f(w) + lam * (grad h(w) - grad h(w - alpha * grad h(w) / ||grad h(w)||)), term by term."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    names = list(params)

    def loss_at(delta, b):
        values = {n: params[n] + delta.get(n, 0) for n in names}
        return functional_call(model, values, args=(), kwargs=b.as_kwargs()).loss

    g_f = torch.autograd.grad(loss_at({}, batch), list(params.values()))
    g_h = torch.autograd.grad(loss_at({}, harm), list(params.values()))
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in g_h)).float()
    step = {n: -alpha * g / norm for n, g in zip(names, g_h)}
    h_after = loss_at(step, harm)
    g_after = torch.autograd.grad(h_after, list(params.values()))
    grads = {n: gf + lam * (gh - ga) for n, gf, gh, ga in zip(names, g_f, g_h, g_after)}
    return grads, h_after.item(), norm.item()


@pytest.mark.parametrize("lam,alpha", [(5.0, 0.1), (100.0, 0.01), (2.0, 1.5)])
def test_step_leaves_the_formula_in_grad_and_restores_weights(tiny_cfg, world, lam, alpha):
    model, rule, user, harm = _setup(tiny_cfg, world, lam=lam, alpha=alpha)
    batch = next(user.epoch())
    expected, h_after, norm = _expected(model, batch, harm, lam, alpha)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    logged = rule.gradient(model, batch, step=0)
    n_checked = 0
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]), f"{n} not restored bit for bit"
        if p.requires_grad:
            torch.testing.assert_close(p.grad, expected[n], rtol=1e-4, atol=1e-6)
            n_checked += 1
    assert n_checked == len(rule.params) > 0
    # the regulariser is not negligible here, so a wrong sign or a missing term would fail above
    correction = math.sqrt(sum(float(((expected[n] - g) ** 2).sum()) for n, g in
                               zip(rule.names, torch.autograd.grad(model(**batch.as_kwargs()).loss, rule.params))))
    assert correction > 1e-3
    assert set(logged) == {"loss", "h", "h_after", "grad_h_norm"}
    assert logged["h_after"] == pytest.approx(h_after, rel=1e-5)
    assert logged["h_after"] < logged["h"]  # the inner step descends the harmful loss
    assert logged["grad_h_norm"] == pytest.approx(norm, rel=1e-5)
    assert rule.finalize(model) == {}


def test_lam_zero_is_plain_sft(tiny_cfg, world):
    model, rule, user, _ = _setup(tiny_cfg, world, lam=0.0)
    batch = next(user.epoch())
    plain = torch.autograd.grad(model(**batch.as_kwargs()).loss, rule.params)
    rule.gradient(model, batch, step=0)
    for p, g in zip(rule.params, plain):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)


def test_runs_in_the_training_loop(tiny_cfg, world):
    model, rule, user, _ = _setup(tiny_cfg, world)
    out = train_loop(model, user, LoopSettings(epochs=2, lr=1e-3, batch_size=6), rule=rule,
                     accelerator=cpu_accelerator())
    assert out["steps"] == 2 and out["finalize"] == {}
    assert all(math.isfinite(row[k]) for row in out["log"] for k in ("loss", "h", "h_after", "grad_h_norm"))


@pytest.mark.parametrize("field,value", [("lam", -1.0), ("alpha", 0.0), ("alpha", -0.1),
                                         ("harmful_batch_size", 0)])
def test_bad_booster_config(field, value):
    with pytest.raises(ConfigError, match=f"^{field} = "):
        BoosterConfig(**{field: value})


def test_booster_defaults_are_the_panacea_script_and_the_authors_setting_is_booster_s_own():
    from panacea_lab import settings
    from panacea_lab.defenses.booster import DEFENSE

    assert (BoosterConfig().lam, BoosterConfig().alpha, BoosterConfig().harmful_batch_size) == (100.0, 0.01, 10)
    own = settings.get("authors").defense("booster")
    assert (own.lam, own.alpha) == (5.0, 0.1) and settings.get("paper").defense("booster") == BoosterConfig()
    cfg = BoosterConfig(lam=5, alpha=0.1)
    assert isinstance(cfg.lam, float) and cfg.lam == 5.0
    assert DEFENSE.finetune_adapter == "continue"
