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
# # 03 · Panacea: an optimised post-fine-tuning perturbation
#
# During the user's fine-tuning, Panacea learns a perturbation eps (norm rho) that *maximises* the
# harmful loss on a defender-held harmful set; after the last step it adds eps to the weights.
# Each step: `G_f - lambda * (grad h(w + eps) - grad h(w))`, eps = rho * grad h / ||grad h||.
#
# We compare, on the same fine-tuned models: no defense, random noise, Antidote, Panacea's trained
# weights *w* and *w + eps*, and a random direction with exactly ||eps|| (is it the direction or
# only the size?).

# %% tags=["parameters"]
model = "embedded"
task = "sentiment"
ratios = [0.1, 0.2]  # CPU scale: a Panacea run is ~2 min on 2 cores. The paper's grid: [0.05, 0.1, 0.2]
seeds = [0]  # and [0, 1, 2]
stds = [0.01, 0.02, 0.04, 0.08]
rhos = [1.0]  # and [0.5, 1, 2]: each is one more Panacea run per ratio and seed
rho_shown = 1.0  # the rho drawn across p and in the training curves (one of rhos)
lam = 0.1  # the embedded world's calibrated value (README); the paper's: 1e-3
ablation_rhos = [1.0]  # rho x lambda grid, at ablation_ratio and the first seed; e.g. [0.5, 1, 2]
ablation_lams = [1e-3, 1e-1]  # and [1e-3, 1e-2, 1e-1]
ablation_ratio = 0.1
baselines = ["sft"]  # the paper's comparison: ["sft", "vaccine", "repnoise", "booster", "lisa"] (each ~1-5 min)
baseline_ratios = [0.1]  # ratios (among `ratios`) of the baseline comparison
n = 1000
preset = "default"
n_eval = 200
align_kw = {}
runs = None
figures_dir = "../figures"

# %%
import pandas as pd
from IPython.display import display

from panacea_lab.analysis import plots
from panacea_lab.config import AlignConfig, EvalConfig, ModelConfig
from panacea_lab.defenses.panacea import PanaceaConfig
from panacea_lab.analysis.baselines import baseline_sweep
from panacea_lab.analysis.sweeps import attack_config, defense_sweep, summarize
from panacea_lab.training.pipeline import PanaceaRun, attack
from panacea_lab.training.store import RunStore

store = RunStore(runs)
align_cfg = AlignConfig(model=ModelConfig(path=model), **align_kw)
eval_cfg = EvalConfig(n_harmful=n_eval, n_task=n_eval, tasks=(task,))
common = dict(task=task, preset=preset, align_cfg=align_cfg, eval_cfg=eval_cfg, store=store, n=n)

# %% [markdown]
# ## Every defense across the harmful ratio p

# %%
df = defense_sweep(ratios, seeds, stds=stds, rhos=rhos, lam=lam, **common)
display(summarize(df))

# %%
methods = ["no defense", f"noise std={stds[len(stds) // 2]:g}", "antidote 0.1",
           f"panacea rho={rho_shown:g} (w)", f"panacea rho={rho_shown:g} (w+eps)"]
fig = plots.metric_vs_ratio(df, metrics=("HS", "other", f"FA_{task}"), reference=False, series=methods)
plots.save_figure(fig, f"{figures_dir}/03_defenses_vs_ratio.png", df[df["model"].isin(methods)])

# %% [markdown]
# ## The HS-FA trade-off: Pareto fronts over rho (Panacea) and std (noise)
# Lower and further right is better. A defense whose front sits below noise's at the same FA
# removes harm that noise can only remove by breaking the model.

# %%
for p in ratios:
    fig = plots.pareto(df[df["p"] == p], x=f"FA_{task}", y="HS")
    plots.save_figure(fig, f"{figures_dir}/03_pareto_p{p:g}.png", df[df["p"] == p])

# %% [markdown]
# ## The paper's baselines beside the post-fine-tuning defenses
# Vaccine, RepNoise and Booster change the *alignment* (the user's fine-tuning that follows is the
# plain attack); Lisa interleaves alignment steps into the fine-tuning with a proximal term. Each
# runs at its paper-family defaults, not calibrated on this world.

# %%
post = df[df["model"].isin(methods[1:])]
post = post[post["p"].isin(baseline_ratios)]
compared = pd.concat([baseline_sweep(baseline_ratios, seeds, methods=baselines, **common), post], ignore_index=True)
display(summarize(compared))
for p in baseline_ratios:
    fig = plots.method_bars(compared, metrics=("HS", "other", f"FA_{task}"), p=p)
    plots.save_figure(fig, f"{figures_dir}/03_baselines_p{p:g}.png", compared[compared["p"] == p])

# %% [markdown]
# ## rho x lambda ablation (HS of w + eps, and FA)

# %%
grid = pd.concat([defense_sweep([ablation_ratio], seeds[:1], stds=(), rhos=ablation_rhos, lam=lm,
                                antidote_ratio=None, **common).assign(lam=lm) for lm in ablation_lams])
with_eps = grid[grid["model"].str.endswith("(w+eps)")]
for metric in ("HS", f"FA_{task}"):
    fig = plots.grid_heatmap(with_eps, index="rho", columns="lam", value=metric,
                             title=f"Panacea w+eps: {metric} over rho x lambda (p={ablation_ratio:g})")
    plots.save_figure(fig, f"{figures_dir}/03_ablation_{metric}.png", with_eps)

# %% [markdown]
# ## Training curves: h(w) and h(w + eps)
# Panacea pushes h(w + eps) (the harmful loss after the perturbation) up while the user's loss f
# falls. The clamp at 5 stops the push once the perturbed model no longer fits harmful answers.

# %%
run = PanaceaRun(attack_config(align_cfg, task, ratios[-1], seeds[0], preset, n=n),
                 PanaceaConfig(rho=rho_shown, lam=lam))
log = pd.DataFrame(attack(run, store)["train"]["log"])
fig = plots.training_curves(log)
plots.save_figure(fig, f"{figures_dir}/03_training_curves.png", log)
