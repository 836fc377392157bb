"""The paper's baselines beside Panacea: every alignment- and fine-tuning-stage defense of the
registry (Vaccine, RepNoise, Booster; Lisa; Panacea's trained w) on the same user data as the
undefended attack ("none").

An alignment-stage defense changes only how the model is aligned; the user's fine-tuning that
follows is the plain attack. A fine-tuning-stage defense changes the fine-tuning itself. Each
method's attack starts as its official scripts start it (the `Defense` record's finetune_adapter):
SFT, Panacea and Booster continue the aligned adapter; Vaccine, RepNoise and Lisa merge it and
train a fresh LoRA. Every run is a cached stage; parameters come from a named setting
(panacea_lab.settings).
"""
from __future__ import annotations

import dataclasses

import pandas as pd

from panacea_lab import defenses, settings
from panacea_lab.config import ALIGNMENT, FINETUNING, AlignConfig, ConfigError, EvalConfig
from panacea_lab.defenses.registry import UNDEFENDED
from panacea_lab.studies.sweeps import attack_config, result_row
from panacea_lab.pipeline.evaluations import evaluate
from panacea_lab.pipeline.preflight import preflight
from panacea_lab.pipeline.stages import attack
from panacea_lab.training.store import RunStore


def baseline_methods() -> list[str]:
    """The undefended model and every training-stage defense of the registry except those with a
    post-fine-tuning half (Panacea), which `panacea-lab compare` shows through their defense-sweep rows
    (w and w + eps)."""
    trained = [n for n in defenses.names(ALIGNMENT) + defenses.names(FINETUNING) if not defenses.get(n).post_half]
    return [UNDEFENDED, *trained]


def label(method: str) -> str:
    return "SFT (no defense)" if method == UNDEFENDED else defenses.get(method).label


def aligned_with(align_cfg: AlignConfig, method: str, setting: str = "embedded") -> AlignConfig:
    """`align_cfg` under the alignment-stage defense `method` (sft or a fine-tuning one: unchanged)."""
    if method == UNDEFENDED or defenses.get(method).stage != ALIGNMENT:
        return align_cfg
    return dataclasses.replace(align_cfg, defense=settings.get(setting).defense(method))


def finetune_adapter(method: str) -> str:
    """How the user's fine-tuning starts for `method`: "continue" for sft (the Panacea scripts'
    --alternating single_lora, script/finetune/sft_gsm8k.sh:46-47 of w-yibo/Panacea), else the record's."""
    return "continue" if method == UNDEFENDED else defenses.get(method).finetune_adapter


def baseline_configs(method: str, ratios, seeds, task: str, preset: str, align_cfg: AlignConfig,
                     setting: str = "embedded", **overrides):
    """(p, seed, attack config) of one method at every ratio and seed; an `adapter` override wins
    over the method's official mode."""
    base = aligned_with(align_cfg, method, setting)
    defense = None
    if method != UNDEFENDED and defenses.get(method).stage == FINETUNING:
        defense = settings.get(setting).defense(method)
    overrides = {"adapter": finetune_adapter(method), **overrides}
    return [(c.p, c.seed, c) for c in (attack_config(base, task, p, seed, preset, defense=defense, **overrides)
                                       for seed in seeds for p in ratios)]  # the checked values


def baseline_sweep(ratios, seeds, methods=None, task: str = "sentiment", preset: str = "default",
                   align_cfg: AlignConfig | None = None, eval_cfg: EvalConfig | None = None,
                   store: RunStore | None = None, setting: str = "embedded", **overrides) -> pd.DataFrame:
    """One row per (method, ratio, seed): HS / refusal / other / FA after the user's fine-tuning."""
    known = baseline_methods() + [n for n in defenses.names(FINETUNING) if defenses.get(n).post_half]
    methods = baseline_methods() if methods is None else list(methods)
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ConfigError(f"methods {unknown} unknown: use any of {', '.join(known)}")
    store, align_cfg = store or RunStore(), align_cfg or AlignConfig()
    eval_cfg = eval_cfg or EvalConfig(tasks=(task,))
    runs = [(m, *run) for m in methods for run in baseline_configs(m, ratios, seeds, task, preset, align_cfg,
                                                                    setting, **overrides)]
    # a method trained on a fresh LoRA is compared with the same attack on a fresh LoRA, undefended:
    # the attack is not equally strong on both (README "The paper's baselines")
    fresh = "adapter" not in overrides and any(c.adapter == "fresh" for *_, c in runs)
    if fresh and UNDEFENDED in methods:
        runs += [(UNDEFENDED, p, seed, dataclasses.replace(cfg, adapter="fresh"))
                 for m, p, seed, cfg in runs if m == UNDEFENDED]
    preflight(*[cfg for *_, cfg in runs], eval_cfg, align=align_cfg)
    rows = []
    for method, p, seed, cfg in runs:
        result = attack(cfg, store)
        variant = "fresh" if method == UNDEFENDED and cfg.adapter == "fresh" else "w"
        rows.append(result_row(evaluate("attack", cfg, store, eval_cfg), method=method, variant=variant,
                               label=label(method) + (" (fresh adapter)" if variant == "fresh" else ""), p=p,
                               seed=seed, preset=preset, train_seconds=result["train"]["train_seconds"]))
    return pd.DataFrame(rows)
