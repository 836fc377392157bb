"""The harmful-ascent control: a step of exactly the requested norm that raises the harmful loss,
leaving the model's weights and trainability as they were."""
from __future__ import annotations

import pytest
import torch
from conftest import lora_with_random_b

from panacea_lab.data.batching import BatchStream, encode
from panacea_lab.defenses.harmful_ascent import harmful_ascent
from panacea_lab.defenses.perturb import add_, global_norm
from panacea_lab.training.loop import lm_loss


def test_step_has_the_norm_raises_the_harmful_loss_and_leaves_the_model(tiny_cfg, world, tokenizer_rows):
    model = lora_with_random_b(tiny_cfg).eval()
    names = [n for n, _ in model.named_parameters() if "lora_" in n]
    for n, p in model.named_parameters():
        p.requires_grad_(False)  # as a stage model is loaded: frozen
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = tokenizer_rows(world.defender_pool[:6])
    delta = harmful_ascent(model, [batch], norm=0.5, names=names)
    assert set(delta) == set(names) and global_norm(delta) == pytest.approx(0.5, rel=1e-5)
    assert all(torch.equal(p, before[n]) and not p.requires_grad for n, p in model.named_parameters())
    with torch.no_grad():
        loss_before = lm_loss(model, batch).item()
        add_(model, delta)
        assert lm_loss(model, batch).item() > loss_before


def test_needs_batches_and_matching_names(tiny_cfg):
    model = lora_with_random_b(tiny_cfg)
    with pytest.raises(ValueError, match="no parameter matched"):
        harmful_ascent(model, [], 1.0, ["nope"])
    with pytest.raises(ValueError, match="at least one"):
        harmful_ascent(model, [], 1.0, [n for n, _ in model.named_parameters() if "lora_" in n])


@pytest.fixture
def tokenizer_rows():
    from panacea_lab.models.base_model import build_tokenizer
    from panacea_lab.data.world import build_world

    tok = build_tokenizer(build_world(0).all_texts())

    def rows(examples):
        return next(BatchStream([encode(tok, e, 96) for e in examples], len(examples), tok.pad_token_id, 0).epoch())
    return rows
