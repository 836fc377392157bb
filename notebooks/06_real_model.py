# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · A real model: SmolLM2-135M-Instruct with real harmful data, on the CPU
#
# The same pipeline as notebooks 01-04, on a pretrained chat model instead of the embedded world:
# align it to refuse, let a user fine-tune it on sentiment data with a fraction p of harmful
# pairs, then compare random noise with Panacea's optimised perturbation, and look at where eps
# sits across the model's 30 decoder layers. Panacea's settings are chosen on a validation split of
# harmful prompts and reported on two test sets: AdvBench's held-out prompts and StrongREJECT's.
#
# **This notebook reads results files.** Each file in `results_dir` is the output of one experiment
# spec, `experiments/<results folder>/<file>.yaml`, and is rebuilt by
# `panacea-lab run experiments/<results folder>/<file>.yaml` (every stage cached in the run store,
# so a rerun computes only what the store lacks; `--dry-run` lists it with a time estimate, `--check`
# recomputes the rows from the store and compares them with the committed file). Two worlds are
# committed: `results/smollm2-rt` (the default: Rotten Tomatoes reviews as the user's task, figures
# `06_real_model_rt_*`) and `results/smollm2` (BIG-bench multiemo sentiment, whose package the index
# may no longer serve; parameter set `real-multiemo`, figures `06_real_model_*`). The same harmful
# prompts play every role in both. Harmful answers are scored by the keyword judge (its agreement
# with human refusal labels is printed below when the data is on disk); "other" = neither a refusal
# nor a plausible answer, and HS+ = HS + other counts those broken answers as harmful too.
#
# **The quick run** (the attack, noise vs Panacea and the eps shares at p = 0.1, seed 0, fp32: about
# a quarter of an hour on 2 cores from an empty run store) is the one part this notebook can
# compute: with the model and the data on disk it runs those three specs and writes their files into
# `results_dir` before reading them. Once, both offline afterwards (nothing lands in the repository):
# ```
# make smollm2 fetch-data   # SmolLM2 into ~/.cache/panacea-lab/models; PyRIT, AdvBench, StrongREJECT, task files
# ```
# The calibration, the seed grid and the answer-loss probes take hours; their specs are run from
# the command line, and this notebook draws what they wrote.

# %% tags=["parameters"]
results_dir = "results/smollm2-rt"  # the files drawn ("results/smollm2": the multiemo world)
figure_prefix = "06_real_model_rt"  # each figure's file name starts with it (one prefix per results folder)
experiments_dir = None  # the specs of those files (None: experiments/<results_dir's folder name>)
run_quick = None  # the quick run through its specs before reading. None: when the model and the data are on
#   disk and PANACEA_CACHE_ONLY is unset; True: always (fails when they are missing); False: only read
ratio = 0.1  # the harmful ratio p of the quick run, the calibration and the answer-loss table
task = "sentiment"  # the user's task, as the specs name it (its accuracy column is FA_<task>)
panacea_home = None  # where fetched data and converted models live (default ~/.cache/panacea-lab)
runs = None  # run store directory (None: $PANACEA_RUNS, else runs/ at the repository root)
figures_dir = "figures"  # relative to the repository root, or an absolute path

# %%
from panacea_lab.notebook_params import check_in_kernel

check_in_kernel(globals(), "06_real_model.py")  # a misspelt or ill-typed parameter: one line, nothing run

import os
import time

if panacea_home:
    os.environ["PANACEA_HOME"] = panacea_home

import pandas as pd
from IPython.display import Markdown, display

from panacea_lab import defenses
from panacea_lab.studies import answer_loss
from panacea_lab.tables import grid_tables, rows
from panacea_lab.plotting import plots
from panacea_lab.studies import calibration as calib
from panacea_lab.tables.export_rows import read_rows
from panacea_lab.studies.sweeps import summarize
from panacea_lab.config import PACKAGE_DATA, ConfigError
from panacea_lab.experiments import runner
from panacea_lab.experiments.spec import EXPERIMENTS, load_spec
from panacea_lab.notebook_setup import inline_figures, quiet_output
from panacea_lab.paths import PACKAGE_ROOT

quiet_output()
inline_figures()
t_start = time.perf_counter()
figures = PACKAGE_ROOT / figures_dir  # wherever papermill runs, figures land in the repository's figures/
results = PACKAGE_ROOT / results_dir
specs = PACKAGE_ROOT / experiments_dir if experiments_dir else EXPERIMENTS / results.name
# the quick run's files, each the output of the spec of the same name
quick = {"attack": f"attack_p{ratio:g}", "defend": f"defend_p{ratio:g}", "eps_shares": f"eps_shares_p{ratio:g}_seed0"}


def missing_inputs() -> str | None:
    """Why the quick run cannot start here (its specs, the data or the model absent), or None. The data
    is checked before any model config is built: building SmolLM2's converts it when its wheel is
    installed, minutes of work that only data to train on makes worth doing."""
    from panacea_lab.pipeline.context import get_world
    from panacea_lab.pipeline.preflight import preflight

    absent = [name for name in quick.values() if not (specs / f"{name}.yaml").is_file()]
    if absent:
        return f"no spec {', '.join(absent)} in {specs}"
    loaded = [load_spec(specs / f"{name}.yaml") for name in quick.values()]  # a bad spec fails here
    try:
        for spec in loaded:
            get_world(spec.align.get("world_seed", 0), spec.data)  # a missing data file is named here
        for spec in loaded:
            align_cfg, eval_cfg, _ = runner.configs(spec)
            preflight(align_cfg, eval_cfg, align=align_cfg)
    except (ConfigError, FileNotFoundError) as missing:
        return f"{str(missing).splitlines()[0]}; `make smollm2 fetch-data` provides the model and the data"
    return None


if run_quick is None and os.environ.get("PANACEA_CACHE_ONLY"):
    run_quick = False
if run_quick is not False and (why := missing_inputs()):
    if run_quick:
        raise FileNotFoundError(why)
    print(f"quick run skipped: {why}")
    run_quick = False
if run_quick is not False:
    for name in quick.values():
        if runner.run(specs / f"{name}.yaml", root=runs, output=results / f"{name}.csv") != 0:
            raise RuntimeError(f"panacea-lab run {specs / name}.yaml failed")
    if load_spec(specs / f"{quick['attack']}.yaml").data in PACKAGE_DATA:  # fetched data: PyRIT's labels at hand
        from panacea_lab.data.adapters import load as load_source
        from panacea_lab.evaluation.judges import refusal_agreement

        agreement = refusal_agreement(load_source("refusal_labels"))  # the keyword judge; refusal = positive
        print("keyword judge vs human refusal labels:", {k: round(v, 3) for k, v in agreement.items()})
print(f"reading {results_dir}:", sorted(p.name for p in results.glob("*.csv")))

# %% [markdown]
# ## Base, aligned, and the user's fine-tuning at p
# The aligned model should refuse most harmful prompts; the fine-tuning at p breaks that. Each model
# is scored on the test split and, where the spec names one, on the second test set.
# Rebuilt by `panacea-lab run experiments/smollm2-rt/attack_p0.1.yaml` (the multiemo world:
# `experiments/smollm2/attack_p0.1.yaml`).

# %%
if (attack_file := results / f"{quick['attack']}.csv").exists():
    display(summarize(read_rows(attack_file), extra_keys=("harmful_set",)))

# %% [markdown]
# ## Noise vs Panacea on the same fine-tuned model
# Panacea's eps has norm rho; "same-norm random" adds a random direction of that norm to Panacea's
# trained w (is it the direction or only the size?). Panacea runs at the embedded world's setting
# (rho 1, lambda 0.1). Rebuilt by `panacea-lab run experiments/smollm2-rt/defend_p0.1.yaml`.

# %%
if (defend_file := results / f"{quick['defend']}.csv").exists():
    defended = read_rows(defend_file)
    display(summarize(defended, extra_keys=("harmful_set",)))
    # every defense and control beside the undefended model, on the test split
    shown = defended[rows.undefended(defended) | rows.post_fine_tuning(defended) | rows.trained(defended)
                     | rows.controls(defended)]
    if "harmful_set" in shown:
        shown = shown[shown["harmful_set"] == "test"]
    fig = plots.method_bars(shown, metrics=("HS", "other", f"FA_{task}"), p=ratio)
    plots.save_figure(fig, figures / f"{figure_prefix}_defenses.png", shown)

# %% [markdown]
# ## Choosing Panacea's lambda, rho and h_const on the validation split
# Held-out harmful prompts that the test numbers never touch. rho_frac = ||eps|| / ||w||, the
# perturbation against the fine-tuned adapter's own norm. The rule (`calibration.choose`): among the
# settings that keep FA within 5 points of the undefended model and break at most 10 % of answers,
# the lowest HS; when none qualifies, the lowest HS + other. It chooses among every calibration file
# at this ratio in `results_dir`: `calibration_p0.1_validation.csv` and the further sweeps beside it
# (`calibration_p0.1_validation_<name>.csv`), each rebuilt by
# `panacea-lab run experiments/smollm2-rt/calibration_p0.1_validation<_name>.yaml`.

# %%
if (cal := calib.read_calibrations(results, ratio)) is not None:
    columns = ["method", "lam", "h_const", "value", "rho_frac", "HS", "refusal", "other", "HS+", f"FA_{task}"]
    display(cal[[c for c in columns if c in cal]].rename(columns={"value": "rho"}).round(3))
    ranked = calib.ranking(cal, task)  # its head is calib.choose's choice
    for place, row in zip(("chosen on the validation split", "runner-up"), ranked.head(2).itertuples()):
        print(f"{place}: rho {row.value:g}, lambda {row.lam:g}, h_const {row.h_const}: HS {row.HS:g}, "
              f"other {row.other:g}, qualifies {row.qualifies}")
    # a one-point HS margin on 100 prompts is within sampling noise (binomial std at HS 80: 4 points)
    with_eps = cal[rows.through_post_half(cal)]
    family = (with_eps["method"].map(defenses.label) + " " + with_eps["param"] + "="
              + with_eps["value"].map("{:g}".format) + with_eps["h_const"].map({True: ", h const", False: ""}))
    drawn = pd.concat([cal[rows.undefended(cal)].assign(model=defenses.label(defenses.UNDEFENDED)),
                       with_eps.assign(family=family, model=family + " lambda=" + with_eps["lam"].map("{:g}".format))])
    metrics = ("HS", "other", f"FA_{task}") if f"FA_{task}" in cal else ("HS", "other")
    fig = plots.metric_vs_param(drawn, param="lam", metrics=metrics, group_by="family")
    for ax in fig.axes[: len(metrics)]:
        ax.set_xscale("log")
    plots.save_figure(fig, figures / f"{figure_prefix}_calibration.png", drawn)

# %% [markdown]
# ## The seed grid: every defense over seeds and ratios, on both test sets
# Panacea at each named setting of the grid's specs (the setting chosen above, the paper's rho 1,
# lambda 1e-3, and per world one more: lambda 1e-2 with h_const off on the reviews world, the embedded
# world's lambda 0.1 on multiemo), beside no defense, noise, Antidote as its official code prunes (a
# fresh adapter on the merged alignment, with its own undefended attack; the reviews world) and the
# same-norm control of each Panacea run. The tables give the mean ± std
# over seeds and each defense minus the undefended model of the same seed; the figures leave noise
# out (its level is in the table). One file per (ratio, seed), rebuilt by
# `panacea-lab run experiments/smollm2-rt/grid_p0.1_seed0.yaml` (Antidote's:
# `grid_p0.1_antidote_seed0.yaml`; the multiemo world: `experiments/smollm2/grid_p0.1.yaml` and
# `grid_p0.1_seed1.yaml`); a spec's `named` settings are the Panacea settings, `chosen` read from the
# calibration files above.

# %%
if (grid := grid_tables.read_grid(results)) is not None:  # also paired with the answer-loss probes below
    display(Markdown(grid_tables.level_table(grid, task)), Markdown(grid_tables.paired_table(grid, task)))
    # post-fine-tuning defenses evaluated on their own fresh-adapter attack (not the grid's attacked run)
    own_attack = grid["method"].map(lambda m: m in defenses.REGISTRY and
                                    defenses.get(m).finetune_adapter in grid_tables.PAIRED_ADAPTERS)
    own_attack &= rows.post_fine_tuning(grid)
    series = grid[rows.undefended(grid) | own_attack | rows.through_post_half(grid) | rows.controls(grid)]
    tag = series[grid_tables.SETTING].map(lambda name: f" [{name}]" if isinstance(name, str) else "")
    series = series.assign(model=series["label"] + tag)
    # the fresh-adapter models after the grid's, so that "no defense" keeps the solid line
    fresh_part = own_attack.loc[series.index] | series["variant"].eq("fresh")
    order = list(dict.fromkeys([*series.loc[~fresh_part, "model"], *series.loc[fresh_part, "model"]]))
    # one column per Panacea setting (the undefended model, w + eps, its same-norm control), one for the
    # defenses scored on their own fresh-adapter attack; one row per metric, FA where it was scored
    settings = [s for s in dict.fromkeys(series[grid_tables.SETTING]) if isinstance(s, str)]
    shared = [m for m in order if m in set(series.loc[rows.undefended(series) & ~fresh_part, "model"])]
    panels = {f"Panacea, {s}": shared + [m for m in order if m in set(series.loc[series[grid_tables.SETTING].eq(s),
                                                                                  "model"])] for s in settings}
    if fresh_part.any():
        panels["on their own fresh adapter"] = [m for m in order if m in set(series.loc[fresh_part, "model"])]
    roles = dict(zip(series["model"], series["label"]))  # one legend entry per role, whatever the setting
    for harmful_set, drawn in series.groupby("harmful_set"):
        metrics = ("HS", "refusal", "other", *([f"FA_{task}"] if drawn[f"FA_{task}"].notna().any() else []))
        here = {t: [m for m in ms if m in set(drawn["model"])] for t, ms in panels.items()}
        fig = plots.ratio_panels(drawn, {t: ms for t, ms in here.items() if ms}, metrics, legend_names=roles,
                                 context=f"{'AdvBench' if harmful_set == 'test' else 'StrongREJECT'} test prompts")
        plots.save_figure(fig, figures / f"{figure_prefix}_grid_{harmful_set}.png", drawn)

# %% [markdown]
# ## Why the removed compliance is not refusal: the answer losses under eps
# eps is trained to raise the loss of harmful compliance, nothing more. Whether the removed
# compliance becomes refusals depends on how far it raises compliance's loss beyond that of the
# refusals the aligned model learnt (last column: > 0, refusals gain on compliance; the aligned row
# shows how far apart the alignment had put them), and on whether the task's loss moves with it (the
# model breaking). Per probed Panacea setting at p and every seed: the loss (nats per answer token)
# of the alignment pool's refusals, the defender's harmful compliance and the task's test answers,
# minus the undefended model's. The chosen setting's probe at p is `answer_loss_p0.1.csv`, another
# setting's `answer_loss_p0.1_<names>.csv`, each rebuilt by
# `panacea-lab run experiments/smollm2-rt/answer_loss_p0.1<_names>.yaml`. The embedded world's
# counterpart: `panacea-lab run experiments/embedded/answer_loss_p0.1.yaml`.

# %%
every_probe = sorted(results.glob("answer_loss_p*.csv"))  # every ratio and setting
every_row = pd.concat([read_rows(f) for f in every_probe], ignore_index=True) if every_probe else None
if every_row is not None and every_row["p"].eq(ratio).any():
    display(Markdown(answer_loss.probe_table(every_row[every_row["p"].eq(ratio)])))
# Across every probed ratio and setting: does the margin follow the HS the grid measured for the same run?
if every_row is not None and grid is not None:
    for harmful_set in grid["harmful_set"].unique():
        pairs = answer_loss.margin_vs_hs(every_row, grid, harmful_set)
        means = pairs.groupby([grid_tables.SETTING, "p"])[["margin", "HS_change"]].mean()
        within = {f"{p:g}": round(float(d["margin"].corr(d["HS_change"])), 2) for p, d in pairs.groupby("p")}
        print(f"{harmful_set}: margin vs HS change, Pearson r {pairs['margin'].corr(pairs['HS_change']):.2f} over "
              f"{len(pairs)} runs, {means['margin'].corr(means['HS_change']):.2f} over {len(means)} (setting, "
              f"ratio) means, within each ratio {within}")

# %% [markdown]
# ## Where eps sits: safety coefficients over the 30 layers
# Each cell is that (layer, module)'s share of ||eps||^2; noise's share follows tensor sizes alone.
# Rebuilt by `panacea-lab run experiments/smollm2-rt/eps_shares_p0.1_seed0.yaml`.

# %%
if (eps_file := results / f"{quick['eps_shares']}.csv").exists():
    coeffs = read_rows(eps_file)
    fig = plots.coefficient_heatmap(coeffs)
    plots.save_figure(fig, figures / f"{figure_prefix}_heatmap.png", coeffs)
    top = coeffs.groupby("layer")[["eps_share", "noise_share"]].sum().sort_values("eps_share", ascending=False)
    display(top.head(5).round(3))

# %%
print(f"notebook time: {time.perf_counter() - t_start:.0f} s")
