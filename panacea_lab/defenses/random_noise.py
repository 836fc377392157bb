"""Random perturbation, the post-fine-tuning baseline: add N(0, std^2) to the trainable (LoRA) tensors.

The paper's point of comparison: noise lowers the harmful score but also the fine-tuning accuracy,
whereas Panacea's optimised perturbation should lower harm at no accuracy cost. The fair control
for "is it the direction or just the size?" is a random direction with exactly the norm of the
perturbation under study (`same_norm_control`). No training happens here.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from panacea_lab.config import POST, DefenseConfig, check
from panacea_lab.defenses.perturb import (
    Delta,
    add_,
    gaussian_noise,
    global_norm,
    named_trainable,
    random_direction,
)
from panacea_lab.defenses.registry import Defense


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


@dataclass(frozen=True)
class NoiseConfig(DefenseConfig):
    """Gaussian noise N(0, std^2) on every LoRA entry, drawn from `seed`."""

    name = "noise"
    stage = POST

    std: float = 0.0
    seed: int = 0

    def check_values(self):
        check(self.std >= 0, "std", self.std, "the noise std must be >= 0")


@dataclass(frozen=True)
class RandomDirectionConfig(DefenseConfig):
    """A uniformly random direction over the LoRA tensors with global L2 norm `norm` (the same-norm
    control passes ||eps||)."""

    name = "random_direction"
    stage = POST

    norm: float = 0.0
    seed: int = 0

    def check_values(self):
        check(self.norm >= 0, "norm", self.norm, "must be >= 0")


def _add_noise(model, cfg: NoiseConfig, ctx):
    add_(model, noise_perturbation(model, cfg.std, cfg.seed, ctx.lora_names))
    return model


def _add_direction(model, cfg: RandomDirectionConfig, ctx):
    add_(model, random_direction(named_trainable(model, ctx.lora_names), cfg.norm, cfg.seed))
    return model


NOISE = Defense(name="noise", stage=POST, config=NoiseConfig, label="noise", param="std", transform=_add_noise,
                color="#E69F00", marker="s", sweep=(0.04,), flag="stds")
RANDOM_DIRECTION = Defense(name="random_direction", stage=POST, config=RandomDirectionConfig,
                           label="same-norm random", param="norm", transform=_add_direction,
                           control=True, color="#D55E00", marker="h")
