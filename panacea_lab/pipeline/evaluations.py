"""Cached evaluations of a finished stage, after an optional post-fine-tuning transform.

Post-fine-tuning defenses are evaluation-time, not training stages: one fine-tuned model serves a
whole noise sweep, the same-norm control, Panacea with and without its eps and Antidote, each
cached as its own evaluation. Every transform acts on the LoRA tensors only, as in the paper.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from panacea_lab import defenses
from panacea_lab.config import POST, DefenseConfig, EvalConfig, ModelConfig, check, to_dict
from panacea_lab.evaluation.evaluate import evaluate_model
from panacea_lab.evaluation.judges import SCORING_VERSION
from panacea_lab.models.loading import merge_adapter
from panacea_lab.pipeline.context import EvalContext, align_of, get_tokenizer, get_world
from panacea_lab.pipeline.keys import key
from panacea_lab.pipeline.stages import load_stage_model
from panacea_lab.training.store import RunStore


@dataclass(frozen=True)
class EvalJob:
    """What is evaluated (a stage, its config, a post-fine-tuning transform) and how; hashed like a config."""

    stage: str
    target: dict
    eval: EvalConfig = field(default_factory=EvalConfig)
    world_seed: int = 0
    post: DefenseConfig | None = None
    scoring_version: int = SCORING_VERSION
    data: str = "embedded"  # the world the prompts come from (AlignConfig.data)


def lora_names(model) -> list[str]:
    return [n for n, _ in model.named_parameters() if "lora_" in n]


def apply_post(model, post: DefenseConfig | None, ctx: EvalContext):
    """The transformed model (Antidote returns a new, merged one; the rest act in place)."""
    if post is None:
        return model
    check(post.stage == POST, "post", post.name, "pass a post-fine-tuning transform (e.g. noise, eps, antidote)")
    ctx.lora_names = lora_names(model)
    return defenses.of(post).transform(model, post, ctx)


def evaluate(stage: str, cfg, store: RunStore, eval_cfg: EvalConfig = EvalConfig(),
             post: DefenseConfig | None = None, data: str = "embedded") -> dict:
    """Evaluate a stage's model (after an optional post-fine-tuning transform), cached.

    `data` names the world only for the base model; every later stage carries its own."""
    align_cfg = align_of(stage, cfg)
    model_cfg = cfg if isinstance(cfg, ModelConfig) else align_cfg.model
    world_seed, data = (align_cfg.world_seed, align_cfg.data) if align_cfg is not None else (0, data)
    job = EvalJob(stage, to_dict(cfg), eval_cfg, world_seed, post, data=data)

    def compute():
        model = load_stage_model(stage, cfg, store)
        ctx = EvalContext(align_cfg, store, stage, cfg, getattr(post, "seed", 0), [])
        model = apply_post(model, post, ctx)
        if eval_cfg.merge and hasattr(model, "merge_and_unload"):  # Antidote already returns a merged model
            model = merge_adapter(model)
        keep = data == "embedded"  # sample answers only for the synthetic world, never on real harmful prompts
        return evaluate_model(model, get_tokenizer(model_cfg), get_world(world_seed, data), eval_cfg,
                              keep_samples=keep), None

    return store.cached("eval", key("eval", job, model=model_cfg, data=data), compute)
