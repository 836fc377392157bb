"""Lisa: the Bi-State schedule, the snapshots at each switch, the proximal gradient and its warm-up
(pinned against a transcription of the official ADMMTrainer), and the refusal data."""
from __future__ import annotations

import pytest
import torch
from conftest import lora_with_random_b

from panacea_lab.testing import cpu_accelerator
from panacea_lab.models.base_model import build_tokenizer
from panacea_lab.config import ConfigError
from panacea_lab.data.batching import BatchStream, encode
from panacea_lab.defenses.lisa import DEFENSE, LisaConfig, LisaRule
from panacea_lab.training.loop import LoopSettings, train_loop


def _setup(tiny_cfg, world, **cfg):
    tok = build_tokenizer(world.all_texts())
    model = lora_with_random_b(tiny_cfg)
    user = BatchStream([encode(tok, e, 96) for e in world.task_train["sentiment"][:4]], 4, tok.pad_token_id, 0)
    align_rows = [encode(tok, e, 96) for e in world.alignment[:4]]
    rule = LisaRule(LisaConfig(align_batch_size=4, **cfg), BatchStream(align_rows, 4, tok.pad_token_id, 7))
    align = next(BatchStream(align_rows, 4, tok.pad_token_id, 7).epoch())  # the rule's first alignment batch
    rule.prepare(model, cpu_accelerator())
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
    out = train_loop(model, stream, LoopSettings(epochs=1, lr=1e-3, batch_size=2), rule, cpu_accelerator())
    assert [row["state"] for row in out["log"]] == [0.0, 1.0, 1.0, 0.0]
    assert out["log"][0]["prox"] == 0.0 and out["log"][2]["prox"] > 0.0
    assert out["finalize"] == {}


@pytest.mark.parametrize("field,value", [("align_steps", 0), ("finetune_steps", -1), ("rho", -0.5),
                                         ("align_batch_size", 0), ("proximal_warmup", 1.0),
                                         ("align_data", "replay")])
def test_bad_lisa_config(field, value):
    with pytest.raises(ConfigError, match=f"^{field} = "):
        LisaConfig(**{field: value})


# ------------------------------------------------------------------------------ a transcription of the official trainer
class OfficialLisa:
    """ADMMTrainer of the official code, written out for the test: a status that starts in
    "alignment", a clock and a step counter; before each step the mode is checked (a switch when the
    clock reaches alignment_step / finetune_step, recording the weights the state ends with), an
    alignment step draws its own batch, and the proximal term rho / 2 ||w - w_other||^2 is added
    only when steps > 0.1 * total."""

    def __init__(self, params, align_step, finetune_step, rho, total, next_alignment):
        self.params, self.a, self.f, self.rho, self.total = params, align_step, finetune_step, rho, total
        self.next_alignment = next_alignment
        self.status, self.clock, self.steps = "alignment", 0, 0
        self.alignment_w = [p.detach().clone() for p in params]
        self.finetune_w = [p.detach().clone() for p in params]

    def loss(self, model, user_batch):
        batch = user_batch
        if self.status == "alignment":
            if self.clock % self.a == 0 and self.steps != 0:
                self.status, self.clock = "finetune", 0
                self.alignment_w = [p.detach().clone() for p in self.params]
            else:
                batch = self.next_alignment()
        elif self.clock % self.f == 0 and self.steps != 0:
            self.status, self.clock = "alignment", 0
            self.finetune_w = [p.detach().clone() for p in self.params]
            batch = self.next_alignment()
        loss = model(**batch.as_kwargs()).loss
        if self.steps > 0.1 * self.total:
            other = self.finetune_w if self.status == "alignment" else self.alignment_w
            loss = loss + sum(self.rho / 2 * torch.norm(p - o) ** 2 for p, o in zip(self.params, other))
        self.steps, self.clock = self.steps + 1, self.clock + 1
        return loss


def test_rule_matches_the_official_trainer_step_by_step(tiny_cfg, world):
    total, rho = 12, 0.8
    model, rule, batch, _ = _setup(tiny_cfg, world, align_steps=2, finetune_steps=3, rho=rho)
    rule.total_steps = total  # as train_loop sets it
    tok = build_tokenizer(world.all_texts())
    align_rows = [encode(tok, e, 96) for e in world.alignment[:4]]
    official_batches = BatchStream(align_rows, 4, tok.pad_token_id, 7).forever()  # the rule's stream, replayed
    params = [p for p in model.parameters() if p.requires_grad]
    official = OfficialLisa(params, 2, 3, rho, total, lambda: next(official_batches))
    for step in range(total):
        expected = torch.autograd.grad(official.loss(model, batch), params)
        for p in params:
            p.grad = None
        logged = rule.gradient(model, batch, step)
        assert logged["prox_on"] == float(step > 0.1 * total)
        for p, g in zip(params, expected):
            torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)
        with torch.no_grad():  # the same plain SGD step on both (they share the weights)
            for p in params:
                p.sub_(0.05 * p.grad)


def test_no_proximal_term_in_the_first_tenth_of_the_steps(tiny_cfg, world):
    model, rule, batch, _ = _setup(tiny_cfg, world, align_steps=1, finetune_steps=8, rho=5.0)
    rule.total_steps = 30
    params = [p for p in model.parameters() if p.requires_grad]
    rule.gradient(model, batch, step=0)
    with torch.no_grad():
        for p in params:
            p.add_(0.1)
    for step, on in ((2, False), (3, False), (4, True)):  # on once step > 3.0
        for p in params:
            p.grad = None
        _, plain = _plain(model, batch)
        logged = rule.gradient(model, batch, step)
        assert logged["prox"] > 0 and logged["prox_on"] == float(on)
        same = all(torch.allclose(p.grad, g, atol=1e-7) for p, g in zip(params, plain))
        assert same != on, step


def test_alignment_batches_are_the_refusals_by_default():
    class Ctx:
        seed = 0

        def refusals(self, batch_size):
            return ("refusals", batch_size)

        def alignment(self, batch_size):
            return ("alignment", batch_size)

    assert DEFENSE.rule(LisaConfig(align_batch_size=3), Ctx()).alignment == ("refusals", 3)
    assert DEFENSE.rule(LisaConfig(align_data="alignment"), Ctx()).alignment == ("alignment", 10)


def test_defaults_are_the_official_script_and_the_embedded_cycles():
    from panacea_lab import settings

    cfg = LisaConfig()
    assert (cfg.align_steps, cfg.finetune_steps, cfg.rho, cfg.proximal_warmup, cfg.align_data) == \
        (100, 900, 1.0, 0.1, "refusals")
    assert DEFENSE.finetune_adapter == "fresh"
    embedded = LisaRule(settings.get("embedded").defense("lisa"), alignment=None)
    states = [embedded.state_at(s) for s in range(300)]  # the default attack: 1000 samples, batch 10, 3 epochs
    starts = [s for s in range(300) if states[s] == 0 and (s == 0 or states[s - 1] == 1)]
    assert len(starts) == 3 and sum(1 for x in states if x == 0) == 30  # 3 cycles, the official 10% share
