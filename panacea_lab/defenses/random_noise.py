"""Random perturbation, the post-fine-tuning baseline: add N(0, std^2) to the trainable (LoRA) tensors.

The paper's point of comparison: noise lowers the harmful score but also the fine-tuning accuracy,
whereas Panacea's optimised perturbation should lower harm at no accuracy cost. The fair control
for "is it the direction or just the size?" is a random direction with exactly the norm of the
perturbation under study (`same_norm_control`). No training happens here.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import Tensor, nn

from panacea_lab.defenses.perturb import (
    Delta,
    add_,
    gaussian_noise,
    global_norm,
    named_trainable,
    random_direction,
)


def noise_perturbation(model: nn.Module, std: float, seed: int, names: Iterable[str] | None = None) -> Delta:
    """N(0, std^2) for each trainable tensor of `model` (or the tensors in `names`), from `seed`."""
    return gaussian_noise(named_trainable(model, names), std, seed)


def same_norm_control(reference: Mapping[str, Tensor], seed: int) -> Delta:
    """A random direction over the same tensors as `reference`, with exactly its global L2 norm."""
    return random_direction(reference, global_norm(reference), seed)


def apply_random_noise_(model: nn.Module, std: float, seed: int, names: Iterable[str] | None = None) -> dict:
    """Add the noise permanently; return what to record with the result (no tensors)."""
    delta = noise_perturbation(model, std, seed, names)
    add_(model, delta)
    return {"defense": "random_noise", "std": float(std), "seed": int(seed), "norm": global_norm(delta),
            "n_tensors": len(delta), "n_elements": sum(t.numel() for t in delta.values())}
