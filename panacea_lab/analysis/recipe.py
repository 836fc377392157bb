"""A named setting as the configs a notebook runs: the setting's training recipe (if it has one, e.g.
"paper-recipe") under the notebook's own overrides, and its Panacea under optional rho / lambda.

The notebooks select everything through one `setting` parameter; this keeps them from each
rebuilding the same configs, and keeps them in step with the CLI (a real model keeps its own LoRA).
"""
from __future__ import annotations

from panacea_lab import settings
from panacea_lab.config import EMBEDDED_MODEL, AlignConfig, ModelConfig
from panacea_lab.defenses.panacea import PanaceaConfig


def model_config(setting: str, path: str = EMBEDDED_MODEL, **overrides) -> ModelConfig:
    """The base model and its LoRA: the setting's LoRA fields apply to the embedded model only."""
    recipe = settings.get(setting).model if path == EMBEDDED_MODEL else {}
    return ModelConfig(path=path, **{**recipe, **overrides})


def align_config(setting: str, model: ModelConfig, **overrides) -> AlignConfig:
    """The alignment under the setting's recipe; keyword overrides (a notebook's `align_kw`) win."""
    return AlignConfig(model=model, **{**settings.get(setting).align, **overrides})


def attack_overrides(setting: str, **overrides) -> dict:
    """AttackConfig fields of the setting's recipe with the notebook's (e.g. n) on top, for
    `attack_config(..., **attack_overrides(...))` and the sweeps' `**overrides`."""
    return {**settings.get(setting).attack, **overrides}


def panacea(setting: str, rho: float | None = None, lam: float | None = None,
            h_const: bool | None = None) -> PanaceaConfig:
    """The setting's Panacea; a rho, lambda or h_const that is not None replaces the setting's."""
    given = {k: v for k, v in {"rho": rho, "lam": lam, "h_const": h_const}.items() if v is not None}
    return settings.get(setting).defense("panacea", **given)
