"""The bucketed loss is the model's own loss computed another way: same value, same gradients."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import lora_with_random_b

from panacea_lab.config import ConfigError, ModelConfig
from panacea_lab.data.batching import IGNORE_INDEX, collate, encode
from panacea_lab.models.base_model import build_tokenizer
from panacea_lab.training import loss as loss_mod
from panacea_lab.training.loss import batch_loss, length_groups, lm_loss


@pytest.mark.parametrize("lengths", [[5], [10, 12, 60, 64, 100, 30], [7, 7, 7, 7], list(range(1, 21))])
@pytest.mark.parametrize("cost", [0, 48, 10_000])
def test_length_groups_partition_the_rows_into_length_runs(lengths, cost):
    groups = length_groups(lengths, cost)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    spans = [(min(lengths[i] for i in g), max(lengths[i] for i in g)) for g in groups]
    assert all(hi_next <= lo for (lo, _), (_, hi_next) in zip(spans, spans[1:]))  # contiguous runs, longest first
    if cost == 10_000:
        assert len(groups) == 1
    if cost == 0:  # nothing charges a group: rows of different lengths never share one
        assert all(len({lengths[i] for i in g}) == 1 for g in groups)


def _mixed_batch(world, cfg):
    tok = build_tokenizer(world.all_texts())
    examples = world.defender_pool[:3] + world.task_train["sentiment"][:4] + world.alignment[:2]
    rows = [encode(tok, ex, cfg.max_length) for ex in examples]
    rows[4]["labels"] = [IGNORE_INDEX] * len(rows[4]["labels"])  # a row without labels counts for nothing
    return collate(rows, tok.pad_token_id)


@pytest.mark.parametrize("selected_logits", [True, False])
def test_bucketed_loss_and_gradients_equal_the_models_own(tiny_cfg, world, monkeypatch, selected_logits):
    monkeypatch.setattr(loss_mod, "_keeps_logits", lambda model: selected_logits)
    model = lora_with_random_b(tiny_cfg)
    batch = _mixed_batch(world, tiny_cfg)
    assert len(length_groups(batch.attention_mask.sum(1).tolist())) > 1  # the test covers several groups
    params = [p for p in model.parameters() if p.requires_grad]
    grads = {}
    for mode in ("batch", "bucketed"):
        model.panacea_loss = mode
        model.zero_grad(set_to_none=True)
        value = lm_loss(model, batch)
        value.backward()
        grads[mode] = (value.detach(), [p.grad.clone() for p in params])
    (ref, ref_g), (got, got_g) = grads["batch"], grads["bucketed"]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(got_g, ref_g):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert all(float(g.abs().sum()) > 0 for g in got_g)  # every LoRA tensor gets a gradient


def test_a_loaded_model_carries_its_configs_loss_and_bad_values_are_refused(tiny_cfg):
    from panacea_lab.models.loading import load_base

    assert load_base(dataclasses.replace(tiny_cfg, loss="bucketed")).panacea_loss == "bucketed"
    assert load_base(tiny_cfg).panacea_loss == "batch"
    with pytest.raises(ConfigError, match="loss"):
        ModelConfig(loss="fast")


def test_a_batch_without_any_label_gives_the_models_own_nan(tiny_cfg, world):
    model = lora_with_random_b(tiny_cfg)
    batch = _mixed_batch(world, tiny_cfg)
    batch.labels.fill_(IGNORE_INDEX)
    model.panacea_loss = "bucketed"
    assert torch.isnan(lm_loss(model, batch)) and torch.isnan(batch_loss(model, batch))
