"""The one training loop. It owns batching, optimiser, schedule, clipping, logging and devices.

A defense never forks this loop: it supplies how one step's gradient is produced (it must leave
the gradient in `.grad`) plus optional hooks before and after the stage. The loop knows no
defense by name. A stage can be checkpointed and resumed mid-way (`train_loop`'s checkpoint_dir).
"""
from __future__ import annotations

import json
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from panacea_lab.config import SCHEDULES, check
from panacea_lab.data.batching import Batch, BatchStream, StreamCursor
from panacea_lab.training import checkpoint
from panacea_lab.training.loss import lm_loss


@dataclass
class LoopSettings:
    """One stage's optimisation. AdamW (torch's, the Trainer's default "adamw_torch", same betas and
    eps) applies `weight_decay` to every trainable tensor; the Trainer exempts biases and norm weights,
    which a LoRA adapter has none of. The paper's scripts: weight_decay 0.1, schedule "constant"."""

    epochs: float
    lr: float
    batch_size: int
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    log_every: int = 1
    desc: str = "train"
    schedule: str = "linear"  # see `lr_lambda`; the paper's scripts use "constant"

    def __post_init__(self):
        check(self.schedule in SCHEDULES, "schedule", self.schedule, f"use one of {', '.join(SCHEDULES)}")
        check(0 <= self.warmup_ratio < 1, "warmup_ratio", self.warmup_ratio, "must be in [0, 1)")


class StepRule:
    """Plain SFT: backward of the batch loss. Defenses subclass and override what they change."""

    name = "sft"
    total_steps: int | None = None  # the stage's step count, set by train_loop before `prepare`

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

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """What a stage resumed mid-way needs besides weights and optimizer: (tensors, JSON-able meta),
        e.g. the position of a stream the rule draws from. Plain SFT has none."""
        return {}, {}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Restore `state_dict()`'s output; runs after `prepare`, tensors already on the loop's device."""


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


def lr_lambda(schedule: str, total: int, warmup_ratio: float):
    """The lr factor at each step (0-based) of `total`, for LambdaLR.

    "constant": Hugging Face's `get_constant_schedule`, which ignores any warm-up (the Trainer builds
    it without warm-up steps); the paper's scripts use it with weight_decay 0.1 and warmup_ratio 0.1
    (script/finetune/panacea_gsm8k.sh:53-55 of w-yibo/Panacea) or 0 (script/alignment/sft.sh:26-28).
    "constant_with_warmup": Hugging Face's, ceil(total * warmup_ratio) steps rising from 0.
    "linear": warm-up then linear decay to zero, the shape of the Trainer's default ("linear"), but
    its warm-up has int(total * warmup_ratio) steps and starts one step ahead ((s + 1) / warm, not
    s / warm); without warm-up it equals Hugging Face's. Kept as it is so stored results stay valid.
    """
    if schedule == "constant":
        return lambda s: 1.0
    if schedule == "constant_with_warmup":
        warm = math.ceil(total * warmup_ratio)
        return lambda s: s / max(1, warm) if s < warm else 1.0
    warm = int(total * warmup_ratio)
    return lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm))


class _Checkpoints:
    """Saves and restores everything a stage needs to continue bit for bit at a later step: the
    trainable weights, optimizer, scheduler, log, train time, stream positions (the loop's and the
    rule's), the rule's own state and the random generators. SIGTERM sets a flag; the loop then
    saves at the end of the step and the signal is raised again with the previous handler."""

    def __init__(self, directory, every: int, accelerator, model, optimizer, scheduler, batches: StreamCursor,
                 rule: StepRule, fingerprint: dict):
        self.dir, self.every, self.acc = (Path(directory) if directory else None), every, accelerator
        self.model, self.optimizer, self.scheduler, self.batches, self.rule = model, optimizer, scheduler, batches, rule
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back from JSON
        self.stop, self.previous, self.last_saved, self.saves, self.seconds = False, None, None, 0, 0.0

    def named(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.acc.unwrap_model(self.model).named_parameters() if p.requires_grad]

    def resume(self) -> tuple[list, int, float]:
        """(log, first step, train seconds so far): from the newest checkpoint, or a fresh start."""
        found = checkpoint.load_latest(self.dir)
        if found is None:
            return [], 0, 0.0
        tensors, state = found
        if state["fingerprint"] != self.fingerprint:
            diff = sorted(k for k in self.fingerprint if state["fingerprint"].get(k) != self.fingerprint[k])
            raise ValueError(f"the checkpoint in {self.dir} belongs to another run (differs in {diff}): "
                             "delete it or give this run its own checkpoint_dir")
        with torch.no_grad():
            for name, p in self.named():
                p.copy_(tensors[f"params/{name}"])
        checkpoint.load_optimizer_state(self.optimizer, tensors, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.batches.seek(state["stream"])
        rule_tensors = {k[len("rule/"):]: v.to(self.acc.device) for k, v in tensors.items() if k.startswith("rule/")}
        self.rule.load_state_dict(rule_tensors, state["rule"])
        checkpoint.load_rng_state(tensors, state["rng"])
        self.last_saved = state["step"]
        return state["log"], state["step"], state["train_seconds"]

    def due(self, steps_done: int, total: int) -> bool:
        if self.dir is None or steps_done == self.last_saved:
            return False
        return self.stop or steps_done == total or (self.every > 0 and steps_done % self.every == 0)

    def save(self, steps_done: int, log: list, train_seconds: float) -> None:
        t0 = time.perf_counter()
        if self.acc.is_main_process:
            opt_tensors, opt_meta = checkpoint.optimizer_state(self.optimizer)
            rng_tensors, rng_meta = checkpoint.rng_state()
            rule_tensors, rule_meta = self.rule.state_dict()
            tensors = {**{f"params/{n}": p for n, p in self.named()}, **opt_tensors, **rng_tensors,
                       **{f"rule/{k}": v for k, v in rule_tensors.items()}}
            state = {"fingerprint": self.fingerprint, "log": log, "train_seconds": train_seconds,
                     "optimizer": opt_meta, "scheduler": self.scheduler.state_dict(), "rng": rng_meta,
                     "stream": self.batches.position(), "rule": rule_meta}
            checkpoint.save(self.dir, steps_done, tensors, state)
        self.acc.wait_for_everyone()
        self.last_saved, self.saves = steps_done, self.saves + 1
        self.seconds += time.perf_counter() - t0

    def __enter__(self) -> "_Checkpoints":
        """Catch SIGTERM in a single process only: ranks of a DDP run would stop at different steps."""
        if (self.dir is not None and self.acc.num_processes == 1
                and threading.current_thread() is threading.main_thread()):
            self.previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def _on_sigterm(self, signum, frame) -> None:
        self.stop = True

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
            self.previous = None
            if self.stop:  # arrived after the last save: deliver it now rather than swallow it
                signal.raise_signal(signal.SIGTERM)

    def exit_if_stopped(self) -> None:
        """After the checkpoint: let SIGTERM do what it did before the loop (by default, end the process)."""
        if self.stop:
            self.__exit__()
            raise SystemExit(128 + signal.SIGTERM)  # the previous handler returned: leave all the same

    def report(self, start: int) -> dict:
        return {"resumed_from": start or None, "saves": self.saves, "seconds": self.seconds}


def train_loop(model, stream: BatchStream, cfg: LoopSettings, rule: StepRule | None = None,
               accelerator: Accelerator | None = None, on_step=None, checkpoint_dir: Path | None = None,
               checkpoint_every: int = 0) -> dict:
    """Train `model`'s trainable parameters; return the per-step log and the stage's timings.

    `on_step(model, steps_done)` runs after each update (e.g. to score checkpoints along the way);
    it must leave the model's weights as it found them. Its time is excluded from train_seconds.

    With `checkpoint_dir`, the stage is saved every `checkpoint_every` steps (0: never), after its
    last step and when SIGTERM arrives, and a later call with the same directory continues from the
    newest checkpoint: weights and log end bit-identical to an uninterrupted run. The caller builds
    model, streams and rule exactly as for a fresh run; `on_step` runs only for the steps trained in
    this call. Checkpoint time is excluded from train_seconds and reported under "checkpoint".
    """
    if checkpoint_every < 0 or (checkpoint_every and checkpoint_dir is None):
        raise ValueError(f"checkpoint_every = {checkpoint_every}: use 0 (off) or k > 0 with a checkpoint_dir")
    rule = rule or StepRule()
    accelerator = accelerator or Accelerator()
    params = trainable_parameters(model)
    if not params:
        raise ValueError("model has no trainable parameters: attach a LoRA adapter or unfreeze weights")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = max(1, math.ceil(cfg.epochs * stream.steps_per_epoch()))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.schedule, total, cfg.warmup_ratio))
    model, optimizer = accelerator.prepare(model, optimizer)
    rule.total_steps = total
    rule.prepare(model, accelerator)
    batches = stream.forever()
    settings = {k: v for k, v in asdict(cfg).items() if k != "desc"}
    shapes = [[n, list(p.shape), str(p.dtype)] for n, p in accelerator.unwrap_model(model).named_parameters()
              if p.requires_grad]
    fingerprint = {"total": total, "settings": settings, "rule": rule.name, "processes": accelerator.num_processes,
                   "params": shapes}
    ckpt = _Checkpoints(checkpoint_dir, checkpoint_every, accelerator, model, optimizer, scheduler, batches, rule,
                        fingerprint)
    log, start, done_seconds = ckpt.resume()
    model.train()
    t0, paused = time.perf_counter(), 0.0
    bar = tqdm(range(start, total), initial=start, total=total, desc=cfg.desc, leave=False, mininterval=2.0)
    with ckpt:
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
            if ckpt.due(step + 1, total):
                t_save = time.perf_counter()
                ckpt.save(step + 1, log, done_seconds + t_save - t0 - paused)
                paused += time.perf_counter() - t_save
                ckpt.exit_if_stopped()
    model.eval()
    train_seconds = done_seconds + time.perf_counter() - t0 - paused
    final = rule.finalize(accelerator.unwrap_model(model))
    result = {"log": log, "steps": total, "train_seconds": train_seconds,
              "seconds_per_step": train_seconds / total, "finalize": final}
    if checkpoint_dir is not None:
        result["checkpoint"] = ckpt.report(start)
    if torch.cuda.is_available() and accelerator.device.type == "cuda":  # the allocator's peak of this process
        result["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result
