"""Lisa: the Bi-State schedule, the snapshots at each switch, and the proximal gradient."""
from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from conftest import lora_with_random_b

from panacea_lab.models.base_model import build_tokenizer
from panacea_lab.config import ConfigError
from panacea_lab.data.batching import BatchStream, encode
from panacea_lab.defenses.lisa import LisaConfig, LisaRule
from panacea_lab.training.loop import LoopSettings, train_loop


def _setup(tiny_cfg, world, **cfg):
    tok = build_tokenizer(world.all_texts())
    model = lora_with_random_b(tiny_cfg)
    user = BatchStream([encode(tok, e, 96) for e in world.task_train["sentiment"][:4]], 4, tok.pad_token_id, 0)
    align_rows = [encode(tok, e, 96) for e in world.alignment[:4]]
    rule = LisaRule(LisaConfig(align_batch_size=4, **cfg), BatchStream(align_rows, 4, tok.pad_token_id, 7))
    align = next(BatchStream(align_rows, 4, tok.pad_token_id, 7).epoch())  # the rule's first alignment batch
    rule.prepare(model, Accelerator(cpu=True))
    return model, rule, next(user.epoch()), align


def _plain(model, batch):
    params = [p for p in model.parameters() if p.requires_grad]
    return params, torch.autograd.grad(model(**batch.as_kwargs()).loss, params)


def test_schedule_starts_with_alignment_and_cycles():
    rule = LisaRule(LisaConfig(align_steps=2, finetune_steps=3), alignment=None)
    assert "".join("AF"[rule.state_at(s)] for s in range(10)) == "AAFFFAAFFF"


def test_snapshots_at_each_switch_and_prox_is_zero_right_after(tiny_cfg, world):
    model, rule, batch, _ = _setup(tiny_cfg, world, align_steps=2, finetune_steps=3)
    snapshot_steps, logs = [], []
    for step in range(10):
        for p in model.parameters():
            p.grad = None
        logs.append(rule.gradient(model, batch, step))
        snapshot_steps.append(rule.snapshot_step)
        with torch.no_grad():  # a plain SGD step, so the weights drift from the snapshot
            for p in rule.params:
                p.sub_(0.1 * p.grad)
    assert snapshot_steps == [0, 0, 2, 2, 2, 5, 5, 7, 7, 7]
    assert [log["state"] for log in logs] == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    for step, log in enumerate(logs):
        assert (log["prox"] == 0.0) == (step in (0, 2, 5, 7)), (step, log)


def test_first_step_of_a_state_is_the_plain_gradient_and_then_prox_pulls_back(tiny_cfg, world):
    rho = 0.7
    model, rule, batch, _ = _setup(tiny_cfg, world, align_steps=1, finetune_steps=3, rho=rho)
    rule.gradient(model, batch, step=0)  # alignment
    for p in model.parameters():
        p.grad = None
    params, plain = _plain(model, batch)
    logged = rule.gradient(model, batch, step=1)  # first fine-tuning step: snapshot, prox exactly 0
    assert logged["prox"] == 0.0 and rule.snapshot_step == 1
    for p, g in zip(params, plain):
        assert torch.equal(p.grad, g)
    gen = torch.Generator().manual_seed(3)
    deltas = [0.05 * torch.randn(p.shape, generator=gen) for p in params]
    with torch.no_grad():
        for p, d in zip(params, deltas):
            p.add_(d)
    for p in model.parameters():
        p.grad = None
    params, plain = _plain(model, batch)
    logged = rule.gradient(model, batch, step=2)
    assert rule.snapshot_step == 1
    assert logged["prox"] == pytest.approx(sum((d ** 2).sum().item() for d in deltas), rel=1e-4)
    for p, g, d in zip(params, plain, deltas):
        torch.testing.assert_close(p.grad - g, rho * d, rtol=1e-4, atol=1e-6)


def test_alignment_steps_train_on_the_alignment_batch_not_the_users(tiny_cfg, world):
    model, rule, batch, align = _setup(tiny_cfg, world, align_steps=2, finetune_steps=3)
    params, on_align = _plain(model, align)
    _, on_user = _plain(model, batch)
    logged = rule.gradient(model, batch, step=0)
    assert logged["state"] == 0.0
    for p, ga in zip(params, on_align):
        torch.testing.assert_close(p.grad, ga, rtol=1e-5, atol=1e-7)
    assert sum((p.grad - gu).norm() for p, gu in zip(params, on_user)) > 1e-3
    assert logged["loss"] == pytest.approx(model(**align.as_kwargs()).loss.item(), rel=1e-5)


def test_runs_in_the_loop(tiny_cfg, world):
    model, rule, _, _ = _setup(tiny_cfg, world, align_steps=1, finetune_steps=2)
    tok = build_tokenizer(world.all_texts())
    stream = BatchStream([encode(tok, e, 96) for e in world.task_train["sentiment"][:8]], 2, tok.pad_token_id, 0)
    out = train_loop(model, stream, LoopSettings(epochs=1, lr=1e-3, batch_size=2), rule, Accelerator(cpu=True))
    assert [row["state"] for row in out["log"]] == [0.0, 1.0, 1.0, 0.0]
    assert out["log"][0]["prox"] == 0.0 and out["log"][2]["prox"] > 0.0
    assert out["finalize"] == {}


@pytest.mark.parametrize("field,value", [("align_steps", 0), ("finetune_steps", -1), ("rho", -0.5),
                                         ("align_batch_size", 0)])
def test_bad_lisa_config(field, value):
    with pytest.raises(ConfigError, match=f"^{field} = "):
        LisaConfig(**{field: value})
