"""What the two harmful-gradient defenses (Panacea, Booster) share: G_f and G_h of one step, and a
gradient taken at a shifted point w + delta with w restored bit for bit afterwards."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from panacea_lab.data.batching import Batch
from panacea_lab.defenses.perturb import global_norm
from panacea_lab.training.loop import StepRule, lm_loss


@dataclass
class HarmfulGradients:
    loss_f: torch.Tensor
    g_f: list[torch.Tensor]
    harmful: Batch
    loss_h: torch.Tensor
    g_h: list[torch.Tensor]
    norm_h: float

    def direction(self, scale: float) -> list[torch.Tensor]:
        """scale * G_h / ||G_h|| (one global norm), as fresh tensors, never views of `.grad`."""
        # the official Panacea and Booster steps add 1e-7 to the norm: a relative difference below 1e-7
        # wherever ||G_h|| > 1 (README, Fidelity)
        return [scale * g / (self.norm_h + 1e-12) for g in self.g_h]


def harmful_gradients(rule: StepRule, model, batch: Batch, harmful: Batch) -> HarmfulGradients:
    """The user's (or alignment) loss gradient and the harmful loss gradient, each its own backward."""
    loss_f = lm_loss(model, batch)
    g_f = rule.backward_copy(loss_f)
    harmful = harmful.to(batch.input_ids.device)
    loss_h = lm_loss(model, harmful)
    g_h = rule.backward_copy(loss_h)
    return HarmfulGradients(loss_f, g_f, harmful, loss_h, g_h, global_norm(dict(zip(rule.names, g_h))))


def gradient_at_shift(rule: StepRule, shift: list[torch.Tensor], loss_fn, clamp: float | None = None):
    """(loss, gradient) at w + shift; the gradient is of min(loss, clamp) when `clamp` is set.
    The weights are put back from a saved copy, bit for bit, even if the pass raises."""
    saved = [p.detach().clone() for p in rule.params]
    try:
        with torch.no_grad():
            for p, d in zip(rule.params, shift):
                p.add_(d.to(p.dtype))
        loss = loss_fn()
        return loss, rule.backward_copy(loss if clamp is None else torch.clamp(loss, max=clamp))
    finally:
        with torch.no_grad():
            for p, s in zip(rule.params, saved):
                p.copy_(s)
