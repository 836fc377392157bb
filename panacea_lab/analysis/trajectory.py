"""HS and FA along one fine-tuning run: do refusals erode gradually or break at once?

The run is the same as the cached attack stage (same data, seed and schedule); checkpoints are
scored in place by a loop hook, which leaves the weights untouched, so the last point equals an
evaluation of the finished attack with the same EvalConfig.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from panacea_lab.config import AttackConfig, EvalConfig, Validated, check
from panacea_lab.evaluation.evaluate import evaluate_model
from panacea_lab.evaluation.judges import SCORING_VERSION
from panacea_lab.pipeline.context import get_tokenizer, world_of
from panacea_lab.pipeline.evaluations import evaluate
from panacea_lab.pipeline.keys import key
from panacea_lab.pipeline.stages import align, finetune
from panacea_lab.training.store import RunStore


def _small_eval() -> EvalConfig:
    return EvalConfig(n_harmful=100, n_task=100, tasks=("sentiment",))


@dataclass(frozen=True)
class Trajectory(Validated):
    """Score the fine-tuning run `run` every `every` optimiser steps (step 0 is the aligned model)."""

    run: AttackConfig = field(default_factory=AttackConfig)  # under any fine-tuning defense
    every: int = 30
    eval: EvalConfig = field(default_factory=_small_eval)
    scoring_version: int = SCORING_VERSION

    def check_values(self):
        check(self.every >= 1, "every", self.every, "score every k >= 1 steps")


def _point(step: int, ev: dict) -> dict:
    return {"step": step, "HS": ev["HS"], "refusal": ev["refusal"], "other": ev["other"],
            **{f"FA_{t}": v for t, v in ev["FA"].items()}}


def trajectory(cfg: Trajectory, store: RunStore) -> dict:
    """Cached: {"points": [{"step", "HS", "refusal", "other", "FA_<task>"}...], "train": loop result}."""
    plain = cfg.run
    align(plain.align, store)

    def compute():
        tok, world = get_tokenizer(plain.align.model), world_of(plain.align)
        points = [_point(0, evaluate("align", plain.align, store, cfg.eval))]

        def score(model, steps_done):
            if steps_done % cfg.every == 0:
                model.eval()
                points.append(_point(steps_done, evaluate_model(model, tok, world, cfg.eval)))

        model, _, result, n_harm = finetune(cfg.run, store, on_step=score)
        if points[-1]["step"] != result["steps"]:
            points.append(_point(result["steps"], evaluate_model(model, tok, world, cfg.eval)))
        return {"points": points, "train": result, "n_harmful": n_harm}, None

    return store.cached("trajectory", key("trajectory", cfg, model=cfg.run.align.model, data=cfg.run.align.data), compute)
