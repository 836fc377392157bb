"""The pipeline as cached stages: align -> the user's fine-tuning (attack) -> evaluate.

Each stage is keyed by its config hash; one aligned adapter serves every attack that names it.
Models are rebuilt from the base weights plus the stored adapters, never from pickles.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from panacea_lab.config import AlignConfig, AttackConfig, EvalConfig, ModelConfig
from panacea_lab.data import BatchStream, encode, mix_user_data
from panacea_lab.evaluate import evaluate_model
from panacea_lab.models import attach_lora, load_adapter, load_base, load_tokenizer, merge_adapter
from panacea_lab.store import RunStore
from panacea_lab.train import LoopSettings, StepRule, train_loop
from panacea_lab.world import Example, World, build_world


@lru_cache(maxsize=4)
def get_world(seed: int) -> World:
    return build_world(seed)


@lru_cache(maxsize=4)
def get_tokenizer(model_cfg: ModelConfig):
    return load_tokenizer(model_cfg)


def alignment_data(cfg: AlignConfig, world: World) -> list[Example]:
    """Refusals on the alignment pool plus a replay of the base model's own benign data."""
    if cfg.n_refusal > len(world.alignment):
        raise ValueError(f"n_refusal = {cfg.n_refusal} but the alignment pool holds {len(world.alignment)}: "
                         "lower n_refusal")
    rng = random.Random(cfg.seed)
    data = rng.sample(world.alignment, cfg.n_refusal)
    benign = [e for e in world.pretrain if e.task not in ("harmful", "facts")]
    data += rng.sample(benign, min(len(benign), cfg.n_replay_per_task * 4))
    rng.shuffle(data)
    return data


def fit(model, examples: list[Example], tokenizer, max_length: int, settings: LoopSettings, seed: int,
        rule: StepRule | None = None) -> dict:
    """Encode, batch (seeded) and run the one loop."""
    rows = [encode(tokenizer, ex, max_length) for ex in examples]
    stream = BatchStream(rows, settings.batch_size, tokenizer.pad_token_id, seed)
    torch.manual_seed(seed)
    return train_loop(model, stream, settings, rule)


# --------------------------------------------------------------------------------- stages
def align(cfg: AlignConfig, store: RunStore) -> dict:
    def compute():
        tok = get_tokenizer(cfg.model)
        model = attach_lora(load_base(cfg.model), cfg.model, cfg.seed)
        data = alignment_data(cfg, get_world(cfg.world_seed))
        settings = LoopSettings(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, desc="align")
        result = fit(model, data, tok, cfg.model.max_length, settings, cfg.seed)
        return {"train": result, "n_samples": len(data)}, lambda d: model.save_pretrained(d / "adapter")

    return store.cached("align", cfg, compute)


def attack(cfg: AttackConfig, store: RunStore, rule: StepRule | None = None) -> dict:
    """The user's fine-tuning on their (possibly poisoned) data, starting from the aligned model."""
    align(cfg.align, store)

    def compute():
        tok = get_tokenizer(cfg.align.model)
        world = get_world(cfg.align.world_seed)
        model = start_of_finetuning(cfg, store)
        data = mix_user_data(world.task_train[cfg.task], world.attacker_pool, cfg.n, cfg.p, cfg.seed)
        settings = LoopSettings(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, desc=f"finetune p={cfg.p}")
        result = fit(model, data, tok, cfg.align.model.max_length, settings, cfg.seed, rule)
        n_harm = sum(e.task == "harmful" for e in data)
        return {"train": result, "n_harmful": n_harm}, lambda d: model.save_pretrained(d / "adapter")

    return store.cached("attack", cfg, compute)


def start_of_finetuning(cfg: AttackConfig, store: RunStore):
    """The trainable model the user's fine-tuning starts from (paper: the alignment adapter goes on)."""
    base = load_base(cfg.align.model)
    aligned_dir = store.path("align", cfg.align) / "adapter"
    if cfg.adapter == "continue":
        return load_adapter(base, aligned_dir, trainable=True)
    merged = merge_adapter(load_adapter(base, aligned_dir, trainable=False))
    return attach_lora(merged, cfg.align.model, cfg.seed)


def load_stage_model(stage: str, cfg, store: RunStore):
    """Rebuild the finished model of a stage from the base weights and stored adapters."""
    if stage == "base":
        return load_base(cfg if isinstance(cfg, ModelConfig) else cfg.model)
    if stage == "align":
        return load_adapter(load_base(cfg.model), store.path("align", cfg) / "adapter", trainable=False)
    if stage == "attack":
        base = load_base(cfg.align.model)
        if cfg.adapter == "fresh":
            base = merge_adapter(load_adapter(base, store.path("align", cfg.align) / "adapter", trainable=False))
        return load_adapter(base, store.path("attack", cfg) / "adapter", trainable=False)
    raise ValueError(f"stage = {stage!r}: use base, align or attack")


@dataclass(frozen=True)
class EvalJob:
    """What is evaluated (a stage and its config) and how; hashed like any config."""

    stage: str
    target: dict
    eval: EvalConfig = field(default_factory=EvalConfig)
    world_seed: int = 0


def evaluate(stage: str, cfg, store: RunStore, eval_cfg: EvalConfig = EvalConfig()) -> dict:
    from panacea_lab.config import to_dict

    model_cfg = cfg if isinstance(cfg, ModelConfig) else (cfg.model if stage == "align" else cfg.align.model)
    world_seed = 0 if isinstance(cfg, ModelConfig) else (cfg.world_seed if stage == "align" else cfg.align.world_seed)
    job = EvalJob(stage, to_dict(cfg), eval_cfg, world_seed)

    def compute():
        model = load_stage_model(stage, cfg, store)
        return evaluate_model(model, get_tokenizer(model_cfg), get_world(world_seed), eval_cfg), None

    return store.cached("eval", job, compute)
