"""Wanda scores and the per-row pruning masks Antidote draws from them (tensor level, no model).

Two counting rules live here, because Antidote has two targets (`panacea_lab.defenses.antidote`):
- `official_mask`: the official rule (utils.py:711-723 of git-disl/Antidote, prune_wanda_outlier).
  Per row it sorts the scores ascending (stable), keeps the int(cols * (1 - dense_ratio)) lowest
  and prunes every other entry, i.e. the highest cols - int(cols * (1 - dense_ratio)) scores
  (2 of 16 at dense_ratio 0.1: "dense_ratio" is the share removed, rounded up by the int()).
- `prune_top_scores_per_row`: the product target's rule, floor(dense_ratio * cols) highest per row.
A score is |W_ij| * ||X_j||_2 (utils.py:702), X_j the j-th input feature over the calibration tokens.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def _check_ratio(dense_ratio) -> None:
    if not (isinstance(dense_ratio, (int, float)) and 0.0 <= dense_ratio <= 1.0):
        raise ValueError(f"dense_ratio = {dense_ratio!r}: must be in [0, 1] (the fraction of each row's "
                         "weights to zero; Antidote's default is 0.1)")


def _check_scores(weight: Tensor, act_norm: Tensor) -> None:
    if weight.dim() != 2:
        raise ValueError(f"weight has shape {tuple(weight.shape)}: pass one layer's (out x in) matrix")
    if act_norm.shape != (weight.shape[1],):
        raise ValueError(f"act_norm has shape {tuple(act_norm.shape)} but the weight has {weight.shape[1]} input "
                         "features: pass one norm per input feature (column)")


def wanda_scores(weight: Tensor, act_norm: Tensor) -> Tensor:
    """|W_ij| * ||X_j||_2 in float32 (no gradient)."""
    _check_scores(weight, act_norm)
    return weight.detach().float().abs() * act_norm.detach().float().to(weight.device)[None, :]


def official_kept(cols: int, dense_ratio: float) -> int:
    """Entries per row that the official rule keeps: int(cols * (1 - dense_ratio)) (utils.py:711, 722)."""
    _check_ratio(dense_ratio)
    return int(cols * (1 - dense_ratio))


def official_mask(weight: Tensor, act_norm: Tensor, dense_ratio: float) -> Tensor:
    """True where the official rule zeroes an entry: all but the per-row lowest official_kept scores,
    ties resolved as a stable ascending sort does (the lower column counts as the lower score)."""
    scores = wanda_scores(weight, act_norm)
    low = torch.sort(scores, dim=-1, stable=True).indices[:, :official_kept(weight.shape[1], dense_ratio)]
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, low, True)
    return ~keep


def random_flat_mask(shape: torch.Size, dense_ratio: float, generator: torch.Generator) -> Tensor:
    """The official random control (train.py:503-514 of git-disl/Antidote): int(numel * dense_ratio)
    entries of the whole tensor, uniformly at random."""
    _check_ratio(dense_ratio)
    numel = math.prod(shape)
    picks = torch.randperm(numel, generator=generator)[:int(numel * dense_ratio)]
    return torch.zeros(numel, dtype=torch.bool).scatter_(0, picks, True).view(shape)


# ------------------------------------------------------------------------------ the product target
def pruned_per_row(in_features: int, dense_ratio: float) -> int:
    """Entries zeroed in each row by the product rule: floor(dense_ratio * in_features), robust to
    0.29 * 100 = 28.999..."""
    _check_ratio(dense_ratio)
    return math.floor(dense_ratio * in_features + 1e-9)


def _mask_from_columns(shape: torch.Size, columns: Tensor, device: torch.device) -> Tensor:
    mask = torch.zeros(shape, dtype=torch.bool, device=device)
    return mask.scatter_(1, columns.to(device), True)


def prune_top_scores_per_row(delta: Tensor, act_norm: Tensor, dense_ratio: float) -> tuple[Tensor, Tensor]:
    """Zero, in each row, the pruned_per_row entries with the largest `|delta_ij| * act_norm_j`.

    Returns (pruned delta, mask) where mask is True at the zeroed entries. Ties break by column index.
    """
    if delta.dim() != 2:
        raise ValueError(f"delta has shape {tuple(delta.shape)}: pass one layer's (out x in) matrix")
    k = pruned_per_row(delta.shape[1], dense_ratio)
    scores = wanda_scores(delta, act_norm)
    top = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]
    mask = _mask_from_columns(delta.shape, top, delta.device)
    return delta.masked_fill(mask, 0), mask


def random_prune_per_row(delta: Tensor, dense_ratio: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The product target's control: as many entries per row as its Wanda rule, at random columns."""
    if delta.dim() != 2:
        raise ValueError(f"delta has shape {tuple(delta.shape)}: pass one layer's (out x in) matrix")
    k = pruned_per_row(delta.shape[1], dense_ratio)
    picks = torch.rand(tuple(delta.shape), generator=generator).argsort(dim=1)[:, :k]
    mask = _mask_from_columns(delta.shape, picks, delta.device)
    return delta.masked_fill(mask, 0), mask
