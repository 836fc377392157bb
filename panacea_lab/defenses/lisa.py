"""Lisa (Huang et al. 2024, "Lazy safety alignment for large language models against harmful
fine-tuning", NeurIPS 2024): a fine-tuning-stage rule, Bi-State optimisation with a proximal term.

The steps cycle through two states, align_steps + finetune_steps long, starting with alignment as
the official ADMMTrainer does (trainer.py:78-80 of git-disl/Lisa: status "alignment" first):
  state 0, align:    align_steps steps on batches of the defender's refusals (harmful prompt ->
                     refusal, the official BeaverTails_safe guide data); the user batch is ignored
  state 1, finetune: finetune_steps steps on the loop's user batch
(check_mode, trainer.py:137-158: a switch every alignment_step / finetune_step steps.) At the first
step of each state (step 0, and every step where state_at(step) != state_at(step - 1)) the trainable
weights are snapshotted as w_other, the weights the other state left (switch_model, :109-122). Each
step's loss is
  its state's LM loss + rho / 2 * sum over trainable tensors ||w - w_other||^2
but, as in the official trainer (:182 and :191, "Don't do proximal for the first few rounds",
:193), the proximal term is added only at steps s > proximal_warmup * total (0.1 of the stage's
steps); the loop sets the rule's `total_steps` (without it, the term is on from the first step).
As in Lisa the alignment steps are part of the step budget: the user's batches of alignment steps
are skipped, not deferred, so the user data seen is finetune_steps / cycle of it.

Defaults (script/finetune/lisa_poison_ratio.sh of git-disl/Lisa): align_step = 100, finetune_step
= 900 (:22-23), rho = 1 (:18); the alignment batches have the user's batch size (the alignment
loader uses the trainer's, trainer.py:64; 10 is this project's attack batch). `align_data` =
"refusals" draws the refusals alone; "alignment" draws the alignment stage's data (refusals and its
benign replay), the earlier rule of this project. The user's fine-tuning merges the aligned adapter
and trains a new LoRA (:38 passes --lora_folder without --alternating single_lora, which Lisa's
train.py merges with merge_and_unload before attaching a new LoRA).

The loop gives the rule only the step index, so the rule tracks the switches itself; `prepare`
resets the snapshot, so a rule reused for a new stage starts from its step 0 again.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from panacea_lab.config import FINETUNING, DefenseConfig, check, positive
from panacea_lab.data.batching import BatchStream
from panacea_lab.defenses.registry import Defense
from panacea_lab.training.loop import StepRule, lm_loss

ALIGN, FINETUNE = 0, 1
ALIGN_DATA = ("refusals", "alignment")


@dataclass(frozen=True)
class LisaConfig(DefenseConfig):
    name = "lisa"
    stage = FINETUNING

    """Lisa's knobs (official defaults: 100 alignment / 900 fine-tuning steps per cycle, rho = 1, no
    proximal term in the first 10% of the steps, refusals as the alignment data)."""

    align_steps: int = 100
    finetune_steps: int = 900
    rho: float = 1.0
    align_batch_size: int = 10  # the caller builds the alignment stream with this batch size
    proximal_warmup: float = 0.1
    align_data: str = "refusals"

    def check_values(self):
        check(self.align_steps > 0, "align_steps", self.align_steps, "must be > 0")
        check(self.finetune_steps > 0, "finetune_steps", self.finetune_steps, "must be > 0")
        check(self.rho >= 0, "rho", self.rho, "the proximal weight must be >= 0")
        check(self.align_batch_size > 0, "align_batch_size", self.align_batch_size, "must be > 0")
        check(0 <= self.proximal_warmup < 1, "proximal_warmup", self.proximal_warmup,
              "the share of steps without the proximal term must be in [0, 1)")
        check(self.align_data in ALIGN_DATA, "align_data", self.align_data, f"use one of {ALIGN_DATA}")


class LisaRule(StepRule):
    name = "lisa"

    def __init__(self, cfg: LisaConfig, alignment: BatchStream):
        self.cfg, self.alignment = cfg, alignment
        self.snapshot: list[torch.Tensor] | None = None

    def proximal_on(self, step: int) -> bool:
        """The official warm-up: the term counts once step > proximal_warmup * total_steps."""
        return self.total_steps is None or step > self.cfg.proximal_warmup * self.total_steps

    def state_at(self, step: int) -> int:
        """0 (align) for the first align_steps steps of each cycle, 1 (finetune) for the rest."""
        return ALIGN if step % (self.cfg.align_steps + self.cfg.finetune_steps) < self.cfg.align_steps else FINETUNE

    def prepare(self, model, accelerator) -> None:
        super().prepare(model, accelerator)
        self.batches = self.alignment.forever()
        self.snapshot, self.snapshot_step = None, None

    def take_snapshot(self, step: int) -> None:
        self.snapshot = [p.detach().clone() for p in self.params]
        self.snapshot_step = step

    def proximal(self) -> torch.Tensor:
        """sum over trainable tensors ||w - w_other||^2 (differentiable in w)."""
        return sum(((p - s) ** 2).sum() for p, s in zip(self.params, self.snapshot))

    def gradient(self, model, batch, step: int) -> dict[str, float]:
        state = self.state_at(step)
        if self.snapshot is None or step == 0 or state != self.state_at(step - 1):
            self.take_snapshot(step)
        if state == ALIGN:
            batch = next(self.batches).to(batch.input_ids.device)
        loss = lm_loss(model, batch)
        prox = self.proximal()
        on = self.proximal_on(step)
        self.accelerator.backward(loss + self.cfg.rho / 2 * prox if on else loss)
        return {"loss": loss.item(), "prox": prox.item(), "prox_on": float(on), "state": float(state)}

    def finalize(self, model) -> dict:
        return {}

    def state_dict(self):
        """For a resumed stage: the alignment stream's position and the snapshot w_other (and its step)."""
        snap = {f"snapshot/{n}": s for n, s in zip(self.names, self.snapshot or [])}
        return snap, {"batches": self.batches.position(), "snapshot_step": self.snapshot_step,
                      "has_snapshot": self.snapshot is not None}

    def load_state_dict(self, tensors, meta) -> None:
        self.batches.seek(meta["batches"])
        self.snapshot = [tensors[f"snapshot/{n}"] for n in self.names] if meta["has_snapshot"] else None
        self.snapshot_step = meta["snapshot_step"]


def _rule(cfg: LisaConfig, ctx) -> LisaRule:
    draw = ctx.refusals if cfg.align_data == "refusals" else ctx.alignment
    return LisaRule(cfg, draw(cfg.align_batch_size))


DEFENSE = Defense(name="lisa", stage=FINETUNING, config=LisaConfig, label="Lisa", param="rho", rule=_rule,
                  finetune_adapter="fresh", color="#661100", marker="8")
