"""A stage killed at any moment (kill -9 mid-step, mid-save, or SIGTERM) resumes from its newest
checkpoint and ends bit-identical to an uninterrupted run: plain SFT, Panacea (both steps) and Lisa
killed for real; Booster, RepNoise and Vaccine stopped by an error in-process.

Each interrupted run is a child process (forked from this one on a CPU machine: everything already
imported, so a start costs milliseconds); the last run, which completes, runs here and is compared tensor for
tensor, log row for log row, with a run that was never checkpointed."""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from panacea_lab.data.batching import BatchStream, encode
from panacea_lab.defenses.booster import BoosterConfig, BoosterRule
from panacea_lab.defenses.lisa import LisaConfig, LisaRule
from panacea_lab.defenses.panacea import PanaceaConfig, PanaceaRule
from panacea_lab.defenses.repnoise import RepNoiseConfig, RepNoiseRule
from panacea_lab.defenses.vaccine import VaccineConfig, VaccineRule
from panacea_lab.models.loading import attach_lora, load_base, load_tokenizer
from panacea_lab.training import checkpoint
from panacea_lab.training.loop import LoopSettings, train_loop

pytestmark = pytest.mark.slow  # processes killed and resumed: the full suite's, not the edit loop's

# fork: children start in milliseconds; a process that uses CUDA cannot be forked, so spawn there
CHILDREN = multiprocessing.get_context("spawn" if torch.cuda.is_available() else "fork")
TOTAL, EVERY = 40, 5  # 20 user rows, batch 2, 4 epochs


def _rule(name: str, tok, world):
    def stream(examples, seed):
        return BatchStream([encode(tok, e, 96) for e in examples], 2, tok.pad_token_id, seed)

    if name == "panacea":  # 3 harmful batches per epoch: its stream wraps many times in 40 steps
        return PanaceaRule(PanaceaConfig(harmful_batch_size=2, lam=0.1), stream(world.defender_pool[:6], 7))
    if name == "panacea_two_pass":  # the stale direction is part of the resumed state
        return PanaceaRule(PanaceaConfig(harmful_batch_size=2, lam=0.1, h_const=True, step="two_pass"),
                           stream(world.defender_pool[:6], 7))
    if name == "lisa":  # snapshots every 3 or 4 steps
        return LisaRule(LisaConfig(align_steps=3, finetune_steps=4, align_batch_size=2), stream(world.alignment[:6], 9))
    if name == "booster":
        return BoosterRule(BoosterConfig(harmful_batch_size=2), stream(world.defender_pool[:6], 7))
    if name == "repnoise":
        return RepNoiseRule(RepNoiseConfig(harmful_batch_size=2), stream(world.defender_pool[:6], 7))
    if name == "vaccine":
        return VaccineRule(VaccineConfig(rho=1.0))
    return None


def _train(cfg, world, rule_name, ckpt=None, progress=None, die_at=None, die_saving=None, on_step=None, epochs=4):
    """One attempt at the stage. `die_at`: SIGKILL itself after that many steps (before that step's
    save); `die_saving`: SIGKILL itself inside the save of that step, just before it is renamed into place."""
    if die_saving is not None:
        rename = os.rename

        def dying_rename(src, dst):
            if Path(dst).name == f"{checkpoint.PREFIX}{die_saving:08d}":
                os.kill(os.getpid(), signal.SIGKILL)
            rename(src, dst)

        os.rename = dying_rename  # in a forked child only
    tok = load_tokenizer(cfg)
    model = attach_lora(load_base(cfg), cfg, 0)
    user = BatchStream([encode(tok, e, 96) for e in world.task_train["sentiment"][:20]], 2, tok.pad_token_id, 0)

    def each_step(model, done):
        if progress is not None:
            progress.value = done
        if done == die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if on_step is not None:
            on_step(model, done)

    torch.manual_seed(0)
    result = train_loop(model, user, LoopSettings(epochs=epochs, lr=1e-2, batch_size=2), _rule(rule_name, tok, world),
                        Accelerator(), each_step, ckpt, EVERY if ckpt else 0)
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}, result


def _child(until=None, sig=signal.SIGKILL, **kw) -> tuple[int, int]:
    """Run `_train` in a forked child; send `sig` once `until(progress)` holds. (exit code, steps done)."""
    progress = CHILDREN.Value("i", 0, lock=False)  # no lock: a killed child must not leave one held
    proc = CHILDREN.Process(target=_train, kwargs={**kw, "progress": progress})
    proc.start()
    deadline = time.monotonic() + 60
    while until is not None and proc.is_alive() and not until(progress.value):
        assert time.monotonic() < deadline, "the child never reached the kill point"
        time.sleep(0.002)
    if until is not None and proc.is_alive():
        os.kill(proc.pid, sig)
    proc.join(60)
    return proc.exitcode, progress.value


def _steps_saved(ckpt: Path) -> list[int]:
    return sorted(int(d.name[len(checkpoint.PREFIX):]) for d in ckpt.glob(f"{checkpoint.PREFIX}*"))


def _assert_same(ref, got):
    (w_ref, r_ref), (w_got, r_got) = ref, got
    assert w_ref.keys() == w_got.keys()
    assert all(torch.equal(w_ref[n], w_got[n]) for n in w_ref)
    assert r_got["log"] == r_ref["log"] and r_got["finalize"] == r_ref["finalize"]


@pytest.fixture
def cfg(tiny_cfg):
    return dataclasses.replace(tiny_cfg, lora_dropout=0.1)  # dropout: the RNG state must resume too


@pytest.mark.parametrize("rule_name", ["sft", "panacea", "panacea_two_pass", "lisa"])
def test_kill_9_at_random_points_then_resume(cfg, world, tmp_path, rule_name):
    rng = random.Random(rule_name)
    ckpt = tmp_path / "ckpt"
    ref = _train(cfg, world, rule_name)
    run = dict(cfg=cfg, world=world, rule_name=rule_name, ckpt=ckpt)
    if rule_name == "sft":  # killed while writing its second checkpoint: the first one stays the newest
        assert _child(**run, die_saving=2 * EVERY)[0] == -signal.SIGKILL
        assert _steps_saved(ckpt) == [EVERY] and any(p.name.startswith(".tmp-") for p in ckpt.iterdir())
    # killed from outside, wherever the child is, once a checkpoint appears
    target = EVERY * rng.randint(len(_steps_saved(ckpt)) + 1, 4)
    code, _ = _child(**run, until=lambda _: (ckpt / f"{checkpoint.PREFIX}{target:08d}").exists())
    assert code == -signal.SIGKILL and max(_steps_saved(ckpt)) >= target
    # killed from inside, between two checkpoints
    start = max(_steps_saved(ckpt))
    die_at = rng.choice([s for s in range(start + 1, TOTAL - 1) if s % EVERY])
    assert _child(**run, die_at=die_at)[0] == -signal.SIGKILL
    assert max(_steps_saved(ckpt)) == die_at - die_at % EVERY
    got = _train(**run)
    assert got[1]["checkpoint"]["resumed_from"] == die_at - die_at % EVERY
    _assert_same(ref, got)
    assert [p.name for p in ckpt.iterdir()] == [f"{checkpoint.PREFIX}{TOTAL:08d}"]
    again = _train(**run)  # killed after the last step, before its result was stored: no step left
    assert again[1]["checkpoint"]["resumed_from"] == TOTAL
    _assert_same(ref, again)  # Panacea's finalize adds the restored eps


@pytest.mark.parametrize("rule_name", ["booster", "repnoise", "vaccine"])
def test_the_alignment_rules_resume_too(cfg, world, tmp_path, rule_name):
    """In-process (an error stops the stage at step 13 of 20): each rule's stream position comes back."""
    ref = _train(cfg, world, rule_name, epochs=2)

    def crash(_model, done):
        if done == 13:
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError, match="crash"):
        _train(cfg, world, rule_name, tmp_path, on_step=crash, epochs=2)
    got = _train(cfg, world, rule_name, tmp_path, epochs=2)
    assert got[1]["checkpoint"]["resumed_from"] == 10
    _assert_same(ref, got)


def test_sigterm_checkpoints_the_current_step_and_exits(cfg, world, tmp_path):
    ckpt = tmp_path / "ckpt"
    ref = _train(cfg, world, "sft")
    run = dict(cfg=cfg, world=world, rule_name="sft", ckpt=ckpt)
    code, _ = _child(**run, until=lambda done: done >= 12, sig=signal.SIGTERM)
    assert code == -signal.SIGTERM  # the default action, delivered after the save
    saved = _steps_saved(ckpt)
    assert len(saved) == 1 and 12 <= saved[0] < TOTAL  # no periodic saves here: SIGTERM's own
    got = _train(**run)
    assert got[1]["checkpoint"]["resumed_from"] == saved[0]
    _assert_same(ref, got)


def test_sigterm_without_checkpoints_keeps_its_default_action(cfg, world):
    code, done = _child(cfg=cfg, world=world, rule_name="sft", until=lambda d: d >= 3, sig=signal.SIGTERM)
    assert code == -signal.SIGTERM and done < TOTAL


def test_a_cut_short_save_and_an_unreadable_checkpoint_are_skipped(tmp_path):
    checkpoint.save(tmp_path, 5, {"w": torch.arange(3.0)}, {"note": "five"})
    (tmp_path / f"{checkpoint.TMP_PREFIX}{checkpoint.PREFIX}00000010-1").mkdir()  # a save killed mid-way
    bad = tmp_path / f"{checkpoint.PREFIX}00000010"
    bad.mkdir()
    (bad / checkpoint.STATE).write_text('{"format": 1, "st')  # cannot come from `save`, but disks fail
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint"):
        tensors, state = checkpoint.load_latest(tmp_path)
    assert state["step"] == 5 and state["note"] == "five" and torch.equal(tensors["w"], torch.arange(3.0))
    assert not any(p.name.startswith(checkpoint.TMP_PREFIX) for p in tmp_path.iterdir())
    assert (tmp_path / f"{checkpoint.DAMAGED}{bad.name}").is_dir()  # moved aside, never tried again
    checkpoint.save(tmp_path, 15, {"w": torch.zeros(1)}, {})
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(checkpoint.PREFIX)) == [
        f"{checkpoint.PREFIX}00000015"]
    assert checkpoint.load_latest(tmp_path / "missing") is None


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_checkpoint_whose_bytes_changed_is_never_resumed_from(tmp_path, damage):
    checkpoint.save(tmp_path, 5, {"w": torch.arange(1000.0)}, {})
    tensors = tmp_path / f"{checkpoint.PREFIX}00000005" / checkpoint.TENSORS
    data = bytearray(tensors.read_bytes())
    if damage == "flip":
        data[-100] ^= 0xFF  # one byte of a value: still a valid safetensors file, a wrong tensor
    else:
        data = data[: len(data) // 2]
    tensors.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="sha256|unreadable"):
        assert checkpoint.load_latest(tmp_path) is None  # the start, not a silently wrong state
    assert not any(p.name.startswith(checkpoint.PREFIX) for p in tmp_path.iterdir())
