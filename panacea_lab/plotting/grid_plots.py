"""Small multiples across harmful ratios: one column per comparison (a trained defense's setting beside
its control, or a defense on its own attack), one row per metric, FA included, so each panel holds
three or four series a reader can tell apart instead of nine in one colour."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from panacea_lab.plotting import style
from panacea_lab.plotting.figure_parts import (
    SeedCounts,
    draw_series,
    fa_limits,
    frame,
    is_percent,
    label,
    legend,
    seed_stats,
    short,
    style_column,
)


@style.paper_figure
def ratio_panels(df: pd.DataFrame, panels: Mapping[str, Sequence[str]], metrics: Sequence[str],
                 legend_names: Mapping[str, str] | None = None, context: str = "") -> Figure:
    """Each metric against p (mean ± 1 std over seeds), one column per entry of `panels`: its title and
    the `model` labels drawn in it. `legend_names` maps a label to its legend entry (the same role in
    every column, e.g. "Panacea (w + eps)", is one entry); percentages run from 0 to 100 in every panel."""
    df = style_column(frame(df, ("model", "p", *metrics), "ratio grid")).dropna(subset=["p"])
    missing = [m for names in panels.values() for m in names if not df["model"].eq(m).any()]
    if missing:
        raise ValueError(f"panels name models the frame lacks: {missing} (it has {sorted(df['model'].unique())})")
    names = dict(legend_names or {})
    # one line style per legend entry across every panel: entries sharing a colour (the undefended model
    # on its own and on a fresh adapter) differ by it, in whichever panel they meet
    looks: dict[str, list[str]] = {}
    for models in panels.values():
        for model in models:
            kin = df.loc[df["model"].eq(model), "_style"].iloc[0]
            entries = looks.setdefault(kin, [])
            if names.get(model, model) not in entries:
                entries.append(names.get(model, model))
    dash = {entry: style.LINESTYLES[i % len(style.LINESTYLES)] for entries in looks.values()
            for i, entry in enumerate(entries)}
    fig, axes = plt.subplots(len(metrics), len(panels), sharex=True, squeeze=False, layout="constrained",
                             figsize=(style.DOUBLE_COLUMN, 0.4 + 1.45 * len(metrics)))
    seeds = SeedCounts()
    for col, (title, models) in enumerate(panels.items()):
        for row, metric in enumerate(metrics):
            ax = axes[row][col]
            for model in models:
                rows = df[df["model"].eq(model)]
                if rows[metric].notna().any():
                    entry = names.get(model, model)
                    seeds.add(entry, draw_series(ax, seed_stats(rows, "p", metric), rows["_style"].iloc[0], entry,
                                                 linestyle=dash[entry]))
            ax.set_xticks(sorted(df["p"].unique()))
            if row == 0:
                ax.set_title(title)
            if row == len(metrics) - 1:
                ax.set_xlabel(label("p"))
            if col == 0:
                ax.set_ylabel(f"FA {metric[3:]} (%)" if metric.startswith("FA_") else f"{short(metric)} (%)")
            if is_percent(metric):
                ax.set_ylim(0, 105)  # every panel of a row on the whole scale: panels compare at a glance
            else:
                fa_limits(ax, metric, "y")
    legend(fig, [ax for line in axes for ax in line], seeds, context)
    return fig
