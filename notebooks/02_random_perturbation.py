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
stds = [0.01, 0.02, 0.04, 0.08]  # finer: [0.005, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08]
n = 1000
preset = "default"
n_eval = 200
align_kw = {}
runs = None
figures_dir = "../figures"

# %%
from IPython.display import display

from panacea_lab.analysis import plots
from panacea_lab.config import AlignConfig, EvalConfig, ModelConfig
from panacea_lab.analysis.sweeps import defense_sweep, summarize
from panacea_lab.training.store import RunStore

align_cfg = AlignConfig(model=ModelConfig(path=model), **align_kw)
eval_cfg = EvalConfig(n_harmful=n_eval, n_task=n_eval, tasks=(task,))
df = defense_sweep([ratio], seeds, task=task, preset=preset, stds=stds, rhos=(), antidote_ratio=None,
                   align_cfg=align_cfg, eval_cfg=eval_cfg, store=RunStore(runs), n=n)
display(summarize(df))

# %% [markdown]
# Noise lowers HS only once it is large enough to damage the model: watch *other* (degenerate
# answers) and FA rise and fall together with it.

# %%
fig = plots.metric_vs_param(df, param="std", metrics=("HS", "other", f"FA_{task}"))
plots.save_figure(fig, f"{figures_dir}/02_noise_vs_std.png", df)
