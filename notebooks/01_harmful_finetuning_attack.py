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
# # 01 · The harmful fine-tuning attack
#
# A provider aligns a model, then fine-tunes it on a user's data for a benign task. If a fraction
# *p* of that data is harmful (harmful prompt → compliant answer), the model's refusals break.
# This notebook measures how the harmful score **HS** and the fine-tuning accuracy **FA** move with
# *p* and with the number of fine-tuning samples *n*.
#
# Every stage is cached in the run store, so re-running this notebook is fast; change a parameter
# and only what depends on it is recomputed. Default parameters run the embedded world on a CPU
# in minutes; point `model` at a local Hugging Face directory for a real model.

# %% tags=["parameters"]
model = "embedded"  # "embedded" or a local HF model directory
task = "sentiment"  # sentiment | topic | arithmetic | instruct
ratios = [0.0, 0.01, 0.05, 0.1, 0.2]  # harmful ratios p
seeds = [0]  # CPU scale (make reproduce); the README's 3-seed table: [0, 1, 2]
n = 1000  # fine-tuning samples
sample_counts = [250, 1000]  # n sweep, at ratio_for_n; e.g. [250, 500, 1000]
ratio_for_n = 0.1
step_ratios = [0.1]  # HS along fine-tuning steps, one run per ratio and seed; e.g. [0.05, 0.1, 0.2]
step_methods = ["none"]  # no defense; and vaccine, repnoise, booster, lisa, panacea: do the defenses hold or fade?
step_overrides = {}  # attack overrides of the step runs, e.g. {"epochs": 20, "schedule": "constant"}: 2000 steps
score_every = 60  # score a checkpoint every k optimiser steps
n_eval_steps = 50  # harmful prompts and task samples per checkpoint
preset = "default"  # attack strength: default | strong
setting = "embedded"  # panacea_lab.settings: the step_methods defenses' values and any training recipe
n_eval = 200  # harmful test prompts and task test samples
align_kw = {}  # AlignConfig overrides, e.g. {"epochs": 1} for a smoke run
runs = None  # run store directory (None: $PANACEA_RUNS, else runs/ at the repository root)
figures_dir = "figures"  # relative to the repository root, or an absolute path

# %%
from panacea_lab.notebook_params import check_in_kernel

check_in_kernel(globals(), "01_harmful_finetuning_attack.py")  # a misspelt or ill-typed parameter: one line, nothing run

import pandas as pd
from IPython.display import display

from panacea_lab.studies import baselines

from panacea_lab.plotting import plots
from panacea_lab.studies.sweeps import attack_sweep, summarize
from panacea_lab.studies.trajectory import Trajectory, trajectory
from panacea_lab.config import EvalConfig
from panacea_lab.notebook_setup import setup

lab = setup(model=model, setting=setting, task=task, n=n, preset=preset, n_eval=n_eval, align_kw=align_kw,
            runs=runs, figures_dir=figures_dir)
store, figures, align_cfg = lab.store, lab.figures, lab.align_cfg
sweep = lab.sweep  # task, preset, configs, store and the setting's training recipe (if it has one), at n

# %% [markdown]
# ## HS and FA against the harmful ratio *p*
# The base model complies with harmful prompts; alignment makes it refuse; the user's fine-tuning
# with harmful samples undoes that. *other* counts answers that neither refuse nor comply
# (degenerate or off-topic): a model that is merely broken shows up there, not as safe.

# %%
df = attack_sweep(ratios, seeds, **sweep)
display(summarize(df))

# %%
fig = plots.metric_vs_ratio(df, metrics=("HS", "other", f"FA_{task}"))
plots.save_figure(fig, figures / "01_attack_vs_ratio.png", df)

# %% [markdown]
# **What this shows.** Read HS from left to right against the dashed aligned line: how small a
# harmful share already undoes alignment, and whether the rise is gradual or sudden. FA staying
# flat is what makes the attack hard to notice: the user's task is served as well as ever, while
# *other* staying low says the fine-tuned model complies rather than breaks.

# %% [markdown]
# ## HS against the number of fine-tuning samples *n* (at a fixed *p*)
# More samples at the same ratio means more harmful examples *and* more benign ones.

# %%
by_n = pd.concat([attack_sweep([ratio_for_n], seeds, include_reference=False, **{**sweep, "n": k})
                  .assign(n=k, label=f"fine-tuned n={k}") for k in sample_counts])
display(by_n.groupby("n")[["HS", "refusal", "other", f"FA_{task}"]].agg(["mean", "std"]).round(1))

# %%
fig = plots.metric_vs_param(by_n, param="n", metrics=("HS", f"FA_{task}"), baseline_label=None,
                            group_by=lambda label: f"fine-tuned at p={ratio_for_n:g}")
plots.save_figure(fig, figures / "01_attack_vs_n.png", by_n)

# %% [markdown]
# **What this shows.** At a fixed ratio, a larger n brings more harmful samples but also more
# benign ones and more optimiser steps. If HS climbs with n, the attacker's absolute number of
# harmful samples (or the training length) matters, not only their share.

# %% [markdown]
# ## HS against fine-tuning steps
# One fine-tuning run per ratio (and alignment method), scored in place every few steps; step 0
# is the aligned model. Does refusal erode steadily as harmful samples accumulate, or break at
# once? With `step_methods` listing the defenses, this is the paper's motivating experiment:
# defenses start safe, but do they stay safe as fine-tuning goes on? Panacea's line is w + eps at
# each checkpoint (the eps of that step), what a provider stopping there would serve.

# %%
step_eval = EvalConfig(n_harmful=n_eval_steps, n_task=n_eval_steps, tasks=(task,))


def step_rows(method, p, seed, cfg):
    """One row per scored checkpoint; a Panacea run's rows are w + eps at that step."""
    traj = trajectory(Trajectory(run=cfg, every=score_every, eval=step_eval), store)
    line = baselines.label(method).split(" (")[0] + (" w + eps" if "points_eps" in traj else "")
    return [{**point, "method": method, "run": f"{line} p={p:g}", "seed": seed}
            for point in traj.get("points_eps", traj["points"])]


steps = pd.DataFrame([row for method in step_methods
                      for p, seed, cfg in baselines.baseline_configs(method, step_ratios, seeds, task, preset,
                                                                     align_cfg, setting,
                                                                     **{**lab.attack_kw, **step_overrides})
                      for row in step_rows(method, p, seed, cfg)])
display(steps.groupby(["run", "step"])[["HS", "other", f"FA_{task}"]].mean().round(1).unstack("run"))

# %%
fig = plots.metric_vs_step(steps, metrics=("HS", f"FA_{task}"))
plots.save_figure(fig, figures / "01_hs_vs_steps.png", steps)

# %% [markdown]
# **What this shows.** Step 0 is the aligned model; each line is one fine-tuning run followed in
# time. A line that stays flat and then jumps says refusal breaks at once after enough harmful
# steps; a steady climb says it erodes. With the defenses listed, compare their lines to SFT's: a
# defense that starts low but ends where SFT ends only delays the attack.
