"""A control for Panacea, not a method of the paper: one normalised gradient-ascent step on the
harmful loss, taken post hoc at the *undefended* fine-tuned model.

Panacea's eps is rho * G_h / ||G_h|| at the last step of a fine-tuning run trained under that
perturbation. If the same-size step computed at the ordinary attacked model already restores
refusals, the training under eps is not what makes Panacea work on this world; if it breaks the
model instead, the training is what makes w tolerate its eps.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from panacea_lab.config import POST, DefenseConfig, check, positive
from panacea_lab.defenses.perturb import add_, global_norm
from panacea_lab.defenses.registry import Defense
from panacea_lab.training.loop import lm_loss


def harmful_ascent(model, batches: Iterable, norm: float, names: list[str]) -> dict[str, torch.Tensor]:
    """norm * G / ||G||, G the gradient of the mean harmful LM loss over `batches` w.r.t. `names`
    (e.g. the LoRA tensors of a frozen model). The model's weights and requires_grad flags are unchanged."""
    wanted = set(names)
    params = {n: p for n, p in model.named_parameters() if n in wanted}
    if not params:
        raise ValueError("no parameter matched `names`: pass the LoRA tensor names of the model")
    flags = {n: p.requires_grad for n, p in params.items()}
    batches = list(batches)
    if not batches:
        raise ValueError("harmful_ascent needs at least one harmful batch")
    device = next(iter(params.values())).device
    try:
        for p in params.values():
            p.requires_grad_(True)
        loss = sum(lm_loss(model, b.to(device)) for b in batches) / len(batches)
        grads = torch.autograd.grad(loss, list(params.values()))
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
    g = dict(zip(params, (x.detach() for x in grads)))
    scale = norm / (global_norm(g) + 1e-12)
    return {n: scale * x for n, x in g.items()}


@dataclass(frozen=True)
class HarmfulAscentConfig(DefenseConfig):
    """One harmful-gradient step of global norm `norm` over `n_batches` defender batches."""

    name = "harmful_ascent"
    stage = POST

    norm: float = 0.0
    n_batches: int = 1
    seed: int = 0

    def check_values(self):
        check(self.norm >= 0, "norm", self.norm, "must be >= 0")
        positive(self, "n_batches")


def _ascend(model, cfg: HarmfulAscentConfig, ctx):
    add_(model, harmful_ascent(model, ctx.harmful_batches(cfg.n_batches), cfg.norm, ctx.lora_names))
    return model


DEFENSE = Defense(name="harmful_ascent", stage=POST, config=HarmfulAscentConfig, label="harmful ascent",
                  param="norm", transform=_ascend, control=True,
                  control_on="undefended", color="#882255", marker="<")
