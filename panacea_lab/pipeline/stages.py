"""The two training stages, cached in the run store: align, then the user's fine-tuning (attack).

A run is "an attack, optionally under one defense": the defense's record (panacea_lab.defenses)
gives the step rule and what to store beside the adapter; the stage knows no defense by name.
Models are rebuilt from the base weights plus the stored adapters, never from pickles.
"""
from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

from panacea_lab import defenses
from panacea_lab.config import AlignConfig, AttackConfig, ModelConfig, config_hash
from panacea_lab.data.batching import BatchStream, encode, mix_user_data
from panacea_lab.data.world import Example
from panacea_lab.environment import checkpoint_every
from panacea_lab.models.loading import attach_lora, load_adapter, load_base, merge_adapter
from panacea_lab.pipeline.context import RunContext, alignment_data, get_tokenizer, world_of
from panacea_lab.pipeline.keys import key
from panacea_lab.training import checkpoint
from panacea_lab.training.loop import LoopSettings, StepRule, train_loop
from panacea_lab.training.store import RunStore

ADAPTER = "adapter"


# A training stage saves a resumable checkpoint every this many steps (0: never); not part of any key.
CHECKPOINT_EVERY = checkpoint_every()  # a bad value is a ConfigError naming the variable, even on import


def checkpoint_dir(store: RunStore, stage: str, cfg) -> Path | None:
    """Where a stage keeps its mid-stage checkpoints, beside the entry it will publish."""
    if store.read_only or CHECKPOINT_EVERY <= 0:
        return None
    return store.root / stage / f".ckpt-{config_hash(key(stage, cfg))}"


def fit(model, examples: list[Example], tokenizer, max_length: int, settings: LoopSettings, seed: int,
        rule: StepRule | None = None, on_step=None, checkpoint: Path | None = None) -> dict:
    """Encode, batch (seeded) and run the one loop (resuming from `checkpoint` when one is there)."""
    rows = [encode(tokenizer, ex, max_length) for ex in examples]
    stream = BatchStream(rows, settings.batch_size, tokenizer.pad_token_id, seed)
    torch.manual_seed(seed)
    every = CHECKPOINT_EVERY if checkpoint is not None and on_step is None else 0
    return train_loop(model, stream, settings, rule, on_step=on_step,
                      checkpoint_dir=checkpoint if every else None, checkpoint_every=every)


@contextmanager
def stage_lock(store: RunStore, stage: str, cfg):
    """One process at a time computes a stage (and owns its checkpoints); the OS releases the lock of
    a killed process. A second process waits, then finds the result stored."""
    path = store.root / stage / f".lock-{config_hash(key(stage, cfg))}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _cached(store: RunStore, stage: str, cfg, compute) -> dict:
    """The stage from the store, or computed once; its checkpoints go once the result is published."""
    keyed = key(stage, cfg)
    hit = store.load(stage, keyed)
    if hit is not None:
        return hit
    if store.read_only:
        return store.cached(stage, keyed, compute)  # refuses, naming the stage
    with stage_lock(store, stage, cfg):  # another process may finish it meanwhile: `cached` looks again
        result = store.cached(stage, keyed, compute)
        checkpoint.remove(checkpoint_dir(store, stage, cfg))
    return result


def step_rule(defense, align: AlignConfig, seed: int) -> StepRule | None:
    """The step rule of a training-stage defense config (None: plain SFT)."""
    if defense is None:
        return None
    return defenses.of(defense).rule(defense, RunContext(align, seed))


def _writer(model, rule, defense):
    """Save the adapter, then whatever the defense stores beside it (e.g. Panacea's eps)."""
    def write(d):
        model.save_pretrained(d / ADAPTER)
        if defense is not None and defenses.of(defense).artifacts is not None:
            for name, tensors in defenses.of(defense).artifacts(rule).items():
                save_file({k: v.contiguous() for k, v in tensors.items()}, str(d / f"{name}.safetensors"))
    return write


def align(cfg: AlignConfig, store: RunStore) -> dict:
    def compute():
        tok = get_tokenizer(cfg.model)
        model = attach_lora(load_base(cfg.model), cfg.model, cfg.seed)
        data = alignment_data(cfg, world_of(cfg))
        settings = LoopSettings(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, desc=f"align {cfg.method}",
                                weight_decay=cfg.weight_decay, schedule=cfg.schedule)
        rule = step_rule(cfg.defense, cfg, cfg.seed)
        result = fit(model, data, tok, cfg.model.max_length, settings, cfg.seed, rule,
                     checkpoint=checkpoint_dir(store, "align", cfg))
        return {"train": result, "n_samples": len(data)}, _writer(model, rule, cfg.defense)

    return _cached(store, "align", cfg, compute)


def attack(cfg: AttackConfig, store: RunStore) -> dict:
    """The user's fine-tuning on their (possibly poisoned) data, starting from the aligned model.

    Under Panacea the stored adapter is the trained w (before eps) and eps is stored beside it, so
    "with eps" and "without" are two evaluations of one run."""
    align(cfg.align, store)

    def compute():
        model, rule, result, n_harm = finetune(cfg, store, checkpoint=checkpoint_dir(store, "attack", cfg))
        return {"train": result, "n_harmful": n_harm}, _writer(model, rule, cfg.defense)

    return _cached(store, "attack", cfg, compute)


def user_data(cfg: AttackConfig) -> list[Example]:
    world = world_of(cfg.align)
    return mix_user_data(world.task_train[cfg.task], world.attacker_pool, cfg.n, cfg.p, cfg.seed)


def finetune(cfg: AttackConfig, store: RunStore, on_step=None, checkpoint: Path | None = None,
             rule: StepRule | None = None):
    """Run the user's fine-tuning (no caching): returns the model, the step rule, the loop's result
    and the number of harmful samples in the user's data. `rule`, when given, is the defense's step
    rule built by the caller (so an `on_step` hook can read its state, e.g. Panacea's current eps)."""
    model = start_of_finetuning(cfg, store)
    data = user_data(cfg)
    rule = rule if rule is not None else step_rule(cfg.defense, cfg.align, cfg.seed)
    settings = LoopSettings(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                            desc=f"finetune p={cfg.p} {cfg.method}", weight_decay=cfg.weight_decay,
                            schedule=cfg.schedule)
    result = fit(model, data, get_tokenizer(cfg.align.model), cfg.align.model.max_length, settings,
                 cfg.seed, rule, on_step, checkpoint)
    return model, rule, result, sum(e.task == "harmful" for e in data)


def start_of_finetuning(cfg: AttackConfig, store: RunStore):
    """The trainable model the user's fine-tuning starts from (paper: the alignment adapter goes on)."""
    base = load_base(cfg.align.model)
    aligned_dir = artifact(store, "align", cfg.align, ADAPTER)
    if cfg.adapter == "continue":
        return load_adapter(base, aligned_dir, trainable=True)
    merged = merge_adapter(load_adapter(base, aligned_dir, trainable=False))
    return attach_lora(merged, cfg.align.model, cfg.seed)


STAGES = ("base", "align", "attack")


def stored(store: RunStore, stage: str, cfg) -> dict | None:
    """The stored result of a training stage for `cfg`, or None when it was never completed."""
    return store.load(stage, key(stage, cfg))


def artifact(store: RunStore, stage: str, cfg, name: str):
    """The checked path of a stored artifact of a completed stage (e.g. "adapter", "eps.safetensors")."""
    return store.artifact(stage, key(stage, cfg), name)


def load_stage_model(stage: str, cfg, store: RunStore):
    """Rebuild the finished model of a stage from the base weights and stored adapters."""
    if stage not in STAGES:
        raise ValueError(f"stage = {stage!r}: use one of {STAGES}")
    if stage == "base":
        return load_base(cfg if isinstance(cfg, ModelConfig) else cfg.model)
    if stage == "align":
        return load_adapter(load_base(cfg.model), artifact(store, "align", cfg, ADAPTER), trainable=False)
    base = load_base(cfg.align.model)
    if cfg.adapter == "fresh":
        base = merge_adapter(load_adapter(base, artifact(store, "align", cfg.align, ADAPTER), trainable=False))
    return load_adapter(base, artifact(store, "attack", cfg, ADAPTER), trainable=False)
