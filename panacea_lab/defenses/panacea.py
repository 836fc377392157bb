"""Panacea (arXiv 2501.18100): train a perturbation that raises the harmful loss, then apply it.

Per fine-tuning step, with f the user's loss and h the LM loss on a defender-held harmful batch:
  G_f = grad f(w);  G_h = grad h(w);  eps = rho * G_h / ||G_h||  (one global norm)
  G_h' = grad min(h(w + eps), clamp) at w + eps, then w is restored bit for bit
  update with G_f - lambda * (G_h' - G_h)
and after the last step the last eps is added: w_final = w + eps.

Unlike the official code, eps is its own tensor (never an alias of `.grad`) and every gradient is
produced by a separate backward pass, so the rule also holds under DDP (each backward syncs).
Beyond the paper, off by default: `h_const` drops the +lambda * G_h term (h(w) treated as a
constant, so w itself is not trained towards the harmful data), and `recompute_every` = k > 1
runs the three-pass step only every k-th step (plain SFT in between, eps carried over).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from panacea_lab.config import check, coerce_numbers
from panacea_lab.data import BatchStream
from panacea_lab.perturb import global_norm
from panacea_lab.train import StepRule, lm_loss, trainable_parameters


@dataclass(frozen=True)
class PanaceaConfig:
    """Panacea's knobs. Paper defaults (Llama2-7B): rho = 1, lambda = 1e-3, clamp 5."""

    rho: float = 1.0
    lam: float = 1e-3
    clamp: float = 5.0
    harmful_batch_size: int = 10
    recompute_every: int = 1  # amortized Panacea when > 1 (off by default)
    h_const: bool = False  # treat h(w) as a constant (off by default: the paper's objective)

    def __post_init__(self):
        coerce_numbers(self)
        check(self.rho >= 0, "rho", self.rho, "the perturbation radius must be >= 0")
        check(self.lam >= 0, "lam", self.lam, "lambda must be >= 0")
        check(self.clamp > 0, "clamp", self.clamp, "must be > 0")
        check(self.harmful_batch_size > 0, "harmful_batch_size", self.harmful_batch_size, "must be > 0")
        check(self.recompute_every >= 1, "recompute_every", self.recompute_every, "must be >= 1")


def _grads(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """Copies of the current gradients (zeros where a parameter got none)."""
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]


class PanaceaRule(StepRule):
    name = "panacea"

    def __init__(self, cfg: PanaceaConfig, harmful: BatchStream, apply_eps: bool = True):
        """`apply_eps=False` keeps the trained w; the run store saves eps beside it instead."""
        self.cfg, self.harmful, self.apply_eps = cfg, harmful, apply_eps
        self.eps: list[torch.Tensor] | None = None

    def prepare(self, model, accelerator) -> None:
        super().prepare(model, accelerator)
        self.params = trainable_parameters(model)
        by_id = {id(p): n for n, p in accelerator.unwrap_model(model).named_parameters()}
        self.names = [by_id[id(p)] for p in self.params]  # names as the unwrapped model spells them
        self.batches = self.harmful.forever()

    def _backward(self, params, loss: torch.Tensor) -> list[torch.Tensor]:
        for p in params:
            p.grad = None
        self.accelerator.backward(loss)
        return _grads(params)

    def gradient(self, model, batch, step: int) -> dict[str, float]:
        if step % self.cfg.recompute_every != 0:  # amortized: plain SFT between Panacea steps
            return super().gradient(model, batch, step)
        params, cfg = self.params, self.cfg
        loss_f = lm_loss(model, batch)
        g_f = self._backward(params, loss_f)
        harmful = next(self.batches).to(batch.input_ids.device)
        loss_h = lm_loss(model, harmful)
        g_h = self._backward(params, loss_h)
        norm_h = global_norm(dict(zip(self.names, g_h)))
        eps = [cfg.rho * g / (norm_h + 1e-12) for g in g_h]  # fresh tensors, not views of .grad
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.add_(e.to(p.dtype))
        loss_h_eps = lm_loss(model, harmful)
        g_h_eps = self._backward(params, torch.clamp(loss_h_eps, max=cfg.clamp))
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
        for p, gf, gh, ghe in zip(params, g_f, g_h, g_h_eps):
            p.grad = gf - cfg.lam * (ghe if cfg.h_const else ghe - gh)
        self.eps = eps
        return {"loss": loss_f.item(), "h": loss_h.item(), "h_eps": loss_h_eps.item(), "grad_h_norm": float(norm_h)}

    def finalize(self, model) -> dict:
        """Add the last eps to the trained weights (when `apply_eps`); report its norm per tensor."""
        if self.eps is None:
            return {"eps_norm": 0.0}
        if self.apply_eps:
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, e in zip(self.names, self.eps):
                    params[name].add_(e.to(params[name].dtype))
        return {"eps_norm": global_norm(dict(zip(self.names, self.eps))), "eps_applied": self.apply_eps}

    def eps_by_name(self) -> dict[str, torch.Tensor]:
        """The last eps as a name -> tensor dict (for safety coefficients and the same-norm control)."""
        return dict(zip(self.names, [e.detach().cpu() for e in (self.eps or [])]))
