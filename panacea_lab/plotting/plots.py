"""Pure plotting functions: a tidy frame in, a paper-ready matplotlib Figure out (nothing shown).

Each function checks its frame first, so a sweep that produced nothing fails with the reason rather
than drawing an empty picture. Every figure takes its look from `style`: one colour and marker per
method in every figure, print sizes, fonts of 7 pt or more. Spread is drawn only where there are two
seeds or more (a single seed says "one seed"), percentage axes start at 0, and `save_figure` writes
byte-identical PNG and PDF files for identical data, beside the CSV they were drawn from.
Heatmaps live in `heatmaps` and are re-exported here. Needs the `notebooks` extra.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from panacea_lab.plotting import style
from panacea_lab.defenses.registry import UNDEFENDED
from panacea_lab.tables.coefficients import pareto_front
from panacea_lab.plotting.figure_parts import (
    PARAM,
    SeedCounts,
    as_tuple,
    axis_label,
    draw_series,
    fa_limits,
    finish,
    frame,
    label,
    legend,
    log_axis_if_doubling,
    method_family,
    seed_stats,
    short,
    style_column,
    subplots,
)
# Re-exported (see __all__): `plots` stays the notebooks' one import for every figure and its file.
from panacea_lab.plotting.figure_files import save_figure  # noqa: F401
from panacea_lab.plotting.grid_plots import ratio_panels  # noqa: F401
from panacea_lab.plotting.heatmaps import (  # noqa: F401
    MODULE_ORDER,
    NORMALISE,
    coefficient_heatmap,
    grid_heatmap,
    heatmap_frame,
    shared_scale,
)

DPI = style.DPI


def _scored(df: pd.DataFrame, metric: str, what: str) -> None:
    if df[metric].isna().all():
        raise ValueError(f"{metric!r} is NaN for every {what}: that metric was not scored; pick another in metrics=")


def _families(df: pd.DataFrame, group_by: str | Callable[[str], str] | None) -> pd.Series:
    if group_by is None or callable(group_by):
        return df["model"].map(group_by or method_family).rename("family")
    if group_by not in df.columns:
        raise ValueError(f"group_by = {group_by!r} is not a column (has {list(df.columns)}): pass a column or a "
                         "function from the model label to its method family")
    return df[group_by].astype(str).rename("family")


def _one_ratio(df: pd.DataFrame, p: float | None) -> pd.DataFrame:
    """The rows at one harmful ratio: averaging defenses over different attacks would blur both."""
    if "p" not in df.columns:
        return df
    ratios = sorted(df["p"].dropna().unique())
    if p is None:
        if len(ratios) > 1:
            raise ValueError(f"the defense sweep has ratios {ratios}: pass p= to pick one")
        return df
    picked = df[np.isclose(df["p"].astype(float), p)]
    if picked.empty:
        raise ValueError(f"p = {p!r}: no rows at that ratio (the sweep has {ratios})")
    return picked


def _at_ratio(df: pd.DataFrame) -> str:
    return "" if "p" not in df.columns or df["p"].isna().all() else f" at p={df['p'].dropna().iloc[0]:g}"


@style.paper_figure
def metric_vs_ratio(df: pd.DataFrame, metrics: str | Sequence[str] = ("HS", "FA_sentiment"),
                    reference: bool = True, series: Sequence[str] = ("fine-tuned",), fa_from: float = 0.0) -> Figure:
    """Each metric against p per series (mean ± 1 std over seeds): the attack's dose-response.

    `series` names the `model` labels drawn (defense labels to compare defenses across p). Base and
    aligned models are dashed reference lines: how far the attack moves the model from them.
    """
    metrics = as_tuple(metrics)
    df = style_column(frame(df, ("model", "p", *metrics), "attack sweep"))
    tuned = df[df["model"].isin(series)].dropna(subset=["p"])
    if tuned.empty:
        raise ValueError(f"the sweep has no {list(series)} rows with a ratio p: it produced no such runs "
                         f"(models present: {sorted(map(str, df['model'].unique()))})")
    fig, axes = subplots(len(metrics))
    seeds = SeedCounts()
    for ax, metric in zip(axes, metrics):
        _scored(tuned, metric, "fine-tuned run")
        for name in series:
            rows = tuned[tuned["model"] == name]
            if rows[metric].notna().any():
                seeds.add(name, draw_series(ax, seed_stats(rows, "p", metric), rows["_style"].iloc[0], name))
        for name in ("base", "aligned") if reference else ():
            ref = df[df["model"] == name]
            if ref[metric].notna().any():
                ax.axhline(ref[metric].mean(), linestyle="--", color=style.method_style(ref["_style"].iloc[0]).color,
                           linewidth=1.0, label=name)
        finish(ax, label("p"), axis_label(metric, fa_from), f"{short(metric)} vs harmful ratio p")
        fa_limits(ax, metric, "y", fa_from)
    legend(fig, axes, seeds)
    return fig


@style.paper_figure
def metric_vs_param(df: pd.DataFrame, param: str = "std", metrics: str | Sequence[str] = ("HS", "FA_sentiment"),
                    baseline_label: str | None = "no defense", p: float | None = None,
                    group_by: str | Callable[[str], str] | None = None, fa_from: float = 0.0) -> Figure:
    """Each defense family's metric against its parameter (std, rho or norm), ±1 std over seeds.

    Runs are the sweep's labels, so x is the mean of `param` over seeds (norm = ||eps|| varies by seed).
    The undefended model is the dashed line a defense has to move away from (HS) or stay near (FA).
    """
    metrics = as_tuple(metrics)
    df = style_column(_one_ratio(frame(df, ("model", param, *metrics), "defense sweep"), p))
    base = df[df["model"] == baseline_label]
    if baseline_label is not None and base.empty:
        raise ValueError(f"baseline_label = {baseline_label!r} names no row (models: "
                         f"{sorted(map(str, df['model'].unique()))}); pass baseline_label=None to draw none")
    runs = df[df[param].notna() & (df["model"] != baseline_label)]
    if runs.empty:
        raise ValueError(f"no run of the defense sweep sets {param!r}: the sweep produced no such defense "
                         "(choose param= among std, rho, norm that it did set)")
    fams = _families(runs, group_by)
    fig, axes = subplots(len(metrics))
    seeds = SeedCounts()
    for ax, metric in zip(axes, metrics):
        _scored(runs, metric, f"run that sets {param!r}")
        for fam, rows in runs.groupby(fams, sort=False):
            stats = (rows.groupby("model", sort=False)
                     .agg(x=(param, "mean"), mean=(metric, "mean"), std=(metric, "std"), count=(metric, "count"))
                     .dropna(subset=["mean"]).sort_values("x", kind="stable").set_index("x"))
            seeds.add(str(fam), draw_series(ax, stats, rows["_style"].iloc[0], str(fam)))
        if baseline_label is not None and base[metric].notna().any():
            ax.axhline(base[metric].mean(), linestyle="--", linewidth=1.0, label=baseline_label,
                       color=style.method_style(base["_style"].iloc[0]).color)
        finish(ax, label(param), axis_label(metric, fa_from), f"{short(metric)} against {short(param)}")
        log_axis_if_doubling(ax, runs[param])
        fa_limits(ax, metric, "y", fa_from)
    legend(fig, axes, seeds, _at_ratio(df).strip())  # the ratio once, for every panel
    return fig


@style.paper_figure
def metric_vs_step(df: pd.DataFrame, metrics: str | Sequence[str] = ("HS", "FA_sentiment"),
                   hue: str = "run", fa_from: float = 0.0) -> Figure:
    """Each metric along fine-tuning steps, one line per `hue` value (mean ± 1 std over seeds)."""
    metrics = as_tuple(metrics)
    df = style_column(frame(df, ("step", hue, *metrics), "trajectory"), hue)
    fig, axes = subplots(len(metrics))
    seeds = SeedCounts()
    for ax, metric in zip(axes, metrics):
        _scored(df, metric, "checkpoint")
        for name, rows in df.groupby(hue, sort=False):
            seeds.add(str(name), draw_series(ax, seed_stats(rows, "step", metric), rows["_style"].iloc[0], str(name)))
        only = f" ({df[hue].iloc[0]})" if df[hue].nunique() == 1 else ""  # one run: no legend, so name it
        finish(ax, label("step"), axis_label(metric, fa_from), f"{short(metric)} during fine-tuning{only}")
        fa_limits(ax, metric, "y", fa_from)
    legend(fig, axes, seeds)
    return fig


def _param_tags(df: pd.DataFrame) -> pd.Series:
    """Each row's parameter as its point's tag: 'rho=1' from typed rows' param and value, else from
    the parameters its label carries ('panacea rho=1 (w+eps)' -> 'rho=1'); '' for none."""
    from_label = df["model"].map(lambda m: " ".join(t.strip() for t in PARAM.findall(str(m))))
    if not {"param", "value"} <= set(df.columns):
        return from_label
    typed = [f"{k}={v:g}" if isinstance(k, str) and pd.notna(v) else "" for k, v in zip(df["param"], df["value"])]
    return pd.Series(typed, index=df.index).where(lambda t: t != "", from_label)


def _tag_points(ax, points: list[tuple[float, float, str, str]]) -> None:
    """Write each point's parameter beside it, in its colour: to its left in the right quarter of the axes
    (so no tag runs past them), and skipping a tag that would overprint one already written (points
    come front points first, so those keep their tags)."""
    placed: list[tuple[float, float]] = []
    (x0, x1) = ax.get_xlim()
    for px, py, tag, color in points:
        dx, dy = ax.transData.transform((px, py))
        if any(abs(dx - qx) < 30 and abs(dy - qy) < 11 for qx, qy in placed):
            continue
        placed.append((dx, dy))
        left = px > x0 + 0.75 * (x1 - x0)
        ax.annotate(tag, (px, py), xytext=(-4, 2) if left else (3, 2), textcoords="offset points",
                    ha="right" if left else "left", fontsize=style.MIN_FONT_PT, color=color)


def _distinct_looks(families: list[str], looks: list[style.Style]) -> list[tuple[style.Style, bool]]:
    """(style, hollow) per family: a family whose colour and marker an earlier one in the figure already
    has (the undefended model on its two adapters) gets an open marker of another shape, so no two
    series in one figure look alike."""
    used: set[tuple[str, str]] = set()
    out = []
    for look in looks:
        hollow = (look.color, look.marker) in used
        if hollow:
            marker = next(m for m in style.TWIN_MARKERS if (look.color, m) not in used)
            look = style.Style(look.color, marker)
        used.add((look.color, look.marker))
        out.append((look, hollow))
    return out


@style.paper_figure
def pareto(df: pd.DataFrame, x: str = "FA_sentiment", y: str = "HS",
           group_by: str | Callable[[str], str] | None = None, fa_from: float = 0.0) -> Figure:
    """Every run (mean over seeds) as a point tagged with its parameter, and each method family's
    Pareto front as a step line.

    A family's front is what tuning its parameter can reach; a front lower and further right is better
    at every trade-off between fine-tuning accuracy and harm.
    """
    df = style_column(frame(df, ("model", x, y), "defense sweep"))
    df = df.assign(_tag=_param_tags(df))
    keys = ["family", "model", "_style", *(["p"] if "p" in df.columns else [])]
    grouped = df.assign(family=_families(df, group_by)).groupby(keys, sort=False, dropna=False)
    runs = (grouped[[x, y]].mean().join(grouped[y].count().rename("count")).join(grouped["_tag"].first())
            .reset_index().dropna(subset=[x, y]))
    if runs.empty:
        raise ValueError(f"no run has both {x!r} and {y!r} scored: the sweep produced nothing to compare "
                         "(was that task evaluated? pass x= and y= naming scored columns)")
    fig, ax = plt.subplots(figsize=(style.SINGLE_COLUMN, 3.0), layout="constrained")
    seeds, on_front, off_front = SeedCounts(spread=False), [], []
    families = list(runs.groupby("family", sort=False))
    looks = _distinct_looks([str(f) for f, _ in families],
                            [style.method_style(rows["_style"].iloc[0]) for _, rows in families])
    for (fam, rows), (look, hollow) in zip(families, looks):
        ax.scatter(rows[x], rows[y], marker=look.marker, label=str(fam), s=22, alpha=0.9, zorder=3, clip_on=False,
                   facecolors="none" if hollow else look.color, edgecolors=look.color, linewidths=1.0)
        if len(rows) < 2:
            seeds.add(str(fam), int(rows["count"].min()))
            continue  # one point: no front to draw, and the legend names it
        front = pareto_front(rows, x, y)
        ax.step(front[x], front[y], where="pre", color=look.color, linewidth=1.0)
        for i, run in rows.iterrows():
            if run["_tag"]:
                (on_front if i in front.index else off_front).append((run[x], run[y], run["_tag"], look.color))
        seeds.add(str(fam), int(rows["count"].min()))
    finish(ax, axis_label(x, fa_from), axis_label(y, fa_from), f"{short(y)} against {short(x)}")
    fa_limits(ax, x, "x", fa_from)
    fa_limits(ax, y, "y", fa_from)
    _tag_points(ax, on_front + off_front)
    legend(fig, [ax], seeds, "a line: the front of a swept parameter" if ax.lines else "")
    return fig


@style.paper_figure
def method_bars(df: pd.DataFrame, metrics: str | Sequence[str] = ("HS", "FA_sentiment"),
                p: float | None = None, fa_from: float = 0.0) -> Figure:
    """One bar per method (its label, in first-seen order): the mean over seeds, with a ±1 std error
    bar where that method has two seeds or more."""
    metrics = as_tuple(metrics)
    df = style_column(_one_ratio(frame(df, ("model", *metrics), "comparison"), p))
    order = list(dict.fromkeys(df["model"]))
    colors = [style.method_style(df.loc[df["model"] == m, "_style"].iloc[0]).color for m in order]
    fig, axes = subplots(len(metrics), height=style.PANEL_HEIGHT + 0.4)
    seeds = SeedCounts()
    for ax, metric in zip(axes, metrics):
        _scored(df, metric, "method")
        stats = df.groupby("model", sort=False)[metric].agg(["mean", "std", "count"]).reindex(order)
        bars = ax.bar(range(len(order)), stats["mean"], color=colors, edgecolor="black", linewidth=0.4)
        ax.bar_label(bars, labels=[f"{v:.0f}" for v in stats["mean"]], padding=1.5,
                     fontsize=style.MIN_FONT_PT)  # a bar of height 0 is a number, not a gap
        ax.margins(y=0.12)
        spread = (stats["count"] >= 2).to_numpy()
        if spread.any():
            ax.errorbar(np.arange(len(order))[spread], stats["mean"][spread], yerr=stats["std"][spread],
                        fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
        for m in order:
            seeds.add(m, int(stats.loc[m, "count"]))
        ax.set_xticks(range(len(order)), order, rotation=45, ha="right", rotation_mode="anchor")
        finish(ax, "method", axis_label(metric, fa_from), f"{short(metric)} per method")
        fa_limits(ax, metric, "y", fa_from)
    legend(fig, axes, seeds, _at_ratio(df).strip())
    return fig


@style.paper_figure
def overhead_bars(df: pd.DataFrame, baseline: str = UNDEFENDED) -> Figure:
    """Step time relative to `baseline` and peak memory per training method, one bar each.

    Timings depend on the machine, so the left panel shows ratios; the title names the device and
    batch size, the right panel how memory was measured. One profile per method: no error bars.
    """
    df = style_column(frame(df, ("method", "seconds_per_step", "peak_mib"), "overhead"), "method")
    ref = df.loc[df["method"] == baseline, "seconds_per_step"]
    if ref.empty:
        raise ValueError(f"baseline = {baseline!r} is not a profiled method (has {list(df['method'])}): "
                         "profile it too or name one that was")
    colors = [style.method_style(s).color for s in df["_style"]]
    where = ", ".join(str(df[c].iloc[0]) if c != "batch_size" else f"batch {df[c].iloc[0]}"
                      for c in ("device", "batch_size") if c in df.columns)
    fig, axes = subplots(2)
    axes[0].bar(df["method"], df["seconds_per_step"] / ref.iloc[0], color=colors, edgecolor="black", linewidth=0.4)
    axes[0].axhline(1.0, linestyle="--", linewidth=1.0, color=style.method_style(baseline).color)
    finish(axes[0], "method", f"time per step (x {baseline})", f"Step time ({where})" if where else "Step time")
    axes[1].bar(df["method"], df["peak_mib"], color=colors, edgecolor="black", linewidth=0.4)
    memory = f" ({df['memory'].iloc[0]})" if "memory" in df.columns else ""
    finish(axes[1], "method", "peak memory (MiB)", f"Peak memory{memory}")
    for ax in axes:
        plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    fig.suptitle("one profile per method")
    return fig


@style.paper_figure
def training_curves(log: pd.DataFrame | Sequence[dict]) -> Figure:
    """f (the user's loss), h(w) and h(w+eps) against step, and ||G_h|| on a second axes when logged.

    Panacea trains to widen h(w+eps) - h(w) while f falls; the gap, not h alone, is what to watch.
    """
    df = frame(log, ("step", "loss"), "training log")
    curves = [(c, name) for c, name in (("loss", "f(w), user loss"), ("h", "h(w), harmful loss"),
                                        ("h_eps", "h(w+eps), harmful loss"), ("grad_h_norm", "||G_h||"))
              if c in df.columns and df[c].notna().any()]
    has_grad = any(col == "grad_h_norm" for col, _ in curves)
    fig, axes = subplots(2 if has_grad else 1)
    seeds = SeedCounts(spread=False, note="one run")
    for col, name in curves:
        rows = df.dropna(subset=[col]).sort_values("step", kind="stable")
        stats = pd.DataFrame({"mean": rows[col].to_numpy(), "std": np.nan, "count": 1}, index=rows["step"].to_numpy())
        draw_series(axes[1] if col == "grad_h_norm" else axes[0], stats, style.CURVE_STYLES[col], name)
    finish(axes[0], label("step"), "LM loss (nats per token)", "losses during fine-tuning")
    if has_grad:
        finish(axes[1], label("step"), label("norm"), "harmful-loss gradient norm ||G_h||")
    legend(fig, axes, seeds)
    return fig


__all__ = ["DPI", "MODULE_ORDER", "NORMALISE", "coefficient_heatmap", "grid_heatmap", "heatmap_frame",
           "shared_scale", "method_bars", "method_family", "metric_vs_param", "metric_vs_ratio", "metric_vs_step",
           "overhead_bars", "pareto", "ratio_panels", "save_figure", "training_curves"]
