"""Post-fine-tuning transforms applied to a finished model before it is evaluated.

They are evaluation-time, not training stages: one fine-tuned model serves a whole noise sweep,
the same-norm control, Panacea with and without its eps, and Antidote, each cached as its own
evaluation. Every transform acts on the LoRA tensors only, as in the paper.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file

from panacea_lab.config import check, coerce_numbers
from panacea_lab.defenses.antidote import antidote
from panacea_lab.defenses.harmful_ascent import harmful_ascent
from panacea_lab.defenses.random_noise import noise_perturbation
from panacea_lab.defenses.perturb import add_, named_trainable, random_direction

POST_METHODS = ("none", "noise", "random_direction", "eps", "antidote", "antidote_random", "harmful_ascent")
EPS_FILE = "eps.safetensors"


@dataclass(frozen=True)
class PostConfig:
    """Which transform, with its own knobs (unused ones stay at their defaults)."""

    method: str = "none"
    std: float = 0.0  # noise: N(0, std^2) per LoRA entry
    norm: float = 0.0  # random_direction / harmful_ascent: global L2 norm (the controls pass ||eps||)
    dense_ratio: float = 0.1  # antidote: share of each row's LoRA delta set to zero
    n_batches: int = 4  # antidote / harmful_ascent: defender harmful batches used
    seed: int = 0

    def __post_init__(self):
        coerce_numbers(self)
        check(self.method in POST_METHODS, "method", self.method, f"use one of {', '.join(POST_METHODS)}")
        check(self.std >= 0, "std", self.std, "the noise std must be >= 0")
        check(self.norm >= 0, "norm", self.norm, "must be >= 0")
        check(0 <= self.dense_ratio <= 1, "dense_ratio", self.dense_ratio, "must be in [0, 1]")
        check(self.n_batches > 0, "n_batches", self.n_batches, "must be > 0")


def lora_names(model) -> list[str]:
    return [n for n, _ in model.named_parameters() if "lora_" in n]


def apply_post(model, post: PostConfig, stage_dir: Path, harmful_batches=None):
    """Return the transformed model (Antidote returns a new, merged one; the rest act in place)."""
    if post.method == "none":
        return model
    names = lora_names(model)
    if post.method == "noise":
        add_(model, noise_perturbation(model, post.std, post.seed, names))
    elif post.method == "random_direction":
        add_(model, random_direction(named_trainable(model, names), post.norm, post.seed))
    elif post.method == "eps":
        path = stage_dir / EPS_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: method 'eps' applies only to a Panacea-trained run")
        add_(model, load_file(str(path)))
    elif post.method == "harmful_ascent":
        add_(model, harmful_ascent(model, itertools.islice(harmful_batches, post.n_batches), post.norm, names))
    else:
        batches = list(itertools.islice(harmful_batches, post.n_batches)) if harmful_batches is not None else None
        model, _ = antidote(model, batches, post.dense_ratio, "wanda" if post.method == "antidote" else "random",
                            post.seed)
    return model
