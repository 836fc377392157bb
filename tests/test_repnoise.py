"""RepNoise: the MMD estimator, the official loss (pinned against a transcription of the official
rep_noise_loss) and the answer-token alternative, each against autograd of an independent loss."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import lora_with_random_b

from panacea_lab.testing import cpu_accelerator
from panacea_lab.models.base_model import build_tokenizer
from panacea_lab.config import ConfigError
from panacea_lab.data.batching import BatchStream, encode
from panacea_lab.defenses.repnoise import DEFENSE, RepNoiseConfig, RepNoiseRule, differs, fit_to, mmd
from panacea_lab.training.loop import LoopSettings, train_loop


def _normal(n, d, seed, shift=0.0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) + shift


@pytest.mark.slow
def test_mmd_is_near_zero_for_one_distribution_and_grows_with_a_mean_shift():
    y = _normal(2000, 8, 1)
    for relative, bandwidths in [(True, (0.25, 0.5, 1.0, 2.0, 4.0)), (False, (4.0, 16.0, 64.0))]:
        values = [mmd(_normal(2000, 8, 0, s), y, bandwidths, relative).item() for s in (0.0, 0.5, 1.0, 2.0)]
        assert 0 <= values[0] < 0.01, values
        assert values[1] > 5 * values[0], values
        assert values == sorted(values) and len(set(values)) == 4, values


def test_mmd_of_a_sample_with_itself_is_zero_and_mismatched_widths_fail():
    x = _normal(50, 4, 0)
    assert abs(mmd(x, x).item()) < 1e-6
    with pytest.raises(ValueError, match="one width"):
        mmd(x, _normal(50, 5, 0))


def _setup(tiny_cfg, world, **cfg):
    tok = build_tokenizer(world.all_texts())
    model = lora_with_random_b(tiny_cfg)
    with torch.no_grad():  # a final-norm weight of ones would make norm(norm(h)) == norm(h) and hide a double norm
        model.get_base_model().model.norm.weight.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(2))
    model.train()
    refusals = BatchStream([encode(tok, e, 96) for e in world.alignment[:4]], 4, tok.pad_token_id, 0)
    harm_rows = [encode(tok, e, 96) for e in world.defender_pool[:4]]
    rule = RepNoiseRule(RepNoiseConfig(harmful_batch_size=4, **cfg), BatchStream(harm_rows, 4, tok.pad_token_id, 7))
    harm = next(BatchStream(harm_rows, 4, tok.pad_token_id, 7).epoch())  # the batch the rule will draw
    rule.prepare(model, cpu_accelerator())
    return model, rule, next(refusals.epoch()), harm


# ------------------------------------------------------------------------------ a transcription of the official loss
def _official_mmd(source, target):
    """MMD_loss of the official code: Gaussian kernels at bandwidth mean/4 * 2^i, i < 5, on the pooled
    pairwise squared distances (detached bandwidth), mean(XX + YY - XY - YX)."""
    total = torch.cat([source, target])
    n = total.shape[0]
    dist = ((total.unsqueeze(0) - total.unsqueeze(1)) ** 2).sum(2)
    bandwidth = dist.detach().sum() / (n ** 2 - n) / 2 ** 2
    kernels = sum(torch.exp(-dist / (bandwidth * 2 ** i)) for i in range(5))
    b = source.shape[0]
    return torch.mean(kernels[:b, :b] + kernels[b:, b:] - kernels[:b, b:] - kernels[b:, :b])


def _official_ce(logits, ids, mask):
    """masked_token_ce_loss: shifted logits times the shifted mask, targets ids * mask, 0 ignored."""
    m = mask.float()
    shifted = logits[..., :-1, :] * m[..., :-1].unsqueeze(-1)
    targets = (ids[..., 1:] * mask[..., 1:].long()).clone()
    targets[targets == 0] = -100
    return torch.nn.CrossEntropyLoss()(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1))


def _official_fit(b, a):
    """adapt_dimension_b2a: b zero-padded or cut to a's rows, then to a's columns."""
    if b.shape[0] < a.shape[0]:
        b = torch.cat([b, torch.zeros(a.shape[0] - b.shape[0], b.shape[1], dtype=b.dtype)])
    b = b[:a.shape[0]]
    if b.shape[1] < a.shape[1]:
        b = torch.cat([b, torch.zeros(b.shape[0], a.shape[1] - b.shape[1], dtype=b.dtype)], 1)
    return b[:, :a.shape[1]]


def _official_total(model, harmless, harmful, alpha, beta, step):
    llama = model.get_base_model()
    acts = {}
    hooks = [layer.mlp.register_forward_hook(lambda m, i, o, k=k: acts.__setitem__(k, o))
             for k, layer in enumerate(llama.model.layers)]
    try:
        out = model(input_ids=harmful.input_ids, attention_mask=harmful.attention_mask, output_hidden_states=True)
    finally:
        for h in hooks:
            h.remove()
    mask = ~torch.eq(harmful.input_ids, _official_fit(harmless.input_ids, harmful.input_ids))
    gen = torch.Generator().manual_seed(step)  # the rule's documented seeding (official: the global generator)
    noise = 0
    for k in range(len(llama.model.layers)):
        hidden = acts[k]
        hm = mask.unsqueeze(-1).expand(hidden.size())
        gauss = torch.randn(hidden.shape, generator=gen) * hm
        noise = noise + _official_mmd((hidden * hm).view(hidden.size(0), -1), gauss.view(gauss.size(0), -1))
    noise = noise / len(llama.model.layers)
    harm = _official_ce(out.logits, harmful.input_ids, mask)
    for h in out.hidden_states:
        harm = harm + _official_ce(llama.lm_head(llama.model.norm(h)), harmful.input_ids, mask)
    harm = harm / len(out.hidden_states) + 1
    mask2 = ~torch.eq(harmless.input_ids, _official_fit(harmful.input_ids, harmless.input_ids))
    ce = _official_ce(model(input_ids=harmless.input_ids, attention_mask=harmless.attention_mask).logits,
                      harmless.input_ids, mask2)
    return ce + beta * noise - alpha * torch.log(harm), (ce, noise, harm)


@pytest.mark.parametrize("alpha,beta", [(0.02, 0.1), (0.5, 2.0), (1.0, 0.0)])
def test_official_grad_equals_autograd_of_the_transcribed_official_loss(tiny_cfg, world, alpha, beta):
    model, rule, batch, harm = _setup(tiny_cfg, world, alpha=alpha, beta=beta)
    params = [p for p in model.parameters() if p.requires_grad]
    total, (ce, noise, lens) = _official_total(model, batch, harm, alpha, beta, step=3)
    expected = torch.autograd.grad(total, params, retain_graph=True)
    plain = torch.autograd.grad(ce, params)
    logged = rule.gradient(model, batch, step=3)
    for p, g in zip(params, expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    assert sum((p.grad - g0).norm() for p, g0 in zip(params, plain)) > 1e-4  # the harmful terms act
    assert logged["loss"] == pytest.approx(ce.item(), rel=1e-5)
    assert logged["mmd"] == pytest.approx(noise.item(), rel=1e-4)
    assert logged["lens_ce"] == pytest.approx(lens.item(), rel=1e-5)


def test_official_harmful_ce_rounds_token_ids_through_bf16_and_ours_keeps_them_exact():
    """rep_noise_loss casts the harmful mask to bf16 (Booster `loss_func/repnoise_loss.py:131`) before
    masked_token_ce_loss multiplies the int ids by it (`:70`), so its targets are bf16-rounded ids
    (exact up to 256 only). A documented difference (README, Fidelity): the targets here are the ids."""
    from panacea_lab.defenses.repnoise import masked_token_ce

    def official_bf16(logits, ids, mask):
        m = mask.to(torch.bfloat16)
        shifted = logits[..., :-1, :] * m[..., :-1].unsqueeze(-1)
        targets = ids[..., 1:] * m[..., 1:]  # int64 * bf16 -> bf16
        targets[targets == 0] = -100
        return F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.long().reshape(-1))

    mask = torch.tensor([[0, 1, 1, 1, 1, 0]], dtype=torch.bool)
    logits = torch.randn(1, 6, 1100, generator=torch.Generator().manual_seed(0))
    small = torch.tensor([[3, 5, 200, 255, 256, 9]])  # ids bf16 holds exactly: the two rules agree
    assert torch.allclose(masked_token_ce(logits, small, mask), official_bf16(logits, small, mask))
    large = torch.tensor([[3, 5, 257, 301, 999, 9]])
    assert torch.tensor([257, 301, 999]).to(torch.bfloat16).long().tolist() == [256, 300, 1000]
    ours = masked_token_ce(logits, large, mask)
    assert torch.allclose(ours, _official_ce(logits, large, mask))  # the exact ids
    assert not torch.allclose(ours, official_bf16(logits, large, mask))


def test_official_mask_is_where_the_two_batches_differ_position_by_position():
    harmful = torch.tensor([[5, 6, 7, 8, 0], [5, 6, 9, 0, 0]])
    harmless = torch.tensor([[5, 6, 7, 3], [5, 4, 9, 9], [1, 1, 1, 1]])  # paired prompts, other answers
    assert fit_to(harmless, harmful.shape).tolist() == [[5, 6, 7, 3, 0], [5, 4, 9, 9, 0]]
    assert differs(harmful, harmless).tolist() == [[False, False, False, True, False],
                                                  [False, True, False, True, False]]
    assert fit_to(harmful, torch.Size([3, 4])).tolist() == [[5, 6, 7, 8], [5, 6, 9, 0], [0, 0, 0, 0]]


# ------------------------------------------------------------------------------ the answer-token alternative
def _reference_mmd(x, y):
    z = torch.cat([x, y])
    dist = torch.cdist(z, z) ** 2
    n = len(z)
    base = dist.detach().sum() / (n * n - n)
    k = sum(torch.exp(-dist / (base * h)) for h in (0.25, 0.5, 1.0, 2.0, 4.0))
    m = len(x)
    return k[:m, :m].mean() + k[m:, m:].mean() - k[:m, m:].mean() - k[m:, :m].mean()


def _expected_total(model, batch, harm, alpha, beta, step):
    """The documented loss, from raw decoder-layer outputs captured by hooks (not hidden_states)."""
    llama = model.get_base_model()
    raw = []
    hooks = [layer.register_forward_hook(lambda m, i, o: raw.append(o[0] if isinstance(o, tuple) else o))
             for layer in llama.model.layers]
    try:
        model(input_ids=harm.input_ids, attention_mask=harm.attention_mask)
    finally:
        for h in hooks:
            h.remove()
    gen = torch.Generator().manual_seed(step)
    answer = harm.labels != -100
    mmds, lens = [], []
    for h in raw:
        normed = llama.model.norm(h)
        x = (normed if h is raw[-1] else h)[answer]  # HF reports the last layer after the final norm
        mmds.append(_reference_mmd(x, torch.randn(x.shape, generator=gen)))
        logits = llama.lm_head(normed)
        lens.append(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), harm.labels[:, 1:].reshape(-1),
                                    ignore_index=-100))
    ce = model(**batch.as_kwargs()).loss
    noise, lens_ce = sum(mmds) / len(mmds), sum(lens) / len(lens)
    return ce + beta * noise - alpha * torch.log(1 + lens_ce), (ce, noise, lens_ce)


@pytest.mark.parametrize("alpha,beta", [(0.5, 2.0), (0.0, 3.0), (1.0, 0.0)])
def test_answer_rule_grad_equals_autograd_of_its_documented_loss(tiny_cfg, world, alpha, beta):
    model, rule, batch, harm = _setup(tiny_cfg, world, alpha=alpha, beta=beta, loss="answer", features="residual")
    params = [p for p in model.parameters() if p.requires_grad]
    total, (ce, noise, lens) = _expected_total(model, batch, harm, alpha, beta, step=3)
    expected = torch.autograd.grad(total, params, retain_graph=True)
    plain = torch.autograd.grad(ce, params)
    logged = rule.gradient(model, batch, step=3)
    for p, g, g0 in zip(params, expected, plain):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    assert sum((p.grad - g0).norm() for p, g0 in zip(params, plain)) > 1e-4  # the harmful terms act
    assert logged["loss"] == pytest.approx(ce.item(), rel=1e-5)
    assert logged["mmd"] == pytest.approx(noise.item(), rel=1e-4)
    assert logged["lens_ce"] == pytest.approx(lens.item(), rel=1e-5)


def test_answer_rule_with_zero_weights_is_plain_ce_exactly(tiny_cfg, world):
    model, rule, batch, _ = _setup(tiny_cfg, world, alpha=0.0, beta=0.0, loss="answer")
    params = [p for p in model.parameters() if p.requires_grad]
    plain = torch.autograd.grad(model(**batch.as_kwargs()).loss, params)
    rule.gradient(model, batch, step=0)
    for p, g in zip(params, plain):
        assert torch.equal(p.grad, g)


def test_noise_is_seeded_by_the_step(tiny_cfg, world):
    model, rule, batch, harm = _setup(tiny_cfg, world)
    with torch.no_grad():
        a, b, c = (rule.official_terms(model, batch, harm, s)[1] for s in (5, 5, 6))
    assert a.item() == b.item() != c.item()


def test_runs_in_the_loop(tiny_cfg, world):
    model, rule, batch, _ = _setup(tiny_cfg, world)
    tok = build_tokenizer(world.all_texts())
    stream = BatchStream([encode(tok, e, 96) for e in world.alignment[:4]], 2, tok.pad_token_id, 0)
    out = train_loop(model, stream, LoopSettings(epochs=1, lr=1e-3, batch_size=2), rule, cpu_accelerator())
    assert out["steps"] == 2 and {"loss", "mmd", "lens_ce"} <= set(out["log"][-1])
    assert out["finalize"] == {}


@pytest.mark.parametrize("field,value", [("alpha", -0.1), ("beta", -1.0), ("harmful_batch_size", 0),
                                         ("loss", "tokens"), ("features", "attention")])
def test_bad_repnoise_config(field, value):
    with pytest.raises(ConfigError, match=f"^{field} = "):
        RepNoiseConfig(**{field: value})


def test_config_stores_ints_as_floats():
    assert RepNoiseConfig(alpha=1).alpha == 1.0 and isinstance(RepNoiseConfig(alpha=1).alpha, float)


def test_defaults_are_the_panacea_script():
    cfg = RepNoiseConfig()
    assert (cfg.alpha, cfg.beta, cfg.harmful_batch_size, cfg.loss, cfg.features) == (0.02, 0.1, 5, "official", "mlp")
    assert DEFENSE.finetune_adapter == "fresh"
