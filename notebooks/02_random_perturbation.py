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
# # 02 · Random perturbation: an embarrassingly simple defense
#
# After the harmful fine-tuning attack, add Gaussian noise N(0, std²) to every LoRA entry of the
# fine-tuned model. Does it lower the harmful score? At what cost to fine-tuning accuracy? The
# bands are ±1 std over fine-tuning seeds; the dashed line is the undefended model.

# %% tags=["parameters"]
model = "embedded"
task = "sentiment"
ratio = 0.1  # harmful ratio p of the attack being defended
seeds = [0, 1]  # CPU scale (make reproduce); the paper's: [0, 1, 2]
# the post-fine-tuning defenses swept, {name: {config field: value or [values]}}: a list is swept
defenses = {"noise": {"std": [0.01, 0.02, 0.04, 0.08]}}  # finer: [0.005, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08]
n = 1000
preset = "default"
setting = "embedded"  # named defaults and training recipe (panacea_lab.settings): embedded | paper | paper-recipe
n_eval = 200
align_kw = {}
runs = None  # run store directory (None: $PANACEA_RUNS, else runs/ at the repository root)
figures_dir = "figures"  # relative to the repository root, or an absolute path

# %%
from panacea_lab.notebook_params import check_in_kernel

check_in_kernel(globals(), "02_random_perturbation.py")  # a misspelt or ill-typed parameter: one line, nothing run

from IPython.display import display

from panacea_lab.plotting import plots
from panacea_lab.studies.sweeps import defense_sweep, summarize
from panacea_lab.notebook_setup import setup

lab = setup(model=model, setting=setting, task=task, n=n, preset=preset, n_eval=n_eval, align_kw=align_kw,
            runs=runs, figures_dir=figures_dir)
figures = lab.figures
df = defense_sweep([ratio], seeds, methods=defenses, setting=setting, **lab.sweep)
display(summarize(df))

# %% [markdown]
# Noise lowers HS only once it is large enough to damage the model: watch *other* (degenerate
# answers) and FA rise and fall together with it.

# %%
fig = plots.metric_vs_param(df, param="std", metrics=("HS", "other", f"FA_{task}"))
plots.save_figure(fig, figures / "02_noise_vs_std.png", df)

# %% [markdown]
# **What this shows.** Read the three panels at the same std. Where HS drops below the dashed
# undefended line, check *other* and FA at that std: if *other* has risen and FA has fallen, the
# noise did not make the model refuse, it made it unable to answer anything, harmful or not. A
# useful defense would lower HS while *other* stays low and FA stays near the dashed line.
