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
# # 04 · Safety coefficients: where Panacea's perturbation lives
#
# The share of ||eps||² that each decoder layer and each projection (q/k/v/o, gate/up/down) holds.
# Isotropic noise spreads its norm by tensor size alone, so it is the reference a learned eps
# departs from. The paper finds distinct per-model patterns; here we see our model's.

# %% tags=["parameters"]
model = "embedded"
task = "sentiment"
ratios = [0.1]  # each (ratio, seed) is one Panacea run, ~3 min on 2 cores; shared with notebook 03
seeds = [0]  # e.g. [0, 1, 2]: one heatmap per run
rho = 1.0
lam = 0.1  # calibrated on the embedded world; the paper's: 1e-3
n = 1000
preset = "default"
align_kw = {}
runs = None
figures_dir = "../figures"

# %%
import pandas as pd
from IPython.display import display

from panacea_lab.analysis import plots
from panacea_lab.config import AlignConfig, ModelConfig
from panacea_lab.defenses.panacea import PanaceaConfig
from panacea_lab.analysis.sweeps import attack_config, eps_coefficients
from panacea_lab.training.pipeline import PanaceaRun
from panacea_lab.training.store import RunStore

store = RunStore(runs)
align_cfg = AlignConfig(model=ModelConfig(path=model), **align_kw)
coeffs = {}
for p in ratios:
    for seed in seeds:
        run = PanaceaRun(attack_config(align_cfg, task, p, seed, preset, n=n), PanaceaConfig(rho=rho, lam=lam))
        coeffs[f"p={p:g} seed={seed}"] = eps_coefficients(run, store)
tidy = pd.concat([c.assign(run=name) for name, c in coeffs.items()])
display(tidy.groupby("layer")[["eps_share", "noise_share"]].sum().round(3))

# %% [markdown]
# ## One heatmap per run, and noise as the reference

# %%
for name, c in coeffs.items():
    fig = plots.coefficient_heatmap(c, value="eps_share")
    plots.save_figure(fig, f"{figures_dir}/04_eps_{name.replace('=', '').replace(' ', '_')}.png", c)
fig = plots.coefficient_heatmap(next(iter(coeffs.values())), value="noise_share")
plots.save_figure(fig, f"{figures_dir}/04_noise_reference.png", next(iter(coeffs.values())))

# %% [markdown]
# ## Explorer
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
