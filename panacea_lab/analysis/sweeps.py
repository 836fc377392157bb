"""Sweeps that the CLI and the notebooks share: each returns a tidy data frame, one row per run."""
from __future__ import annotations

import dataclasses

import pandas as pd

from panacea_lab.config import ATTACK_PRESETS, AlignConfig, AttackConfig, EvalConfig
from panacea_lab.defenses.panacea import PanaceaConfig
from panacea_lab.training.pipeline import PanaceaRun, align, attack, evaluate
from panacea_lab.defenses.post import PostConfig
from panacea_lab.training.store import RunStore
from panacea_lab.data.world import TASKS

METRICS = ("HS", "refusal", "other")


def attack_config(align_cfg: AlignConfig, task: str, p: float, seed: int, preset: str = "default",
                  **overrides) -> AttackConfig:
    """An attack from a named strength preset; keyword overrides win over the preset."""
    if preset not in ATTACK_PRESETS:
        raise ValueError(f"preset = {preset!r}: use one of {sorted(ATTACK_PRESETS)}")
    return AttackConfig(align=align_cfg, task=task, p=p, seed=seed, **{**ATTACK_PRESETS[preset], **overrides})


def result_row(label: str, ev: dict, **extra) -> dict:
    row = {"model": label, **extra, **{m: ev[m] for m in METRICS}}
    row.update({f"FA_{task}": value for task, value in ev["FA"].items()})
    return row


def attack_sweep(ratios, seeds, task: str = "sentiment", preset: str = "default",
                 align_cfg: AlignConfig | None = None, eval_cfg: EvalConfig | None = None,
                 store: RunStore | None = None, include_reference: bool = True, **overrides) -> pd.DataFrame:
    """Base and aligned models, then the user's fine-tuning at every ratio and seed (all cached)."""
    store = store or RunStore()
    align_cfg = align_cfg or AlignConfig()
    eval_cfg = eval_cfg or EvalConfig()
    configs = [(seed, p, attack_config(align_cfg, task, p, seed, preset, **overrides)) for seed in seeds for p in ratios]
    rows = []  # every config above is validated before anything is trained or written
    if include_reference:  # base and aligned are scored on every task: alignment must not cost FA
        ref_eval = dataclasses.replace(eval_cfg, tasks=TASKS)
        rows.append(result_row("base", evaluate("base", align_cfg.model, store, ref_eval, data=align_cfg.data), p=None, seed=None))
        align(align_cfg, store)
        rows.append(result_row("aligned", evaluate("align", align_cfg, store, ref_eval), p=None, seed=None))
    for seed, p, cfg in configs:
        result = attack(cfg, store)
        ev = evaluate("attack", cfg, store, eval_cfg)
        rows.append(result_row("fine-tuned", ev, p=p, seed=seed, preset=preset,
                         train_seconds=result["train"]["train_seconds"]))
    return pd.DataFrame(rows)


def defense_sweep(ratios, seeds, task: str = "sentiment", preset: str = "default", stds=(0.01, 0.02, 0.04, 0.08),
                  rhos=(0.5, 1.0, 2.0), lam: float = 1e-3, panacea_kw: dict | None = None,
                  antidote_ratio: float | None = 0.1, align_cfg: AlignConfig | None = None,
                  eval_cfg: EvalConfig | None = None, store: RunStore | None = None, **overrides) -> pd.DataFrame:
    """Every post-fine-tuning defense on the same fine-tuned models, per ratio and seed.

    Rows: no defense; noise per std; Antidote (unless `antidote_ratio` is None); Panacea per rho,
    before and after its eps, and a random direction of exactly ||eps|| added to Panacea's trained w
    (the same-norm control), and one harmful-gradient ascent step of ||eps|| taken at the undefended
    model (is Panacea's training needed, or only its last step's direction?). Empty `stds` / `rhos`
    skip those families.
    """
    store, align_cfg = store or RunStore(), align_cfg or AlignConfig()
    eval_cfg = eval_cfg or EvalConfig(tasks=(task,))
    configs = [(seed, p, attack_config(align_cfg, task, p, seed, preset, **overrides)) for seed in seeds for p in ratios]
    panaceas = [PanaceaConfig(rho=rho, lam=lam, **(panacea_kw or {})) for rho in rhos]  # validated up front
    rows = []
    for seed, p, cfg in configs:
        attack(cfg, store)

        def add(label, stage, run, post=PostConfig(), **extra):
            rows.append(result_row(label, evaluate(stage, run, store, eval_cfg, post), p=p, seed=seed, **extra))

        add("no defense", "attack", cfg)
        for std in stds:
            add(f"noise std={std:g}", "attack", cfg, PostConfig(method="noise", std=std, seed=seed), std=std)
        if antidote_ratio is not None:
            add(f"antidote {antidote_ratio:g}", "attack", cfg,
                PostConfig(method="antidote", dense_ratio=antidote_ratio, seed=seed))
        for rho, pcfg in zip(rhos, panaceas):
            run = PanaceaRun(cfg, pcfg)
            res = attack(run, store)
            eps_norm = res["train"]["finalize"]["eps_norm"]
            add(f"panacea rho={rho:g} (w)", "panacea", run, rho=rho)
            add(f"panacea rho={rho:g} (w+eps)", "panacea", run, PostConfig(method="eps"), rho=rho, norm=eps_norm)
            add(f"same-norm random rho={rho:g}", "panacea", run,
                PostConfig(method="random_direction", norm=eps_norm, seed=seed), rho=rho, norm=eps_norm)
            add(f"harmful ascent rho={rho:g}", "attack", cfg,  # the eps-sized step without Panacea's training
                PostConfig(method="harmful_ascent", norm=eps_norm, n_batches=1, seed=seed), rho=rho, norm=eps_norm)
    return pd.DataFrame(rows)


def eps_coefficients(run: PanaceaRun, store: RunStore, by=("layer", "module")) -> pd.DataFrame:
    """Safety coefficients of a Panacea run's eps beside those of Gaussian noise on the same tensors.

    Noise's share is set by tensor sizes alone, so it is the reference a learned eps departs from.
    """
    from safetensors.torch import load_file

    from panacea_lab.analysis.coefficients import safety_coefficients
    from panacea_lab.defenses.perturb import gaussian_noise
    from panacea_lab.defenses.post import EPS_FILE

    attack(run, store)
    eps = load_file(str(store.path("panacea", run) / EPS_FILE))
    ours = safety_coefficients(eps, by).rename(columns={"share": "eps_share"})
    noise = safety_coefficients(gaussian_noise(eps, 1.0, 0), by).rename(columns={"share": "noise_share"})
    return ours.drop(columns="sq_norm").merge(noise.drop(columns="sq_norm"), on=list(by))


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean (and std over seeds) of every metric per model and ratio."""
    metric_cols = [c for c in df.columns if c in METRICS or c == "HS+" or c.startswith("FA_")]
    keys = df["model"] + df["p"].map(lambda p: "" if pd.isna(p) else f" p={p:g}")
    grouped = df.assign(run=keys).groupby("run", sort=False)[metric_cols]
    mean, std = grouped.mean(), grouped.std().fillna(0.0)
    out = mean.round(1).astype(str) + " ± " + std.round(1).astype(str)
    out.insert(0, "seeds", grouped.size())
    return out


def override_fields(cls, **kwargs) -> dict:
    """Only the keyword arguments that name a field of `cls` (CLI flags left unset are None)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in kwargs.items() if k in names and v is not None}
