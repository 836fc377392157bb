"""Booster (Huang et al. 2024, "Booster: Tackling harmful fine-tuning for large language models via
attenuating harmful perturbation", arXiv 2409.01586): an alignment-stage defense.

Per alignment step, with f the alignment loss on the loop's batch and h the LM loss on a batch of
harmful data held by the defender:
  G_h = grad h(w);  w' = w - alpha * G_h / ||G_h||   (||.|| one global L2 norm over all trainable tensors)
  update with grad f(w) + lam * (G_h - grad h(w'))
i.e. the gradient of f(w) + lam * (h(w) - h(w - alpha * G_h / ||G_h||)) with the normalised step held
constant: the model is trained so that one harmful (normalised) gradient step lowers the harmful
loss as little as possible. The same harmful batch is used at w and at w'.

Defaults lam = 100, alpha = 0.01, a harmful batch of 10: the Panacea paper's baseline setting,
script/alignment/booster.sh:2-3 of w-yibo/Panacea (lamb=100, alpha=0.01) and the harmful loader's
batch size in BoosterAlignmentTrainer (trainer.py:149 there). Booster's own repository uses lam = 5,
alpha = 0.1 (script/alignment/smooth_align.sh:14-15 of git-disl/Booster): the "authors" setting.
Unlike the official code (which undoes the step by adding it back), w is restored from a saved
copy, bit for bit, and each gradient comes from its own backward pass (so the rule also holds under
DDP).

The user's fine-tuning continues the aligned adapter: script/finetune/booster_gsm8k.sh:25 and :50
of w-yibo/Panacea pass --lora_folder with --alternating single_lora, which train.py:295-310 loads
as trainable instead of merging (the record's finetune_adapter = "continue").
"""
from __future__ import annotations

from dataclasses import dataclass

from panacea_lab.config import ALIGNMENT, DefenseConfig, check, positive
from panacea_lab.data.batching import BatchStream
from panacea_lab.defenses.common import gradient_at_shift, harmful_gradients
from panacea_lab.defenses.registry import Defense
from panacea_lab.training.loop import StepRule, lm_loss


@dataclass(frozen=True)
class BoosterConfig(DefenseConfig):
    name = "booster"
    stage = ALIGNMENT

    """Booster's knobs: lam weighs the harmful-perturbation regulariser, alpha is the inner step size."""

    lam: float = 100.0
    alpha: float = 0.01
    harmful_batch_size: int = 10

    def check_values(self):
        check(self.lam >= 0, "lam", self.lam, "the regulariser weight must be >= 0 (0 is plain SFT)")
        check(self.alpha > 0, "alpha", self.alpha, "the inner harmful step size must be > 0")
        check(self.harmful_batch_size > 0, "harmful_batch_size", self.harmful_batch_size, "must be > 0")


class BoosterRule(StepRule):
    name = "booster"

    def __init__(self, cfg: BoosterConfig, harmful: BatchStream):
        self.cfg, self.harmful = cfg, harmful

    def prepare(self, model, accelerator) -> None:
        super().prepare(model, accelerator)
        self.batches = self.harmful.forever()

    def gradient(self, model, batch, step: int) -> dict[str, float]:
        cfg = self.cfg
        g = harmful_gradients(self, model, batch, next(self.batches))
        loss_h_after, g_h_after = gradient_at_shift(self, g.direction(-cfg.alpha), lambda: lm_loss(model, g.harmful))
        for p, gf, gh, gha in zip(self.params, g.g_f, g.g_h, g_h_after):
            p.grad = gf + cfg.lam * (gh - gha)
        return {"loss": g.loss_f.item(), "h": g.loss_h.item(), "h_after": loss_h_after.item(),
                "grad_h_norm": g.norm_h}

    def finalize(self, model) -> dict:
        return {}

    def state_dict(self):
        """For a resumed stage: the harmful stream's position."""
        return {}, {"batches": self.batches.position()}

    def load_state_dict(self, tensors, meta) -> None:
        self.batches.seek(meta["batches"])


DEFENSE = Defense(name="booster", stage=ALIGNMENT, config=BoosterConfig, label="Booster", param="lam",
                  rule=lambda cfg, ctx: BoosterRule(cfg, ctx.harmful(cfg.harmful_batch_size)),
                  finetune_adapter="continue", color="#AA4499", marker="d")
