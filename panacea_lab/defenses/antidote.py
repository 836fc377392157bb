"""Antidote (Huang et al. 2025, "Antidote: Post-fine-tuning safety alignment for large language
models against harmful fine-tuning", arXiv 2408.09600): one-shot pruning, after the user's
fine-tuning, of the weights that matter most on harmful data.

Official pipeline (script/finetune/antidote_poison_ratio.sh of git-disl/Antidote): the alignment
LoRA is merged into the base and the user's fine-tuning trains a new LoRA (:29-31 with train.py:253-275,
merge_and_unload, then get_peft_model); Antidote then reloads both (:58-61, train.py:253-281) and
calibrates on bad_sample_num = 2000 harmful samples (:17, :81-82: poison_ratio 1; make_supervised_data_module,
train.py:110-111) one per batch (:66: per_device_train_batch_size 1), dense_ratio 0.1 (:16, :83).

`target="factors"` (the default) is the official rule: Wanda pruning of the LoRA factors A and B
*separately*, each an nn.Linear scored with its own inputs (find_layers keeps every nn.Linear whose
name holds "lora", utils.py:313-330 of git-disl/Antidote, hooked through WrappedGPT.add_batch,
utils.py:492-505). A's input is the layer input x (after the adapter's dropout, which the eval
mode of the calibration turns off, utils.py:533); B's input is A x (the scaling comes after B).
Scores |W| * ||X_j||_2 (:702), and per row every entry but the int(cols * (1 - dense_ratio))
lowest is zeroed (:711-723), i.e. the highest scores go (`wanda.official_mask`); the mask is
applied as `param *= 1 - mask` (train.py:495-520). The returned model is the peft model with its
pruned adapter, evaluable as it is. Official calibration rows carry no padding (batch size 1); here
batches are padded and the norms skip the padded positions, which is the same sum.

`target="product"` is an alternative kept from earlier versions of this project: it prunes the
product D = B @ A * scaling of each adapted layer (floor(dense_ratio * in) highest scores per row,
the scores of D against the layer input), adds the pruned D to the base weight in float32 and
returns the plain merged model from `unload()` (a pruned B @ A is no longer rank r).

With the "continue" adapter the adapter holds alignment + fine-tuning, so either target prunes both;
the official pairing is the "fresh" adapter (the `Defense` record's finetune_adapter).
`method="random"` is the control: as official, int(numel * dense_ratio) entries of each factor at
random (train.py:503-514); for the product, the product rule's count per row at random columns.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pandas as pd
import torch
from peft.tuners.lora import Linear as LoraLinear
from torch import Tensor, nn

from panacea_lab.config import POST, DefenseConfig, check, positive
from panacea_lab.data.batching import Batch
from panacea_lab.defenses.registry import Defense
from panacea_lab.defenses.wanda import (  # noqa: F401  (the tensor rules, re-exported)
    official_kept,
    official_mask,
    prune_top_scores_per_row,
    pruned_per_row,
    random_flat_mask,
    random_prune_per_row,
)

METHODS = ("wanda", "random")
TARGETS = ("factors", "product")


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
                             "prunes plain LoRA factors only")
        layers[name] = m
    if not layers:
        raise ValueError("the model has no active LoRA linear layer: Antidote prunes the fine-tuning LoRA, "
                         "so pass the fine-tuned peft model (not a merged one)")
    return layers


def _active(layer: LoraLinear) -> str:
    return next(x for x in layer.active_adapters if x in layer.lora_A)


def lora_factors(layers: Mapping[str, LoraLinear]) -> dict[str, nn.Linear]:
    """Each adapted layer's factors A and B as modules, named as their weights are minus ".weight"
    (e.g. "...q_proj.lora_A.default"), the official mask's keys."""
    out = {}
    for name, layer in layers.items():
        a = _active(layer)
        out[f"{name}.lora_A.{a}"] = layer.lora_A[a]
        out[f"{name}.lora_B.{a}"] = layer.lora_B[a]
    return out


def lora_delta(layer: LoraLinear) -> Tensor:
    """The adapter's effective weight change `B @ A * scaling`, (out x in), in float32."""
    a = _active(layer)
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


def input_feature_norms(model: nn.Module, batches: Iterable, modules: Mapping[str, nn.Module]) -> dict[str, Tensor]:
    """||X_j||_2 per input feature of each module, over every non-padded token of `batches` (eval, no grad)."""
    sums: dict[str, Tensor | None] = {name: None for name in modules}
    keep: dict[str, Tensor] = {}

    def hook_for(name: str):
        def hook(_module, args, kwargs):
            x = args[0] if args else next(iter(kwargs.values()))
            flat = x.detach().reshape(-1, x.shape[-1])
            if flat.shape[0] != keep["mask"].numel():
                raise RuntimeError(f"{name}: input has {flat.shape[0]} token rows but the batch has "
                                   f"{keep['mask'].numel()} positions; cannot tell padding apart")
            sq = flat[keep["mask"].to(flat.device)].double().pow(2).sum(0)
            sums[name] = sq if sums[name] is None else sums[name] + sq
        return hook

    device = next(model.parameters()).device
    handles = [m.register_forward_pre_hook(hook_for(n), with_kwargs=True) for n, m in modules.items()]
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


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method = {method!r}: use 'wanda' (Antidote) or 'random' (the same-count control)")


# ------------------------------------------------------------------------------ target = "factors"
def factor_masks(model: nn.Module, batches: Iterable | None, dense_ratio: float = 0.1, method: str = "wanda",
                 seed: int = 0) -> tuple[dict[str, Tensor], pd.DataFrame]:
    """The official masks (True = zeroed) of every LoRA factor, by factor name, and a report. Model unchanged."""
    _check_method(method)
    factors = lora_factors(lora_linear_layers(model))
    norms = input_feature_norms(model, batches or [], factors) if method == "wanda" else {}
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    masks, rows = {}, []
    for name, linear in factors.items():
        w = linear.weight
        if method == "wanda":
            masks[name] = official_mask(w, norms[name], dense_ratio)
        else:
            masks[name] = random_flat_mask(w.shape, dense_ratio, gen).to(w.device)
        rows.append({"factor": name, "rows": w.shape[0], "cols": w.shape[1], "zeroed": int(masks[name].sum()),
                     "norm_before": float(w.detach().float().norm()),
                     "norm_after": float(w.detach().float().masked_fill(masks[name], 0).norm())})
    return masks, pd.DataFrame(rows)


def prune_factors(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """Zero each factor's masked entries in place (the official `param *= 1 - mask`); returns the model."""
    factors = lora_factors(lora_linear_layers(model))
    if set(masks) != set(factors):
        odd = sorted(set(masks) ^ set(factors))
        raise ValueError(f"masks and the model's LoRA factors differ (e.g. {odd[0]!r}): pass one mask per factor "
                         "of lora_factors(lora_linear_layers(model))")
    with torch.no_grad():
        for name, linear in factors.items():
            linear.weight.masked_fill_(masks[name].to(linear.weight.device), 0)
    return model.eval()


# ------------------------------------------------------------------------------ target = "product"
def antidote_deltas(model: nn.Module, batches: Iterable | None, dense_ratio: float = 0.1, method: str = "wanda",
                    seed: int = 0) -> tuple[dict[str, Tensor], pd.DataFrame]:
    """The pruned (out x in) LoRA product of every adapted layer, and a per-layer report. Model unchanged."""
    _check_method(method)
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
             seed: int = 0, target: str = "factors") -> tuple[nn.Module, pd.DataFrame]:
    """Antidote on the fine-tuned peft `model`: "factors" prunes it in place and returns it; "product"
    consumes it and returns the plain merged model. Each with its report."""
    if target == "factors":
        masks, report = factor_masks(model, batches, dense_ratio, method, seed)
        return prune_factors(model, masks), report
    if target == "product":
        deltas, report = antidote_deltas(model, batches, dense_ratio, method, seed)
        return fold_and_unload(model, deltas), report
    raise ValueError(f"target = {target!r}: use one of {TARGETS}")


# ------------------------------------------------------------------------------ the registry
def calibration_batches(batches: Iterable[Batch], n_samples: int) -> list[Batch]:
    """The first n_samples rows of `batches` (the last batch cut short); fewer if the pool runs out."""
    out, rows = [], 0
    for b in batches:
        if rows >= n_samples:
            break
        take = min(b.input_ids.shape[0], n_samples - rows)
        out.append(b if take == b.input_ids.shape[0] else
                   Batch(b.input_ids[:take], b.attention_mask[:take], b.labels[:take]))
        rows += take
    return out


@dataclass(frozen=True)
class AntidoteConfig(DefenseConfig):
    """Antidote's knobs: the share of each row pruned, the defender samples that score it (capped
    by the defender's pool), what is pruned (the LoRA factors, official, or their product), and the
    rule (wanda, or random: the control). Defaults: script/finetune/antidote_poison_ratio.sh:16-17."""

    name = "antidote"
    stage = POST

    dense_ratio: float = 0.1
    n_samples: int = 2000
    target: str = "factors"
    method: str = "wanda"
    seed: int = 0

    def check_values(self):
        check(0 <= self.dense_ratio <= 1, "dense_ratio", self.dense_ratio, "must be in [0, 1]")
        positive(self, "n_samples")
        check(self.target in TARGETS, "target", self.target, f"use one of {TARGETS}")
        check(self.method in METHODS, "method", self.method, f"use one of {METHODS}")


def _prune(model, cfg: AntidoteConfig, ctx):
    # every batch holds at least one row, so n_samples batches cover n_samples rows (or the whole pool)
    batches = calibration_batches(ctx.harmful_batches(cfg.n_samples), cfg.n_samples) if cfg.method == "wanda" else None
    return antidote(model, batches, cfg.dense_ratio, cfg.method, cfg.seed, cfg.target)[0]


DEFENSE = Defense(name="antidote", stage=POST, config=AntidoteConfig, label="Antidote", param="dense_ratio",
                  transform=_prune, finetune_adapter="fresh", color="#CC79A7", marker="D", sweep=(0.1,),
                  flag="dense-ratio")
