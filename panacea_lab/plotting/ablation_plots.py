"""Figures of the layer ablation (`layer_ablation.py`): where eps acts, beside where its norm sits.

One figure per kind of restriction: HS and `other` against the layer (or module) carrying eps, for
eps and for its same-norm control, with w alone and w + the whole eps as reference lines; and,
beside them, the share of ||eps||^2 the restricted part holds. A part that holds little norm but
removes the harm points at the direction, not the size. Drawn with the shared `style` (Panacea w+eps
and the same-norm random control in their colours everywhere) and saved with `figure_files.save_figure`.
Which defense, half and control the rows are of is read from the registry.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from panacea_lab import defenses
from panacea_lab.plotting import style
from panacea_lab.plotting.figure_parts import (
    SeedCounts,
    draw_series,
    fa_limits,
    finish,
    frame,
    label,
    legend,
    seed_stats,
    subplots,
)
from panacea_lab.studies.layer_ablation import KINDS, part_control

XLABELS = {"layer": "layer with eps", "all_but_layer": "layer without eps", "first_k": "k (first k layers)",
           "last_k": "k (last k layers)", "module": "module with eps (all layers)"}
TITLES = {"layer": "eps on one layer", "all_but_layer": "eps on every layer but one",
          "first_k": "eps on the first k layers", "last_k": "eps on the last k layers",
          "module": "eps on one module type"}


def _record(df: pd.DataFrame):
    """The trained defense whose eps the rows restrict: the one their `method` names (else the
    registry's first trained defense with a post-fine-tuning half)."""
    trained = defenses.trained_with_half()
    present = [n for n in trained if "method" in df and df["method"].eq(n).any()]
    return defenses.get((present or trained)[0])


def _series(record) -> tuple:
    """(variant, legend name, style name) of the restricted half and of its control: the control drawn
    as the defense's own same-norm control (its first), since it is that control on the same tensors."""
    half = record.post_half
    control = record.controls[0] if record.controls else part_control(half)
    return ((f"w+{half}", f"{half} (restricted)", f"{record.name} (w+{half})"),
            ("control", f"{defenses.label(control)}, same tensors", control))


def ablation_rows(df: pd.DataFrame, param: str) -> tuple[pd.DataFrame, list[str]]:
    """The rows of one kind of restriction with a numeric `x` (modules by position) and the tick labels."""
    if param not in KINDS:
        raise ValueError(f"param = {param!r}: use one of {list(KINDS)}")
    df = frame(df, ("param", "value", "variant", "share", "HS"), "layer ablation")
    part = df[df["param"] == param]
    if part.empty:
        have = sorted(set(df["param"].dropna()) & set(KINDS))
        raise ValueError(f"param = {param!r}: the ablation has no such rows (it has {have}); run it with that kind")
    if param == "module":
        order = list(dict.fromkeys(part["value"]))
        return part.assign(x=part["value"].map(order.index).astype(float)), order
    ticks = sorted(part["value"].astype(int).unique())
    return part.assign(x=part["value"].astype(float)), [str(t) for t in ticks]


def _reference(ax, df: pd.DataFrame, metric: str, record) -> None:
    """Dotted: w alone; dashed: w + the whole eps (means over seeds)."""
    half = record.post_half
    for variant, param, line, name in (("w", None, ":", f"w (no {half})"),
                                       (f"w+{half}", "all", "--", f"w + whole {half}")):
        rows = df[(df["variant"] == variant) & (df["param"].isna() if param is None else df["param"] == param)]
        if not rows.empty:
            look = style.method_style(f"{record.name} ({variant})")
            ax.axhline(float(rows[metric].mean()), color=look.color, linestyle=line, linewidth=0.9, label=name)


@style.paper_figure
def ablation_figure(df: pd.DataFrame, param: str = "layer", metrics: Sequence[str] = ("HS", "other")) -> Figure:
    """`metrics` against the part carrying eps (one panel each), then that part's share of ||eps||^2."""
    part, ticks = ablation_rows(df, param)
    record = _record(df)
    series = _series(record)
    fig, axes = subplots(len(metrics) + 1)
    seeds = SeedCounts()
    for ax, metric in zip(axes, metrics):
        for variant, name, look in series:
            rows = part[part["variant"] == variant]
            if not rows.empty:
                seeds.add(name, draw_series(ax, seed_stats(rows, "x", metric), look, name))
        _reference(ax, df, metric, record)
        fa_limits(ax, metric, "y")
        finish(ax, XLABELS[param], label(metric), f"{metric}: {TITLES[param]}")
    variant, _, look = series[0]
    shares = seed_stats(part[part["variant"] == variant], "x", "share")
    ax = axes[-1]
    ax.bar(shares.index.to_numpy(dtype=float), shares["mean"].to_numpy(dtype=float), width=0.6,
           color=style.method_style(look).color)
    ax.set_ylim(0, 1.05)
    finish(ax, XLABELS[param], "share of ||eps||² applied", "norm the restricted eps holds")
    for ax in axes:
        positions = np.arange(len(ticks)) if param == "module" else np.array([float(t) for t in ticks])
        ax.set_xticks(positions, [t.removesuffix("_proj") for t in ticks])
    legend(fig, axes, seeds, context=f"p = {part['p'].iloc[0]:g}" if "p" in part and part["p"].nunique() == 1 else "")
    return fig


def ablation_figures(df: pd.DataFrame, metrics: Sequence[str] = ("HS", "other")) -> dict[str, Figure]:
    """One figure per kind of restriction present in `df`, keyed by that kind."""
    present = [k for k in KINDS if (df["param"] == k).any()]
    if not present:
        raise ValueError(f"no ablation rows: `param` holds {sorted(df['param'].dropna().unique())}, none of {KINDS}")
    return {k: ablation_figure(df, k, metrics) for k in present}
