"""Which rows of a sweep to show, chosen by what each row's method is, never by its name.

A sweep's rows name their method (`method`: a registry name, or "none" / "base" / "aligned"). Code that
picks rows by those names silently drops a row, or shows a wrong one, once a defense is added or
renamed; these masks read the registry record's properties instead (its stage, `control`,
`post_half`, `param`), so a notebook says which *kind* of row it draws and its parameters cell alone
names the methods.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from panacea_lab.config import POST, DefenseConfig
from panacea_lab.defenses.registry import REGISTRY, UNDEFENDED, Defense, of as record_of


def _is(df: pd.DataFrame, test) -> pd.Series:
    """Whether each row's method has a record that passes `test` (none, base and aligned have none)."""
    return df["method"].map(lambda m: m in REGISTRY and bool(test(REGISTRY[m]))).astype(bool)


def undefended(df: pd.DataFrame) -> pd.Series:
    """The undefended model's rows (on the continued adapter and, where run, on a fresh one)."""
    return df["method"].eq(UNDEFENDED)


def post_fine_tuning(df: pd.DataFrame) -> pd.Series:
    """Rows of post-fine-tuning defenses that are not controls (e.g. noise, Antidote)."""
    return _is(df, lambda r: r.stage == POST and not r.control)


def trained(df: pd.DataFrame) -> pd.Series:
    """Rows of alignment- or fine-tuning-stage defenses: their w, and w + their post half where they have one."""
    return _is(df, lambda r: r.stage != POST)


def controls(df: pd.DataFrame) -> pd.Series:
    """Rows of controls (e.g. a same-norm random direction): they test a defense, they are not one."""
    return _is(df, lambda r: r.control)


def through_post_half(df: pd.DataFrame) -> pd.Series:
    """Rows of trained defenses read through their post-fine-tuning half (Panacea's w + eps)."""
    return df["variant"].astype(str).str.startswith("w+")


def served(df: pd.DataFrame) -> pd.Series:
    """Every row but the bare w of a trained defense that has a post half: that w is an intermediate
    (Panacea before eps is added), not a model the defense hands back."""
    return ~(_is(df, lambda r: bool(r.post_half)) & df["variant"].eq("w"))


def of(df: pd.DataFrame, *configs: DefenseConfig) -> pd.Series:
    """Rows of any of `configs`: each one's method at its record's `param` value (a trained defense's w
    and w + half; its controls carry the value too, but under their own method, so they are left out)."""
    mask = pd.Series(False, index=df.index)
    for cfg in configs:
        record: Defense = record_of(cfg)
        rows = df["method"].eq(cfg.name)
        if record.param:
            value = float(getattr(cfg, record.param))
            rows &= np.isclose(pd.to_numeric(df["value"], errors="coerce").astype(float), value)
        mask |= rows
    return mask


def middle_each(configs: Iterable[DefenseConfig]) -> list[DefenseConfig]:
    """One config per defense, in first-seen order: the middle one of those given for it (noise's std
    0.04 of [0.01, 0.02, 0.04, 0.08]), the single value a figure across ratios draws of a swept knob."""
    by_name: dict[str, list[DefenseConfig]] = {}
    for cfg in configs:
        by_name.setdefault(cfg.name, []).append(cfg)
    return [cfgs[len(cfgs) // 2] for cfgs in by_name.values()]
