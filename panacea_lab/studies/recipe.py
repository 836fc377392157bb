"""A named setting as the configs a notebook runs: the setting's training recipe (if it has one, e.g.
"paper-recipe") under the notebook's own overrides, and its trained defense (Panacea, the registry's
first with a post-fine-tuning half) under optional rho / lambda.

The notebooks select everything through one `setting` parameter; this keeps them from each
rebuilding the same configs, and keeps them in step with the CLI (a real model keeps its own LoRA).
"""
from __future__ import annotations

from panacea_lab import defenses, settings
from panacea_lab.config import EMBEDDED_MODEL, AlignConfig, DefenseConfig, ModelConfig


def model_config(setting: str, path: str = EMBEDDED_MODEL, **overrides) -> ModelConfig:
    """The base model and its LoRA: a real-model preset brings its own, the setting's LoRA fields apply to
    the embedded model only; keyword overrides (ModelConfig fields) win."""
    from panacea_lab.models.presets import PRESETS, preset_model_config

    if path in PRESETS:
        return preset_model_config(path, **overrides)
    recipe = settings.get(setting).model if path == EMBEDDED_MODEL else {}
    return ModelConfig(path=path, **{**recipe, **overrides})


def align_fields(setting: str, data: str = "embedded") -> dict:
    """AlignConfig fields of the setting's recipe, with real data's own alignment sizes on top."""
    fields = dict(settings.get(setting).align)
    if data != "embedded":
        from panacea_lab.data.real_world import ALIGN_DEFAULTS

        fields.update(ALIGN_DEFAULTS[data])
    return fields


def align_config(setting: str, model: ModelConfig, **overrides) -> AlignConfig:
    """The alignment under the setting's recipe (and real data's sizes); keyword overrides (a notebook's
    `align_kw`) win."""
    return AlignConfig(model=model, **{**align_fields(setting, overrides.get("data", "embedded")), **overrides})


def attack_overrides(setting: str, **overrides) -> dict:
    """AttackConfig fields of the setting's recipe with the notebook's (e.g. n) on top, for
    `attack_config(..., **attack_overrides(...))` and the sweeps' `**overrides`."""
    return {**settings.get(setting).attack, **overrides}


def trained(setting: str, rho: float | None = None, lam: float | None = None, h_const: bool | None = None,
            defense: str | None = None) -> DefenseConfig:
    """The setting's trained defense (`defense`, default the registry's first with a post-fine-tuning
    half); a rho (the value of its record's `param`), lambda or h_const that is not None replaces the
    setting's."""
    record = defenses.get(defense or defenses.trained_with_half()[0])
    given = {k: v for k, v in {record.param: rho, "lam": lam, "h_const": h_const}.items() if v is not None}
    return settings.get(setting).defense(record.name, **given)
