"""The loop: LoRA training moves every trainable tensor and nothing frozen; seeded; logged; its lr
schedules; the stream's batch order and positions; a stage resumed mid-way ends bit-identical."""
from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from panacea_lab.config import ConfigError
from panacea_lab.data.batching import BatchStream, encode
from panacea_lab.models.loading import attach_lora, load_base, load_tokenizer
from panacea_lab.training import loop
from panacea_lab.training.loop import LoopSettings, lr_lambda, train_loop


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


# ------------------------------------------------------------------ schedules
def _lrs(scheduler_of, total: int, lr: float = 1e-3) -> list[float]:
    """The lr each of `total` steps trains with (read before the step, as the optimizer sees it)."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = scheduler_of(opt)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("total,ratio", [(25, 0.1), (7, 0.0), (10, 0.3)])
def test_constant_schedules_are_hugging_faces(total, ratio):
    """Against transformers.get_scheduler, warm-up steps as the Trainer counts them (ceil(total * ratio))."""
    from transformers import get_scheduler

    warm = math.ceil(total * ratio)
    for name in ("constant", "constant_with_warmup"):
        ours = _lrs(lambda o: LambdaLR(o, lr_lambda(name, total, ratio)), total)
        theirs = _lrs(lambda o: get_scheduler(name, o, num_warmup_steps=warm, num_training_steps=total), total)
        assert ours == theirs, name
    assert set(_lrs(lambda o: LambdaLR(o, lr_lambda("constant", total, ratio)), total)) == {1e-3}  # warm-up ignored


def test_linear_schedule_is_hugging_faces_without_warmup_and_keeps_its_own_warmup():
    from transformers import get_scheduler

    ours = _lrs(lambda o: LambdaLR(o, lr_lambda("linear", 12, 0.0)), 12)
    assert ours == _lrs(lambda o: get_scheduler("linear", o, num_warmup_steps=0, num_training_steps=12), 12)
    # with warm-up: int(total * ratio) steps reaching lr at the last one, then HF's decay
    total, ratio, warm = 20, 0.25, 5
    expected = [1e-3 * ((s + 1) / warm if s < warm else (total - s) / (total - warm)) for s in range(total)]
    assert _lrs(lambda o: LambdaLR(o, lr_lambda("linear", total, ratio)), total) == pytest.approx(expected, rel=1e-12)


def test_the_loop_uses_the_configured_schedule(tiny_cfg, world, monkeypatch):
    seen = []
    real = loop.lr_lambda
    monkeypatch.setattr(loop, "lr_lambda", lambda *a: seen.append(a) or real(*a))
    tok = load_tokenizer(tiny_cfg)
    model = attach_lora(load_base(tiny_cfg), tiny_cfg, 0)
    rows = [encode(tok, e, tiny_cfg.max_length) for e in world.alignment[:8]]
    train_loop(model, BatchStream(rows, 4, tok.pad_token_id, 0),
               LoopSettings(epochs=2, lr=1e-2, batch_size=4, warmup_ratio=0.1, schedule="constant"))
    assert seen == [("constant", 4, 0.1)]


@pytest.mark.parametrize("field,value", [("schedule", "cosine"), ("warmup_ratio", 1.0), ("warmup_ratio", -0.1)])
def test_bad_loop_settings(field, value):
    with pytest.raises(ConfigError, match=f"^{field} = "):
        LoopSettings(epochs=1, lr=1e-3, batch_size=2, **{field: value})


# ------------------------------------------------------------------ batch order and positions
def _old_order(n_rows: int, batch_size: int, seed: int, epochs: int) -> list[list[int]]:
    """The stream's order as first implemented: one Random(seed), a fresh range shuffled per epoch."""
    rng, out = random.Random(seed), []
    for _ in range(epochs):
        order = list(range(n_rows))
        rng.shuffle(order)
        out += [order[i:i + batch_size] for i in range(0, n_rows, batch_size)]
    return out


def _row_ids(stream: BatchStream, batch) -> list[int]:
    keys = [tuple(r["input_ids"]) for r in stream.rows]
    return [keys.index(tuple(x for x, m in zip(ids.tolist(), mask.tolist()) if m))
            for ids, mask in zip(batch.input_ids, batch.attention_mask)]


def _distinct_rows(n: int) -> list[dict[str, list[int]]]:
    return [{"input_ids": [5, i + 10] + [7] * (i % 3), "labels": [-100, i + 10] + [7] * (i % 3)} for i in range(n)]


def test_batch_order_is_unchanged_and_a_position_restores_it():
    stream = BatchStream(_distinct_rows(11), 3, 0, seed=5)
    cursor = stream.forever()
    got = [_row_ids(stream, next(cursor)) for _ in range(14)]  # 3.5 epochs of 4 batches
    assert got == _old_order(11, 3, 5, 4)[:14]
    assert [_row_ids(stream, b) for b in BatchStream(_distinct_rows(11), 3, 0, 5).epoch()] == _old_order(11, 3, 5, 1)
    position = cursor.position()
    ahead = [_row_ids(stream, next(cursor)) for _ in range(6)]
    fresh = BatchStream(_distinct_rows(11), 3, 0, seed=5).forever()
    fresh.seek(position)
    assert [_row_ids(stream, next(fresh)) for _ in range(6)] == ahead == _old_order(11, 3, 5, 5)[14:20]
    cursor.seek({**position, "epoch": 0, "index": 1})  # going back replays from the seed
    assert _row_ids(stream, next(cursor)) == _old_order(11, 3, 5, 1)[1]


def test_a_position_of_another_stream_is_refused():
    position = BatchStream(_distinct_rows(11), 3, 0, seed=5).forever().position()
    with pytest.raises(ValueError, match="another stream"):
        BatchStream(_distinct_rows(11), 3, 0, seed=6).forever().seek(position)


# ------------------------------------------------------------------ resuming in-process
def _checkpointed(cfg, world, ckpt, every=3, on_step=None):
    tok = load_tokenizer(cfg)
    model = attach_lora(load_base(cfg), cfg, 0)
    rows = [encode(tok, e, cfg.max_length) for e in world.alignment[:10]]
    torch.manual_seed(0)
    result = train_loop(model, BatchStream(rows, 4, tok.pad_token_id, 0), LoopSettings(epochs=3, lr=1e-2, batch_size=4),
                        on_step=on_step, checkpoint_dir=ckpt, checkpoint_every=every)
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}, result


def test_a_stage_stopped_mid_way_resumes_bit_identical(tiny_cfg, world, tmp_path):
    cfg = dataclasses.replace(tiny_cfg, lora_dropout=0.2)  # the dropout draws make the RNG state matter
    ref, ref_result = _checkpointed(cfg, world, None, every=0)

    def crash(model, steps_done):
        if steps_done == 5:
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError, match="crash"):
        _checkpointed(cfg, world, tmp_path / "ckpt", on_step=crash)
    assert [d.name for d in (tmp_path / "ckpt").iterdir()] == ["step-00000003"]
    got, result = _checkpointed(cfg, world, tmp_path / "ckpt")
    assert result["checkpoint"]["resumed_from"] == 3 and result["steps"] == 9
    assert all(torch.equal(ref[n], got[n]) for n in ref)
    assert result["log"] == ref_result["log"]
    assert [d.name for d in (tmp_path / "ckpt").iterdir()] == ["step-00000009"]  # the end is saved too
    again, result = _checkpointed(cfg, world, tmp_path / "ckpt")  # nothing left to train
    assert result["checkpoint"]["resumed_from"] == 9 and result["log"] == ref_result["log"]
    assert all(torch.equal(ref[n], again[n]) for n in ref)


def test_a_checkpoint_of_another_run_is_refused(tiny_cfg, world, tmp_path):
    _checkpointed(tiny_cfg, world, tmp_path / "ckpt")
    tok = load_tokenizer(tiny_cfg)
    model = attach_lora(load_base(tiny_cfg), tiny_cfg, 0)
    rows = [encode(tok, e, tiny_cfg.max_length) for e in world.alignment[:10]]
    with pytest.raises(ValueError, match=r"another run \(differs in \['settings'\]\)"):
        train_loop(model, BatchStream(rows, 4, tok.pad_token_id, 0), LoopSettings(epochs=3, lr=2e-2, batch_size=4),
                   checkpoint_dir=tmp_path / "ckpt")
    with pytest.raises(ValueError, match="checkpoint_every = 2"):
        train_loop(model, BatchStream(rows, 4, tok.pad_token_id, 0), LoopSettings(epochs=1, lr=1e-2, batch_size=4),
                   checkpoint_every=2)
