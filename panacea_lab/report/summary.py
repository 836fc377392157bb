"""One results file as a markdown table: its rows grouped by everything but the seed, each metric as
mean ± sample std over the seeds, so a reader sees a file's content without opening the CSV.

Timings (`train_seconds`) are left out on purpose: they belong to the run store, not to a result."""
from __future__ import annotations

import pandas as pd

PERCENT = ("HS", "refusal", "other", "HS+")  # shares of 100 (or 200) answers: one decimal
SCALARS = ("nll", "eps_share", "noise_share", "norm", "eps_norm", "adapter_norm", "rho_frac", "lambda_active",
           "median_h_eps", "last20_h_eps")
DROPPED = ("seed", "train_seconds", "label", "run")  # per-seed, timing, or display-only columns
MAX_ROWS = 40  # a longer summary is cut, with a line saying how many groups it left out


def metric_columns(df: pd.DataFrame) -> list[str]:
    percent = [c for c in df.columns if c in PERCENT or c.startswith("FA_")]
    return percent + [c for c in df.columns if c in SCALARS]


def _cell(values: pd.Series, column: str) -> str:
    values = values.dropna().astype(float)
    if values.empty:
        return ""
    fmt = (lambda v: f"{v:.1f}") if column in PERCENT or column.startswith("FA_") else (lambda v: f"{v:.4g}")
    if len(values) == 1:
        return fmt(values.iloc[0])
    return f"{fmt(values.mean())} ± {fmt(values.std())}"


def _key(value) -> str:
    if isinstance(value, float):
        return "" if pd.isna(value) else f"{value:g}"
    return "" if value is None else str(value)


def summary_table(df: pd.DataFrame, max_rows: int = MAX_ROWS) -> str:
    """Markdown: one line per group of rows that differ only by seed, in the file's order."""
    metrics = metric_columns(df)
    keys = [c for c in df.columns if c not in metrics and c not in DROPPED]
    keys = [c for c in keys if df[c].notna().any() and df[c].nunique(dropna=False) > 1] or keys[:1]
    seeds = df["seed"] if "seed" in df.columns else pd.Series(0, index=df.index)
    grouped = df.assign(_seed=seeds).groupby([df[c].map(_key) for c in keys], sort=False)
    lines = ["| " + " | ".join([*keys, "seeds", *metrics]) + " |", "|" + "---|" * (len(keys) + 1 + len(metrics))]
    for i, (group, rows) in enumerate(grouped):
        if i == max_rows:
            lines.append(f"\n({grouped.ngroups - max_rows} more groups in the file)")
            break
        group = group if isinstance(group, tuple) else (group,)
        cells = [*group, str(rows["_seed"].nunique()), *(_cell(rows[m], m) for m in metrics)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def eps_share_tables(df: pd.DataFrame) -> str:
    """An eps-shares file (one row per layer and module) as two short tables: per layer, per module."""
    shares = [c for c in ("eps_share", "noise_share") if c in df.columns]
    out = []
    for by in ("layer", "module"):
        total = df.groupby(by, sort=True)[shares].sum()
        lines = [f"| {by} | " + " | ".join(shares) + " |", "|---|" + "---|" * len(shares)]
        lines += [f"| {idx} | " + " | ".join(f"{total.at[idx, s]:.3f}" for s in shares) + " |" for idx in total.index]
        out.append("\n".join(lines))
    return "\n\n".join(out)


def trajectory_table(df: pd.DataFrame, points: int = 6) -> str:
    """A trajectory file (scored every k steps) at a few evenly spaced steps, mean ± std over seeds."""
    steps = sorted(df["step"].unique())
    picked = sorted({steps[round(i * (len(steps) - 1) / (points - 1))] for i in range(points)})
    return summary_table(df[df["step"].isin(picked)].sort_values(["method", "step"], kind="stable"))
