"""The one training loop. It owns batching, optimiser, schedule, clipping, logging and devices.

A defense never forks this loop: it supplies how one step's gradient is produced (it must leave
the gradient in `.grad`) plus optional hooks before and after the stage. The loop knows no
defense by name (DESIGN.md "How a defense plugs in").
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from panacea_lab.data.batching import Batch, BatchStream


@dataclass
class LoopSettings:
    epochs: float
    lr: float
    batch_size: int
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    log_every: int = 1
    desc: str = "train"


def lm_loss(model, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy over response tokens (labels carry -100 elsewhere)."""
    return model(**batch.as_kwargs()).loss


class StepRule:
    """Plain SFT: backward of the batch loss. Defenses subclass and override what they change."""

    name = "sft"

    def prepare(self, model, accelerator: Accelerator) -> None:
        self.accelerator = accelerator
        self.params = trainable_parameters(model)
        by_id = {id(p): n for n, p in accelerator.unwrap_model(model).named_parameters()}
        self.names = [by_id[id(p)] for p in self.params]  # names as the unwrapped model spells them

    def backward_copy(self, loss: torch.Tensor) -> list[torch.Tensor]:
        """Backward of `loss` alone; returns copies of the gradients (zeros where a tensor got none),
        so the next backward cannot alias them. Each call is a full backward, so DDP syncs each."""
        for p in self.params:
            p.grad = None
        self.accelerator.backward(loss)
        return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in self.params]

    def gradient(self, model, batch: Batch, step: int) -> dict[str, float]:
        """Leave this step's gradient in `.grad` of every trainable parameter; return scalars to log."""
        loss = lm_loss(model, batch)
        self.accelerator.backward(loss)
        return {"loss": loss.item()}

    def finalize(self, model) -> dict:
        """Transform the finished weights (e.g. Panacea adds its last eps). Returns what to record."""
        return {}


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def shard(batch: Batch, accelerator) -> Batch:
    """This process's rows of a global batch under `accelerate launch` (rows rank, rank + N, ...).

    `batch_size` stays the *global* batch, so a run on N GPUs follows the same schedule and data
    order as on one device; DDP averages the N shards' gradients in each backward."""
    n, rank = accelerator.num_processes, accelerator.process_index
    if n == 1:
        return batch
    rows = batch.input_ids.shape[0]
    idx = slice(rank, None, n) if rows >= n else slice(rank % rows, rank % rows + 1)  # a short last batch
    return Batch(batch.input_ids[idx], batch.attention_mask[idx], batch.labels[idx])


def _schedule(total: int, warmup_ratio: float):
    """Linear warm-up then linear decay to zero (the Hugging Face Trainer default the paper used)."""
    warm = int(total * warmup_ratio)
    return lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm))


def train_loop(model, stream: BatchStream, cfg: LoopSettings, rule: StepRule | None = None,
               accelerator: Accelerator | None = None, on_step=None) -> dict:
    """Train `model`'s trainable parameters; return the per-step log and the stage's timings.

    `on_step(model, steps_done)` runs after each update (e.g. to score checkpoints along the way);
    it must leave the model's weights as it found them. Its time is excluded from train_seconds.
    """
    rule = rule or StepRule()
    accelerator = accelerator or Accelerator()
    params = trainable_parameters(model)
    if not params:
        raise ValueError("model has no trainable parameters: attach a LoRA adapter or unfreeze weights")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = max(1, math.ceil(cfg.epochs * stream.steps_per_epoch()))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(total, cfg.warmup_ratio))
    model, optimizer = accelerator.prepare(model, optimizer)
    rule.prepare(model, accelerator)
    model.train()
    log, batches, t0, paused = [], stream.forever(), time.perf_counter(), 0.0
    bar = tqdm(range(total), desc=cfg.desc, leave=False, mininterval=2.0)
    for step in bar:
        batch = shard(next(batches), accelerator).to(accelerator.device)
        optimizer.zero_grad(set_to_none=True)
        scalars = rule.gradient(model, batch, step)
        grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        if step % cfg.log_every == 0 or step == total - 1:
            log.append({"step": step, **scalars, "grad_norm": float(grad_norm)})
            bar.set_postfix(loss=f"{scalars.get('loss', float('nan')):.3f}", refresh=False)
        if on_step is not None:
            t_hook = time.perf_counter()
            on_step(accelerator.unwrap_model(model), step + 1)
            model.train()
            paused += time.perf_counter() - t_hook
    model.eval()
    train_seconds = time.perf_counter() - t0 - paused
    final = rule.finalize(accelerator.unwrap_model(model))
    return {"log": log, "steps": total, "train_seconds": train_seconds,
            "seconds_per_step": train_seconds / total, "finalize": final}
