"""The pipeline as cached stages: align -> the user's fine-tuning (attack) -> evaluate.

Each stage is keyed by its config hash; one aligned adapter serves every attack that names it.
Models are rebuilt from the base weights plus the stored adapters, never from pickles.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import save_file

from panacea_lab.config import (
    AlignConfig,
    AttackConfig,
    EvalConfig,
    ModelConfig,
    new_field,
    to_dict,
)
from panacea_lab.data.batching import BatchStream, encode, mix_user_data
from panacea_lab.defenses.booster import BoosterRule
from panacea_lab.defenses.lisa import LisaConfig, LisaRule
from panacea_lab.defenses.panacea import PanaceaConfig, PanaceaRule
from panacea_lab.defenses.repnoise import RepNoiseRule
from panacea_lab.defenses.vaccine import VaccineRule
from panacea_lab.evaluation.evaluate import evaluate_model
from panacea_lab.evaluation.judges import SCORING_VERSION
from panacea_lab.data.lexicon import PREVALENCE
from panacea_lab.models.loading import (
    attach_lora,
    load_adapter,
    load_base,
    load_tokenizer,
    merge_adapter,
)
from panacea_lab.defenses.post import EPS_FILE, PostConfig, apply_post
from panacea_lab.training.store import RunStore
from panacea_lab.training.loop import LoopSettings, StepRule, train_loop
from panacea_lab.data.world import TASKS, Example, World, build_world


@lru_cache(maxsize=4)
def get_world(seed: int, data: str = "embedded") -> World:
    """The embedded world, or one assembled from real data (`panacea_lab.data.real_world`)."""
    if data == "embedded":
        return build_world(seed)
    from panacea_lab.data.real_world import build_real_world

    return build_real_world(data, seed)


def world_of(cfg: AlignConfig) -> World:
    return get_world(cfg.world_seed, cfg.data)


@lru_cache(maxsize=4)
def get_tokenizer(model_cfg: ModelConfig):
    return load_tokenizer(model_cfg)


def alignment_data(cfg: AlignConfig, world: World) -> list[Example]:
    """Refusals on the alignment pool plus a replay of the base model's own benign data."""
    if cfg.n_refusal > len(world.alignment):
        raise ValueError(f"n_refusal = {cfg.n_refusal} but the alignment pool holds {len(world.alignment)}: "
                         "lower n_refusal")
    rng = random.Random(cfg.seed)
    if cfg.prevalence == "uniform":
        data = rng.sample(world.alignment, cfg.n_refusal)
    else:  # skewed: drawn with replacement by category prevalence (a duplicate is one more epoch of it)
        data = rng.choices(world.alignment, weights=[PREVALENCE[e.category] for e in world.alignment],
                           k=cfg.n_refusal)
    benign = [e for e in world.pretrain if e.task not in ("harmful", "facts")]
    data += rng.sample(benign, min(len(benign), cfg.n_replay_per_task * len(TASKS)))  # tasks mixed
    rng.shuffle(data)
    return data


def fit(model, examples: list[Example], tokenizer, max_length: int, settings: LoopSettings, seed: int,
        rule: StepRule | None = None, on_step=None) -> dict:
    """Encode, batch (seeded) and run the one loop."""
    rows = [encode(tokenizer, ex, max_length) for ex in examples]
    stream = BatchStream(rows, settings.batch_size, tokenizer.pad_token_id, seed)
    torch.manual_seed(seed)
    return train_loop(model, stream, settings, rule, on_step=on_step)


# --------------------------------------------------------------------------------- stages
def align(cfg: AlignConfig, store: RunStore) -> dict:
    def compute():
        tok = get_tokenizer(cfg.model)
        model = attach_lora(load_base(cfg.model), cfg.model, cfg.seed)
        data = alignment_data(cfg, world_of(cfg))
        settings = LoopSettings(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, desc=f"align {cfg.defense}")
        result = fit(model, data, tok, cfg.model.max_length, settings, cfg.seed, alignment_rule(cfg))
        return {"train": result, "n_samples": len(data)}, lambda d: model.save_pretrained(d / "adapter")

    return store.cached("align", cfg, compute)


@dataclass(frozen=True)
class PanaceaRun:
    """The user's fine-tuning (an attack config) trained under Panacea's step rule."""

    attack: AttackConfig = field(default_factory=AttackConfig)
    panacea: PanaceaConfig = field(default_factory=PanaceaConfig)


@dataclass(frozen=True)
class LisaRun:
    """The user's fine-tuning under Lisa's Bi-State rule (alignment steps interleaved, proximal term)."""

    attack: AttackConfig = field(default_factory=AttackConfig)
    lisa: LisaConfig = field(default_factory=LisaConfig)


FINETUNE_STAGES = {AttackConfig: "attack", PanaceaRun: "panacea", LisaRun: "lisa"}


def attack_of(cfg) -> AttackConfig:
    return cfg if isinstance(cfg, AttackConfig) else cfg.attack


def harmful_stream(cfg: AlignConfig, batch_size: int, seed: int) -> BatchStream:
    """Batches of the defender's harmful pool (disjoint from the attacker's)."""
    tok, world = get_tokenizer(cfg.model), world_of(cfg)
    rows = [encode(tok, ex, cfg.model.max_length) for ex in world.defender_pool]
    return BatchStream(rows, batch_size, tok.pad_token_id, seed)


def alignment_rule(cfg: AlignConfig) -> StepRule | None:
    """The alignment stage's step rule: plain SFT, or the one alignment-stage defense the config sets."""
    if cfg.vaccine is not None:
        return VaccineRule(cfg.vaccine)
    if cfg.repnoise is not None:
        return RepNoiseRule(cfg.repnoise, harmful_stream(cfg, cfg.repnoise.harmful_batch_size, cfg.seed + 1))
    if cfg.booster is not None:
        return BoosterRule(cfg.booster, harmful_stream(cfg, cfg.booster.harmful_batch_size, cfg.seed + 1))
    return None


def attack(cfg: AttackConfig | PanaceaRun, store: RunStore) -> dict:
    """The user's fine-tuning on their (possibly poisoned) data, starting from the aligned model.

    With a PanaceaRun the step rule is Panacea's; the stored adapter is the trained w (before eps)
    and the last eps is stored beside it, so "with eps" and "without" are two evaluations of one run.
    """
    plain = attack_of(cfg)
    align(plain.align, store)

    def compute():
        model, rule, result, n_harm = finetune(cfg, store)

        def write(d):
            model.save_pretrained(d / "adapter")
            if isinstance(rule, PanaceaRule):
                save_file({k: v.contiguous() for k, v in rule.eps_by_name().items()}, str(d / EPS_FILE))

        return {"train": result, "n_harmful": n_harm}, write

    return store.cached(stage_name(cfg), cfg, compute)


def finetune(cfg: AttackConfig | PanaceaRun, store: RunStore, on_step=None):
    """Run the user's fine-tuning (no caching): returns the model, the step rule, the loop's result
    and the number of harmful samples in the user's data."""
    plain = attack_of(cfg)
    world = world_of(plain.align)
    model = start_of_finetuning(plain, store)
    data = mix_user_data(world.task_train[plain.task], world.attacker_pool, plain.n, plain.p, plain.seed)
    rule = finetune_rule(cfg)
    settings = LoopSettings(epochs=plain.epochs, lr=plain.lr, batch_size=plain.batch_size,
                            desc=f"finetune p={plain.p} {stage_name(cfg)}")
    result = fit(model, data, get_tokenizer(plain.align.model), plain.align.model.max_length, settings,
                 plain.seed, rule, on_step)
    return model, rule, result, sum(e.task == "harmful" for e in data)


def finetune_rule(cfg) -> StepRule | None:
    """The fine-tuning stage's step rule: plain SFT (the attack), Panacea or Lisa."""
    plain = attack_of(cfg)
    if isinstance(cfg, PanaceaRun):
        harmful = harmful_stream(plain.align, cfg.panacea.harmful_batch_size, plain.seed + 1)
        return PanaceaRule(cfg.panacea, harmful, apply_eps=False)
    if isinstance(cfg, LisaRun):
        tok = get_tokenizer(plain.align.model)
        rows = [encode(tok, ex, plain.align.model.max_length)
                for ex in alignment_data(plain.align, world_of(plain.align))]
        return LisaRule(cfg.lisa, BatchStream(rows, cfg.lisa.align_batch_size, tok.pad_token_id, plain.seed + 2))
    return None


def stage_name(cfg) -> str:
    return FINETUNE_STAGES[type(cfg)]


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
    if stage != "base" and store.load(stage, cfg) is None:
        raise FileNotFoundError(f"no completed {stage!r} run for this config in {store.root}: run the stage first "
                                "(e.g. `panacea-lab attack` / `panacea-lab defend` with the same settings)")
    if stage == "base":
        return load_base(cfg if isinstance(cfg, ModelConfig) else cfg.model)
    if stage == "align":
        return load_adapter(load_base(cfg.model), store.path("align", cfg) / "adapter", trainable=False)
    if stage in FINETUNE_STAGES.values():
        plain = attack_of(cfg)
        base = load_base(plain.align.model)
        if plain.adapter == "fresh":
            base = merge_adapter(load_adapter(base, store.path("align", plain.align) / "adapter", trainable=False))
        return load_adapter(base, store.path(stage, cfg) / "adapter", trainable=False)
    raise ValueError(f"stage = {stage!r}: use base, align or one of {sorted(FINETUNE_STAGES.values())}")


@dataclass(frozen=True)
class EvalJob:
    """What is evaluated (a stage, its config, a post-fine-tuning transform) and how; hashed like a config."""

    stage: str
    target: dict
    eval: EvalConfig = field(default_factory=EvalConfig)
    world_seed: int = 0
    post: PostConfig = field(default_factory=PostConfig)
    scoring_version: int = SCORING_VERSION
    data: str = new_field("embedded")  # the world the prompts come from (AlignConfig.data)


def _lineage(stage: str, cfg, data: str) -> tuple[ModelConfig, int, str]:
    if isinstance(cfg, ModelConfig):  # the base model: scored on the world the caller names
        return cfg, 0, data
    align_cfg = cfg if stage == "align" else attack_of(cfg).align
    return align_cfg.model, align_cfg.world_seed, align_cfg.data


def evaluate(stage: str, cfg, store: RunStore, eval_cfg: EvalConfig = EvalConfig(),
             post: PostConfig = PostConfig(), data: str = "embedded") -> dict:
    """Evaluate a stage's model (after an optional post-fine-tuning transform), cached.

    `data` names the world only for the base model; every later stage carries its own."""
    model_cfg, world_seed, data = _lineage(stage, cfg, data)
    job = EvalJob(stage, to_dict(cfg), eval_cfg, world_seed, post, data=data)

    def compute():
        model = load_stage_model(stage, cfg, store)
        harmful = None
        if post.method.startswith("antidote") or post.method == "harmful_ascent":
            harmful = harmful_stream(attack_of(cfg).align, 16, post.seed).epoch()
        stage_dir = store.path(stage, cfg) if stage != "base" else Path()
        model = apply_post(model, post, stage_dir, harmful)
        return evaluate_model(model, get_tokenizer(model_cfg), get_world(world_seed, data), eval_cfg), None

    return store.cached("eval", job, compute)
