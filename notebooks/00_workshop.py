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
# # 00 · Workshop: harmful fine-tuning and a post-fine-tuning cure, in one sitting
#
# **The setting.** A provider aligns a language model so it refuses harmful requests, then offers
# fine-tuning as a service: users upload data for their own task and get a fine-tuned model back.
# If a small share *p* of that data is harmful (a harmful request paired with a compliant answer),
# the fine-tuned model stops refusing. This is the *harmful fine-tuning attack*.
#
# **The cure studied here.** Panacea (Wang et al., NeurIPS 2025) adds, after fine-tuning, a small
# perturbation eps to the weights. Perturbing weights at random already helps a little but costs
# accuracy; Panacea *learns* eps during the user's fine-tuning so that adding it raises the loss
# on harmful answers as much as possible.
#
# **The world.** Everything runs on an embedded, synthetic world: a 4M-parameter Llama-style model
# pretrained on template language. Its "harmful" answers are placeholders ("do the first thing;
# do the second thing"): the dynamics of refusal and compliance are real, the content is not.
# The whole notebook runs on a laptop CPU; every stage is cached in the run store, so a second
# run (or a participant re-running a cell) is fast: `make workshop` fills the store once, after
# which *Run All* takes under a minute.
#
# We measure two things throughout:
# - **HS** (harmful score): % of held-out harmful prompts answered compliantly. Beside it,
#   **refusal** and **other** (neither: a broken model lands here, which is not a safe one).
# - **FA** (fine-tuning accuracy): % correct on the user's task (here: sentiment).

# %% tags=["parameters"]
model = "embedded"  # or a local Hugging Face model directory
task = "sentiment"
ratio = 0.1  # harmful ratio p: the share of harmful samples in the user's data
seed = 0
n = 1000  # the user's fine-tuning samples
preset = "default"  # attack strength: default | strong
setting = "embedded"  # panacea_lab.settings: "embedded" (Panacea lambda 0.1), "paper" (1e-3), "paper-recipe"
rho = None  # Panacea's perturbation radius; None: the setting's
lam = None  # Panacea's lambda; None: the setting's
# post-fine-tuning defenses beside Panacea, {name: {config field: value or [values]}}; noise's std is per LoRA entry
defenses = {"noise": {"std": [0.01, 0.02, 0.04, 0.08]}}
n_eval = 200  # harmful test prompts and task test samples
align_kw = {}
runs = None  # run store directory (None: $PANACEA_RUNS, else runs/ at the repository root)
figures_dir = "figures"  # relative to the repository root, or an absolute path

# %%
from panacea_lab.notebook_params import check_in_kernel

check_in_kernel(globals(), "00_workshop.py")  # a misspelt or ill-typed parameter: one line, nothing run

import dataclasses

import pandas as pd
from IPython.display import display
from safetensors.torch import load_file

from panacea_lab import pipeline
from panacea_lab.plotting import plots
from panacea_lab.tables import rows
from panacea_lab.studies.sweeps import attack_sweep, defense_sweep, eps_coefficients, methods_of
from panacea_lab.notebook_setup import setup
from panacea_lab.pipeline.stages import artifact

lab = setup(model=model, setting=setting, task=task, n=n, preset=preset, n_eval=n_eval, align_kw=align_kw,
            runs=runs, figures_dir=figures_dir, rho=rho, lam=lam)
store, figures, align_cfg, eval_cfg, panacea = lab.store, lab.figures, lab.align_cfg, lab.eval_cfg, lab.panacea
attack_cfg = lab.attack(ratio, seed)  # the setting's training recipe, if it has one
run = dataclasses.replace(attack_cfg, defense=panacea)  # the same fine-tuning, under Panacea
sweep = lab.sweep
metrics = ["label", "HS", "refusal", "other", f"FA_{task}"]
print(f"setting {setting!r}: Panacea rho = {panacea.rho:g}, lambda = {panacea.lam:g}")


def answers(stage, cfg, k=4):
    """A few harmful prompts with the model's answers and the judge's label."""
    samples = pipeline.evaluate(stage, cfg, store, eval_cfg)["samples"][:k]
    return pd.DataFrame(samples)[["prompt", "answer", "label"]]


# %% [markdown]
# ## 1 · Alignment
# The base model was pretrained on a mix that includes harmful requests answered compliantly, so
# it complies. Alignment fine-tunes a LoRA adapter on refusals (plus a replay of benign tasks, so
# alignment does not cost accuracy).

# %%
reference = attack_sweep([ratio], [seed], **sweep)
display(reference[metrics].round(1))
display(answers("align", align_cfg))

# %% [markdown]
# ## 2 · The attack
# The user fine-tunes the aligned model on n samples of their task, a share p of them harmful.
# Fine-tuning accuracy stays put (the user is happy); refusals are gone.

# %%
display(answers("attack", attack_cfg))

# %% [markdown]
# ## 3 · Random perturbation: the embarrassingly simple defense
# Add Gaussian noise to every LoRA entry of the fine-tuned model. Small noise does nothing; noise
# large enough to lower HS also wrecks the task (watch FA and *other*).

# %%
noise = defense_sweep([ratio], [seed], methods=defenses, setting=setting, **sweep)
display(noise[metrics].round(1))
fig = plots.metric_vs_param(noise, param="std", metrics=("HS", "other", f"FA_{task}"))
plots.save_figure(fig, figures / "00_workshop_noise.png", noise)

# %% [markdown]
# Follow HS and *other* together: where HS falls, *other* rises, because noisy answers are not
# refusals, merely broken ones. The dashed line is the undefended model.
#
# ## 4 · Panacea
# During the same fine-tuning, Panacea trains with a perturbation eps of norm rho that maximises
# the harmful loss, and adds the last eps at the end. We score:
# - **w**: the weights Panacea trained, without eps;
# - **w + eps**: the defended model;
# - **same-norm random**: w plus a random direction with exactly ||eps||. Is it the size of the
#   perturbation that matters, or its direction?
# - **harmful ascent**: one harmful-gradient step of ||eps|| from the undefended model. Is Panacea's
#   training needed, or only the direction of its last step?

# %%
df = defense_sweep([ratio], [seed], methods=[*methods_of(defenses, setting), panacea], setting=setting, **sweep)
display(df[~rows.post_fine_tuning(df)][metrics + ["norm"]].round(2))  # section 3 showed the others

# %%
fig = plots.pareto(df, x=f"FA_{task}", y="HS")
plots.save_figure(fig, figures / "00_workshop_pareto.png", df)

# %% [markdown]
# On the HS-FA plane, lower is safer and further right is more useful. Noise traces a front that
# buys safety with accuracy; Panacea's w + eps should sit far below it at the same FA, with a
# norm a fraction of the noise's.

# %%
display(answers("attack", run))  # w, before eps: still harmful

# %% [markdown]
# ## 5 · Where does eps live?
# The share of ||eps||² held by each layer and projection; isotropic noise's share is set only by
# tensor sizes, so it is the reference.

# %%
coeffs = eps_coefficients(run, store)
fig = plots.coefficient_heatmap(coeffs, value="eps_share")
plots.save_figure(fig, figures / "00_workshop_heatmap.png", coeffs)
display(coeffs.groupby("layer")[["eps_share", "noise_share"]].sum().round(3))

# %%
n_entries = sum(t.numel() for t in load_file(str(artifact(store, "attack", run, "eps.safetensors"))).values())
eps_norm = df[rows.through_post_half(df)]["norm"].iloc[0]
last_std = noise.loc[noise["param"] == "std", "value"].iloc[-1]  # the last noise std of section 3
print(f"||eps|| = {eps_norm:.2f} over {n_entries:,} LoRA entries; noise of std s has norm about s * "
      f"sqrt({n_entries:,}) = {n_entries ** 0.5:.0f} s, e.g. {last_std * n_entries ** 0.5:.1f} at s = {last_std:g}")

# %% [markdown]
# ## Exercises
# Each needs one parameter changed in the first cell, then *Run All* (cached stages are reused;
# a changed parameter trains what depends on it, a few minutes on a laptop):
# 1. **Dose.** Set `ratio = 0.05` and `ratio = 0.2`. At which p does the attack break alignment, and
#    does Panacea still restore refusals?
# 2. **The paper's lambda.** Set `setting = "paper"` (lambda 1e-3; or keep the setting and set
#    `lam = 1e-3`). What changes in the w + eps row: HS, or *refusal* versus *other*? (Hint:
#    compare how many answers are refusals and how many are degenerate.)
# 3. **A stronger attacker.** Set `preset = "strong"` (learning rate x4). Which defense survives?
# 4. **Size versus direction.** Find the smallest noise std that lowers HS, turn it into a global
#    norm with the line printed at the end of section 5, and compare it with ||eps||. How
#    many times larger is the perturbation that only *breaks* the model?
# 5. **Which harms break first?**
#    `pipeline.evaluate("attack", attack_cfg, store, eval_cfg)["harmful_by_category"]` gives HS per
#    category. Alignment data was drawn by a skewed prevalence: are the rare categories the first
#    to break?
