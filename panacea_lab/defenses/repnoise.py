"""RepNoise (Rosati et al. 2024, "Representation noising: a defence mechanism against harmful
finetuning"): an alignment-stage rule that pushes the representations of harmful text towards
Gaussian noise, so later harmful fine-tuning has little left to recover.

Per step, with the loop's batch r (the alignment data) and a batch a of harmful prompt -> harmful
answer pairs from the defender's stream, one backward of
  loss = CE_r + beta * mean_l MMD(f_l(a), N(0, I)) - alpha * log(lens(a))

`loss="official"` (default) is rep_noise_loss of loss_func/repnoise_loss.py of git-disl/Booster,
the file that trainer.py:10 of w-yibo/Panacea imports for its RepNoise baseline (the RepNoise
authors' representation_noising/loss.py has the same rule):
- the mask is position-wise: True where the harmful ids differ from the alignment batch's ids, the
  alignment batch zero-padded or cut to the harmful batch's shape (:80-97, :121-122); with paired
  data (the RepNoise paper's) that is the answer tokens, with Panacea's unpaired batches it is
  every position but the shared template prefix. Padding counts where the other batch has a token.
- f_l are the MLP outputs of the L decoder layers (`layers.{i}.mlp`, :117-119). Each sequence is one
  MMD sample: masked features and masked N(0, I) noise flattened per row (:123-129), MMD as
  MMD_loss (:20-52: biased V-statistic, bandwidths 1/4 .. 4 times the mean pairwise squared
  distance, detached).
- lens(a) = (CE(logits) + sum over all L + 1 hidden_states h of CE(lm_head(norm(h)))) / (L + 1) + 1
  (:132-158): the embeddings are included and the last entry, already after the final norm, is
  normed again, as there.
- every CE is `masked_token_ce_loss` (:56-77) with the input ids as targets: logits at t times
  mask_t, target ids_{t+1} times mask_{t+1}, and target id 0 ignored (the pad id of the embedded
  tokenizer). CE_r is that CE on the alignment batch, its mask the positions where its ids differ
  from the harmful batch's (:162-168), not the loop's answer-only CE.
`loss="answer"` is the earlier rule of this project: the answer tokens (labels != -100) as mask,
each answer token one MMD sample, the lens at answer positions of the L layer outputs (the last
being the model's logits), CE_r the loop's LM loss and -alpha * log(1 + lens).
`features="residual"` uses the decoder layers' outputs (hidden_states[1:]) instead of the MLP outputs.

Defaults alpha = 0.02, beta = 0.1: script/alignment/repnoise.sh:2-3 of w-yibo/Panacea (passed as
--rho and --lamb, :37-38, i.e. rep_noise_loss's alpha and beta). The harmful batch is the alignment
batch size there (RepNoiseTrainer draws it with the trainer's batch size), 5 (:20). The noise is
drawn from a generator seeded with the step index (the official code uses the global generator).
The user's fine-tuning merges the aligned adapter and trains a new LoRA (script/finetune/
repnoise_gsm8k.sh:22 passes --lora_folder without --alternating single_lora; train.py:295-328).

On the embedded world the official loss and weights still teach refusals, so the "embedded" setting
keeps them: the default alignment (seed 0, 480 steps) under RepNoise scores HS 0 / refusal 100 /
FA sentiment 73.0 on 200 held-out harmful and 100 task prompts, against HS 0 / 100 / 75.0 for plain
SFT alignment; over the run the alignment CE fell from 9.6 to 0.77, the lens term rose from 5.6 to
8.1 and the MMD from 1.7 to 6.2 (the noise term, at beta 0.1, loses to the ascent).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from panacea_lab.config import ALIGNMENT, DefenseConfig, check
from panacea_lab.data.batching import IGNORE_INDEX, BatchStream
from panacea_lab.defenses.registry import Defense
from panacea_lab.defenses.vaccine import decoder_layers
from panacea_lab.training.loop import StepRule
from panacea_lab.training.loss import batch_loss

OFFICIAL_BANDWIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)  # kernel_mul 2, kernel_num 5 in the official MMD_loss
LOSSES = ("official", "answer")
FEATURES = ("mlp", "residual")


@dataclass(frozen=True)
class RepNoiseConfig(DefenseConfig):
    name = "repnoise"
    stage = ALIGNMENT

    """RepNoise's knobs: ascent weight alpha, noise (MMD) weight beta, harmful batch size, the loss's
    form (official or answer) and the representations pushed to noise (mlp or residual)."""

    alpha: float = 0.02
    beta: float = 0.1
    harmful_batch_size: int = 5  # the caller builds the harmful stream with this batch size
    loss: str = "official"
    features: str = "mlp"

    def check_values(self):
        check(self.alpha >= 0, "alpha", self.alpha, "the gradient-ascent weight must be >= 0")
        check(self.beta >= 0, "beta", self.beta, "the noise (MMD) weight must be >= 0")
        check(self.harmful_batch_size > 0, "harmful_batch_size", self.harmful_batch_size, "must be > 0")
        check(self.loss in LOSSES, "loss", self.loss, f"use one of {LOSSES}")
        check(self.features in FEATURES, "features", self.features, f"use one of {FEATURES}")


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


def fit_to(ids: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """`ids` zero-padded or cut to `shape` in both dimensions (the official adapt_dimension_b2a)."""
    rows, cols = shape
    out = ids[:rows, :cols]
    return F.pad(out, (0, cols - out.shape[1], 0, rows - out.shape[0]), value=0)


def differs(ids: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """The official mask of `ids`: True where `other`, fitted to its shape, holds another id."""
    return ids != fit_to(other.to(ids.device), ids.shape)


def masked_token_ce(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The official masked_token_ce_loss: predict ids[t + 1] from logits[t] * mask[t] where
    mask[t + 1], ignoring target id 0; the mean over the counted positions. The targets are the exact
    ids: the official call on the harmful batch multiplies them by a bf16 mask (`repnoise_loss.py:70`,
    mask cast at `:131`), which rounds every id above 256 (README, Fidelity)."""
    m = mask.to(logits.dtype)
    labels = ids[:, 1:] * mask[:, 1:].long()
    targets = labels.masked_fill(labels == 0, IGNORE_INDEX)
    if not (targets != IGNORE_INDEX).any():
        raise ValueError("no position of the batch is counted (the mask is empty or only covers id 0): "
                         "the harmful and alignment batches hold the same tokens")
    shifted = logits[:, :-1] * m[:, :-1, None]
    return F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]).float(), targets.reshape(-1))


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
        self.mlps = [layer.mlp for layer in decoder_layers(plain)] if self.cfg.features == "mlp" else []
        self.batches = self.harmful.forever()

    def _forward(self, model, harmful):
        """The harmful forward with every hidden state, and the features f_l (one (B, T, D) per layer)."""
        captured, handles = {}, []
        try:
            for i, mlp in enumerate(self.mlps):
                handles.append(mlp.register_forward_hook(lambda _m, _a, out, i=i: captured.__setitem__(i, out)))
            out = model(input_ids=harmful.input_ids, attention_mask=harmful.attention_mask, output_hidden_states=True)
        finally:
            for h in handles:
                h.remove()
        feats = [captured[i] for i in range(len(self.mlps))] if self.mlps else list(out.hidden_states[1:])
        return out, feats

    def official_terms(self, model, batch, harmful, step: int):
        """(CE_r, mean MMD, lens) of the official loss on the alignment batch and one harmful batch."""
        out, feats = self._forward(model, harmful)
        mask = differs(harmful.input_ids, batch.input_ids)
        gen = torch.Generator(device=feats[0].device).manual_seed(step)
        mmds = []
        for f in feats:
            m = mask[..., None].to(f.dtype)
            noise = torch.randn(f.shape, generator=gen, device=f.device, dtype=f.dtype) * m
            mmds.append(mmd((f * m).flatten(1), noise.flatten(1)))
        ids = harmful.input_ids
        lens = masked_token_ce(out.logits, ids, mask)
        for h in out.hidden_states:
            lens = lens + masked_token_ce(self.head(self.norm(h)), ids, mask)
        lens = lens / len(out.hidden_states) + 1
        own = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        harmless = masked_token_ce(own, batch.input_ids, differs(batch.input_ids, harmful.input_ids))
        return harmless, torch.stack(mmds).mean(), lens

    def answer_terms(self, model, harmful, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean MMD, mean logit-lens CE) of the answer-token rule on one harmful batch."""
        out, feats = self._forward(model, harmful)
        answer = harmful.labels != IGNORE_INDEX  # positions holding answer tokens (unshifted)
        predicts = harmful.labels[:, 1:] != IGNORE_INDEX  # positions t whose next token is an answer token
        if not answer.any():
            raise ValueError("the harmful batch has no answer tokens (labels all -100): raise max_length "
                             "or drop prompts that fill it")
        targets = harmful.labels[:, 1:][predicts]
        gen = torch.Generator(device=feats[0].device).manual_seed(step)
        mmds, lens = [], []
        for f in feats:
            x = f[answer].float()
            mmds.append(mmd(x, torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)))
        layers = out.hidden_states[1:]
        for i, h in enumerate(layers):
            if i == len(layers) - 1:  # already after the final norm: the model's own logits
                logits = out.logits[:, :-1][predicts]
            else:
                logits = self.head(self.norm(h[:, :-1][predicts]))
            lens.append(F.cross_entropy(logits.float(), targets))
        return torch.stack(mmds).mean(), torch.stack(lens).mean()

    def gradient(self, model, batch, step: int) -> dict[str, float]:
        cfg = self.cfg
        harmful = next(self.batches).to(batch.input_ids.device)
        if cfg.loss == "official":
            loss, noise, lens = self.official_terms(model, batch, harmful, step)
            total = loss + cfg.beta * noise - cfg.alpha * torch.log(lens)
        else:
            loss = batch_loss(model, batch)
            noise, lens = self.answer_terms(model, harmful, step)
            total = loss + cfg.beta * noise - cfg.alpha * torch.log1p(lens)
        self.accelerator.backward(total)
        return {"loss": loss.item(), "mmd": noise.item(), "lens_ce": lens.item()}

    def state_dict(self):
        """For a resumed stage: the harmful stream's position (the noise is seeded by the step)."""
        return {}, {"batches": self.batches.position()}

    def load_state_dict(self, tensors, meta) -> None:
        self.batches.seek(meta["batches"])


DEFENSE = Defense(name="repnoise", stage=ALIGNMENT, config=RepNoiseConfig, label="RepNoise", param="beta",
                  rule=lambda cfg, ctx: RepNoiseRule(cfg, ctx.harmful(cfg.harmful_batch_size)),
                  finetune_adapter="fresh", color="#DDCC77", marker="p")
