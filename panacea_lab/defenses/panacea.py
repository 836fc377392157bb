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
runs the three-pass step only every k-th step (plain SFT in between, eps carried over), and
`step = "two_pass"` (with `h_const`) takes eps from the previous step's harmful gradient, so a step
costs two passes (`defenses/two_pass.py`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from panacea_lab.config import FINETUNING, POST, DefenseConfig, check, new_field, positive
from panacea_lab.data.batching import BatchStream
from panacea_lab.defenses.common import gradient_at_shift, harmful_gradients
from panacea_lab.defenses.perturb import add_, global_norm, restrict
from panacea_lab.defenses.random_noise import same_norm_control
from panacea_lab.defenses.registry import Defense
from panacea_lab.defenses.two_pass import exact_final_eps, two_pass_gradient
from panacea_lab.training.loop import StepRule, lm_loss


PANACEA_STEPS = ("exact", "two_pass")


@dataclass(frozen=True)
class PanaceaConfig(DefenseConfig):
    name = "panacea"
    stage = FINETUNING

    """Panacea's knobs. Paper defaults (Llama2-7B): rho = 1, lambda = 1e-3, clamp 5."""

    rho: float = 1.0
    lam: float = 1e-3
    clamp: float = 5.0
    harmful_batch_size: int = 10
    recompute_every: int = 1  # amortized Panacea when > 1 (off by default)
    h_const: bool = False  # treat h(w) as a constant (off by default: the paper's objective)
    step: str = new_field("exact")  # "two_pass": eps from the previous step's harmful pass (needs h_const)

    def check_values(self):
        check(self.rho >= 0, "rho", self.rho, "the perturbation radius must be >= 0")
        check(self.lam >= 0, "lam", self.lam, "lambda must be >= 0")
        check(self.clamp > 0, "clamp", self.clamp, "must be > 0")
        check(self.harmful_batch_size > 0, "harmful_batch_size", self.harmful_batch_size, "must be > 0")
        check(self.recompute_every >= 1, "recompute_every", self.recompute_every, "must be >= 1")
        check(self.step in PANACEA_STEPS, "step", self.step, f"use one of {', '.join(PANACEA_STEPS)}")
        if self.step == "two_pass":
            check(self.h_const, "h_const", self.h_const,
                  "the two-pass step holds h(w) constant: set h_const (or use step exact)")
            check(self.recompute_every == 1, "recompute_every", self.recompute_every,
                  "the two-pass step runs every step: leave recompute_every at 1 (or use step exact)")


class PanaceaRule(StepRule):
    name = "panacea"

    def __init__(self, cfg: PanaceaConfig, harmful: BatchStream, apply_eps: bool = True):
        """`apply_eps=False` keeps the trained w; the run store saves eps beside it instead."""
        self.cfg, self.harmful, self.apply_eps = cfg, harmful, apply_eps
        self.eps: list[torch.Tensor] | None = None

    def prepare(self, model, accelerator) -> None:
        super().prepare(model, accelerator)
        self.batches = self.harmful.forever()

    def gradient(self, model, batch, step: int) -> dict[str, float]:
        if step % self.cfg.recompute_every != 0:  # amortized: plain SFT between Panacea steps
            return super().gradient(model, batch, step)
        cfg = self.cfg
        if cfg.step == "two_pass":
            scalars, self.eps = two_pass_gradient(self, model, batch, next(self.batches), self.eps,
                                                  cfg.rho, cfg.lam, cfg.clamp)
            return scalars
        g = harmful_gradients(self, model, batch, next(self.batches))
        eps = g.direction(cfg.rho)
        loss_h_eps, g_h_eps = gradient_at_shift(self, eps, lambda: lm_loss(model, g.harmful), clamp=cfg.clamp)
        for p, gf, gh, ghe in zip(self.params, g.g_f, g.g_h, g_h_eps):
            p.grad = gf - cfg.lam * (ghe if cfg.h_const else ghe - gh)
        self.eps = eps
        return {"loss": g.loss_f.item(), "h": g.loss_h.item(), "h_eps": loss_h_eps.item(), "grad_h_norm": g.norm_h}

    def finalize(self, model) -> dict:
        """Add the last eps to the trained weights (when `apply_eps`); report its norm per tensor.
        The two-pass step's eps is recomputed here, exactly, at the final weights."""
        if self.cfg.step == "two_pass":
            self.eps = exact_final_eps(self, model, next(self.batches), self.cfg.rho)
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

    def state_dict(self):
        """For a resumed stage: the harmful stream's position and the last eps (what `finalize` adds)."""
        eps = {f"eps/{n}": e for n, e in zip(self.names, self.eps or [])}
        return eps, {"batches": self.batches.position(), "has_eps": self.eps is not None}

    def load_state_dict(self, tensors, meta) -> None:
        self.batches.seek(meta["batches"])
        self.eps = [tensors[f"eps/{n}"] for n in self.names] if meta["has_eps"] else None


DEFENSE = Defense(name="panacea", stage=FINETUNING, config=PanaceaConfig, label="Panacea", param="rho",
                  rule=lambda cfg, ctx: PanaceaRule(cfg, ctx.harmful(cfg.harmful_batch_size), apply_eps=False),
                  artifacts=lambda rule: {"eps": rule.eps_by_name()}, color="#0072B2", marker="*",
                  post_half="eps", controls=("random_direction", "harmful_ascent"),
                  control_norm=lambda result: result["train"]["finalize"]["eps_norm"],
                  variant_styles={"w": ("#56B4E9", "P"), "w+eps": ("#0072B2", "*")}, flag="rhos",
                  options=("lam", "h_const", "recompute_every", "step"),
                  lora_copies=5)  # eps, the saved w of the shifted pass, the gradient copies G_f, G_h, G_h'


@dataclass(frozen=True)
class EpsConfig(DefenseConfig):
    """Panacea's post-fine-tuning half: add the run's stored eps, times `scale`, to the trained w.

    Optionally only part of it (which layers and modules carry the safety): `layers` (decoder layer
    indices) and `modules` (e.g. q_proj) select tensors, empty meaning all; `layer_scales` gives one
    factor per decoder layer (0 off, 1 as learnt). A layer or module the run's eps does not cover is
    refused when the transform loads it, naming the field and the range.
    """

    name = "eps"
    stage = POST

    scale: float = 1.0
    layers: tuple[int, ...] = new_field(())
    modules: tuple[str, ...] = new_field(())
    layer_scales: tuple[float, ...] = new_field(())

    def check_values(self):
        check(math.isfinite(self.scale) and self.scale >= 0, "scale", self.scale,
              "must be a finite number >= 0 (1 applies eps as learnt)")
        check(all(i >= 0 for i in self.layers), "layers", self.layers, "layer indices start at 0")
        check(len(set(self.layers)) == len(self.layers), "layers", self.layers, "name each layer once")
        check(all(m.strip() for m in self.modules), "modules", self.modules, "name modules, e.g. q_proj")
        check(len(set(self.modules)) == len(self.modules), "modules", self.modules, "name each module once")
        for i, s in enumerate(self.layer_scales):
            check(math.isfinite(s) and s >= 0, f"layer_scales[{i}]", s,
                  "each factor must be a finite number >= 0 (0 off, 1 as learnt)")
        object.__setattr__(self, "layers", tuple(sorted(self.layers)))  # one key per selection, whatever the order
        object.__setattr__(self, "modules", tuple(sorted(self.modules)))


@dataclass(frozen=True)
class EpsControlConfig(EpsConfig):
    """The same-norm control of a (restricted) eps: a random direction, drawn from `seed`, over exactly
    the tensors the restricted eps covers, with exactly its global L2 norm."""

    name = "eps_control"

    seed: int = 0


def restricted_eps(cfg: EpsConfig, ctx) -> dict:
    """The run's stored eps, restricted and scaled as `cfg` says (FileNotFoundError when it stored none)."""
    return restrict(ctx.artifact("eps"), cfg.layers, cfg.modules, cfg.layer_scales, cfg.scale)


def apply_eps(model, cfg: EpsConfig, ctx):
    """w + the restricted, scaled eps, in place."""
    add_(model, restricted_eps(cfg, ctx))
    return model


def apply_eps_control(model, cfg: EpsControlConfig, ctx):
    """w + a random direction of the restricted eps's norm over its tensors (nothing when it is empty)."""
    eps = restricted_eps(cfg, ctx)
    if eps:
        add_(model, same_norm_control(eps, cfg.seed))
    return model


EPS = Defense(name="eps", stage=POST, config=EpsConfig, label="Panacea w + eps", param="scale",
              transform=apply_eps, color="#0072B2", marker="*")
EPS_CONTROL = Defense(name="eps_control", stage=POST, config=EpsControlConfig, label="same-norm random (eps tensors)",
                      param="scale", transform=apply_eps_control, control=True,
                      color="#D55E00", marker="h")
