"""Sweeps that the CLI and the notebooks share: each returns a tidy data frame, one row per evaluation.

Rows are data: `method` (a registry name, or "sft" / "base" / "aligned"), `variant` ("w", "w+eps",
"control"), `param` and `value` (the knob the row varies, e.g. rho = 1), `p`, `seed`, the metrics
HS / refusal / other / FA_<task>, and `label`, which is for display only: no code reads it back.
"""
from __future__ import annotations

import dataclasses

import pandas as pd

from panacea_lab import defenses, settings
from panacea_lab.config import ATTACK_PRESETS, AlignConfig, AttackConfig, ConfigError, DefenseConfig, EvalConfig, TASKS
from panacea_lab.pipeline.evaluations import evaluate
from panacea_lab.pipeline.preflight import preflight
from panacea_lab.pipeline.stages import align, artifact, attack
from panacea_lab.training.store import RunStore

METRICS = ("HS", "refusal", "other")
KEYS = ("method", "variant", "param", "value", "p")  # what identifies a row of a summary (besides the seed)


def attack_config(align_cfg: AlignConfig, task: str, p: float, seed: int, preset: str = "default",
                  **overrides) -> AttackConfig:
    """An attack from a named strength preset; keyword overrides win over the preset."""
    if preset not in ATTACK_PRESETS:
        raise ConfigError(f"preset = {preset!r}: use one of {sorted(ATTACK_PRESETS)}")
    unknown = sorted(set(overrides) - set(AttackConfig.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"attack: no field {', '.join(unknown)}; use {', '.join(AttackConfig.__dataclass_fields__)}")
    return AttackConfig(align=align_cfg, task=task, p=p, seed=seed, **{**ATTACK_PRESETS[preset], **overrides})


def attacks(align_cfg: AlignConfig, task: str, ratios, seeds, preset: str, **overrides) -> list:
    """(seed, p, config) of every attack of a sweep; rows carry the checked values (numbers, not text)."""
    cfgs = [attack_config(align_cfg, task, p, seed, preset, **overrides) for seed in seeds for p in ratios]
    return [(c.seed, c.p, c) for c in cfgs]


def result_row(ev: dict, *, method: str, label: str, variant: str = "w", param: str | None = None,
               value: float | None = None, p: float | None = None, seed: int | None = None, **extra) -> dict:
    """One typed row: identity columns, the metrics, then any extra columns (e.g. norm, train time)."""
    row = {"label": label, "method": method, "variant": variant, "param": param, "value": value, "p": p,
           "seed": seed, **{m: ev[m] for m in METRICS}}
    row.update({f"FA_{task}": v for task, v in ev["FA"].items()})
    row.update(extra)
    return row


def post_row(post: DefenseConfig, ev: dict, **kw) -> dict:
    """The row of a post-fine-tuning transform, labelled and keyed by its registry record."""
    record = defenses.of(post)
    value = getattr(post, record.param) if record.param else None
    label = f"{record.label} {record.param}={value:g}" if record.param else record.label
    return result_row(ev, method=post.name, label=label, param=record.param or None, value=value,
                      variant="control" if record.control else "w", **kw)


def attack_sweep(ratios, seeds, task: str = "sentiment", preset: str = "default",
                 align_cfg: AlignConfig | None = None, eval_cfg: EvalConfig | None = None,
                 store: RunStore | None = None, include_reference: bool = True, reference_tasks=TASKS,
                 **overrides) -> pd.DataFrame:
    """Base and aligned models (scored on `reference_tasks`: alignment must not cost FA on any task),
    then the user's fine-tuning at every ratio and seed (all cached)."""
    store = store or RunStore()
    align_cfg = align_cfg or AlignConfig()
    eval_cfg = eval_cfg or EvalConfig()
    configs = attacks(align_cfg, task, ratios, seeds, preset, **overrides)
    preflight(*[c for _, _, c in configs], eval_cfg, align=align_cfg)  # every setting before any stage
    rows = []
    if include_reference:
        ref_eval = dataclasses.replace(eval_cfg, tasks=tuple(reference_tasks) if eval_cfg.tasks else ())
        ev = evaluate("base", align_cfg.model, store, ref_eval, data=align_cfg.data)
        rows.append(result_row(ev, method="base", label="base"))
        align(align_cfg, store)
        rows.append(result_row(evaluate("align", align_cfg, store, ref_eval), method="aligned", label="aligned"))
    for seed, p, cfg in configs:
        result = attack(cfg, store)
        rows.append(result_row(evaluate("attack", cfg, store, eval_cfg), method="sft", label="fine-tuned", p=p,
                               seed=seed, preset=preset, train_seconds=result["train"]["train_seconds"]))
    return pd.DataFrame(rows)


def defense_sweep(ratios, seeds, task: str = "sentiment", preset: str = "default", stds=(0.01, 0.02, 0.04, 0.08),
                  rhos=None, lam: float | None = None, panacea_kw: dict | None = None,
                  antidote_ratio: float | None = 0.1, align_cfg: AlignConfig | None = None,
                  eval_cfg: EvalConfig | None = None, store: RunStore | None = None, setting: str = "embedded",
                  extra_post=(), ascent_control: bool = True, **overrides) -> pd.DataFrame:
    """Every post-fine-tuning defense on the same fine-tuned models, per ratio and seed.

    Rows: no defense; noise per std; Antidote (unless `antidote_ratio` is None), on the run its official
    code prunes (the alignment adapter merged, the user's data on a fresh LoRA) beside that run
    undefended (variant "fresh"); any `extra_post`
    transforms (post-fine-tuning defense configs); Panacea per rho, as its trained w and as w + eps;
    a random direction of exactly ||eps|| added to w (the same-norm control); and, with `ascent_control`,
    one harmful-gradient step of ||eps|| taken at the undefended model (is Panacea's training needed,
    or only its last step's direction?). Panacea's rho and lambda default to the named `setting`'s.
    """
    store, align_cfg = store or RunStore(), align_cfg or AlignConfig()
    eval_cfg = eval_cfg or EvalConfig(tasks=(task,))
    chosen = settings.get(setting)
    rhos = [chosen.param("panacea", "rho")] if rhos is None else list(rhos)
    panacea_kw = {**(panacea_kw or {}), **({"lam": lam} if lam is not None else {})}
    panaceas = [chosen.defense("panacea", rho=rho, **panacea_kw) for rho in rhos]
    configs = attacks(align_cfg, task, ratios, seeds, preset, **overrides)
    posts = [defenses.get("noise").make(std=std) for std in stds]
    if antidote_ratio is not None:
        posts.append(defenses.get("antidote").make(dense_ratio=antidote_ratio))
    posts += list(extra_post)
    fresh_needed = any(defenses.of(post).finetune_adapter == "fresh" for post in posts)
    fresh_of = {cfg: dataclasses.replace(cfg, adapter="fresh") for _, _, cfg in configs}
    preflight(*[c for _, _, c in configs], *(fresh_of.values() if fresh_needed else ()), eval_cfg, align=align_cfg)
    rows = []
    for seed, p, cfg in configs:
        attack(cfg, store)
        ev = evaluate("attack", cfg, store, eval_cfg)
        rows.append(result_row(ev, method="none", label="no defense", p=p, seed=seed))
        fresh = fresh_of[cfg]
        if fresh_needed and fresh != cfg:  # the undefended run a fresh-adapter defense starts from
            attack(fresh, store)
            rows.append(result_row(evaluate("attack", fresh, store, eval_cfg), method="none", variant="fresh",
                                   label="no defense (fresh adapter)", p=p, seed=seed))
        for post in posts:
            if hasattr(post, "seed"):
                post = dataclasses.replace(post, seed=seed)
            run = fresh if defenses.of(post).finetune_adapter == "fresh" else cfg  # as its official code trains
            rows.append(post_row(post, evaluate("attack", run, store, eval_cfg, post), p=p, seed=seed))
        for pcfg in panaceas:
            rows += _panacea_rows(cfg, pcfg, store, eval_cfg, p, seed, ascent_control)
    return pd.DataFrame(rows)


def _panacea_rows(cfg: AttackConfig, pcfg, store: RunStore, eval_cfg: EvalConfig, p: float, seed: int,
                  ascent_control: bool = True) -> list[dict]:
    """Panacea's w and w + eps, and the controls of the same norm as its eps."""
    run = dataclasses.replace(cfg, defense=pcfg)
    eps_norm = attack(run, store)["train"]["finalize"]["eps_norm"]
    ident = {"p": p, "seed": seed, "param": "rho", "value": pcfg.rho, "norm": eps_norm}
    rho = f"rho={pcfg.rho:g}"
    eps = defenses.get("eps").make()
    direction = defenses.get("random_direction").make(norm=eps_norm, seed=seed)
    rows = [
        result_row(evaluate("attack", run, store, eval_cfg), method="panacea", variant="w",
                   label=f"Panacea {rho} (w)", **ident),
        result_row(evaluate("attack", run, store, eval_cfg, eps), method="panacea", variant="w+eps",
                   label=f"Panacea {rho} (w + eps)", **ident),
        result_row(evaluate("attack", run, store, eval_cfg, direction), method="random_direction",
                   variant="control", label=f"same-norm random {rho}", **ident),
    ]
    if ascent_control:  # no Panacea training: one harmful-gradient step at the undefended model
        ascent = defenses.get("harmful_ascent").make(norm=eps_norm, n_batches=1, seed=seed)
        rows.append(result_row(evaluate("attack", cfg, store, eval_cfg, ascent), method="harmful_ascent",
                               variant="control", label=f"harmful ascent {rho}", **ident))
    return rows


def eps_coefficients(run: AttackConfig, store: RunStore, by=("layer", "module")) -> pd.DataFrame:
    """Safety coefficients of a Panacea run's eps beside those of Gaussian noise on the same tensors.

    Noise's share is set by tensor sizes alone, so it is the reference a learned eps departs from.
    """
    from safetensors.torch import load_file

    from panacea_lab.analysis.coefficients import safety_coefficients
    from panacea_lab.defenses.perturb import gaussian_noise

    attack(run, store)
    eps = load_file(str(artifact(store, "attack", run, "eps.safetensors")))
    ours = safety_coefficients(eps, by).rename(columns={"share": "eps_share"})
    noise = safety_coefficients(gaussian_noise(eps, 1.0, 0), by).rename(columns={"share": "noise_share"})
    return ours.drop(columns="sq_norm").merge(noise.drop(columns="sq_norm"), on=list(by))


def summarize(df: pd.DataFrame, extra_keys=()) -> pd.DataFrame:
    """Mean ± std over seeds of every metric per row identity (method, variant, param, value, p, and
    any `extra_keys` columns, e.g. lam or harmful_set)."""
    metric_cols = [c for c in df.columns if c in METRICS or c == "HS+" or c.startswith("FA_")]
    keys = [k for k in (*KEYS, *extra_keys) if k in df.columns]
    grouped = df.groupby(keys, sort=False, dropna=False)
    mean, std = grouped[metric_cols].mean(), grouped[metric_cols].std().fillna(0.0)
    out = mean.round(1).astype(str) + " ± " + std.round(1).astype(str)
    out.insert(0, "seeds", grouped.size())
    labels = grouped["label"].first()
    index = mean.index.to_frame(index=False)
    shown = [k for k in ("p", *extra_keys) if k in keys]
    out.index = [lab + "".join("" if pd.isna(row[k]) else f" {k}={row[k]:g}" if isinstance(row[k], float)
                               else f" {k}={row[k]}" for k in shown)
                 for lab, (_, row) in zip(labels, index.iterrows())]
    return out


def override_fields(cls, **kwargs) -> dict:
    """Only the keyword arguments that name a field of `cls` (CLI flags left unset are None)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in kwargs.items() if k in names and v is not None}
