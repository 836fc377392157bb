"""Antidote: one-shot post-fine-tuning pruning of the weights that matter most on harmful data.

For each LoRA-adapted linear layer the fine-tuning delta is `D = B @ A * scaling` (out x in). Its
Wanda score is `|D_ij| * ||X_j||_2`, with `X_j` the j-th input feature of that layer collected over
every non-padded token of the defender's harmful batches. In each output row the top `dense_ratio`
fraction of scores (floor(dense_ratio * in_features) entries) is set to zero.

How LoRA is handled (the caller must know): a pruned `B @ A` is no longer rank r, so it cannot be
stored back as an adapter. `antidote` therefore computes D from the adapter itself (exact, no
`W_merged - W_base` cancellation), prunes it, adds the pruned D to the base weight in float32, and
returns the plain model from `unload()`: the result is the merged fine-tuned model minus the pruned
entries, and the peft model passed in is consumed. With the "continue" adapter the adapter holds
alignment + fine-tuning, so D is both; with "fresh" it is the user's fine-tuning only.

The control `method="random"` zeroes the same number of entries per row, chosen uniformly at random.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pandas as pd
import torch
from peft.tuners.lora import Linear as LoraLinear
from torch import Tensor, nn

from panacea_lab.config import POST, DefenseConfig, check, positive
from panacea_lab.defenses.registry import Defense

METHODS = ("wanda", "random")


def pruned_per_row(in_features: int, dense_ratio: float) -> int:
    """Entries zeroed in each row: floor(dense_ratio * in_features), robust to 0.29 * 100 = 28.999..."""
    if not (isinstance(dense_ratio, (int, float)) and 0.0 <= dense_ratio <= 1.0):
        raise ValueError(f"dense_ratio = {dense_ratio!r}: must be in [0, 1] (the fraction of each row's "
                         "weights to zero; Antidote's default is 0.1)")
    return math.floor(dense_ratio * in_features + 1e-9)


def _mask_from_columns(shape: torch.Size, columns: Tensor, device: torch.device) -> Tensor:
    mask = torch.zeros(shape, dtype=torch.bool, device=device)
    return mask.scatter_(1, columns.to(device), True)


def prune_top_scores_per_row(delta: Tensor, act_norm: Tensor, dense_ratio: float) -> tuple[Tensor, Tensor]:
    """Zero, in each row, the entries with the largest `|delta_ij| * act_norm_j`.

    Returns (pruned delta, mask) where mask is True at the zeroed entries. Ties break by column index.
    """
    if delta.dim() != 2:
        raise ValueError(f"delta has shape {tuple(delta.shape)}: pass one layer's (out x in) matrix")
    if act_norm.shape != (delta.shape[1],):
        raise ValueError(f"act_norm has shape {tuple(act_norm.shape)} but delta has {delta.shape[1]} input "
                         "features: pass one norm per input feature (column)")
    k = pruned_per_row(delta.shape[1], dense_ratio)
    scores = delta.detach().float().abs() * act_norm.detach().float().to(delta.device)[None, :]
    top = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]
    mask = _mask_from_columns(delta.shape, top, delta.device)
    return delta.masked_fill(mask, 0), mask


def random_prune_per_row(delta: Tensor, dense_ratio: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The control: zero as many entries per row as Antidote does, at uniformly random columns."""
    if delta.dim() != 2:
        raise ValueError(f"delta has shape {tuple(delta.shape)}: pass one layer's (out x in) matrix")
    k = pruned_per_row(delta.shape[1], dense_ratio)
    picks = torch.rand(tuple(delta.shape), generator=generator).argsort(dim=1)[:, :k]
    mask = _mask_from_columns(delta.shape, picks, delta.device)
    return delta.masked_fill(mask, 0), mask


# ------------------------------------------------------------------------------ the model side
def lora_linear_layers(model: nn.Module) -> dict[str, LoraLinear]:
    """Every peft LoRA linear layer with an active, unmerged, plain-LoRA adapter, by module name."""
    layers = {}
    for name, m in model.named_modules():
        if not isinstance(m, LoraLinear):
            continue
        active = [a for a in m.active_adapters if a in m.lora_A]
        if not active:
            continue
        if len(active) > 1 or m.merged:
            raise ValueError(f"{name}: Antidote needs exactly one active, unmerged adapter "
                             f"(found {active}, merged={m.merged}); set one with model.set_adapter(name)")
        if active[0] in getattr(m, "lora_variant", {}) or getattr(m, "lora_bias", {}).get(active[0], False):
            raise ValueError(f"{name}: adapter {active[0]!r} is a LoRA variant (DoRA, lora_bias); Antidote here "
                             "prunes plain LoRA deltas B @ A only")
        layers[name] = m
    if not layers:
        raise ValueError("the model has no active LoRA linear layer: Antidote prunes the fine-tuning LoRA delta, "
                         "so pass the fine-tuned peft model (not a merged one)")
    return layers


def lora_delta(layer: LoraLinear) -> Tensor:
    """The adapter's effective weight change `B @ A * scaling`, (out x in), in float32."""
    a = next(x for x in layer.active_adapters if x in layer.lora_A)
    return (layer.lora_B[a].weight.float() @ layer.lora_A[a].weight.float()) * layer.scaling[a]


def _ids_and_mask(batch, device: torch.device) -> tuple[Tensor, Tensor]:
    """input_ids and attention_mask from a data.Batch, or any mapping / object carrying both."""
    get = batch.get if isinstance(batch, Mapping) else lambda k: getattr(batch, k, None)
    ids, mask = get("input_ids"), get("attention_mask")
    if ids is None:
        raise ValueError("a batch has no input_ids: pass data.Batch objects or dicts with input_ids and "
                         "attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask
    return ids.to(device), mask.to(device)


def input_feature_norms(model: nn.Module, batches: Iterable, layers: Mapping[str, nn.Module]) -> dict[str, Tensor]:
    """||X_j||_2 per input feature of each layer, over every non-padded token of `batches` (eval, no grad)."""
    sums: dict[str, Tensor | None] = {name: None for name in layers}
    keep: dict[str, Tensor] = {}

    def hook_for(name: str):
        def hook(_module, args, kwargs):
            x = args[0] if args else kwargs["x"]
            flat = x.detach().reshape(-1, x.shape[-1])
            if flat.shape[0] != keep["mask"].numel():
                raise RuntimeError(f"{name}: input has {flat.shape[0]} token rows but the batch has "
                                   f"{keep['mask'].numel()} positions; cannot tell padding apart")
            sq = flat[keep["mask"].to(flat.device)].double().pow(2).sum(0)
            sums[name] = sq if sums[name] is None else sums[name] + sq
        return hook

    device = next(model.parameters()).device
    handles = [m.register_forward_pre_hook(hook_for(n), with_kwargs=True) for n, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                ids, mask = _ids_and_mask(batch, device)
                keep["mask"] = mask.reshape(-1).bool()
                model(input_ids=ids, attention_mask=mask)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    unseen = [n for n, s in sums.items() if s is None]
    if unseen:
        raise ValueError(f"no activations reached {unseen[0]!r} (and {len(unseen) - 1} more): pass at least one "
                         "non-empty harmful batch")
    return {n: s.sqrt().float() for n, s in sums.items()}


def antidote_deltas(model: nn.Module, batches: Iterable | None, dense_ratio: float = 0.1, method: str = "wanda",
                    seed: int = 0) -> tuple[dict[str, Tensor], pd.DataFrame]:
    """The pruned (out x in) LoRA delta of every adapted layer, and a per-layer report. Model unchanged."""
    if method not in METHODS:
        raise ValueError(f"method = {method!r}: use 'wanda' (Antidote) or 'random' (the same-count control)")
    layers = lora_linear_layers(model)
    norms = input_feature_norms(model, batches or [], layers) if method == "wanda" else {}
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    pruned, rows = {}, []
    with torch.no_grad():
        for name, layer in layers.items():
            delta = lora_delta(layer)
            if method == "wanda":
                pruned[name], mask = prune_top_scores_per_row(delta, norms[name], dense_ratio)
            else:
                pruned[name], mask = random_prune_per_row(delta, dense_ratio, gen)
            rows.append({"layer": name, "out_features": delta.shape[0], "in_features": delta.shape[1],
                         "k_per_row": int(mask[0].sum()) if mask.numel() else 0,
                         "norm_before": float(delta.norm()), "norm_after": float(pruned[name].norm())})
    return pruned, pd.DataFrame(rows)


def fold_and_unload(model: nn.Module, deltas: Mapping[str, Tensor]) -> nn.Module:
    """Add each (out x in) delta to its layer's base weight (in float32) and drop the adapters."""
    layers = lora_linear_layers(model)
    if set(deltas) != set(layers):
        odd = sorted(set(deltas) ^ set(layers))
        raise ValueError(f"deltas and the model's LoRA layers differ (e.g. {odd[0]!r}): pass one delta per layer "
                         "of lora_linear_layers(model)")
    with torch.no_grad():
        for name, layer in layers.items():
            w = layer.get_base_layer().weight
            d = deltas[name].T if layer.fan_in_fan_out else deltas[name]
            if tuple(d.shape) != tuple(w.shape):
                raise ValueError(f"deltas[{name!r}] has shape {tuple(deltas[name].shape)}; the layer needs "
                                 f"(out x in) = {(layer.out_features, layer.in_features)}")
            w.copy_((w.float() + d.to(w.device).float()).to(w.dtype))
    plain = model.unload()
    plain.requires_grad_(False)
    return plain.eval()


def antidote(model: nn.Module, batches: Iterable | None, dense_ratio: float = 0.1, method: str = "wanda",
             seed: int = 0) -> tuple[nn.Module, pd.DataFrame]:
    """Prune the fine-tuned peft `model` (consumed) and return the plain pruned model with the report."""
    deltas, report = antidote_deltas(model, batches, dense_ratio, method, seed)
    return fold_and_unload(model, deltas), report


@dataclass(frozen=True)
class AntidoteConfig(DefenseConfig):
    """Antidote's knobs: the share of each row pruned, the defender batches that score it, and the
    pruning rule (wanda, or random: the same-count control)."""

    name = "antidote"
    stage = POST

    dense_ratio: float = 0.1
    n_batches: int = 4
    method: str = "wanda"
    seed: int = 0

    def check_values(self):
        check(0 <= self.dense_ratio <= 1, "dense_ratio", self.dense_ratio, "must be in [0, 1]")
        positive(self, "n_batches")
        check(self.method in METHODS, "method", self.method, f"use one of {METHODS}")


def _prune(model, cfg: AntidoteConfig, ctx):
    batches = ctx.harmful_batches(cfg.n_batches) if cfg.method == "wanda" else None
    return antidote(model, batches, cfg.dense_ratio, cfg.method, cfg.seed)[0]


DEFENSE = Defense(name="antidote", stage=POST, config=AntidoteConfig, label="Antidote", param="dense_ratio",
                  transform=_prune)
