"""Antidote: per-row top-score pruning (checked against brute force), masked activation norms, folding."""
from __future__ import annotations

import pytest
import torch

from panacea_lab.defenses.antidote import (
    antidote,
    antidote_deltas,
    input_feature_norms,
    lora_delta,
    lora_linear_layers,
    prune_top_scores_per_row,
    pruned_per_row,
    random_prune_per_row,
)
from panacea_lab.models.loading import attach_lora, load_base
from panacea_lab.defenses.perturb import add_, gaussian_noise, named_trainable

CPU = torch.device("cpu")


def test_prunes_exactly_the_top_scores_of_each_row_like_brute_force():
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


def test_activation_norm_changes_which_weight_goes():
    delta = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    _, by_weight = prune_top_scores_per_row(delta, torch.ones(4), 0.25)
    _, by_score = prune_top_scores_per_row(delta, torch.tensor([10.0, 1.0, 1.0, 1.0]), 0.25)
    assert by_weight.tolist() == [[False, False, False, True]]
    assert by_score.tolist() == [[True, False, False, False]]


def test_dense_ratio_bounds():
    delta = torch.randn(3, 8)
    assert not prune_top_scores_per_row(delta, torch.ones(8), 0.0)[1].any()
    assert prune_top_scores_per_row(delta, torch.ones(8), 1.0)[1].all()
    assert pruned_per_row(100, 0.29) == 29 and pruned_per_row(10, 0.1) == 1 and pruned_per_row(9, 0.1) == 0
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="dense_ratio"):
            prune_top_scores_per_row(delta, torch.ones(8), bad)
    with pytest.raises(ValueError, match="act_norm"):
        prune_top_scores_per_row(delta, torch.ones(7), 0.1)


def test_random_control_zeroes_the_same_count_per_row_and_is_seeded():
    delta = torch.randn(6, 20) + 5.0  # no accidental zeros
    _, wanda = prune_top_scores_per_row(delta, torch.rand(20), 0.2)
    pruned, mask = random_prune_per_row(delta, 0.2, torch.Generator().manual_seed(1))
    _, again = random_prune_per_row(delta, 0.2, torch.Generator().manual_seed(1))
    _, other = random_prune_per_row(delta, 0.2, torch.Generator().manual_seed(2))
    assert mask.sum(1).tolist() == wanda.sum(1).tolist() == [4] * 6
    assert (pruned == 0).sum(1).tolist() == [4] * 6
    assert torch.equal(mask, again) and not torch.equal(mask, other)


# ------------------------------------------------------------------------------ on a tiny peft model
@pytest.fixture
def tuned(tiny_cfg):
    """A peft model whose LoRA delta is non-zero (B starts at 0), standing in for a fine-tuned one."""
    model = attach_lora(load_base(tiny_cfg, CPU), tiny_cfg, seed=0)
    add_(model, gaussian_noise(named_trainable(model), 0.2, seed=1))
    return model.eval()


def _batches(vocab: int, pad: int = 0):
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randint(3, vocab, (7,), generator=gen), torch.randint(3, vocab, (4,), generator=gen)
    padded = {"input_ids": torch.stack([a, torch.cat([b, torch.full((3,), pad)])]),
              "attention_mask": torch.tensor([[1] * 7, [1] * 4 + [0] * 3])}
    alone = [{"input_ids": a[None], "attention_mask": torch.ones(1, 7, dtype=torch.long)},
             {"input_ids": b[None], "attention_mask": torch.ones(1, 4, dtype=torch.long)}]
    return padded, alone


def test_activation_norms_are_the_layer_inputs_over_unpadded_tokens(tuned):
    layers = lora_linear_layers(tuned)
    vocab = tuned.get_input_embeddings().num_embeddings
    padded, alone = _batches(vocab, pad=5)
    with_pad = input_feature_norms(tuned, [padded], layers)
    without = input_feature_norms(tuned, alone, layers)
    for name in layers:
        assert torch.allclose(with_pad[name], without[name], rtol=1e-4, atol=1e-6), name
    # by hand: layer 0's q_proj sees input_layernorm(embeddings) of the valid tokens
    inner = tuned.base_model.model.model
    x = inner.layers[0].input_layernorm(inner.embed_tokens(padded["input_ids"]))
    expected = x[padded["attention_mask"].bool()].pow(2).sum(0).sqrt()
    q0 = next(n for n in layers if n.endswith("layers.0.self_attn.q_proj"))
    assert torch.allclose(with_pad[q0], expected, rtol=1e-5)
    unmasked = {**padded, "attention_mask": torch.ones_like(padded["attention_mask"])}
    assert not torch.allclose(input_feature_norms(tuned, [unmasked], layers)[q0], expected, rtol=1e-3)


def test_antidote_folds_the_pruned_delta_into_the_base_weights(tuned, tiny_cfg):
    base = load_base(tiny_cfg, CPU)
    padded, _ = _batches(tuned.get_input_embeddings().num_embeddings)
    deltas, report = antidote_deltas(tuned, [padded], dense_ratio=0.1)
    layers = lora_linear_layers(tuned)
    assert set(deltas) == set(layers) == set(report["layer"])
    assert (report["k_per_row"] == report["in_features"] // 10).all()
    assert (report["norm_after"] < report["norm_before"]).all()
    for name, layer in layers.items():
        zeroed = (deltas[name] == 0) & (lora_delta(layer) != 0)
        assert zeroed.sum(1).tolist() == [layer.in_features // 10] * layer.out_features
    plain, _ = antidote(tuned, [padded], dense_ratio=0.1)
    assert not any(p.requires_grad for p in plain.parameters())
    weights, base_w = dict(plain.named_parameters()), dict(base.named_parameters())
    for name in deltas:
        key = name.removeprefix("base_model.model.") + ".weight"
        assert torch.allclose(weights[key] - base_w[key], deltas[name], atol=1e-6), key


def test_antidote_with_nothing_pruned_equals_merging(tiny_cfg):
    ids = torch.randint(3, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    models = []
    for _ in range(2):
        m = attach_lora(load_base(tiny_cfg, CPU), tiny_cfg, seed=0)
        add_(m, gaussian_noise(named_trainable(m), 0.2, seed=1))
        models.append(m.eval())
    merged = models[0].merge_and_unload()
    plain, _ = antidote(models[1], [{"input_ids": ids}], dense_ratio=0.0)
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5)


def test_random_method_needs_no_data_and_prunes_the_same_count(tuned):
    deltas, report = antidote_deltas(tuned, None, dense_ratio=0.25, method="random", seed=4)
    again, _ = antidote_deltas(tuned, None, dense_ratio=0.25, method="random", seed=4)
    assert all(torch.equal(deltas[n], again[n]) for n in deltas)
    assert (report["k_per_row"] == report["in_features"] // 4).all()
    with pytest.raises(ValueError, match="method"):
        antidote_deltas(tuned, None, method="magnitude")


def test_a_model_without_adapters_is_rejected(tiny_cfg):
    with pytest.raises(ValueError, match="no active LoRA"):
        antidote(load_base(tiny_cfg, CPU), [], dense_ratio=0.1)
