"""Heatmaps: safety coefficients per (layer, module) and ablation grids, each a table in, a Figure out.

Where one cell dominates (a perturbation concentrated in a few tensors, as on a 30-layer model), a
linear colour scale paints every other cell the same colour; `scale="log"` (or "auto", which picks
it when the largest cell exceeds `DOMINANT` times the median one) keeps them apart and says so.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from panacea_lab.plotting import style
from panacea_lab.plotting.figure_parts import finish, frame, label, short

MODULE_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NORMALISE = ("total", "layer", "module", None)
SCALES = ("linear", "log", "auto")
ANNOTATE_MAX_CELLS = 80
DOMINANT = 10.0  # "auto" draws on a log scale when max cell > DOMINANT x median cell


def _module_order(modules: Iterable[str]) -> list[str]:
    present = set(modules)
    return [m for m in MODULE_ORDER if m in present] + sorted(present - set(MODULE_ORDER))


def heatmap_frame(coeffs: pd.DataFrame, value: str = "eps_share", normalise: str | None = "total",
                  modules: Sequence[str] | None = None, layers: Iterable[int] | None = None) -> pd.DataFrame:
    """The layer x module table `coefficient_heatmap` draws: filtered, summed per cell, then rescaled.

    normalise: "total" (the map sums to 1), "layer" (each row does), "module" (each column does) or None
    (shares as given). Absent (layer, module) cells stay NaN, so they show blank rather than as zero.
    """
    if normalise not in NORMALISE:
        raise ValueError(f"normalise = {normalise!r}: use one of {list(NORMALISE)}")
    df = frame(coeffs, ("layer", "module", value), "safety coefficients")
    for col, wanted in (("module", modules), ("layer", layers)):
        if wanted is None:
            continue
        wanted = list(wanted)
        have = _module_order(df[col].unique()) if col == "module" else sorted(df[col].unique())
        unknown = [w for w in wanted if w not in have]
        if unknown or not wanted:
            raise ValueError(f"{col}s = {wanted!r}: {unknown or 'nothing'} selected among the coefficients' {have}")
        df = df[df[col].isin(wanted)]
    table = df.groupby(["layer", "module"])[value].sum(min_count=1).unstack("module")
    table = table.reindex(columns=_module_order(table.columns)).sort_index().astype(float)
    if normalise is not None:
        sums = {"total": table.sum().sum(), "layer": table.sum(axis=1), "module": table.sum(axis=0)}[normalise]
        zero = [k for k, s in (sums.items() if normalise != "total" else [("map", sums)]) if not s > 0]
        if zero:
            raise ValueError(f"normalise = {normalise!r}: {zero} have zero {value}, nothing to rescale; "
                             "filter them out with layers= / modules= or use normalise=None")
        table = table / sums if normalise != "layer" else table.div(sums, axis=0)
    table.columns.name, table.index.name = "module", "layer"
    return table


def is_dominated(table: pd.DataFrame) -> bool:
    """Whether one cell dwarfs the rest: the largest positive cell over `DOMINANT` x the median one."""
    positive = table.to_numpy(dtype=float)
    positive = positive[np.isfinite(positive) & (positive > 0)]
    return positive.size > 1 and positive.max() > DOMINANT * np.median(positive)


def shared_scale(tables: Sequence[pd.DataFrame], scale: str = "auto") -> tuple[str, tuple[float, float]]:
    """One colour scale for heatmaps meant to be compared (eps's shares beside the noise reference):
    log when "auto" finds any of them dominated, and limits spanning every table's cells."""
    if scale not in SCALES:
        raise ValueError(f"scale = {scale!r}: use one of {list(SCALES)}")
    values = np.concatenate([t.to_numpy(dtype=float).ravel() for t in tables])
    values = values[np.isfinite(values)]
    log = scale == "log" or (scale == "auto" and any(is_dominated(t) for t in tables))
    if log:
        positive = values[values > 0]
        return "log", (float(positive.min()), float(positive.max()))
    return "linear", (min(0.0, float(values.min())), float(values.max()))


def _draw(ax: Axes, table: pd.DataFrame, scale: str, cbar_label: str, fmt: str, vmin: float | None,
          limits: tuple[float, float] | None = None) -> str:
    """`table` as a heatmap on a linear or log colour scale (within `limits` when given); returns the
    scale used."""
    if scale not in SCALES:
        raise ValueError(f"scale = {scale!r}: use one of {list(SCALES)}")
    values = table.to_numpy(dtype=float)
    positive = values[np.isfinite(values) & (values > 0)]
    log = scale == "log" or (scale == "auto" and is_dominated(table))
    if log and positive.size == 0:
        raise ValueError("scale = 'log': no cell is positive, nothing to draw on a log scale; use scale='linear'")
    lo, hi = limits if limits is not None else (positive.min() if log else vmin, positive.max() if log else None)
    colour = {"norm": LogNorm(lo, hi)} if log else {"vmin": lo, "vmax": hi}
    sns.heatmap(table, ax=ax, cmap="viridis", annot=table.size <= ANNOTATE_MAX_CELLS, fmt=".2g" if log else fmt,
                annot_kws={"fontsize": style.MIN_FONT_PT}, cbar_kws={"label": cbar_label + (" (log scale)" if log else "")},
                **colour)
    ax.tick_params(axis="y", labelrotation=0)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    return "log" if log else "linear"


def _figsize(table: pd.DataFrame) -> tuple[float, float]:
    """One column unless annotated numbers need the width; rows tall enough for 7 pt labels."""
    annotated = table.size <= ANNOTATE_MAX_CELLS
    wide = annotated and table.shape[1] > 4
    row = 0.24 if annotated else 0.13
    return (style.DOUBLE_COLUMN if wide else style.SINGLE_COLUMN, max(1.8, 1.1 + row * table.shape[0]))


@style.paper_figure
def coefficient_heatmap(coeffs: pd.DataFrame, value: str = "eps_share", normalise: str | None = "total",
                        modules: Sequence[str] | None = None, layers: Iterable[int] | None = None,
                        scale: str = "auto", limits: tuple[float, float] | None = None) -> Figure:
    """Safety coefficients as a layer x module heatmap (annotated when small enough to read the numbers).

    scale: "linear", "log", or "auto" (log where one cell dominates, e.g. a real model's 30 layers).
    limits: the colour scale's ends, to draw several maps on one scale (`shared_scale`).
    """
    table = heatmap_frame(coeffs, value, normalise, modules, layers)
    fig, ax = plt.subplots(figsize=_figsize(table), layout="constrained")
    _draw(ax, table, scale, "share of squared L2 norm", ".2f", vmin=0.0, limits=limits)
    per = {"total": "map sums to 1", "layer": "each layer sums to 1", "module": "each module sums to 1",
           None: "as given"}[normalise]
    finish(ax, "module", "decoder layer", f"{short(value)} by layer and module ({per})")
    return fig


@style.paper_figure
def grid_heatmap(df: pd.DataFrame, index: str, columns: str, value: str, title: str, scale: str = "linear") -> Figure:
    """An ablation grid (e.g. rho x lambda), each cell the mean of `value` over seeds."""
    table = frame(df, (index, columns, value), "ablation").pivot_table(index=index, columns=columns, values=value,
                                                                     aggfunc="mean")
    fig, ax = plt.subplots(figsize=_figsize(table), layout="constrained")
    _draw(ax, table, scale, label(value), ".1f", vmin=None)
    finish(ax, columns, index, title)
    return fig
