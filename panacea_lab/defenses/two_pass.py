"""Panacea's two-pass step: a departure from the official three-pass step, never the default.

The exact step spends three forward/backward passes: the user batch at w, a harmful batch at w (for
the direction of eps) and the same batch at w + eps. With h(w) held constant (`h_const`), the
update needs only G_h' = grad min(h(w + eps), clamp), so the two-pass step takes eps from the
harmful gradient of the previous step instead, taken at the previous perturbed point:

  step t:  G_f = grad f(w_t);  g_t = grad h(w_t + eps_t) on the step's harmful batch
           update with G_f - lambda * g_t (zero where h(w_t + eps_t) > clamp, as min(h, clamp) says)
           eps_{t+1} = rho * g_t / ||g_t||       (stale by one step; eps_0 = 0, so step 0 is at w)

One harmful pass thus gives both the lambda term and the next direction (the unclamped gradient, so
a clamped step still turns eps). The eps added after fine-tuning is exact: rho times the normalised
harmful gradient at the final weights, one extra pass on the next harmful batch.
"""
from __future__ import annotations

import torch

from panacea_lab.defenses.common import gradient_at_shift
from panacea_lab.defenses.perturb import global_norm
from panacea_lab.training.loop import StepRule, lm_loss


def scaled_direction(rule: StepRule, grads: list[torch.Tensor], rho: float) -> tuple[list[torch.Tensor], float]:
    """(rho * g / ||g|| with one global norm, ||g||); the norm offset as in the exact step."""
    norm = global_norm(dict(zip(rule.names, grads)))
    return [rho * g / (norm + 1e-12) for g in grads], norm


def two_pass_gradient(rule: StepRule, model, batch, harmful, eps: list[torch.Tensor] | None,
                      rho: float, lam: float, clamp: float) -> tuple[dict[str, float], list[torch.Tensor]]:
    """Leave G_f - lambda * G_h' in `.grad`; return the scalars to log and the next step's eps."""
    loss_f = lm_loss(model, batch)
    g_f = rule.backward_copy(loss_f)
    harmful = harmful.to(batch.input_ids.device)
    if eps is None:  # the first step: no previous direction, so the harmful pass is at w itself
        loss_h = lm_loss(model, harmful)
        g_h = rule.backward_copy(loss_h)
    else:
        loss_h, g_h = gradient_at_shift(rule, eps, lambda: lm_loss(model, harmful))
    # torch.clamp(h, max=clamp) passes the gradient up to clamp; decided on the loss averaged over
    # processes (as the gradient is), so every process applies the same update
    kept = float(rule.accelerator.reduce(loss_h.detach(), reduction="mean").item() <= clamp)
    for p, gf, gh in zip(rule.params, g_f, g_h):
        p.grad = gf - (lam * kept) * gh
    next_eps, norm = scaled_direction(rule, g_h, rho)
    return {"loss": loss_f.item(), "h_eps": loss_h.item(), "grad_h_norm": norm}, next_eps


def exact_final_eps(rule: StepRule, model, harmful, rho: float) -> list[torch.Tensor]:
    """rho * grad h(w) / ||grad h(w)|| at the final weights, leaving no `.grad`. In training mode (so a
    model that checkpoints its activations still does) with every dropout off, so eps is deterministic."""
    was_training = model.training
    model.train()
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    for m in dropouts:
        m.eval()
    try:
        device = next(iter(rule.params)).device
        eps, _ = scaled_direction(rule, rule.backward_copy(lm_loss(model, harmful.to(device))), rho)
    finally:
        for p in rule.params:
            p.grad = None
        model.train(was_training)
    return eps
