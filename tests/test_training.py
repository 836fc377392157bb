"""The loop: LoRA training moves every trainable tensor and nothing frozen; seeded; logged."""
from __future__ import annotations

import torch

from panacea_lab.data.batching import BatchStream, encode
from panacea_lab.models.loading import attach_lora, load_base, load_tokenizer
from panacea_lab.training.loop import LoopSettings, train_loop


def _train(cfg, world, seed=0, steps_data=24):
    tok = load_tokenizer(cfg)
    model = attach_lora(load_base(cfg), cfg, seed)
    rows = [encode(tok, e, cfg.max_length) for e in world.alignment[:steps_data]]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(seed)
    result = train_loop(model, BatchStream(rows, 8, tok.pad_token_id, seed), LoopSettings(epochs=1, lr=1e-2, batch_size=8))
    return model, before, result


def test_lora_changes_every_trainable_tensor_and_no_frozen_one(tiny_cfg, world):
    model, before, result = _train(tiny_cfg, world)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        assert changed == (name in trainable), name
    assert result["steps"] == 3 and len(result["log"]) == 3
    assert all({"loss", "grad_norm", "step"} <= set(r) for r in result["log"])


def test_lora_targets_are_the_configured_modules(tiny_cfg, world):
    model, _, _ = _train(tiny_cfg, world, steps_data=8)
    targets = {n.split(".")[-4] for n, p in model.named_parameters() if p.requires_grad}
    assert targets == set(tiny_cfg.lora_targets)


def test_same_seed_same_weights(tiny_cfg, world):
    a, _, ra = _train(tiny_cfg, world, seed=3, steps_data=16)
    b, _, rb = _train(tiny_cfg, world, seed=3, steps_data=16)
    c, _, _ = _train(tiny_cfg, world, seed=4, steps_data=16)
    sa, sb, sc = (dict(m.named_parameters()) for m in (a, b, c))
    assert all(torch.equal(sa[n], sb[n]) for n in sa)
    assert any(not torch.equal(sa[n], sc[n]) for n in sa if "lora_" in n)
    assert [r["loss"] for r in ra["log"]] == [r["loss"] for r in rb["log"]]
