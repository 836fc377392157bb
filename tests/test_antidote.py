"""Antidote: the official rule on the LoRA factors (pinned against a transcription of the official
calibration and mask), its random control, the calibration size, and the product alternative."""
from __future__ import annotations

import pytest
import torch

from panacea_lab.config import ConfigError
from panacea_lab.data.batching import Batch
from panacea_lab.defenses.antidote import (
    AntidoteConfig,
    DEFENSE,
    antidote,
    antidote_deltas,
    calibration_batches,
    factor_masks,
    input_feature_norms,
    lora_delta,
    lora_factors,
    lora_linear_layers,
    official_kept,
    official_mask,
    prune_factors,
    prune_top_scores_per_row,
    pruned_per_row,
    random_flat_mask,
    random_prune_per_row,
)
from panacea_lab.models.loading import attach_lora, load_base
from panacea_lab.defenses.perturb import add_, gaussian_noise, named_trainable

CPU = torch.device("cpu")


# ------------------------------------------------------------------------------ a transcription of the official code
def official_wanda_masks(model, samples, dense_ratio):
    """The official Antidote, written out for the test: every nn.Linear whose name holds "lora" is
    hooked; per calibration sample (batch size 1, so no padding) its input rows update
    scaler_row <- scaler_row * n / (n + 1) + ||x_j||^2 / (n + 1); the score is |W| * sqrt(scaler_row);
    each row is sorted ascending (stable), the first int(cols * (1 - dense_ratio)) entries keep 0 in
    a mask of ones, and the parameter is multiplied by 1 - mask."""
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lora" in n}
    stats = {n: [torch.zeros(m.weight.shape[1]), 0] for n, m in linears.items()}

    def hook(name):
        def h(_m, inp, _out):
            x = inp[0].reshape(-1, inp[0].shape[-1]).t().float()
            row, n = stats[name]
            row *= n / (n + 1)
            stats[name][1] = n + 1
            row += torch.norm(x, p=2, dim=1) ** 2 / (n + 1)
        return h

    handles = [m.register_forward_hook(hook(n)) for n, m in linears.items()]
    model.eval()
    with torch.no_grad():
        for ids in samples:
            model(input_ids=ids[None])
    for h in handles:
        h.remove()
    masks = {}
    for name, m in linears.items():
        metric = m.weight.abs() * torch.sqrt(stats[name][0].reshape(1, -1))
        keep_low = torch.sort(metric, dim=-1, stable=True)[1][:, :int(metric.shape[1] * (1 - dense_ratio))]
        masks[name] = torch.ones_like(metric).scatter_(1, keep_low, 0).bool()
    return masks


@pytest.fixture
def tuned(tiny_cfg):
    """A peft model whose LoRA A and B are both non-zero, standing in for a fine-tuned one."""
    model = attach_lora(load_base(tiny_cfg, CPU), tiny_cfg, seed=0)
    add_(model, gaussian_noise(named_trainable(model), 0.2, seed=1))
    return model.eval()


def _samples(vocab: int, lengths=(7, 4, 9), seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=gen) for n in lengths]


def _padded(samples, pad: int = 0) -> Batch:
    width = max(len(s) for s in samples)
    ids = torch.full((len(samples), width), pad)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for i, s in enumerate(samples):
        ids[i, :len(s)], mask[i, :len(s)] = s, 1
    return Batch(ids, mask, torch.full_like(ids, -100))


# ------------------------------------------------------------------------------ the official rule, tensor level
def test_official_mask_zeroes_all_but_the_lowest_scores_of_each_row():
    gen = torch.Generator().manual_seed(0)
    w, act = torch.randn(5, 16, generator=gen), torch.rand(16, generator=gen) + 0.1
    mask = official_mask(w, act, dense_ratio=0.1)
    assert official_kept(16, 0.1) == 14 and mask.sum(1).tolist() == [2] * 5  # not floor(1.6) = 1
    for i in range(5):
        scores = [abs(w[i, j].item()) * act[j].item() for j in range(16)]
        top = sorted(range(16), key=lambda j: -scores[j])[:2]
        assert sorted(torch.nonzero(mask[i]).flatten().tolist()) == sorted(top)
    assert official_kept(4096, 0.1) == 3686 and official_kept(10, 0.0) == 10 and official_kept(10, 1.0) == 0


def test_official_mask_breaks_ties_as_a_stable_ascending_sort():
    mask = official_mask(torch.ones(1, 4), torch.ones(4), dense_ratio=0.5)  # all scores equal
    assert mask.tolist() == [[False, False, True, True]]  # the first columns count as the lowest


def test_random_control_is_the_official_flat_count_and_seeded():
    mask = random_flat_mask(torch.Size([6, 20]), 0.25, torch.Generator().manual_seed(1))
    again = random_flat_mask(torch.Size([6, 20]), 0.25, torch.Generator().manual_seed(1))
    other = random_flat_mask(torch.Size([6, 20]), 0.25, torch.Generator().manual_seed(2))
    assert int(mask.sum()) == int(120 * 0.25) and torch.equal(mask, again) and not torch.equal(mask, other)


# ------------------------------------------------------------------------------ the official rule on a peft model
def test_factor_masks_match_the_official_calibration_and_mask(tuned):
    samples = _samples(tuned.get_input_embeddings().num_embeddings)
    ours, report = factor_masks(tuned, [_padded(samples, pad=5)], dense_ratio=0.1)  # padded, norms skip pads
    official = official_wanda_masks(tuned, samples, dense_ratio=0.1)
    assert set(official) == set(ours)  # every lora_A and lora_B, named as the official mask's keys
    for name, mask in ours.items():
        assert torch.equal(mask, official[name]), name
    assert (report["zeroed"] > 0).all()


def test_factor_inputs_are_x_for_a_and_a_x_for_b(tuned):
    samples = _samples(tuned.get_input_embeddings().num_embeddings)
    layers = lora_linear_layers(tuned)
    factors = lora_factors(layers)
    norms = input_feature_norms(tuned, [_padded(samples)], factors)
    layer_norms = input_feature_norms(tuned, [_padded(samples)], layers)
    q0 = next(n for n in layers if n.endswith("layers.0.self_attn.q_proj"))
    a_name, b_name = f"{q0}.lora_A.default", f"{q0}.lora_B.default"
    assert torch.allclose(norms[a_name], layer_norms[q0], rtol=1e-5)  # A reads the layer input
    inner = tuned.base_model.model.model
    xs = torch.cat([inner.layers[0].input_layernorm(inner.embed_tokens(s[None]))[0] for s in samples])
    ax = xs @ layers[q0].lora_A["default"].weight.T  # B reads A x, before the scaling
    assert torch.allclose(norms[b_name], ax.pow(2).sum(0).sqrt(), rtol=1e-4)


def test_prune_factors_zeroes_the_masked_entries_and_leaves_an_evaluable_peft_model(tuned):
    samples = _samples(tuned.get_input_embeddings().num_embeddings)
    ids = _padded(samples).input_ids
    before = {n: p.detach().clone() for n, p in tuned.named_parameters() if "lora_" in n}
    with torch.no_grad():
        logits_before = tuned(input_ids=ids).logits
    pruned, report = antidote(tuned, [_padded(samples)], dense_ratio=0.1)  # target="factors" by default
    assert pruned is tuned and lora_linear_layers(pruned)  # still the peft model with its adapter
    masks, _ = factor_masks(pruned, None, dense_ratio=0.0, method="random")  # only the names
    for name in masks:
        w, w0 = dict(pruned.named_parameters())[f"{name}.weight"], before[f"{name}.weight"]
        zeroed = (w == 0) & (w0 != 0)
        assert int(zeroed.sum()) == int(report.set_index("factor").loc[name, "zeroed"])
        assert torch.equal(w[~zeroed], w0[~zeroed])
    with torch.no_grad():
        after = pruned(input_ids=ids).logits
    assert after.shape == logits_before.shape and not torch.allclose(after, logits_before)


def test_prune_factors_refuses_masks_of_another_model(tuned):
    with pytest.raises(ValueError, match="masks and the model's LoRA factors differ"):
        prune_factors(tuned, {"nope": torch.zeros(1, dtype=torch.bool)})


# ------------------------------------------------------------------------------ calibration size
def test_calibration_takes_n_samples_rows_or_the_whole_pool():
    batches = [_padded(_samples(50, (3, 4, 5, 6), seed=s)) for s in range(3)]  # 3 batches of 4 rows
    six = calibration_batches(batches, 6)
    assert [b.input_ids.shape[0] for b in six] == [4, 2]
    assert torch.equal(six[1].input_ids, batches[1].input_ids[:2])
    assert sum(b.input_ids.shape[0] for b in calibration_batches(batches, 2000)) == 12


def test_the_transform_calibrates_on_n_samples_defender_rows(tuned):
    vocab = tuned.get_input_embeddings().num_embeddings
    pool = [_padded(_samples(vocab, (5, 7, 6, 4), seed=s)) for s in range(3)]

    class Ctx:
        seed, lora_names = 0, []

        def harmful_batches(self, n):
            return pool[:n]

    cfg = AntidoteConfig(n_samples=6)
    expected, _ = factor_masks(tuned, calibration_batches(pool, 6), cfg.dense_ratio)
    wrong, _ = factor_masks(tuned, pool, cfg.dense_ratio)
    assert any(not torch.equal(expected[n], wrong[n]) for n in expected)  # the size matters here
    before = {n: p.detach().clone() for n, p in tuned.named_parameters() if "lora_" in n}
    DEFENSE.transform(tuned, cfg, Ctx())
    for name, mask in expected.items():
        w = dict(tuned.named_parameters())[f"{name}.weight"]
        assert torch.equal(w, before[f"{name}.weight"].masked_fill(mask, 0)), name


def test_config_defaults_are_the_official_script():
    cfg = AntidoteConfig()
    assert (cfg.dense_ratio, cfg.n_samples, cfg.target, cfg.method) == (0.1, 2000, "factors", "wanda")
    assert DEFENSE.finetune_adapter == "fresh"
    for field, value in (("target", "rows"), ("n_samples", 0), ("method", "blur"), ("dense_ratio", 1.5)):
        with pytest.raises(ConfigError, match=f"^{field} = "):
            AntidoteConfig(**{field: value})


# ------------------------------------------------------------------------------ the product alternative
def test_product_rule_prunes_the_top_scores_of_each_row_like_brute_force():
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(5, 10, generator=gen)
    act = torch.rand(10, generator=gen) + 0.1
    pruned, mask = prune_top_scores_per_row(delta, act, dense_ratio=0.3)
    for i in range(5):
        scores = [abs(delta[i, j].item()) * act[j].item() for j in range(10)]
        top = sorted(range(10), key=lambda j: -scores[j])[:3]
        assert sorted(torch.nonzero(mask[i]).flatten().tolist()) == sorted(top)
    assert torch.equal(pruned[mask], torch.zeros(15))
    assert torch.equal(pruned[~mask], delta[~mask])


def test_product_rule_bounds_and_checks():
    delta = torch.randn(3, 8)
    assert not prune_top_scores_per_row(delta, torch.ones(8), 0.0)[1].any()
    assert prune_top_scores_per_row(delta, torch.ones(8), 1.0)[1].all()
    assert pruned_per_row(100, 0.29) == 29 and pruned_per_row(10, 0.1) == 1 and pruned_per_row(9, 0.1) == 0
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="dense_ratio"):
            prune_top_scores_per_row(delta, torch.ones(8), bad)
    with pytest.raises(ValueError, match="act_norm"):
        prune_top_scores_per_row(delta, torch.ones(7), 0.1)
    _, mask = random_prune_per_row(torch.randn(6, 20) + 5.0, 0.2, torch.Generator().manual_seed(1))
    assert mask.sum(1).tolist() == [4] * 6


def test_product_target_folds_the_pruned_product_into_the_base_weights(tuned, tiny_cfg):
    base = load_base(tiny_cfg, CPU)
    batch = _padded(_samples(tuned.get_input_embeddings().num_embeddings))
    deltas, report = antidote_deltas(tuned, [batch], dense_ratio=0.1)
    layers = lora_linear_layers(tuned)
    assert set(deltas) == set(layers) == set(report["layer"])
    for name, layer in layers.items():
        zeroed = (deltas[name] == 0) & (lora_delta(layer) != 0)
        assert zeroed.sum(1).tolist() == [layer.in_features // 10] * layer.out_features
    plain, _ = antidote(tuned, [batch], dense_ratio=0.1, target="product")
    assert not any(p.requires_grad for p in plain.parameters())
    weights, base_w = dict(plain.named_parameters()), dict(base.named_parameters())
    for name in deltas:
        key = name.removeprefix("base_model.model.") + ".weight"
        assert torch.allclose(weights[key] - base_w[key], deltas[name], atol=1e-6), key


def test_nothing_pruned_leaves_the_fine_tuned_model(tiny_cfg):
    ids = torch.randint(3, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    models = []
    for _ in range(3):
        m = attach_lora(load_base(tiny_cfg, CPU), tiny_cfg, seed=0)
        add_(m, gaussian_noise(named_trainable(m), 0.2, seed=1))
        models.append(m.eval())
    merged = models[0].merge_and_unload()
    product, _ = antidote(models[1], [{"input_ids": ids}], dense_ratio=0.0, target="product")
    factors, _ = antidote(models[2], [{"input_ids": ids}], dense_ratio=0.0)
    with torch.no_grad():
        assert torch.allclose(product(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5)
        assert torch.allclose(factors(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5)


def test_a_model_without_adapters_or_an_unknown_target_is_rejected(tiny_cfg, tuned):
    with pytest.raises(ValueError, match="no active LoRA"):
        antidote(load_base(tiny_cfg, CPU), [], dense_ratio=0.1)
    with pytest.raises(ValueError, match="target"):
        antidote(tuned, None, method="random", target="rows")
    with pytest.raises(ValueError, match="method"):
        factor_masks(tuned, None, method="magnitude")
