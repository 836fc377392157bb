"""The real-model test grid as the README's tables, from the committed per-run summaries alone.

A reader checks a verdict by rebuilding its numbers: `python -m panacea_lab.analysis.grid_tables
results/smollm2-rt` prints the level table (mean ± std over seeds, AdvBench / StrongREJECT) and the
paired table (each defense minus the undefended model of the same seed, then mean ± std), and a test
keeps the README's copies equal to what the committed files give.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from panacea_lab.analysis.export_rows import read_rows

TUNED = ("panacea", "random_direction")  # the rows that belong to one named Panacea setting
SAME_RUN = ["method", "variant", "value", "p", "seed", "harmful_set", "panacea_setting"]
SETS = ("test", "strongreject")  # AdvBench's held-out prompts, then the second test set


def read_grid(folder: str | Path) -> pd.DataFrame | None:
    """Every `grid_p*.csv` in `folder` as one frame; a run written by two files (one per seed, then
    the whole grid; a setting re-run beside another) counts once, the later file's. None when there is
    none."""
    files = sorted(Path(folder).glob("grid_p*.csv"))
    if not files:
        return None
    grid = pd.concat([read_rows(f) for f in files], ignore_index=True)
    grid.loc[~grid["method"].isin(TUNED), ["panacea_setting", "lam"]] = None
    return grid.drop_duplicates(SAME_RUN, keep="last", ignore_index=True)


def spread(values, digits: int = 1, one_digits: int = 0) -> str:
    """`mean ± std` over seeds (sample std) to `digits` decimals, or the one value to `one_digits`
    (a percentage of 100 prompts is a whole number); '' for none."""
    values = pd.Series(values, dtype=float).dropna()
    if values.empty:
        return ""
    if len(values) == 1:
        return f"{values.iloc[0]:.{one_digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"


def _setting_label(rows: pd.DataFrame, name: str) -> str:
    first = rows.iloc[0]
    knobs = f"rho {first['value']:g}, lambda {first['lam']:g}"
    if "h_const" in rows and rows["h_const"].fillna(False).astype(bool).any():
        knobs += ", h_const"
    return f"{name} ({knobs})"


def _identities(grid: pd.DataFrame) -> list[tuple[str, dict]]:
    """(label, selector) of every model in the grid, in reading order: the undefended model, noise,
    each Panacea setting with its same-norm control, then the fresh-adapter attack and Antidote."""
    out = [("attacked", {"method": "none", "variant": "w"})]
    for std in sorted(grid.loc[grid["method"].eq("noise"), "value"].unique()):
        out.append((f"noise std {std:g}", {"method": "noise", "value": std}))
    for name in dict.fromkeys(grid.loc[grid["method"].eq("panacea"), "panacea_setting"].dropna()):
        eps = select(grid, {"method": "panacea", "variant": "w+eps", "panacea_setting": name})
        out.append((f"Panacea w + eps, {_setting_label(eps, name)}",
                    {"method": "panacea", "variant": "w+eps", "panacea_setting": name}))
        out.append((f"same-norm random direction ({name})",
                    {"method": "random_direction", "panacea_setting": name}))
    if grid["method"].eq("antidote").any():
        out.append(("attacked, fresh adapter", {"method": "none", "variant": "fresh"}))
        dense = grid.loc[grid["method"].eq("antidote"), "label"].iloc[0].split("=")[-1]
        out.append((f"Antidote (dense ratio {dense})", {"method": "antidote"}))
    return out


def select(grid: pd.DataFrame, selector: dict, **more) -> pd.DataFrame:
    """The rows matching every column = value of `selector` and `more`, one per seed, seed-indexed."""
    keep = pd.Series(True, index=grid.index)
    for column, value in {**selector, **more}.items():
        keep &= grid[column].eq(value)
    return grid[keep].set_index("seed").sort_index()


def level_table(grid: pd.DataFrame, task: str = "sentiment") -> str:
    """Markdown: per ratio and model, mean ± std of HS, refusal, other and HS+ on AdvBench / the
    second test set, and the task's FA (scored on the test split only)."""
    lines = ["| p | model | seeds | HS | refusal | other | FA | HS+ |", "|---|---|---|---|---|---|---|---|"]
    for p in sorted(grid["p"].unique()):
        at_p = grid[grid["p"].eq(p)]
        for label, selector in _identities(at_p):
            test, second = (select(at_p, selector, harmful_set=s) for s in SETS)
            if test.empty:
                continue
            pair = [" / ".join(x for x in (spread(test[m]), spread(second[m])) if x) for m in ("HS", "refusal", "other")]
            plus = " / ".join(x for x in (spread(test["HS+"]), spread(second["HS+"])) if x)
            lines.append(f"| {p:g} | {label} | {len(test)} | " + " | ".join([*pair, spread(test[f"FA_{task}"]), plus]) + " |")
    return "\n".join(lines)


def _paired(defended: pd.DataFrame, base: pd.DataFrame, metric: str) -> pd.Series:
    return (defended[metric] - base[metric]).dropna()  # aligned on seed: only seeds both ran


def _with_seeds(diff: pd.Series) -> str:
    if diff.empty:
        return ""
    return f"{spread(diff)} ({', '.join(f'{v:+.0f}' for v in diff)})" if len(diff) > 1 else f"{diff.iloc[0]:+.0f}"


def paired_table(grid: pd.DataFrame, task: str = "sentiment") -> str:
    """Markdown: each defense minus the undefended model of the same seed (Panacea: also minus its
    same-norm control, and the control itself minus the undefended model: what a perturbation of eps's
    norm does without eps's direction), mean ± std with the per-seed differences in brackets."""
    lines = ["| p | defense | seeds | HS vs none, AdvBench | HS vs none, StrongREJECT | HS vs same-norm control "
             "(AdvBench / StrongREJECT) | refusal vs none (AdvBench) | other vs none (AdvBench) | FA vs none |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in sorted(grid["p"].unique()):
        at_p = grid[grid["p"].eq(p)]
        labels = dict(_identities(at_p))
        defenses = [(label, sel) for label, sel in labels.items()
                    if sel.get("variant") == "w+eps" or sel["method"] == "random_direction"]
        defenses += [(label, sel) for label, sel in labels.items() if sel["method"] == "antidote"]
        for label, selector in defenses:
            base_sel = {"method": "none", "variant": "fresh" if selector["method"] == "antidote" else "w"}
            control_sel = {"method": "random_direction", "panacea_setting": selector.get("panacea_setting")}
            test, base = select(at_p, selector, harmful_set="test"), select(at_p, base_sel, harmful_set="test")
            if test.empty:
                continue
            second = _paired(select(at_p, selector, harmful_set="strongreject"),
                             select(at_p, base_sel, harmful_set="strongreject"), "HS")
            controls = ""
            if selector["method"] == "panacea":
                controls = " / ".join(spread(_paired(select(at_p, selector, harmful_set=s),
                                                     select(at_p, control_sel, harmful_set=s), "HS")) for s in SETS)
            cells = [_with_seeds(_paired(test, base, "HS")), _with_seeds(second), controls,
                     spread(_paired(test, base, "refusal")), spread(_paired(test, base, "other")),
                     _with_seeds(_paired(test, base, f"FA_{task}"))]
            lines.append(f"| {p:g} | {label.replace('Panacea w + eps, ', 'Panacea ')} | {len(test)} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    folder = argv[0] if argv else "results/smollm2-rt"
    grid = read_grid(folder)
    if grid is None:
        print(f"no grid_p*.csv in {folder}: run notebook 06 with a grid parameter set first", file=sys.stderr)
        return 1
    print(level_table(grid), paired_table(grid), sep="\n\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
