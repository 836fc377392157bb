"""The LM loss of a batch: mean next-token cross-entropy over the response tokens.

Two ways to compute the same number (`ModelConfig.loss`):
- "batch" (the default): the model's own loss on the whole right-padded batch;
- "bucketed": rows grouped by length into micro-batches, each padded only to its own longest row,
  and logits computed only at the positions whose next token is a label; the sum of token losses
  over the number of label tokens, i.e. the same mean. Under a causal mask, right padding changes
  nothing at a real position, so the two differ only by floating-point rounding (other matmul
  shapes). On the CPU most of a chat model's step is padding and unused logits (49k-word vocabulary
  at every prompt position); the gradient is one backward of the summed loss, as before.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from panacea_lab.data.batching import IGNORE_INDEX, Batch

GROUP_COST = 48  # one more forward pass costs about this many padded tokens (a fixed per-pass overhead)


def lm_loss(model, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy over response tokens (labels carry -100 elsewhere)."""
    if getattr(model, "panacea_loss", "batch") == "bucketed":
        return bucketed_loss(model, batch)
    return batch_loss(model, batch)


def batch_loss(model, batch: Batch) -> torch.Tensor:
    """The model's own loss in one forward pass over the whole batch: for rules whose forward hooks
    read every row's activations at once (Vaccine, RepNoise)."""
    return model(**batch.as_kwargs()).loss


def length_groups(lengths: list[int], group_cost: int = GROUP_COST) -> list[list[int]]:
    """Rows (indices) split into groups of similar length that minimise padded tokens + group_cost
    per group: an exact partition of the length-sorted rows into contiguous runs (rows <= a batch)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)
    for end in range(1, n + 1):  # best[end]: cheapest split of the `end` longest rows
        for start in range(end):
            cost = best[start] + group_cost + (end - start) * lengths[order[start]]
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups, end = [], n
    while end > 0:
        groups.append(order[cut[end]:end])
        end = cut[end]
    return groups[::-1]


def _keeps_logits(model) -> bool:
    """Whether the model's forward takes a per-row boolean `logits_to_keep` (transformers 5's
    `slice_logits_to_keep`): then the vocabulary projection runs at the label positions alone."""
    from transformers import modeling_utils

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return (hasattr(modeling_utils, "slice_logits_to_keep")
            and "logits_to_keep" in inspect.signature(base.forward).parameters)


def bucketed_loss(model, batch: Batch) -> torch.Tensor:
    """`lm_loss` computed per length group, with logits only where a label follows."""
    lengths = batch.attention_mask.sum(1).tolist()
    n_tokens = int((batch.labels[:, 1:] != IGNORE_INDEX).sum())
    if n_tokens == 0:  # no label at all: the model's own loss says so the same way (nan)
        return batch_loss(model, batch)
    select = _keeps_logits(model)
    total = 0.0
    for rows in length_groups(lengths):
        width = max(lengths[i] for i in rows)
        index = torch.tensor(rows, device=batch.input_ids.device)
        ids, mask, labels = (t[index, :width] for t in (batch.input_ids, batch.attention_mask, batch.labels))
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX  # position t predicts label t + 1
        if not bool(keep.any()):
            continue
        if select:
            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
        else:
            logits = model(input_ids=ids, attention_mask=mask).logits[keep]
        targets = labels[:, 1:][keep[:, :-1]]
        total = total + F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets, reduction="sum")
    return total / n_tokens
