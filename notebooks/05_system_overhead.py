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
# # 05 · System overhead: what each defense costs per training step
#
# Panacea's step runs three forward/backward passes (the user's batch, the harmful batch at w and
# at w + eps), so it should cost about three SFT steps; amortized Panacea (eps recomputed every
# k steps, off by default) pays that only every k-th step. Post-fine-tuning transforms (noise,
# Antidote) cost one pass over the weights and are not trained, so they are not profiled here.
#
# Each method trains the same model on the same batches in a fresh process, one at a time: on a
# CPU, peak memory is the process's peak resident set above the loaded model; on a GPU, the CUDA
# allocator's peak. Timings depend on the machine: compare ratios, not seconds.

# %% tags=["parameters"]
model = "embedded"
methods = ["none", "panacea", "panacea_k4"]  # and "vaccine", "repnoise", "booster", "lisa"
steps = 8  # timed steps per method (after warm-up)
warmup = 2
batch_size = 10
task = "sentiment"
runs = None  # run store: a profile is measured once per device kind, then served from here
# timings are this machine's: by default the figure goes to build/figures/, outside the committed figures
# (figures/05_system_overhead.png is the reference measurement the docs quote; pass figures_dir="figures"
# to replace it)
figures_dir = "build/figures"  # relative to the repository root, or an absolute path

# %%
from panacea_lab.notebook_params import check_in_kernel

check_in_kernel(globals(), "05_system_overhead.py")  # a misspelt or ill-typed parameter: one line, nothing run

import pandas as pd
from IPython.display import display

from panacea_lab.plotting import plots
from panacea_lab.studies.overhead import OverheadJob, profile_cached
from panacea_lab.notebook_setup import setup

lab = setup(model=model, task=task, runs=runs, figures_dir=figures_dir)
store, figures = lab.store, lab.figures
rows = [profile_cached(OverheadJob(m, model, steps, batch_size, task, warmup), store) for m in methods]
df = pd.DataFrame(rows)[["method", "device", "threads", "steps", "batch_size", "seconds_per_step", "peak_mib",
                         "memory"]]
df["time_over_none"] = df["seconds_per_step"] / df.loc[df["method"] == methods[0], "seconds_per_step"].iloc[0]
display(df[["method", "device", "threads", "seconds_per_step", "time_over_none", "peak_mib"]].round(3))

# %%
fig = plots.overhead_bars(df, baseline=methods[0])
plots.save_figure(fig, figures / "05_system_overhead.png", df)
