"""HS and FA along one fine-tuning run: do refusals erode gradually or break at once?

The run is the same as the cached attack stage (same data, seed and schedule); checkpoints are
scored in place by a loop hook, which leaves the weights untouched, so the last point equals an
evaluation of the finished attack with the same EvalConfig.

Under Panacea every checkpoint is scored twice: the trained w ("points") and w + the step's current
eps ("points_eps", eps applied inside the hook and the weights copied back), which is what a
provider stopping the fine-tuning at that step would serve.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from panacea_lab.config import AttackConfig, EvalConfig, Validated, check
from panacea_lab.defenses.perturb import applied
from panacea_lab.evaluation.evaluate import evaluate_model
from panacea_lab.evaluation.judges import SCORING_VERSION
from panacea_lab.pipeline.context import get_tokenizer, world_of
from panacea_lab.pipeline.evaluations import evaluate
from panacea_lab.pipeline.keys import key
from panacea_lab.pipeline.stages import align, finetune, step_rule
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
    """Cached: {"points": [{"step", "HS", "refusal", "other", "FA_<task>"}...], "train": loop result},
    plus "points_eps" (w + eps at each checkpoint) when the run's defense trains an eps (Panacea)."""
    plain = cfg.run
    align(plain.align, store)

    def compute():
        tok, world = get_tokenizer(plain.align.model), world_of(plain.align)
        aligned = _point(0, evaluate("align", plain.align, store, cfg.eval))
        rule = step_rule(plain.defense, plain.align, plain.seed)
        with_eps = rule is not None and hasattr(rule, "eps_by_name")
        points, points_eps = [aligned], [aligned]  # step 0: no eps yet, w + eps is the aligned model

        def record(model, steps_done):
            points.append(_point(steps_done, evaluate_model(model, tok, world, cfg.eval)))
            if with_eps and rule.eps is not None:
                with applied(model, rule.eps_by_name()):
                    points_eps.append(_point(steps_done, evaluate_model(model, tok, world, cfg.eval)))

        def score(model, steps_done):
            if steps_done % cfg.every == 0:
                model.eval()
                record(model, steps_done)

        model, _, result, n_harm = finetune(plain, store, on_step=score, rule=rule)
        if points[-1]["step"] != result["steps"]:
            record(model, result["steps"])
        out = {"points": points, "train": result, "n_harmful": n_harm}
        return ({**out, "points_eps": points_eps} if with_eps else out), None

    return store.cached("trajectory", key("trajectory", cfg, model=cfg.run.align.model, data=cfg.run.align.data), compute)
