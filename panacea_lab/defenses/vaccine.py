"""Vaccine (Huang et al. 2024, "Vaccine: Perturbation-aware alignment for large language models
against harmful fine-tuning", arXiv 2402.01109): an alignment-stage defense.

Vaccine trains on hidden states perturbed the worst way, so that the alignment survives the
"harmful embedding drift" fine-tuning causes later. Per alignment step, with loss L on the batch:
  pass 1: forward, backward; g_l = dL / d(o_l), o_l the output of hook site l (one per decoder layer)
  eps_l = rho * g_l / ||g||,  ||g|| one global L2 norm over every site's gradient (whole batch)
  pass 2: forward again with o_l + eps_l (eps detached) at every site, backward: that is the update.
Hooks live for one pass only and are removed in `finally`, so evaluation and later steps see the
plain model.

Hook site (`site`): the official code hooks every attention module (`get_leaf_modules_with_grad`,
which collects each LlamaAttention / OPTAttention / ... module for BaseTrainer's two passes, in
trainer.py of w-yibo/Panacea), i.e. each decoder layer's attention output before the
residual add; that is the default, "attention" (`layers[i].self_attn`, output[0]).
`site="layer"` hooks the decoder layer's output hidden states instead (`layers[i]`). Either output
may be a tensor or a tuple whose first item is the hidden states; both are handled.

rho = 20 is the Panacea paper's baseline setting: script/alignment/vaccine.sh:3 of w-yibo/Panacea
(RHO=20, passed as --rho at :33). The Vaccine paper's main results use 2 and Booster's repository
runs Vaccine with 5; none of these is calibrated on the embedded world.

The user's fine-tuning that Vaccine is evaluated with merges the aligned adapter and trains a new
LoRA: script/finetune/vaccine_gsm8k.sh:16 of w-yibo/Panacea passes --lora_folder without
--alternating single_lora, so train.py:295-328 merges it (merge_and_unload) and attaches a fresh
LoRA (the record's finetune_adapter = "fresh").
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from panacea_lab.config import ALIGNMENT, DefenseConfig, check, positive
from panacea_lab.defenses.perturb import global_norm
from panacea_lab.defenses.registry import Defense
from panacea_lab.training.loop import StepRule
from panacea_lab.training.loss import batch_loss

SITES = ("attention", "layer")


@dataclass(frozen=True)
class VaccineConfig(DefenseConfig):
    name = "vaccine"
    stage = ALIGNMENT

    """rho: the radius of the hidden-state perturbation; site: where it is added (see module doc)."""

    rho: float = 20.0
    site: str = "attention"

    def check_values(self):
        check(self.rho >= 0, "rho", self.rho, "the perturbation radius must be >= 0 (0 is plain SFT)")
        check(self.site in SITES, "site", self.site, "use attention (the official code) or layer")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks: the one ModuleList named `layers` (found through any PEFT/DDP wrapper)."""
    found = [m for n, m in model.named_modules() if n.split(".")[-1] == "layers" and isinstance(m, nn.ModuleList)]
    if len(found) != 1:
        raise ValueError(f"Vaccine needs exactly one ModuleList named `layers` (the decoder blocks), found "
                         f"{len(found)}: use a Llama-style model (model.model.layers)")
    return found[0]


def hook_sites(model: nn.Module, site: str) -> list[nn.Module]:
    layers = list(decoder_layers(model))
    if site == "layer":
        return layers
    missing = [i for i, layer in enumerate(layers) if not isinstance(getattr(layer, "self_attn", None), nn.Module)]
    if missing:
        raise ValueError(f"site = 'attention': decoder layer {missing[0]} has no `self_attn` module; use site='layer'")
    return [layer.self_attn for layer in layers]


def _hidden(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def _with_hidden(output, hidden: torch.Tensor):
    """`output` with its hidden states replaced (a tensor, or a tuple/list whose first item they are)."""
    if isinstance(output, torch.Tensor):
        return hidden
    if isinstance(output, (tuple, list)):
        return type(output)([hidden, *output[1:]])
    raise TypeError(f"cannot perturb a module output of type {type(output).__name__}")


class VaccineRule(StepRule):
    name = "vaccine"

    def __init__(self, cfg: VaccineConfig):
        self.cfg = cfg
        self.eps: list[torch.Tensor] | None = None  # the last step's perturbation, one tensor per site
        self.eps_norm: float = 0.0  # its global norm (rho unless every hidden gradient was zero)

    def prepare(self, model, accelerator) -> None:
        super().prepare(model, accelerator)
        self.sites = hook_sites(accelerator.unwrap_model(model), self.cfg.site)

    def _pass(self, model, batch, hook) -> torch.Tensor:
        """One forward + backward with `hook(i)` as site i's forward hook; hooks removed even on error."""
        handles = []
        try:
            for i, module in enumerate(self.sites):
                handles.append(module.register_forward_hook(hook(i)))
            loss = batch_loss(model, batch)
            for p in self.params:
                p.grad = None
            self.accelerator.backward(loss)
        finally:
            for h in handles:
                h.remove()
        return loss

    def gradient(self, model, batch, step: int) -> dict[str, float]:
        shapes, grads = {}, {}  # site -> (shape, dtype, device), site -> dL/d(output)

        def record(i):
            def hook(_module, _args, output):
                hidden = _hidden(output)
                shapes[i] = (hidden.shape, hidden.dtype, hidden.device)
                if hidden.requires_grad:
                    hidden.register_hook(lambda g: grads.__setitem__(i, g.detach().clone()))
            return hook

        loss = self._pass(model, batch, record)
        g = [grads[i] if i in grads else torch.zeros(shapes[i][0], dtype=shapes[i][1], device=shapes[i][2])
             for i in range(len(self.sites))]  # zeros where no gradient reached a site
        norm = global_norm(dict(enumerate(g)))
        eps = [self.cfg.rho * gi / (norm + 1e-12) for gi in g]

        def perturb(i):
            def hook(_module, _args, output):
                hidden = _hidden(output)
                return _with_hidden(output, hidden + eps[i].to(hidden.dtype))
            return hook

        loss_perturbed = self._pass(model, batch, perturb)
        self.eps = eps
        self.eps_norm = global_norm(dict(enumerate(eps)))
        return {"loss": loss.item(), "loss_perturbed": loss_perturbed.item(), "hidden_grad_norm": norm,
                "eps_norm": self.eps_norm}

    def state_dict(self):
        """For a resumed stage: the last eps norm only; eps itself (hidden-state sized) is redrawn
        from scratch at every step, so no later step needs it."""
        return {}, {"eps_norm": self.eps_norm}

    def load_state_dict(self, tensors, meta) -> None:
        self.eps_norm = meta["eps_norm"]


DEFENSE = Defense(name="vaccine", stage=ALIGNMENT, config=VaccineConfig, label="Vaccine", param="rho",
                  rule=lambda cfg, ctx: VaccineRule(cfg), finetune_adapter="fresh",
                  color="#44AA99", marker=">")
