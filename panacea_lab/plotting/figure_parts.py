"""The pieces every figure is built from: frame checks, axis labels, one series with its seed spread,
the figure-wide legend with its seed note, and percentage axes that start at 0.

Kept apart from the figure functions so each figure states only what it draws.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from panacea_lab.plotting import style

LABELS = {"HS": "harmful score HS (%)", "HS+": "HS + other (%)", "refusal": "refusal rate (%)",
          "other": "other answers (%)", "p": "harmful ratio p", "std": "noise std (per LoRA entry)",
          "rho": "perturbation radius rho", "norm": "global L2 norm", "step": "fine-tuning step",
          "n": "fine-tuning samples n", "lam": "lambda", "seconds_per_step": "seconds per step"}
PERCENT = ("HS", "HS+", "refusal", "other")  # and every FA_<task>
MAX_MARKERS = 12  # markers per series at most; a longer series marks every k-th point
PARAM = re.compile(r"(?:^|\s)(?:\w+=)?[-+]?\d[\w.+-]*(?=\s|$)")


def label(col: str) -> str:
    return "fine-tuning accuracy FA (%)" if col.startswith("FA_") else LABELS.get(col, col)


# A column's name as a title says it: words, not the variable (`eps_share`, `lam`).
WORDS = {"std": "noise std", "rho": "radius rho", "lam": "lambda", "norm": "perturbation norm",
         "eps_share": "share of ||eps||²", "noise_share": "share of the noise's norm²",
         "applied_share": "share of the applied eps's norm²", "step": "step",
         "p": "harmful ratio p", "n": "samples n", "HS+": "HS + other"}


def short(col: str) -> str:
    return f"FA ({col[3:]})" if col.startswith("FA_") else WORDS.get(col, col)


def log_axis_if_doubling(ax: Axes, values, axis: str = "x") -> bool:
    """A log axis, ticked at the values themselves, where a swept parameter grows by factors (0.01,
    0.02, 0.04, 0.08): on a linear axis its first points crowd into one corner. True when applied."""
    values = sorted({float(v) for v in values if v == v})
    if len(values) < 3 or values[0] <= 0 or values[-1] / values[0] < 8:
        return False
    getattr(ax, f"set_{axis}scale")("log", base=2)
    getattr(ax, f"set_{axis}ticks")(values, [f"{v:g}" for v in values])
    getattr(ax, f"{axis}axis").set_minor_locator(plt.NullLocator())
    return True


def as_tuple(cols: str | Sequence[str]) -> tuple[str, ...]:
    return (cols,) if isinstance(cols, str) else tuple(cols)


def is_percent(col: str) -> bool:
    return col in PERCENT or col.startswith("FA_")


def axis_label(col: str, fa_from: float = 0.0) -> str:
    """The column's axis label; an FA axis that does not start at 0 says where it starts."""
    if not 0.0 <= fa_from < 100.0:
        raise ValueError(f"fa_from = {fa_from!r}: the FA axis must start in [0, 100) (0 unless a range is stated)")
    moved = col.startswith("FA_") and fa_from > 0
    return f"{label(col)}, axis from {fa_from:g}" if moved else label(col)


def fa_limits(ax: Axes, col: str, axis: str, fa_from: float = 0.0) -> None:
    """Start a percentage axis at 0 (an FA axis at `fa_from`): a bar or gap never looks bigger than it is."""
    if not is_percent(col):
        return
    low = fa_from if col.startswith("FA_") else 0.0
    get, put = (ax.get_ylim, ax.set_ylim) if axis == "y" else (ax.get_xlim, ax.set_xlim)
    put(low, min(low + max(get()[1] - low, 1.0) * 1.05, 105.0))  # headroom above the highest point


def display_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Typed sweep rows (label, method, variant, param, value) with the columns figures read: the
    display label as `model`, and each knob as a column of its own (a row with param 'rho' gets rho = value)."""
    if "model" not in df.columns and "label" in df.columns:
        df = df.assign(model=df["label"])
    if {"param", "value"} <= set(df.columns):
        for name in df["param"].dropna().unique():
            if name not in df.columns:
                df = df.assign(**{str(name): df["value"].where(df["param"] == name)})
    return df


def frame(data, columns: Iterable[str], what: str) -> pd.DataFrame:
    """`data` as a frame holding `columns`, or a ValueError naming what is missing and what is there."""
    df = display_rows(data if isinstance(data, pd.DataFrame) else pd.DataFrame(list(data)))
    if df.empty:
        raise ValueError(f"the {what} frame is empty: the {what} produced no rows (check its ratios, seeds or steps)")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"column {missing[0]!r} not in the {what} frame (has {list(df.columns)}): "
                         "pass a frame with it or name one of the columns it has")
    return df


def method_family(label: str) -> str:
    """The method a defense-sweep label names, parameters removed: 'panacea rho=1 (w+eps)' -> 'panacea (w+eps)'."""
    return " ".join(PARAM.sub(" ", str(label)).split())


def style_column(df: pd.DataFrame, label_col: str = "model") -> pd.DataFrame:
    """`df` with `_style`: the name each row's colour is looked up by (its method, else its label's family)."""
    names = style.style_names(df, df[label_col].map(method_family))
    return df.assign(_style=names.to_numpy())


def subplots(n: int, height: float = style.PANEL_HEIGHT) -> tuple[Figure, list[Axes]]:
    fig, axes = plt.subplots(1, n, figsize=(style.figure_width(n), height), squeeze=False, layout="constrained")
    return fig, list(axes[0])


def finish(ax: Axes, xlabel: str, ylabel: str, title: str) -> None:
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)


PROMPT_SHARES = ("HS", "refusal", "other", "HS+")  # shares of the n_harmful prompts a row scored
PROMPT_INTERVAL = "_prompt-interval"  # label of the error bars drawn from the prompts (underscore: no legend entry)


def seed_stats(df: pd.DataFrame, key: str, metric: str) -> pd.DataFrame:
    """Mean, std and number of scored seeds of `metric` per `key` value (std NaN for a single seed), and
    `n`, the prompts behind a share of harmful prompts where the rows say (for one seed's interval)."""
    stats = df.groupby(key, sort=True)[metric].agg(["mean", "std", "count"])
    if metric in PROMPT_SHARES and "n_harmful" in df.columns:
        stats["n"] = df.groupby(key, sort=True)["n_harmful"].max()
    return stats.dropna(subset=["mean"])


def wilson(percent: np.ndarray, n: np.ndarray, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """The 95% Wilson interval of a share of n prompts, in percent: (low, high). One seed has no spread
    over seeds, but its share of 100 prompts is still a sample: about ±10 points at 50%."""
    share = percent / 100.0
    centre = (share + z ** 2 / (2 * n)) / (1 + z ** 2 / n)
    half = z * np.sqrt(share * (1 - share) / n + z ** 2 / (4 * n ** 2)) / (1 + z ** 2 / n)
    return 100 * (centre - half), 100 * (centre + half)


def draw_series(ax: Axes, stats: pd.DataFrame, look: style.Style | str, name: str,
                linestyle: str | None = None) -> int:
    """One series (index x; columns mean, std, count) in its method's colour and marker.

    Spread (a ±1 std band, or error bars for short series) only at points with two seeds or more;
    a series of fewer than 3 points is markers without a line, since a line would imply a trend.
    A series sharing its style with one already in `ax` gets the next line style; without a line, an
    open marker (the method's shape first, then the next of `style.TWIN_MARKERS`); `linestyle` fixes
    the line style instead (a figure that keeps one style per role across panels). Returns the fewest
    seeds behind any of its points.
    """
    look = look if isinstance(look, style.Style) else style.method_style(look)
    x, mean = stats.index.to_numpy(dtype=float), stats["mean"].to_numpy(dtype=float)
    std, count = stats["std"].to_numpy(dtype=float), stats["count"].to_numpy()
    kin = f"{look.color} {look.marker}"  # series drawn in this style so far in `ax` carry it as their gid
    twins = [line for line in ax.lines if line.get_gid() == kin]
    few = len(x) < 3
    hollow = sum(line.get_linestyle() == "None" and line.get_markerfacecolor() == "white" for line in twins)
    shapes = [look.marker] + [m for m in style.TWIN_MARKERS if m != look.marker]
    marker = shapes[hollow % len(shapes)] if few and twins else look.marker
    ax.plot(x, mean, color=look.color, marker=marker, label=name, clip_on=False, gid=kin,
            markerfacecolor="white" if few and twins else look.color,  # no line to tell twins apart: open marker
            markevery=max(1, len(x) // MAX_MARKERS),  # a long log keeps a line, not a row of markers
            linestyle="none" if few else linestyle or style.LINESTYLES[len(twins) % len(style.LINESTYLES)])
    spread = (count >= 2) & np.isfinite(std)
    if "n" in stats.columns:  # one seed: the prompts' sampling interval instead of a spread over seeds
        n = stats["n"].to_numpy(dtype=float)
        single = (count == 1) & np.isfinite(n) & (n > 0)
        if single.any():
            low, high = wilson(mean[single], n[single])
            ax.errorbar(x[single], mean[single], yerr=[mean[single] - low, high - mean[single]], fmt="none",
                        ecolor=look.color, elinewidth=0.6, capsize=1.5, alpha=0.7, label=PROMPT_INTERVAL)
    if spread.any() and few:
        ax.errorbar(x[spread], mean[spread], yerr=std[spread], fmt="none", ecolor=look.color, elinewidth=0.8)
    elif spread.any():
        ax.fill_between(x, mean - np.where(spread, std, 0), mean + np.where(spread, std, 0), where=spread,
                        color=look.color, alpha=0.2, linewidth=0)
    return int(count.min())


class SeedCounts:
    """Seeds behind each legend entry, for the figure's one note ("mean ± 1 std over 3 seeds", "one seed").

    `spread=False` for figures that show means only; `note` fixes the note (a training log is one run).
    """

    def __init__(self, spread: bool = True, note: str | None = None):
        self.counts: dict[str, int] = {}
        self.spread, self.fixed = spread, note

    def add(self, name: str, n: int) -> None:
        self.counts[name] = min(self.counts.get(name, n), n)

    def mixed(self) -> bool:
        return min(self.counts.values(), default=1) == 1 < max(self.counts.values(), default=1)

    def note(self) -> str:
        if self.fixed is not None or not self.counts:
            return self.fixed or ""
        low, high = min(self.counts.values()), max(self.counts.values())
        what = "mean ± 1 std" if self.spread else "mean"
        if high == 1:
            return "one seed"
        if low == 1:
            return f"{what} where ≥ 2 seeds"
        return f"{what} over {low} seeds" if low == high else f"{what} over {low}-{high} seeds"

    def entry(self, name: str) -> str:
        return f"{name} (one seed)" if self.mixed() and self.counts.get(name) == 1 else name


def legend(fig: Figure, axes: Sequence[Axes], seeds: SeedCounts, context: str = "") -> None:
    """One legend for the whole figure, below the panels, titled with `context` and the seed note;
    with fewer than two entries that title becomes the figure's title instead."""
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(name, handle)
    bars = any(c.get_label() == PROMPT_INTERVAL for ax in axes for c in ax.containers)
    said = seeds.note()
    if bars:
        said = ("one seed; bars: 95% interval over its prompts" if said == "one seed"
                else f"{said}; one-seed bars: 95% interval over the prompts")
    note = " · ".join(part for part in (context, said) if part)
    if len(entries) < 2:
        if note:
            fig.suptitle(note)
        return
    labels = [seeds.entry(n) for n in entries]
    most = 2 if fig.get_figwidth() <= style.SINGLE_COLUMN else 4
    fig.legend(list(entries.values()), labels, loc="outside lower center", ncols=legend_columns(fig, labels, most),
               title=note or None, frameon=False)


def legend_columns(fig: Figure, labels: Sequence[str], most: int) -> int:
    """As many columns as the longest label lets fit across the figure: a legend wider than the
    figure is cut at both edges when saved. At 7 pt a character takes about 0.053 in; the handle and
    the spacing between columns about 0.6 in."""
    per_column = 0.055 * max(map(len, labels)) + 0.6
    return max(1, min(len(labels), most, int(fig.get_figwidth() // per_column)))
