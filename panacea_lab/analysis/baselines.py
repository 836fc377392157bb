"""The paper's baselines beside Panacea: alignment-stage defenses (Vaccine, RepNoise, Booster) and
Lisa (fine-tuning stage), on the same user data as the undefended attack.

An alignment-stage defense changes only how the model is aligned; the user's fine-tuning that
follows is the plain attack. Lisa changes the fine-tuning itself. Every run is a cached stage.
"""
from __future__ import annotations

import dataclasses

import pandas as pd

from panacea_lab.config import BASELINES, AlignConfig, EvalConfig
from panacea_lab.defenses.booster import BoosterConfig
from panacea_lab.defenses.lisa import LisaConfig
from panacea_lab.defenses.repnoise import RepNoiseConfig
from panacea_lab.defenses.vaccine import VaccineConfig
from panacea_lab.analysis.sweeps import attack_config, result_row
from panacea_lab.training.pipeline import LisaRun, attack, evaluate
from panacea_lab.training.store import RunStore

# Defaults of the paper family, not calibrated on the embedded world (README "Baselines").
# Lisa's official 100 / 900 steps per cycle assume ~1000 steps; our attack runs 300, so the same
# 10% alignment share is 30 / 270.
ALIGNMENT_BASELINES = {"vaccine": VaccineConfig(), "repnoise": RepNoiseConfig(), "booster": BoosterConfig()}
LISA_DEFAULT = LisaConfig(align_steps=30, finetune_steps=270)
LABELS = {"sft": "SFT (no defense)", "vaccine": "Vaccine", "repnoise": "RepNoise", "booster": "Booster",
          "lisa": "Lisa"}


def aligned_with(align_cfg: AlignConfig, method: str) -> AlignConfig:
    """`align_cfg` with the alignment-stage defense `method` (sft: unchanged)."""
    if method == "sft":
        return align_cfg
    if method not in ALIGNMENT_BASELINES:
        raise ValueError(f"method = {method!r}: alignment methods are sft, {', '.join(ALIGNMENT_BASELINES)}")
    return dataclasses.replace(align_cfg, **{method: ALIGNMENT_BASELINES[method]})


def baseline_sweep(ratios, seeds, methods=BASELINES, task: str = "sentiment", preset: str = "default",
                   align_cfg: AlignConfig | None = None, eval_cfg: EvalConfig | None = None,
                   store: RunStore | None = None, lisa: LisaConfig | None = None, **overrides) -> pd.DataFrame:
    """One row per (method, ratio, seed): HS / refusal / other / FA after the user's fine-tuning."""
    unknown = [m for m in methods if m not in BASELINES]
    if unknown:
        raise ValueError(f"methods {unknown} unknown: use any of {', '.join(BASELINES)}")
    store, align_cfg, lisa = store or RunStore(), align_cfg or AlignConfig(), lisa or LISA_DEFAULT
    eval_cfg = eval_cfg or EvalConfig(tasks=(task,))
    rows = []
    for method in methods:
        base = aligned_with(align_cfg, "sft" if method == "lisa" else method)
        for seed in seeds:
            for p in ratios:
                cfg = attack_config(base, task, p, seed, preset, **overrides)
                run, stage = (LisaRun(cfg, lisa), "lisa") if method == "lisa" else (cfg, "attack")
                result = attack(run, store)
                ev = evaluate(stage, run, store, eval_cfg)
                rows.append(result_row(LABELS[method], ev, p=p, seed=seed, preset=preset,
                                 train_seconds=result["train"]["train_seconds"]))
    return pd.DataFrame(rows)
