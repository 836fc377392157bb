"""Pure plotting functions: a tidy frame in, a matplotlib Figure out (nothing shown, no style changed).

Each function checks its frame first, so a sweep that produced nothing fails with the reason rather
than drawing an empty picture. `save_figure` writes byte-identical PNGs for identical data, beside the
CSV they were drawn from, so regenerated figures diff cleanly. Needs the `notebooks` extra.
"""
from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from panacea_lab.analysis.coefficients import pareto_front

MODULE_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NORMALISE = ("total", "layer", "module", None)
PALETTE = sns.color_palette("colorblind")
DPI = 150
PNG_METADATA = {"Software": None}  # matplotlib otherwise stamps its version: reruns would differ
ANNOTATE_MAX_CELLS = 80
LABELS = {"HS": "harmful score HS (%)", "refusal": "refusal rate (%)", "other": "other / degenerate answers (%)",
          "p": "harmful ratio p", "std": "noise std (per LoRA entry)", "rho": "perturbation radius rho",
          "norm": "global L2 norm", "step": "fine-tuning step", "n": "fine-tuning samples n",
          "lam": "lambda", "seconds_per_step": "seconds per step"}
_PARAM = re.compile(r"(?:^|\s)(?:\w+=)?[-+]?\d[\w.+-]*(?=\s|$)")


def _label(col: str) -> str:
    return "fine-tuning accuracy FA (%)" if col.startswith("FA_") else LABELS.get(col, col)


def _short(col: str) -> str:
    return f"FA ({col[3:]})" if col.startswith("FA_") else col


def _as_tuple(cols: str | Sequence[str]) -> tuple[str, ...]:
    return (cols,) if isinstance(cols, str) else tuple(cols)


def _frame(data, columns: Iterable[str], what: str) -> pd.DataFrame:
    """`data` as a frame holding `columns`, or a ValueError naming what is missing and what is there."""
    df = data if isinstance(data, pd.DataFrame) else pd.DataFrame(list(data))
    if df.empty:
        raise ValueError(f"the {what} frame is empty: the {what} produced no rows (check its ratios, seeds or steps)")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"column {missing[0]!r} not in the {what} frame (has {list(df.columns)}): "
                         "pass a frame with it or name one of the columns it has")
    return df


def _subplots(n: int, width: float = 4.6, height: float = 3.6) -> tuple[Figure, list[Axes]]:
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False, layout="constrained")
    return fig, list(axes[0])


def _band(ax: Axes, x, mean, std, color, label: str) -> None:
    """Mean line with a ±1 std band; the line is drawn first so ax.lines keeps the plotting order."""
    x, mean, std = (np.asarray(v, dtype=float) for v in (x, mean, std))
    ax.plot(x, mean, marker="o", color=color, label=label)
    ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)


def _finish(ax: Axes, xlabel: str, ylabel: str, title: str) -> None:
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if len(ax.get_legend_handles_labels()[0]) > 1:
        ax.legend(fontsize="small")


def _seed_stats(df: pd.DataFrame, key: str, metric: str) -> pd.DataFrame:
    """Mean and std over seeds per `key` value (std 0 for a single seed, so the band collapses)."""
    stats = df.groupby(key, sort=True)[metric].agg(["mean", "std"]).dropna(subset=["mean"])
    return stats.fillna({"std": 0.0})


def _scored(df: pd.DataFrame, metric: str, what: str) -> None:
    if df[metric].isna().all():
        raise ValueError(f"{metric!r} is NaN for every {what}: that metric was not scored; pick another in metrics=")


def method_family(label: str) -> str:
    """The method a defense-sweep label names, parameters removed: 'panacea rho=1 (w+eps)' -> 'panacea (w+eps)'."""
    return " ".join(_PARAM.sub(" ", str(label)).split())


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


def metric_vs_ratio(df: pd.DataFrame, metrics: str | Sequence[str] = ("HS", "FA_sentiment"),
                    reference: bool = True, series: Sequence[str] = ("fine-tuned",)) -> Figure:
    """Each metric against p per series (mean ± 1 std over seeds): the attack's dose-response.

    `series` names the `model` labels drawn (defense labels to compare defenses across p). Base and
    aligned models are dashed reference lines: how far the attack moves the model from them.
    """
    metrics = _as_tuple(metrics)
    df = _frame(df, ("model", "p", *metrics), "attack sweep")
    tuned = df[df["model"].isin(series)].dropna(subset=["p"])
    if tuned.empty:
        raise ValueError(f"the sweep has no {list(series)} rows with a ratio p: it produced no such runs "
                         f"(models present: {sorted(map(str, df['model'].unique()))})")
    fig, axes = _subplots(len(metrics))
    for ax, metric in zip(axes, metrics):
        _scored(tuned, metric, "fine-tuned run")
        for j, name in enumerate(series):
            rows = tuned[tuned["model"] == name]
            if rows[metric].notna().any():
                stats = _seed_stats(rows, "p", metric)
                label = f"{name} (mean ± 1 std over seeds)" if len(series) == 1 else name
                _band(ax, stats.index, stats["mean"], stats["std"], PALETTE[j % len(PALETTE)], label)
        for i, name in enumerate(("base", "aligned") if reference else ()):
            ref = df.loc[df["model"] == name, metric].dropna()
            if len(ref):
                ax.axhline(ref.mean(), linestyle="--", color=PALETTE[len(series) + i], label=name)
        _finish(ax, _label("p"), _label(metric), f"{_short(metric)} vs harmful ratio p")
    return fig


def metric_vs_param(df: pd.DataFrame, param: str = "std", metrics: str | Sequence[str] = ("HS", "FA_sentiment"),
                    baseline_label: str | None = "no defense", p: float | None = None,
                    group_by: str | Callable[[str], str] | None = None) -> Figure:
    """Each defense family's metric against its parameter (std, rho or norm), ±1 std over seeds.

    Runs are the sweep's labels, so x is the mean of `param` over seeds (norm = ||eps|| varies by seed).
    The undefended model is the dashed line a defense has to move away from (HS) or stay near (FA).
    """
    metrics = _as_tuple(metrics)
    df = _one_ratio(_frame(df, ("model", param, *metrics), "defense sweep"), p)
    base = df[df["model"] == baseline_label]
    if baseline_label is not None and base.empty:
        raise ValueError(f"baseline_label = {baseline_label!r} names no row (models: "
                         f"{sorted(map(str, df['model'].unique()))}); pass baseline_label=None to draw none")
    runs = df[df[param].notna() & (df["model"] != baseline_label)]
    if runs.empty:
        raise ValueError(f"no run of the defense sweep sets {param!r}: the sweep produced no such defense "
                         "(choose param= among std, rho, norm that it did set)")
    fams = _families(runs, group_by)
    where = "" if "p" not in df.columns or df["p"].isna().all() else f" at p={df['p'].dropna().iloc[0]:g}"
    fig, axes = _subplots(len(metrics))
    for ax, metric in zip(axes, metrics):
        _scored(runs, metric, f"run that sets {param!r}")
        for i, (fam, rows) in enumerate(runs.groupby(fams, sort=False)):
            stats = (rows.groupby("model", sort=False)
                     .agg(x=(param, "mean"), mean=(metric, "mean"), std=(metric, "std"))
                     .dropna(subset=["mean"]).fillna({"std": 0.0}).sort_values("x", kind="stable"))
            _band(ax, stats["x"], stats["mean"], stats["std"], PALETTE[i % len(PALETTE)], str(fam))
        if baseline_label is not None and base[metric].notna().any():
            ax.axhline(base[metric].mean(), linestyle="--", color="0.35", label=baseline_label)
        _finish(ax, _label(param), _label(metric), f"{_short(metric)} vs {param}{where}")
    return fig


def metric_vs_step(df: pd.DataFrame, metrics: str | Sequence[str] = ("HS", "FA_sentiment"),
                   hue: str = "run") -> Figure:
    """Each metric along fine-tuning steps, one line per `hue` value (mean ± 1 std over seeds)."""
    metrics = _as_tuple(metrics)
    df = _frame(df, ("step", hue, *metrics), "trajectory")
    fig, axes = _subplots(len(metrics))
    for ax, metric in zip(axes, metrics):
        _scored(df, metric, "checkpoint")
        for i, (name, rows) in enumerate(df.groupby(hue, sort=False)):
            stats = _seed_stats(rows, "step", metric)
            _band(ax, stats.index, stats["mean"], stats["std"], PALETTE[i % len(PALETTE)], str(name))
        only = f" ({df[hue].iloc[0]})" if df[hue].nunique() == 1 else ""  # one run: no legend, so name it
        _finish(ax, _label("step"), _label(metric), f"{_short(metric)} during fine-tuning{only}")
    return fig


def pareto(df: pd.DataFrame, x: str = "FA_sentiment", y: str = "HS",
           group_by: str | Callable[[str], str] | None = None) -> Figure:
    """Every run (mean over seeds) as a point, and each method family's Pareto front as a step line.

    A family's front is what tuning its parameter can reach; a front lower and further right is better
    at every trade-off between fine-tuning accuracy and harm.
    """
    df = _frame(df, ("model", x, y), "defense sweep")
    keys = ["family", "model", *(["p"] if "p" in df.columns else [])]
    runs = (df.assign(family=_families(df, group_by)).groupby(keys, sort=False, dropna=False)[[x, y]].mean()
            .reset_index().dropna(subset=[x, y]))
    if runs.empty:
        raise ValueError(f"no run has both {x!r} and {y!r} scored: the sweep produced nothing to compare "
                         "(was that task evaluated? pass x= and y= naming scored columns)")
    fig, ax = plt.subplots(figsize=(6.4, 4.6), layout="constrained")
    for i, (fam, rows) in enumerate(runs.groupby("family", sort=False)):
        color = PALETTE[i % len(PALETTE)]
        ax.scatter(rows[x], rows[y], color=color, label=str(fam), s=28, alpha=0.85)
        front = pareto_front(rows, x, y)
        ax.step(front[x], front[y], where="pre", color=color, linewidth=1.4)
    _finish(ax, _label(x), _label(y), f"{_short(y)} vs {_short(x)}: Pareto front per method")
    return fig


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
    df = _frame(coeffs, ("layer", "module", value), "safety coefficients")
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


def coefficient_heatmap(coeffs: pd.DataFrame, value: str = "eps_share", normalise: str | None = "total",
                        modules: Sequence[str] | None = None, layers: Iterable[int] | None = None) -> Figure:
    """Safety coefficients as a layer x module heatmap (annotated when small enough to read the numbers)."""
    table = heatmap_frame(coeffs, value, normalise, modules, layers)
    n_rows, n_cols = table.shape
    fig, ax = plt.subplots(figsize=(2.2 + 0.95 * n_cols, 1.6 + 0.36 * n_rows), layout="constrained")
    sns.heatmap(table, ax=ax, cmap="viridis", vmin=0.0, annot=table.size <= ANNOTATE_MAX_CELLS, fmt=".2f",
                annot_kws={"fontsize": 8}, cbar_kws={"label": "share of squared global L2 norm"})
    per = {"total": "map sums to 1", "layer": "each layer sums to 1", "module": "each module sums to 1",
           None: "as given"}[normalise]
    _finish(ax, "module", "decoder layer", f"{value} by layer and module ({per})")
    return fig


def method_bars(df: pd.DataFrame, metrics: str | Sequence[str] = ("HS", "FA_sentiment"),
                p: float | None = None) -> Figure:
    """One bar per method (its label, in first-seen order): mean over seeds with a ±1 std error bar."""
    metrics = _as_tuple(metrics)
    df = _one_ratio(_frame(df, ("model", *metrics), "comparison"), p)
    order = list(dict.fromkeys(df["model"]))
    where = "" if "p" not in df.columns or df["p"].isna().all() else f" at p={df['p'].dropna().iloc[0]:g}"
    fig, axes = _subplots(len(metrics), width=max(4.6, 0.55 * len(order) + 1.5), height=4.2)
    for ax, metric in zip(axes, metrics):
        _scored(df, metric, "method")
        stats = df.groupby("model", sort=False)[metric].agg(["mean", "std"]).reindex(order).fillna({"std": 0.0})
        ax.bar(range(len(order)), stats["mean"], yerr=stats["std"], capsize=3,
               color=[PALETTE[i % len(PALETTE)] for i in range(len(order))])
        ax.set_xticks(range(len(order)), order, rotation=40, ha="right", fontsize="small")
        _finish(ax, "method", _label(metric), f"{_short(metric)} per method{where}")
    return fig


def grid_heatmap(df: pd.DataFrame, index: str, columns: str, value: str, title: str) -> Figure:
    """An ablation grid (e.g. rho x lambda), each cell the mean of `value` over seeds."""
    table = _frame(df, (index, columns, value), "ablation").pivot_table(index=index, columns=columns, values=value,
                                                                      aggfunc="mean")
    fig, ax = plt.subplots(figsize=(2.4 + 0.9 * table.shape[1], 1.8 + 0.45 * table.shape[0]), layout="constrained")
    sns.heatmap(table, ax=ax, cmap="viridis", annot=True, fmt=".1f", annot_kws={"fontsize": 8},
                cbar_kws={"label": _label(value)})
    _finish(ax, columns, index, title)
    return fig


def training_curves(log: pd.DataFrame | Sequence[dict]) -> Figure:
    """f (the user's loss), h(w) and h(w+eps) against step, and ||G_h|| on a second axes when logged.

    Panacea trains to widen h(w+eps) - h(w) while f falls; the gap, not h alone, is what to watch.
    """
    df = _frame(log, ("step", "loss"), "training log")
    curves = [(c, name) for c, name in (("loss", "f(w), user loss"), ("h", "h(w), harmful loss"),
                                        ("h_eps", "h(w+eps), harmful loss"))
              if c in df.columns and df[c].notna().any()]
    has_grad = "grad_h_norm" in df.columns and df["grad_h_norm"].notna().any()
    fig, axes = _subplots(2 if has_grad else 1)
    for i, (col, name) in enumerate(curves):
        rows = df.dropna(subset=[col]).sort_values("step", kind="stable")
        axes[0].plot(rows["step"], rows[col], color=PALETTE[i], label=name)
    _finish(axes[0], _label("step"), "LM loss (nats per token)", "losses during fine-tuning")
    if has_grad:
        rows = df.dropna(subset=["grad_h_norm"]).sort_values("step", kind="stable")
        axes[1].plot(rows["step"], rows["grad_h_norm"], color=PALETTE[len(curves)], label="||G_h||")
        _finish(axes[1], _label("step"), _label("norm"), "harmful-loss gradient norm ||G_h||")
    return fig


def _atomic_write(path: Path, write: Callable, binary: bool) -> None:
    """Write through a temp file in the same folder, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_figure(fig: Figure, path: str | os.PathLike, data: pd.DataFrame | None = None) -> Path:
    """Write `fig` as a reproducible PNG (no version stamp, fixed dpi) and `data` as the CSV beside it.

    Same data, same bytes: regenerated figures only show up in a diff when they changed. Closes `fig`.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path = {str(path)!r}: save_figure writes PNG, give a path ending in .png")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI, metadata=PNG_METADATA), binary=True)
        if data is not None:
            frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
            _atomic_write(path.with_suffix(".csv"), lambda f: frame.to_csv(f, index=False), binary=False)
    finally:
        plt.close(fig)
    return path
