"""Sweeps that the CLI and the notebooks share: each returns a tidy data frame, one row per evaluation.

Rows are data: `method` (a registry name, or "none" (the undefended model) / "base" / "aligned"), `variant` ("w", "w+eps",
"control"), `param` and `value` (the knob the row varies, e.g. rho = 1), `p`, `seed`, the metrics
HS / refusal / other / FA_<task>, and `label`, which is for display only: no code reads it back.
"""
from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pandas as pd

from panacea_lab import defenses, settings
from panacea_lab.config import ATTACK_PRESETS, POST, AlignConfig, AttackConfig, ConfigError, DefenseConfig, EvalConfig, TASKS
from panacea_lab.defenses.registry import UNDEFENDED
from panacea_lab.settings import DEFAULT_SETTING
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


def scored_by(ev: dict) -> dict:
    """What a row's numbers were measured on, from its evaluation's record: the base model (its
    folder's or preset's name), the judge, the split and the number of harmful prompts scored."""
    config = ev.get("config") or {}
    target = config.get("target") or {}
    model = target.get("path") or ((target.get("align") or target).get("model") or {}).get("path")
    return {"base_model": Path(str(model)).name if model else None, "judge": ev.get("judge"),
            "split": (config.get("eval") or {}).get("split"), "n_harmful": ev.get("n_harmful")}


def result_row(ev: dict, *, method: str, label: str, variant: str = "w", param: str | None = None,
               value: float | None = None, p: float | None = None, seed: int | None = None, **extra) -> dict:
    """One typed row: identity columns, the metrics, what they were scored on, then any extra columns
    (e.g. norm)."""
    row = {"label": label, "method": method, "variant": variant, "param": param, "value": value, "p": p,
           "seed": seed, **{m: ev[m] for m in METRICS}}
    row.update({f"FA_{task}": v for task, v in ev["FA"].items()})
    row.update(scored_by(ev))
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
        rows.append(result_row(evaluate("attack", cfg, store, eval_cfg), method=UNDEFENDED,
                               label="fine-tuned", p=p,
                               seed=seed, preset=preset, train_seconds=result["train"]["train_seconds"]))
    return pd.DataFrame(rows)


def methods_of(grid: dict, setting: str = DEFAULT_SETTING) -> list[DefenseConfig]:
    """Defense configs from an experiment's `defenses` mapping, {name: {field: value or [values]}}:
    each list is swept (the product over a defense's lists, in the mapping's order), a scalar is held,
    a field not given takes the named setting's value; a defense named without values sweeps its
    record's `sweep` values over its `param`. Unknown names and fields are refused, naming them."""
    chosen, out = settings.get(setting), []
    for name, params in grid.items():
        record = defenses.get(name)
        params = dict(params or {})
        if not params and record.sweep is not None:
            params = {record.param: list(record.sweep)}
        lists = {k: list(v) for k, v in params.items() if isinstance(v, (list, tuple))}
        fixed = {k: v for k, v in params.items() if k not in lists}
        for values in itertools.product(*lists.values()):
            out.append(chosen.defense(name, **fixed, **dict(zip(lists, values))))
    return out


def defense_sweep(ratios, seeds, methods=None, task: str = "sentiment", preset: str = "default",
                  align_cfg: AlignConfig | None = None, eval_cfg: EvalConfig | None = None,
                  store: RunStore | None = None, setting: str = DEFAULT_SETTING, controls=True,
                  **overrides) -> pd.DataFrame:
    """Post-fine-tuning defenses, and trained defenses read through their post-fine-tuning half, on the
    same fine-tuned models, per ratio and seed.

    `methods`: defense configs (or an experiment's {name: {field: values}} mapping, see `methods_of`).
    Rows: no defense; each post-fine-tuning transform, on the run its official code transforms (its
    record's `finetune_adapter`: a fresh LoRA on the merged alignment is scored beside that run
    undefended, variant "fresh"); each trained defense with a `post_half` as its trained w and as w +
    that half, with its record's controls beside it (`controls`: True for all, or the names to run),
    each of the norm the defense adds, on the defended run or the undefended one as the control's
    record says.
    """
    store, align_cfg = store or RunStore(), align_cfg or AlignConfig()
    eval_cfg = eval_cfg or EvalConfig(tasks=(task,))
    methods = methods_of(methods or {}, setting) if isinstance(methods, dict) or methods is None else list(methods)
    posts = [m for m in methods if defenses.of(m).stage == POST]
    trained = [m for m in methods if m not in posts]
    for m in trained:
        if not defenses.of(m).post_half:
            raise ConfigError(f"defense_sweep: {m.name} is a {defenses.of(m).stage} defense without a post-"
                              "fine-tuning half; compare it with the baselines sweep")
    configs = attacks(align_cfg, task, ratios, seeds, preset, **overrides)
    fresh_needed = any(defenses.of(post).finetune_adapter == "fresh" for post in posts)
    fresh_of = {cfg: dataclasses.replace(cfg, adapter="fresh") for _, _, cfg in configs}
    preflight(*[c for _, _, c in configs], *(fresh_of.values() if fresh_needed else ()), eval_cfg, align=align_cfg)
    rows = []
    for seed, p, cfg in configs:
        attack(cfg, store)
        ev = evaluate("attack", cfg, store, eval_cfg)
        rows.append(result_row(ev, method=UNDEFENDED, label=defenses.label(UNDEFENDED), p=p, seed=seed))
        fresh = fresh_of[cfg]
        if fresh_needed and fresh != cfg:  # the undefended run a fresh-adapter defense starts from
            attack(fresh, store)
            rows.append(result_row(evaluate("attack", fresh, store, eval_cfg), method=UNDEFENDED, variant="fresh",
                                   label=f"{defenses.label(UNDEFENDED)} (fresh adapter)", p=p, seed=seed))
        for post in posts:
            if hasattr(post, "seed"):
                post = dataclasses.replace(post, seed=seed)
            run = fresh if defenses.of(post).finetune_adapter == "fresh" else cfg  # as its official code trains
            rows.append(post_row(post, evaluate("attack", run, store, eval_cfg, post), p=p, seed=seed))
        for method in trained:
            rows += trained_rows(cfg, method, store, eval_cfg, p, seed, controls)
    return pd.DataFrame(rows)


def trained_rows(cfg: AttackConfig, method: DefenseConfig, store: RunStore, eval_cfg: EvalConfig, p: float,
                 seed: int, controls=True) -> list[dict]:
    """A trained defense's w and w + its post-fine-tuning half, and its controls of the same norm."""
    record = defenses.of(method)
    run = dataclasses.replace(cfg, defense=method)
    result = attack(run, store)
    norm = record.control_norm(result) if record.control_norm else None
    value = getattr(method, record.param) if record.param else None
    shown = f"{record.label} {record.param}={value:g}" if record.param else record.label
    ident = {"p": p, "seed": seed, "param": record.param or None, "value": value, "norm": norm}
    half = defenses.get(record.post_half).make()
    rows = [
        result_row(evaluate("attack", run, store, eval_cfg), method=method.name, variant="w",
                   label=f"{shown} (w)", **ident),
        result_row(evaluate("attack", run, store, eval_cfg, half), method=method.name,
                   variant=f"w+{record.post_half}", label=f"{shown} (w + {record.post_half})", **ident),
    ]
    wanted = record.controls if controls is True else [c for c in record.controls if c in (controls or ())]
    for name in wanted:
        control = defenses.get(name)
        ccfg = control.make(norm=norm, seed=seed)
        on = run if control.control_on == "defended" else cfg
        shown_c = f"{control.label} {record.param}={value:g}" if record.param else control.label
        rows.append(result_row(evaluate("attack", on, store, eval_cfg, ccfg), method=name, variant="control",
                               label=shown_c, **ident))
    return rows


def eps_coefficients(run: AttackConfig, store: RunStore, by=("layer", "module")) -> pd.DataFrame:
    """Safety coefficients of a Panacea run's eps beside those of Gaussian noise on the same tensors.

    Noise's share is set by tensor sizes alone, so it is the reference a learned eps departs from.
    """
    from safetensors.torch import load_file

    from panacea_lab.tables.coefficients import safety_coefficients
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

