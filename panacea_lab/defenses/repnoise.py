"""RepNoise (Rosati et al. 2024, "Representation noising: a defence mechanism against harmful
finetuning"): an alignment-stage rule that pushes the representations of harmful answers towards
Gaussian noise, so later harmful fine-tuning has little left to recover.

Per step, with the loop's batch r (harmful prompt -> refusal, the alignment data) and a batch a of
harmful prompt -> harmful answer pairs drawn from the defender's stream:
  loss = CE(r) + beta * mean_l MMD(h_l(a), N(0, I)) - alpha * log(1 + CE_lens(a))
  CE_lens(a) = mean_l CE(lm_head(norm(h_l(a))), next tokens of the harmful answer)
one backward of the total. l runs over the L decoder layers (`hidden_states[1:]`). In Hugging Face
models the last entry is already after the final norm, so its lens is the model's own logits (the
official code norms it twice). MMD samples are the hidden states at the answer tokens themselves
(labels != -100, unshifted: the official mask); the lens CE is shifted, position t predicting
label t + 1, exactly as `lm_loss`. Each answer token is one sample (the official code flattens a
whole masked sequence into one sample; per token gives a far better estimate from one batch). The
N(0, I) sample has the same shape, drawn from a generator seeded with the step index, on the
hidden states' device, so a step is reproducible. The lens CE is computed at answer positions only
(no full-sequence vocabulary logits per layer).

`mmd` is the biased (V-statistic) squared MMD with a sum of Gaussian kernels exp(-||a - b||^2 / h),
as the official MMD_loss: always >= 0, so it is a well-behaved loss term. Its default bandwidths
are the official ones: multiples 1/4 .. 4 of the mean off-diagonal pairwise squared distance of
the pooled sample (detached), so the kernel neither vanishes nor saturates at any hidden-state scale.

Defaults: the official scripts disagree (alpha 0.02 / beta 0.1 in one, alpha 0.1 / beta 0.001 in
another). We take alpha 0.1 / beta 0.001: with it the refusal CE stays the dominant term (the
noise and ascent terms act as regularisers), so alignment still learns to refuse on a small LoRA
model; 0.02 / 0.1 weights the noise term 100x more and remains available through the config.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from panacea_lab.config import ALIGNMENT, DefenseConfig, check, positive
from panacea_lab.data.batching import IGNORE_INDEX, BatchStream
from panacea_lab.defenses.registry import Defense
from panacea_lab.training.loop import StepRule, lm_loss

OFFICIAL_BANDWIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)  # kernel_mul 2, kernel_num 5 in the official MMD_loss


@dataclass(frozen=True)
class RepNoiseConfig(DefenseConfig):
    name = "repnoise"
    stage = ALIGNMENT

    """RepNoise's knobs: ascent weight alpha, noise (MMD) weight beta, harmful batch size."""

    alpha: float = 0.1
    beta: float = 0.001
    harmful_batch_size: int = 10  # the caller builds the harmful stream with this batch size

    def check_values(self):
        check(self.alpha >= 0, "alpha", self.alpha, "the gradient-ascent weight must be >= 0")
        check(self.beta >= 0, "beta", self.beta, "the noise (MMD) weight must be >= 0")
        check(self.harmful_batch_size > 0, "harmful_batch_size", self.harmful_batch_size, "must be > 0")


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidths=OFFICIAL_BANDWIDTHS, relative: bool = True) -> torch.Tensor:
    """Biased squared MMD between samples x (n x d) and y (m x d) under sum_h exp(-||a - b||^2 / h).

    `relative=True`: each h is a multiple of the mean off-diagonal squared distance of the pooled
    sample (detached, no gradient through the bandwidth); `relative=False`: the h are absolute.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"mmd takes two (n x d) samples of one width; got {tuple(x.shape)} and {tuple(y.shape)}")
    z = torch.cat([x, y]).float()
    sq = (z * z).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2 * z @ z.T).clamp_min(0)
    n = z.shape[0]
    base = dist.detach().sum() / max(1, n * n - n) if relative else dist.new_tensor(1.0)
    kernel = sum(torch.exp(-dist / (base * h)) for h in bandwidths)
    k = x.shape[0]
    return kernel[:k, :k].mean() + kernel[k:, k:].mean() - 2 * kernel[:k, k:].mean()


def _final_norm(model):
    decoder = model.get_decoder()
    for name in ("norm", "final_layernorm", "ln_f"):
        if hasattr(decoder, name):
            return getattr(decoder, name)
    raise ValueError(f"{type(decoder).__name__} has no final norm named norm, final_layernorm or ln_f: "
                     "RepNoise's logit lens needs one; extend _final_norm for this architecture")


class RepNoiseRule(StepRule):
    name = "repnoise"

    def __init__(self, cfg: RepNoiseConfig, harmful: BatchStream):
        self.cfg, self.harmful = cfg, harmful

    def prepare(self, model, accelerator) -> None:
        super().prepare(model, accelerator)
        plain = accelerator.unwrap_model(model)
        self.norm, self.head = _final_norm(plain), plain.get_output_embeddings()
        self.batches = self.harmful.forever()

    def harmful_terms(self, model, harmful, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean over layers of MMD to N(0, I), mean over layers of logit-lens CE) on one harmful batch."""
        out = model(input_ids=harmful.input_ids, attention_mask=harmful.attention_mask, output_hidden_states=True)
        layers = out.hidden_states[1:]
        answer = harmful.labels != IGNORE_INDEX  # positions holding answer tokens (unshifted)
        predicts = harmful.labels[:, 1:] != IGNORE_INDEX  # positions t whose next token is an answer token
        if not answer.any():
            raise ValueError("the harmful batch has no answer tokens (labels all -100): raise max_length "
                             "or drop prompts that fill it")
        targets = harmful.labels[:, 1:][predicts]
        gen = torch.Generator(device=layers[0].device).manual_seed(step)
        mmds, lens = [], []
        for i, h in enumerate(layers):
            x = h[answer].float()
            noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            mmds.append(mmd(x, noise))
            if i == len(layers) - 1:  # already after the final norm: the model's own logits
                logits = out.logits[:, :-1][predicts]
            else:
                logits = self.head(self.norm(h[:, :-1][predicts]))
            lens.append(F.cross_entropy(logits.float(), targets))
        return torch.stack(mmds).mean(), torch.stack(lens).mean()

    def gradient(self, model, batch, step: int) -> dict[str, float]:
        cfg = self.cfg
        loss = lm_loss(model, batch)
        harmful = next(self.batches).to(batch.input_ids.device)
        noise, lens = self.harmful_terms(model, harmful, step)
        total = loss + cfg.beta * noise - cfg.alpha * torch.log1p(lens)
        self.accelerator.backward(total)
        return {"loss": loss.item(), "mmd": noise.item(), "lens_ce": lens.item()}

    def state_dict(self):
        """For a resumed stage: the harmful stream's position (the noise is seeded by the step)."""
        return {}, {"batches": self.batches.position()}

    def load_state_dict(self, tensors, meta) -> None:
        self.batches.seek(meta["batches"])


DEFENSE = Defense(name="repnoise", stage=ALIGNMENT, config=RepNoiseConfig, label="RepNoise", param="beta",
                  rule=lambda cfg, ctx: RepNoiseRule(cfg, ctx.harmful(cfg.harmful_batch_size)))
