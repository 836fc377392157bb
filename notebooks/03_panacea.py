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
# the post-fine-tuning defenses beside Panacea, {name: {config field: value or [values]}}: a list is swept;
# a name with {} takes its registry record's values (Antidote: dense_ratio 0.1)
defenses = {"noise": {"std": [0.01, 0.02, 0.04, 0.08]}, "antidote": {}}
setting = "embedded"  # panacea_lab.settings: "embedded" (Panacea lambda 0.1), "paper" (1e-3), "paper-recipe"
rho = None  # the rho drawn across p and in the training curves; None: the setting's
rhos = None  # Panacea's radii, each one more run per ratio and seed; None: [rho]; e.g. [0.5, 1, 2]
lam = None  # Panacea's lambda; None: the setting's
ablation_rhos = [1.0]  # rho x lambda grid, at ablation_ratio and the first seed; e.g. [0.5, 1, 2]
ablation_lams = [1e-3, 1e-1]  # and [1e-3, 1e-2, 1e-1]
ablation_ratio = 0.1
baselines = ["none"]  # the paper's comparison: ["none", "vaccine", "repnoise", "booster", "lisa"] (each ~1-5 min)
baseline_ratios = [0.1]  # ratios (among `ratios`) of the baseline comparison
axis_tasks = []  # the defenses at axis_ratio when the user fine-tunes on other tasks, e.g. ["topic", "arithmetic"]
axis_ns = []  # ... and on other numbers of fine-tuning samples, e.g. [500, 1000, 2000]
axis_ratio = 0.1
axis_controls = ["random_direction"]  # the controls run beside Panacea on those axes (also: "harmful_ascent")
n = 1000
preset = "default"
n_eval = 200
align_kw = {}
runs = None  # run store directory (None: $PANACEA_RUNS, else runs/ at the repository root)
figures_dir = "figures"  # relative to the repository root, or an absolute path

# %%
from panacea_lab.notebook_params import check_in_kernel

check_in_kernel(globals(), "03_panacea.py")  # a misspelt or ill-typed parameter: one line, nothing run

import dataclasses

import pandas as pd
from IPython.display import display

from panacea_lab import pipeline
from panacea_lab.plotting import plots
from panacea_lab.tables import rows
from panacea_lab.studies.baselines import baseline_sweep
from panacea_lab.studies.sweeps import defense_sweep, methods_of, summarize
from panacea_lab.notebook_setup import setup

lab = setup(model=model, setting=setting, task=task, n=n, preset=preset, n_eval=n_eval, align_kw=align_kw,
            runs=runs, figures_dir=figures_dir, rho=rho, lam=lam)
store, figures, eval_cfg, panacea = lab.store, lab.figures, lab.eval_cfg, lab.panacea
common = dict(setting=setting, **lab.sweep)  # the setting's training recipe, if it has one, at n
rho_drawn = panacea.rho
rhos = [rho_drawn] if rhos is None else rhos
if rho_drawn not in rhos:
    raise ValueError(f"rho = {rho_drawn:g} is not among rhos = {rhos}: add it to rhos, or pick rho from them")
print(f"setting {setting!r}: Panacea rho = {rho_drawn:g} (of {rhos}), lambda = {panacea.lam:g}")
posts = methods_of(defenses, setting)  # the post-fine-tuning defenses' configs, every swept value
drawn = rows.middle_each(posts) + [panacea]  # one config per defense: the middle swept value, Panacea at rho

# %% [markdown]
# ## Every defense across the harmful ratio p

# %%
df = defense_sweep(ratios, seeds, methods=posts + [dataclasses.replace(panacea, rho=r) for r in rhos], **common)
display(summarize(df))

# %%
shown = df[rows.undefended(df) | rows.of(df, *drawn)]  # no defense, and each defense at its drawn value
fig = plots.metric_vs_ratio(shown, metrics=("HS", "other", f"FA_{task}"), reference=False,
                            series=list(dict.fromkeys(shown["label"])))
plots.save_figure(fig, figures / "03_defenses_vs_ratio.png", shown)

# %% [markdown]
# **What this shows.** Each line is one defense on the same fine-tuned models, against the
# attack's strength. Compare Panacea's w (no eps) with its w + eps: the gap between them is what
# adding eps buys. A defense only counts if its HS line sits below no defense's while its FA line
# stays with it and its *other* line stays low.

# %% [markdown]
# ## The HS-FA trade-off: Pareto fronts over rho (Panacea) and std (noise)
# Lower and further right is better. A defense whose front sits below noise's at the same FA
# removes harm that noise can only remove by breaking the model.

# %%
for p in ratios:
    fig = plots.pareto(df[df["p"] == p], x=f"FA_{task}", y="HS")
    plots.save_figure(fig, figures / f"03_pareto_p{p:g}.png", df[df["p"] == p])

# %% [markdown]
# **What this shows.** Every point is one defense setting (tagged with its std or rho), every
# step line the best a method reaches by tuning that knob. Look for the lowest point that keeps
# FA close to the undefended model's: that is the trade-off a provider can actually ship. The
# same-norm random and harmful-ascent controls tell whether eps's learned direction, not its
# size, does the work.

# %% [markdown]
# ## The paper's baselines beside the post-fine-tuning defenses
# Vaccine, RepNoise and Booster change the *alignment* (the user's fine-tuning that follows is the
# plain attack); Lisa interleaves alignment steps into the fine-tuning with a proximal term. Each
# runs at the named setting's values (the official code's defaults unless the setting calibrates it).

# %%
post = shown[~rows.undefended(shown) & shown["p"].isin(baseline_ratios)]
compared = pd.concat([baseline_sweep(baseline_ratios, seeds, methods=baselines, **common), post], ignore_index=True)
display(summarize(compared))
for p in baseline_ratios:
    fig = plots.method_bars(compared, metrics=("HS", "other", f"FA_{task}"), p=p)
    plots.save_figure(fig, figures / f"03_baselines_p{p:g}.png", compared[compared["p"] == p])

# %% [markdown]
# **What this shows.** One bar per method at one attack ratio, SFT being the undefended attack.
# The alignment-stage baselines act before the attack, the post-fine-tuning ones after it; read
# HS and FA side by side, since a method that lowers HS by lowering FA (or by raising *other*)
# trades usefulness for safety rather than restoring refusals.

# %% [markdown]
# ## Other fine-tuning tasks and sample counts
# The same post-fine-tuning defenses at `axis_ratio` when the user's task is another one
# (`axis_tasks`) or the user brings another number of samples (`axis_ns`); each is its own attack,
# so each costs one fine-tuning and one Panacea training per seed. Off at the CPU scale.

# %%
def axis_sweep(**changed):
    """Each drawn defense at one more task or n; Panacea as w + eps only (its w is no model it serves)."""
    df = defense_sweep([axis_ratio], seeds, methods=drawn, controls=axis_controls, **{**common, **changed})
    return df[rows.served(df)]


for other_task in axis_tasks:
    on_task = axis_sweep(task=other_task, eval_cfg=dataclasses.replace(eval_cfg, tasks=(other_task,)))
    display(summarize(on_task))
    fig = plots.method_bars(on_task, metrics=("HS", "other", f"FA_{other_task}"))
    plots.save_figure(fig, figures / f"03_defenses_task_{other_task}.png", on_task)
if axis_ns:
    by_n = pd.concat([axis_sweep(n=k).assign(n=k) for k in axis_ns], ignore_index=True)
    by_n["label"] = by_n["label"] + " n=" + by_n["n"].astype(str)
    display(summarize(by_n))
    drawn = by_n[by_n["variant"] != "fresh"]  # the fresh-adapter run is Antidote's reference, not a defense
    fig = plots.metric_vs_param(drawn, param="n", metrics=("HS", "other", f"FA_{task}"), baseline_label=None,
                                group_by=lambda label: label.rsplit(" n=", 1)[0])
    plots.save_figure(fig, figures / "03_defenses_vs_n.png", drawn)

# %% [markdown]
# **What this shows.** Whether the verdict at the default task and n carries over. On a task whose
# FA the fine-tuning barely moves (the embedded world's arithmetic and instruction following sit near
# their base model's level), FA shows only whether a defense breaks the model, not whether it keeps
# what the user trained; more samples at the same ratio bring more harmful samples, so the attack and
# the defense both change with n.

# %% [markdown]
# ## rho x lambda ablation (HS of w + eps, and FA)

# %%
grid = pd.concat([defense_sweep([ablation_ratio], seeds[:1], controls=[], **common,
                                methods=[dataclasses.replace(panacea, rho=r, lam=lm) for r in ablation_rhos])
                  .assign(lam=lm) for lm in ablation_lams])
with_eps = grid[rows.through_post_half(grid)]
for metric in ("HS", f"FA_{task}"):
    fig = plots.grid_heatmap(with_eps, index="rho", columns="lam", value=metric,
                             title=f"Panacea w+eps: {metric} over rho x lambda (p={ablation_ratio:g})")
    plots.save_figure(fig, figures / f"03_ablation_{metric}.png", with_eps)

# %% [markdown]
# **What this shows.** Each cell is one Panacea run, rho growing down the rows and lambda across
# the columns. rho sets how far eps moves the weights, lambda how hard the training pushes w to
# be harmed by eps: look for the region where HS is low while FA stays at its undefended level,
# and for how sensitive that region is to lambda (the knob the embedded setting calibrates).

# %% [markdown]
# ## Training curves: h(w) and h(w + eps)
# Panacea pushes h(w + eps) (the harmful loss after the perturbation) up while the user's loss f
# falls. The clamp at 5 stops the push once the perturbed model no longer fits harmful answers.

# %%
run = lab.attack(ratios[-1], seeds[0], defense=panacea)
log = pd.DataFrame(pipeline.attack(run, store)["train"]["log"])
fig = plots.training_curves(log)
plots.save_figure(fig, figures / "03_training_curves.png", log)

# %% [markdown]
# **What this shows.** The gap between h(w + eps) and h(w) is what Panacea trains for: w itself
# may learn the harmful answers (h(w) falls), as long as adding eps undoes them (h(w + eps) stays
# high). The user's loss f should fall as in plain fine-tuning; if it does not, lambda costs the
# user's task.
