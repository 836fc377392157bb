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
# # 04 · Safety coefficients: where Panacea's perturbation lives, and where it acts
#
# The share of ||eps||² that each decoder layer and each projection (q/k/v/o, gate/up/down) holds.
# Isotropic noise spreads its norm by tensor size alone, so it is the reference a learned eps
# departs from. The paper finds distinct per-model patterns; here we see our model's.
#
# Where the norm sits is not where the safety is: the causal section applies eps to part of the
# model only (one layer, all layers but one, the first or last k, one module type) beside a random
# direction of the same norm over the same tensors, and the live explorer scores any per-layer
# scaling of eps in a few seconds.

# %% tags=["parameters"]
model = "embedded"
task = "sentiment"
ratios = [0.1]  # each (ratio, seed) is one Panacea run, ~3 min on 2 cores; shared with notebook 03
seeds = [0]  # e.g. [0, 1, 2]: one heatmap per run; the ablation averages over them
setting = "embedded"  # panacea_lab.settings: Panacea's rho and lambda, and any training recipe ("paper-recipe")
rho = None  # None: the setting's
lam = None  # None: the setting's (embedded 0.1; the paper's 1e-3)
n = 1000
preset = "default"
n_eval = 200  # harmful prompts and task samples per evaluation of the ablation
ablation_ratio = 0.1  # the ratio of the causal section and the live explorer (best one of `ratios`: runs are shared)
ablation_kinds = ["layer", "all_but_layer", "first_k", "last_k", "module"]
explorer_n = 50  # the live explorer's fixed subset (harmful prompts and task samples)
explorer_max_scale = 3.0  # the per-layer sliders run from 0 (off) to this factor
align_kw = {}
runs = None  # run store directory (None: $PANACEA_RUNS, else runs/ at the repository root)
figures_dir = "figures"  # relative to the repository root, or an absolute path
# the last section reads committed files: per model, its eps_shares and layer-ablation results (under results/)
across_models = {
    "embedded world": ["embedded/eps_shares_p0.1_seed0", "embedded/ablation_p0.1_seed0"],
    "SmolLM2-135M": ["smollm2-rt/eps_shares_p0.1_seed0_chosen", "smollm2-rt/ablation_p0.1_seed0"],
    "Gemma-3-270M": ["gemma3/eps_shares_p0.1_seed0", "gemma3/ablation_p0.1_seed0"],
}

# %%
from panacea_lab.notebook_params import check_in_kernel

check_in_kernel(globals(), "04_safety_coefficients.py")  # a misspelt or ill-typed parameter: one line, nothing run

import pandas as pd
from IPython.display import display

from panacea_lab.plotting import plots
from panacea_lab.studies.sweeps import eps_coefficients
from panacea_lab.notebook_setup import setup

# the same setup as notebook 03's: the same parameters name the same (shared, cached) Panacea runs
lab = setup(model=model, setting=setting, task=task, n=n, preset=preset, n_eval=n_eval, align_kw=align_kw,
            runs=runs, figures_dir=figures_dir, rho=rho, lam=lam)
store, figures, eval_cfg, panacea = lab.store, lab.figures, lab.eval_cfg, lab.panacea
print(f"setting {setting!r}: Panacea rho = {panacea.rho:g}, lambda = {panacea.lam:g}")


def panacea_run(p, seed):
    return lab.attack(p, seed, defense=panacea)


coeffs = {f"p={p:g} seed={seed}": eps_coefficients(panacea_run(p, seed), store) for p in ratios for seed in seeds}
tidy = pd.concat([c.assign(run=name) for name, c in coeffs.items()])
display(tidy.groupby("layer")[["eps_share", "noise_share"]].sum().round(3))

# %% [markdown]
# ## One heatmap per run, and noise as the reference

# %%
# every map on one colour scale, so eps's shares and the noise reference compare cell by cell
scale, limits = plots.shared_scale([plots.heatmap_frame(c, value=v) for c in coeffs.values()
                                    for v in ("eps_share", "noise_share")])
for name, c in coeffs.items():
    fig = plots.coefficient_heatmap(c, value="eps_share", scale=scale, limits=limits)
    plots.save_figure(fig, figures / f"04_eps_{name.replace('=', '').replace(' ', '_')}.png", c)
fig = plots.coefficient_heatmap(next(iter(coeffs.values())), value="noise_share", scale=scale, limits=limits)
plots.save_figure(fig, figures / "04_noise_reference.png", next(iter(coeffs.values())))

# %% [markdown]
# **What this shows.** Each cell is one layer x module's share of ||eps||² (the map sums to 1). Compare
# a run's map with the noise reference: noise's shares follow tensor sizes alone (every layer holds
# 1/6 of the norm on this six-layer model, the MLP projections more than attention's), so any cell much
# darker than its noise counterpart is where the training put eps on purpose. On the embedded world
# (p = 0.1, seed 0) layer 0 holds about 62% of ||eps||² against noise's 17%, and k_proj / v_proj hold
# more than their size would give them. Several seeds' maps side by side tell a stable pattern from a
# seed's accident. A large share is not yet a proof that the layer matters: the causal section tests that.


# %% [markdown]
# ## Coefficient explorer
# Pick a run, a normalisation (the whole map, each layer, or each module sums to 1), the modules
# and a layer range. The controls wrap `plots.coefficient_heatmap`, a pure function, so what you
# see is what `make reproduce` saves. Executed headless, the cell renders its first state.

# %%
import ipywidgets as widgets
import matplotlib.pyplot as plt

layers = sorted(tidy["layer"].unique())
modules = [m for m in plots.MODULE_ORDER if m in set(tidy["module"])]
controls = dict(
    run=widgets.Dropdown(options=list(coeffs), description="run"),
    value=widgets.ToggleButtons(options=["eps_share", "noise_share"], description="show"),
    normalise=widgets.ToggleButtons(options=["total", "layer", "module"], description="normalise"),
    modules=widgets.SelectMultiple(options=modules, value=tuple(modules), description="modules"),
    layer_range=widgets.IntRangeSlider(min=min(layers), max=max(layers), value=(min(layers), max(layers)),
                                       description="layers"),
)


def show(run, value, normalise, modules, layer_range):
    chosen = range(layer_range[0], layer_range[1] + 1)
    fig = plots.coefficient_heatmap(coeffs[run], value=value, normalise=normalise, modules=list(modules) or None,
                                    layers=chosen)
    plt.show(fig)


explorer = widgets.interactive(show, **controls)
display(explorer)

# %% [markdown]
# **What this shows.** The same maps, re-normalised: "layer" makes each row sum to 1 (which module a
# layer's eps prefers), "module" each column (at which depth a module type's eps sits). Narrow the
# layer range to look past layer 0's dominance at the later layers' pattern.


# %% [markdown]
# ## Causal test: eps on part of the model
# Each row is a cached evaluation of the same trained run with eps restricted, and of a random
# direction with the restricted eps's norm over exactly the same tensors. If one layer's eps removes
# as much harm as the whole while its control does not, that layer carries the safety; a layer that
# holds much of ||eps||² but changes nothing does not. The same call for three seeds, outside this
# notebook: `layer_ablations([panacea_run(p, s) for s in (0, 1, 2)], store, eval_cfg)`.

# %%
from panacea_lab.plotting.ablation_plots import ablation_figures
from panacea_lab.studies.layer_ablation import layer_ablations
from panacea_lab.studies.sweeps import summarize

ablation = layer_ablations([panacea_run(ablation_ratio, seed) for seed in seeds], store, eval_cfg, kinds=ablation_kinds)
display(summarize(ablation))
for kind, fig in ablation_figures(ablation).items():
    plots.save_figure(fig, figures / f"04_ablation_{kind}.png", ablation[ablation["param"].isin([kind, "all"])
                                                                          | ablation["param"].isna()])

# %% [markdown]
# **What this shows.** Each figure has one bar pair per part of the model: HS (and *refusal*, *other*,
# FA) with eps applied only there, beside a random direction of the same norm on the same tensors;
# the dashed lines are w alone and eps on every layer. Read HS and *refusal* together: a part that
# brings HS to 0 while refusals stay low turns compliance into broken answers, not refusals. On the
# embedded world (p = 0.1, seed 0) eps on layer 0 alone removes compliance (HS 0.5) but refuses only
# 46% of the time, the first three layers together restore every refusal, and eps on every layer *but*
# layer 0 does too: the early-layer core is sufficient but not necessary. The same-norm random rows
# stay at w's HS everywhere, so what acts is eps's direction, not its size.


# %% [markdown]
# ## Live explorer: scale eps per layer, switch modules, score
# Move a layer's slider (0 removes that layer's eps, 1 applies it as learnt) and switch module types
# on or off, then press **score**: the run's model, kept in memory, is scored with that part of eps
# on the first `explorer_n` harmful prompts and task samples (a few seconds), and the heatmap shows
# the share of ||eps||² applied per layer and module. The numbers equal what
# `pipeline.evaluate("attack", run, store, EvalConfig(n_harmful=explorer_n, n_task=explorer_n,
# tasks=(task,)), post)` gives for the `post` shown. Executed headless, it shows its first state.

# %%
import json

from IPython.display import clear_output

from panacea_lab.explorer.live_eps import LiveEps, explorer_eval
from panacea_lab.config import to_dict

live_run = panacea_run(ablation_ratio, seeds[0])
live = LiveEps(live_run, store, explorer_eval(task, explorer_n))
sliders = [widgets.FloatSlider(value=1.0, min=0.0, max=explorer_max_scale, step=0.1, description=f"layer {i}",
                               continuous_update=False) for i in live.layers]
toggles = [widgets.ToggleButton(value=True, description=m) for m in live.modules]
score_button = widgets.Button(description="score", button_style="primary")
numbers, picture = widgets.HTML(), widgets.Output()


def current_post():
    return live.post([s.value for s in sliders], [t.description for t in toggles if t.value])


def score(_=None):
    post = current_post()
    result = live.score(post)
    with picture:
        clear_output(wait=True)
        fig = plots.coefficient_heatmap(live.applied_shares(post), value="applied_share", normalise=None,
                                        scale="linear")
        display(fig)
        plt.close(fig)
    # the numbers last: once they change, the heatmap above them already shows the same setting
    cells = "".join(f'<td data-metric="{k}">{v:.1f}</td>' for k, v in result.items() if k != "seconds")
    heads = "".join(f"<th>{k}</th>" for k in result if k != "seconds")
    numbers.value = (f"<table class='live-numbers'><tr>{heads}</tr><tr>{cells}</tr></table>"
                     f"<small>scored in {result['seconds']:.1f} s · post <code data-post='{json.dumps(to_dict(post))}'>"
                     f"{post}</code> · run <code data-run='{json.dumps(to_dict(live_run))}'>p={live_run.p:g}, "
                     f"seed {live_run.seed}</code></small>")
    return post, result


score_button.on_click(score)
first_post, first_result = score()
plots.save_figure(plots.coefficient_heatmap(live.applied_shares(first_post), value="applied_share", normalise=None,
                                            scale="linear"),
                  figures / "04_explorer_first_state.png", live.applied_shares(first_post))
live_explorer = widgets.VBox([widgets.HBox([widgets.VBox(sliders), widgets.VBox(toggles)]), score_button, numbers,
                              picture])
live_explorer.add_class("live-eps")
display(live_explorer)

# %% [markdown]
# **What this shows.** The first state is eps as learnt (every slider at 1), so its numbers equal the
# "eps on every layer" row above on this smaller subset. Try setting layer 0 to 0 and scoring, then
# only layer 0 at 1: the numbers reproduce the causal section's rows in seconds, and factors above 1
# show how far a layer's eps can be pushed before FA falls.

# %% [markdown]
# ## Across models: are the coefficients distinct, and do the largest layers carry the effect?
#
# The paper reads distinct safety coefficients per model from four 7B models. This section reads the
# committed files of three models (`across_models`): the embedded world's tiny Llama, SmolLM2-135M and
# Gemma-3-270M, each at p = 0.1, seed 0 and the Panacea setting chosen on its validation split. Each
# layer sits at its relative depth; dashed lines are noise on the same tensors. The right panel applies
# eps on the 1 and 3 layers of largest share, and on every layer but them, beside a same-norm random
# direction on the same tensors. Each file `results/<name>.csv` is rebuilt by `panacea-lab run
# experiments/<name>.yaml`.
# The LoRA differs per model (q/k/v only on Gemma-3-270M, all seven projections on the others), so
# only the per-layer shares are compared, not the per-module ones.

# %%
from panacea_lab.experiments.spec import RESULTS
from panacea_lab.plotting.across_models import ablation_summary, across_models_figure, concentration, depth_profile
from panacea_lab.tables.export_rows import read_rows

profiles, ablations = {}, {}
for model_name, (shares_name, ablation_name) in across_models.items():
    if not (RESULTS / f"{shares_name}.csv").is_file():
        print(f"{model_name}: no results/{shares_name}.csv; `panacea-lab run experiments/{shares_name}.yaml` writes it")
        continue
    profiles[model_name] = depth_profile(read_rows(RESULTS / f"{shares_name}.csv"), model_name)
    if (RESULTS / f"{ablation_name}.csv").is_file():
        ablations[model_name] = ablation_summary(read_rows(RESULTS / f"{ablation_name}.csv"), model_name)
if profiles:
    display(pd.DataFrame([concentration(prof) for prof in profiles.values()]).round(3))
    if ablations:
        display(pd.concat(ablations.values(), ignore_index=True).round(3))
    drawn = pd.concat([*(prof.assign(panel="shares") for prof in profiles.values()),
                       *(summary.assign(panel="ablation") for summary in ablations.values())], ignore_index=True)
    plots.save_figure(across_models_figure(profiles, ablations), figures / "04_across_models.png", drawn)

