"""The rows of each kind of experiment (a spec's `sweep`), through the package's sweep functions.

Every kind takes the configs the spec resolves to and a run store; a PlanStore computes nothing, so
the same code lists what a spec needs (`--dry-run`) and recomputes its rows from the store (`--check`).
"""
from __future__ import annotations

import dataclasses

import pandas as pd

from panacea_lab import defenses
from panacea_lab.config import ConfigError
from panacea_lab.studies import calibration
from panacea_lab.studies.sweeps import attack_config, methods_of
from panacea_lab.experiments.spec import Spec, trained_of
from panacea_lab.training.store import RunStore

SETTING_COLUMN = "panacea_setting"  # the column naming a trained defense's named setting (committed files use it)


@dataclasses.dataclass(frozen=True)
class Context:
    """What every kind needs: the spec, its configs and the store."""

    spec: Spec
    align_cfg: object
    eval_cfg: object
    overrides: dict
    store: RunStore

    @property
    def common(self) -> dict:
        return dict(task=self.spec.task, preset=self.spec.preset, align_cfg=self.align_cfg, store=self.store,
                    **self.overrides)

    def both_sets(self, sweep, **kw) -> pd.DataFrame:
        """`sweep`'s rows on the test split and, when the spec names one, on its second test set."""
        return calibration.on_both_sets(sweep, self.eval_cfg, self.spec.eval.get("second_test"),
                                        ratios=self.spec.ratios, seeds=self.spec.seeds, **kw, **self.common)

    def runs(self, method) -> list:
        """The fine-tuning run of a trained defense config at every ratio and seed."""
        return [attack_config(self.align_cfg, self.spec.task, p, seed, self.spec.preset, defense=method,
                              **self.overrides) for p in self.spec.ratios for seed in self.spec.seeds]


def attack(ctx: Context) -> pd.DataFrame:
    from panacea_lab.studies.sweeps import attack_sweep

    refs = {"reference_tasks": ctx.spec.reference_tasks} if ctx.spec.reference_tasks else {}
    return ctx.both_sets(attack_sweep, **refs)


def _defend(ctx: Context, methods: dict) -> pd.DataFrame:
    from panacea_lab.studies.sweeps import defense_sweep

    return ctx.both_sets(defense_sweep, methods=methods, setting=ctx.spec.setting, controls=ctx.spec.controls)


def named_knobs(spec: Spec, name: str) -> dict:
    """A named setting's fields; {calibrated_on: p}: the validation split's choice among the calibration
    files beside the spec's results file at ratio p (`calibration.choose`)."""
    params = spec.named[name]
    if "calibrated_on" not in params:
        return dict(params)
    trained = defenses.get(trained_of(spec.defenses)[0])
    found = calibration.read_calibrations(spec.output.parent, float(params["calibrated_on"]))
    if found is None:
        raise FileNotFoundError(f"named.{name}: no calibration_p{params['calibrated_on']:g}_validation*.csv in "
                                f"{spec.output.parent} to choose from: run the calibration spec first")
    picked = calibration.choose(found, spec.task)
    fields = {f.name for f in dataclasses.fields(trained.config)}
    knobs = {trained.param: float(picked["value"])}
    knobs.update({f: picked[f].item() if hasattr(picked[f], "item") else picked[f]
                  for f in picked.index if f in fields and f != trained.param and not pd.isna(picked[f])})
    return knobs


def named_settings(spec: Spec) -> dict[str, dict]:
    """Each named setting's own fields, a calibrated one's chosen from its calibration files once."""
    return {name: named_knobs(spec, name) for name in spec.named}


def defend(ctx: Context) -> pd.DataFrame:
    """The defense sweep; with named settings, each setting of the trained defense is its own runs, the
    other defenses run once (with the first), and the trained rows carry the setting's name and fields."""
    spec = ctx.spec
    if not spec.named:
        return _defend(ctx, spec.defenses)
    name_of = trained_of(spec.defenses)[0]
    record = defenses.get(name_of)
    others = {k: v for k, v in spec.defenses.items() if k != name_of}
    named = named_settings(spec)
    shown = sorted({f for own in named.values() for f in own} - {record.param})
    parts = []
    for i, (name, own) in enumerate(named.items()):
        knobs = {**(spec.defenses[name_of] or {}), **own}
        cfg = methods_of({name_of: knobs}, spec.setting)[0]
        rows = _defend(ctx, {**(others if i == 0 else {}), name_of: knobs})
        tuned = rows["method"].isin([name_of, *record.controls])
        rows = rows.assign(**{SETTING_COLUMN: name}, **{f: [getattr(cfg, f) if t else None for t in tuned]
                                                         for f in shown})
        rows.loc[~tuned, SETTING_COLUMN] = None
        parts.append(rows if i == 0 else rows[tuned])
    return pd.concat(parts, ignore_index=True)


def compare(ctx: Context) -> pd.DataFrame:
    from panacea_lab.studies.baselines import baseline_sweep
    from panacea_lab.defenses.registry import UNDEFENDED

    defended = _defend(ctx, ctx.spec.defenses)
    post = defended[(defended["variant"] != "control") & (defended["method"] != UNDEFENDED)]
    ours = baseline_sweep(ctx.spec.ratios, ctx.spec.seeds, methods=ctx.spec.baselines, eval_cfg=ctx.eval_cfg,
                          setting=ctx.spec.setting, **ctx.common)
    return pd.concat([ours, post], ignore_index=True)


def _trained_configs(spec: Spec) -> list[tuple[str | None, object]]:
    """(setting name or None, config) of the trained defense: one per named setting, else the grid's."""
    if spec.named:
        name_of = trained_of(spec.defenses)[0]
        return [(name, methods_of({name_of: {**(spec.defenses[name_of] or {}), **own}}, spec.setting)[0])
                for name, own in named_settings(spec).items()]
    return [(None, m) for m in methods_of(spec.defenses, spec.setting) if defenses.of(m).post_half]


def answer_loss(ctx: Context) -> pd.DataFrame:
    from panacea_lab.studies.answer_loss import loss_shift
    from panacea_lab.pipeline.stages import attack as attack_stage

    parts = []
    for name, method in _trained_configs(ctx.spec):
        for run in ctx.runs(method):
            if getattr(ctx.store, "planning", False):  # the probe loads models: list its runs' stages instead
                attack_stage(run, ctx.store)
                attack_stage(dataclasses.replace(run, defense=None), ctx.store)
                continue
            rows = loss_shift(run, ctx.store)
            parts.append(rows if name is None else rows.assign(**{SETTING_COLUMN: name}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def calibration_sweep(ctx: Context) -> pd.DataFrame:
    """The trained defense over its listed lambda x param x h_const on the validation split, beside the
    undefended model (`calibration.calibration_sweep`), at the spec's one ratio and first seed."""
    name = trained_of(ctx.spec.defenses)[0]
    record = defenses.get(name)
    grid = {k: (v if isinstance(v, list) else [v]) for k, v in (ctx.spec.defenses[name] or {}).items()}
    lists = (grid.get("lam", [None]), grid.get(record.param, [None]), grid.get("h_const", [False]))
    return calibration.calibration_sweep(ctx.spec.ratios[0], ctx.spec.seeds[0], *lists, defense=name,
                                         eval_cfg=ctx.eval_cfg, setting=ctx.spec.setting, **ctx.common)


def eps_shares(ctx: Context) -> pd.DataFrame:
    from panacea_lab.studies.sweeps import eps_coefficients

    from panacea_lab.pipeline.stages import attack as attack_stage

    run = ctx.runs(_trained_configs(ctx.spec)[0][1])[0]
    if getattr(ctx.store, "planning", False):  # the shares read the run's stored perturbation
        attack_stage(run, ctx.store)
        return pd.DataFrame()
    return eps_coefficients(run, ctx.store)


def layer_ablation(ctx: Context) -> pd.DataFrame:
    """The trained defense's eps restricted every way the spec's `ablation` asks, each beside its
    same-norm control on the same tensors (`studies.layer_ablation`), at every ratio and seed."""
    from panacea_lab.pipeline.stages import attack as attack_stage
    from panacea_lab.studies.layer_ablation import layer_ablation as ablate

    name, method = _trained_configs(ctx.spec)[0]
    parts = []
    for run in ctx.runs(method):
        if getattr(ctx.store, "planning", False):  # the restrictions read the run's stored eps
            attack_stage(run, ctx.store)
            continue
        rows = ablate(run, ctx.store, ctx.eval_cfg, **ctx.spec.ablation)  # kinds, and top_k when given
        parts.append(rows if name is None else rows.assign(**{SETTING_COLUMN: name}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def training_log(ctx: Context) -> pd.DataFrame:
    """Per trained setting and run, how often the clamped lambda term acted (`studies.training_logs`),
    read from each run's stored training log (nothing is evaluated)."""
    from panacea_lab.pipeline.stages import attack as attack_stage
    from panacea_lab.studies.training_logs import clamp_activity

    rows = []
    for name, method in _trained_configs(ctx.spec):
        if not hasattr(method, "clamp"):
            raise ConfigError(f"sweep = 'training_log': {method.name} has no clamp; the kind reads Panacea's logs")
        for run in ctx.runs(method):
            result = attack_stage(run, ctx.store)
            if getattr(ctx.store, "planning", False):
                continue
            rows.append({SETTING_COLUMN: name, "step": getattr(method, "step", "exact"), "p": run.p, "seed": run.seed,
                         **clamp_activity(result["train"]["log"], method.clamp)})
    return pd.DataFrame(rows)


def trajectory(ctx: Context) -> pd.DataFrame:
    """Each method's run scored every `every` steps (step 0: the aligned model); a trained defense with
    a post-fine-tuning half is read as w + that half at each checkpoint, what a provider stopping
    there would serve."""
    from panacea_lab.config import EvalConfig
    from panacea_lab.studies import baselines
    from panacea_lab.studies.trajectory import Trajectory, trajectory as follow

    spec, rows = ctx.spec, []
    step_eval = EvalConfig(n_harmful=ctx.eval_cfg.n_harmful, n_task=ctx.eval_cfg.n_task, tasks=(spec.task,))
    for method in spec.baselines:
        for p, seed, cfg in baselines.baseline_configs(method, spec.ratios, spec.seeds, spec.task, spec.preset,
                                                       ctx.align_cfg, spec.setting, **ctx.overrides):
            traj = follow(Trajectory(run=cfg, every=spec.every, eval=step_eval), ctx.store)
            line = baselines.label(method).split(" (")[0] + (" w + eps" if "points_eps" in traj else "")
            rows += [{**point, "method": method, "run": f"{line} p={p:g}", "seed": seed}
                     for point in traj.get("points_eps", traj["points"])]
    return pd.DataFrame(rows)


# how the rows of a kind are matched run by run (None: the sweeps' run columns and metrics)
ROW_KEYS = {"answer_loss": (["model", "answers", "p", "seed", "rho", "lam", "h_const", SETTING_COLUMN], ["nll"]),
            "eps_shares": (["layer", "module"], ["eps_share", "noise_share"]),
            "trajectory": (["method", "run", "seed", "step"], ["HS", "refusal", "other", "FA_sentiment"]),
            "calibration": (["method", "variant", "value", "p", "seed", "lam", "h_const"], None),
            "training_log": ([SETTING_COLUMN, "p", "seed"], ["lambda_active", "median_h_eps", "last20_h_eps"]),
            "layer_ablation": (["method", "variant", "param", "value", "p", "seed", SETTING_COLUMN],
                               ["HS", "refusal", "other", "norm", "share"])}

KINDS = {"attack": attack, "defend": defend, "compare": compare, "answer_loss": answer_loss,
         "calibration": calibration_sweep, "eps_shares": eps_shares, "trajectory": trajectory,
         "training_log": training_log, "layer_ablation": layer_ablation}


def keep_rows(df: pd.DataFrame, keep) -> pd.DataFrame:
    """Only the rows one of the selectors ({column: value}) matches; all rows when there is none."""
    if not keep or df.empty:
        return df
    hit = pd.Series(False, index=df.index)
    for selector in keep:
        hit |= pd.concat([df[k].eq(v) for k, v in selector.items()], axis=1).all(axis=1)
    return df[hit].reset_index(drop=True)
