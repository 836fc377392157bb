"""Perturbation algebra over a model's named tensors: draw, measure, add, and undo exactly.

A perturbation ("delta") is a plain `dict[str, Tensor]` keyed by parameter name, so the same
object serves Panacea's eps, Gaussian noise, a same-norm control and the norm analysis. For a peft
model the natural keys are the trainable LoRA A/B tensors; a frozen model is perturbed by naming
its tensors explicitly. Temporary perturbations are undone by restoring saved copies, never by
subtracting, so the weights come back bit for bit whatever the dtype.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import pandas as pd
import torch
from torch import Tensor, nn

from panacea_lab.config import ConfigError

Delta = dict[str, Tensor]
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Decoder blocks are `layers.N` (Llama, Mistral, Qwen, Gemma), `h.N` (GPT-2) or `blocks.N` / `layer.N`.
_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")
_WRAPPERS = {"base_layer", "modules_to_save", "original_module"}


def _check_nonnegative(name: str, value: float, hint: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} = {value!r}: must be a finite number >= 0; {hint}")


# ------------------------------------------------------------------------------ selection
def named_trainable(model: nn.Module, names: Iterable[str] | None = None,
                    predicate: Callable[[str, nn.Parameter], bool] | None = None) -> dict[str, nn.Parameter]:
    """The live parameters to perturb, in `named_parameters()` order (stable, so seeded draws are too).

    Default: those that require grad (the LoRA A/B tensors of a peft model). Pass `names` to pick
    tensors of a frozen model, or `predicate(name, param)` for any other rule.
    """
    params = dict(model.named_parameters())
    if names is not None:
        wanted = list(names)
        missing = [n for n in wanted if n not in params]
        if missing:
            raise ValueError(f"names: {len(missing)} not in the model (e.g. {missing[0]!r}); "
                             "take names from model.named_parameters()")
        return {n: params[n] for n in wanted}
    keep = predicate or (lambda _n, p: p.requires_grad)
    chosen = {n: p for n, p in params.items() if keep(n, p)}
    if not chosen:
        raise ValueError("the model has no parameter matching the selection (none requires grad?): attach a LoRA "
                         "adapter, or pass names=... to perturb tensors of a frozen model")
    return chosen


def snapshot(params: Mapping[str, Tensor]) -> Delta:
    """Detached copies (e.g. the weights before fine-tuning, to measure what training added)."""
    return {n: p.detach().clone() for n, p in params.items()}


def difference(after: Mapping[str, Tensor], before: Mapping[str, Tensor]) -> Delta:
    """`after - before` per tensor (both over the same names)."""
    if set(after) != set(before):
        raise ValueError("after and before name different tensors: take both from the same model and selection")
    return {n: after[n].detach() - before[n].detach().to(after[n].device, after[n].dtype) for n in after}


def scaled(delta: Mapping[str, Tensor], factor: float) -> Delta:
    return {n: t * factor for n, t in delta.items()}


# ------------------------------------------------------------------------------ drawing
def _standard_normal(params: Mapping[str, Tensor], seed: int) -> Delta:
    """N(0, 1) draws from a private CPU generator: same seed, same numbers, on any device, whatever
    the global RNG state. Drawn in float32 (float64 for float64 tensors), then cast."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    out = {}
    for name, p in params.items():
        draw_dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
        out[name] = torch.randn(tuple(p.shape), generator=gen, dtype=draw_dtype)
    return out


def gaussian_noise(params: Mapping[str, Tensor], std: float, seed: int) -> Delta:
    """Independent N(0, std^2) entries shaped, placed and typed like `params`."""
    _check_nonnegative("std", std, "it is the noise's standard deviation (0 gives no noise)")
    return {n: (z * std).to(device=params[n].device, dtype=params[n].dtype)
            for n, z in _standard_normal(params, seed).items()}


def random_direction(params: Mapping[str, Tensor], norm: float, seed: int) -> Delta:
    """A uniformly random direction whose global L2 norm (over all tensors together) is `norm`.

    The scaling is exact in float32/float64; casting to a half-precision dtype rounds it slightly.
    """
    _check_nonnegative("norm", norm, "it is the global L2 norm the direction is scaled to")
    z = _standard_normal(params, seed)
    length = global_norm(z)
    if length == 0.0:
        raise ValueError("params hold no elements: a direction needs at least one non-empty tensor")
    return {n: (t.double() * (norm / length)).to(device=params[n].device, dtype=params[n].dtype)
            for n, t in z.items()}


def global_norm(delta: Mapping[str, Tensor]) -> float:
    """One L2 norm over every tensor together (accumulated in float64, one device sync, not one per tensor)."""
    return math.sqrt(float(sum(t.detach().double().pow(2).sum() for t in delta.values())))


# ------------------------------------------------------------------------------ applying
def _targets(target: nn.Module | Mapping[str, Tensor], delta: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The tensors `delta` refers to, after checking every name and shape."""
    params = dict(target.named_parameters()) if isinstance(target, nn.Module) else dict(target)
    unknown = [n for n in delta if n not in params]
    if unknown:
        raise ValueError(f"delta names {len(unknown)} tensor(s) the model does not have (e.g. {unknown[0]!r}); "
                         "build the delta from named_trainable() of the same model (a peft model and its "
                         "merged copy name their tensors differently)")
    for n, t in delta.items():
        if tuple(t.shape) != tuple(params[n].shape):
            raise ValueError(f"delta[{n!r}] has shape {tuple(t.shape)} but the model's tensor has shape "
                             f"{tuple(params[n].shape)}: the delta was built for a different model or LoRA rank")
    return {n: params[n] for n in delta}


def add_(target: nn.Module | Mapping[str, Tensor], delta: Mapping[str, Tensor], scale: float = 1.0) -> None:
    """Permanently add `scale * delta` in place (a post-fine-tuning transform: Panacea's eps, noise)."""
    params = _targets(target, delta)
    with torch.no_grad():
        for n, p in params.items():
            p.add_(delta[n].to(device=p.device, dtype=p.dtype), alpha=scale)


apply_ = add_  # the name a post-processing step reads best with: `apply_(model, eps)`


@contextmanager
def applied(target: nn.Module | Mapping[str, Tensor], delta: Mapping[str, Tensor],
            scale: float = 1.0) -> Iterator[None]:
    """Weights are `w + scale * delta` inside the block and exactly `w` after it, even on an exception.

    Restoration copies the saved tensors back (w + d - d is not w in floating point).
    """
    params = _targets(target, delta)
    saved = {n: p.detach().clone() for n, p in params.items()}
    try:
        add_(params, delta, scale)
        yield
    finally:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n])


# ------------------------------------------------------------------------------ measuring
def parse_param_name(name: str) -> tuple[int, str, str]:
    """(layer, module, part) of a parameter name; layer is -1 outside the decoder blocks.

    `base_model.model.model.layers.3.self_attn.v_proj.lora_A.default.weight` -> (3, "v_proj", "lora_A");
    `lm_head.weight` -> (-1, "lm_head", "weight").
    """
    match = _LAYER_RE.search(name)
    layer = int(match.group(1)) if match else -1
    parts = name.split(".")
    lora_at = [i for i, c in enumerate(parts) if c.startswith("lora_")]
    cut = lora_at[-1] if lora_at else len(parts) - 1
    part, head = parts[cut], parts[:cut]
    known = [c for c in head if c in PROJECTIONS]
    rest = [c for c in head if c not in _WRAPPERS and not c.isdigit()]
    module = known[-1] if known else (rest[-1] if rest else part)
    return layer, module, part


def norms_by_layer_module(delta: Mapping[str, Tensor]) -> pd.DataFrame:
    """One row per tensor: name, layer, module, part, sq_norm, norm (float64, in `delta`'s order)."""
    rows = []
    for name, t in delta.items():
        layer, module, part = parse_param_name(name)
        sq = float(t.detach().double().pow(2).sum())
        rows.append({"name": name, "layer": layer, "module": module, "part": part, "sq_norm": sq,
                     "norm": math.sqrt(sq)})
    columns = ["name", "layer", "module", "part", "sq_norm", "norm"]
    return pd.DataFrame(rows, columns=columns).astype({"layer": "int64", "sq_norm": "float64", "norm": "float64"})


# ------------------------------------------------------------------------------ restricting
def _decoder_layers(delta: Mapping[str, Tensor]) -> list[int]:
    return sorted({parse_param_name(n)[0] for n in delta} - {-1})


def restrict(delta: Mapping[str, Tensor], layers: Sequence[int] = (), modules: Sequence[str] = (),
             layer_scales: Sequence[float] = (), scale: float = 1.0) -> Delta:
    """The part of `delta` on the chosen decoder layers and modules, each tensor times its layer's factor.

    Empty `layers` / `modules` keep all; `layer_scales[i]` multiplies layer i (0 drops it, 1 keeps it as
    it is) and `scale` every tensor. Dropped tensors (outside the selection, or at factor 0) are left
    out of the result, so a control drawn over the result's tensors covers exactly what is applied.
    Tensors outside the decoder blocks (layer -1) follow `modules` and are kept only when `layers` is
    empty. `delta` is not modified. Raises ConfigError naming the field when a layer or module is not
    in `delta`, when `layer_scales` does not give one factor per layer, or when a factor is < 0.
    """
    have_layers = _decoder_layers(delta)
    span = f"{have_layers[0]}..{have_layers[-1]}" if have_layers else "none"
    unknown = [i for i in layers if i not in have_layers]
    if unknown:
        raise ConfigError(f"layers = {tuple(layers)!r}: layer {unknown[0]} is not among the decoder layers the "
                          f"perturbation covers ({span}); pick layers in that range")
    parsed = {n: parse_param_name(n) for n in delta}
    have_modules = sorted({m for _, m, _ in parsed.values()})
    missing = [m for m in modules if m not in have_modules]
    if missing:
        raise ConfigError(f"modules = {tuple(modules)!r}: {missing[0]!r} carries no perturbation; use some of "
                          f"{', '.join(have_modules)}")
    n_layers = have_layers[-1] + 1 if have_layers else 0
    if layer_scales and len(layer_scales) != n_layers:
        raise ConfigError(f"layer_scales has {len(layer_scales)} factors: give one per decoder layer "
                          f"({n_layers}, layers 0..{n_layers - 1}), or none for all 1")
    for name, value in [("scale", scale), *((f"layer_scales[{i}]", s) for i, s in enumerate(layer_scales))]:
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{name} = {value!r}: must be a finite number >= 0 (0 removes, 1 keeps as learnt)")
    out = {}
    for n, t in delta.items():
        layer, module, _ = parsed[n]
        if (layers and layer not in layers) or (modules and module not in modules):
            continue
        factor = scale * (layer_scales[layer] if layer_scales and layer >= 0 else 1.0)
        if factor != 0:
            out[n] = t if factor == 1 else t * factor
    return out
