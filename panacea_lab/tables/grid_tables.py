"""The real-model test grid as the README's tables, from the committed per-run summaries alone.

A reader checks a verdict by rebuilding its numbers: `panacea-lab tables
results/smollm2-rt` prints the level table (mean ± std over seeds, AdvBench / StrongREJECT) and the
paired table (each defense minus the undefended model of the same seed, then mean ± std), and a test
keeps the README's copies equal to what the committed files give.

Which models the tables hold, their labels and what each is paired with come from the defense
registry: a defense registered and present in the grid shows up without a change here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from panacea_lab import defenses
from panacea_lab.tables.export_rows import read_rows
from panacea_lab.config import POST
from panacea_lab.defenses.registry import UNDEFENDED

SETTING = "panacea_setting"  # the grid files' column naming a trained defense's setting (e.g. "chosen")
SAME_RUN = ["method", "variant", "value", "p", "seed", "harmful_set", SETTING]
SETS = ("test", "strongreject")  # AdvBench's held-out prompts, then the second test set
# the post-fine-tuning defenses the paired table lists, by the run they transform (a record's
# `finetune_adapter`): those on a fresh adapter, whose attacked model differs from the grid's main one,
# are compared seed by seed with their own; a transform of the attacked run itself (random noise)
# is read off the level table
PAIRED_ADAPTERS = ("fresh",)


def tuned() -> tuple[str, ...]:
    """The methods whose rows belong to one trained-defense setting: each trained defense read through
    a post-fine-tuning half, and its controls."""
    return tuple(dict.fromkeys(n for t in defenses.trained_with_half() for n in (t, *defenses.get(t).controls)))


def read_grid(folder: str | Path) -> pd.DataFrame | None:
    """Every `grid_p*.csv` in `folder` as one frame; a run written by two files (one per seed, then
    the whole grid; a setting re-run beside another) counts once, the later file's. None when there is
    none."""
    files = sorted(Path(folder).glob("grid_p*.csv"))
    if not files:
        return None
    grid = pd.concat([read_rows(f) for f in files], ignore_index=True)
    grid.loc[~grid["method"].isin(tuned()), [SETTING, "lam"]] = None
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


@dataclass(frozen=True)
class Model:
    """One model of the tables: its level-table label and rows, and how the paired table shows it."""

    label: str
    selector: dict
    paired: str = ""  # its label in the paired table ('' : the level table only)
    base: dict | None = None  # the undefended model it is paired with
    control: dict | None = None  # its same-norm control (a trained defense's)


def _undefended(adapter: str) -> dict:
    """The undefended model a run of `adapter` ("continue" / "fresh") is compared with."""
    return {"method": UNDEFENDED, "variant": "w" if adapter == "continue" else adapter}


def _setting_label(rows: pd.DataFrame, name: str, param: str) -> str:
    first = rows.iloc[0]
    knobs = f"{param} {first['value']:g}"
    if "lam" in rows and pd.notna(first["lam"]):
        knobs += f", lambda {first['lam']:g}"
    if "h_const" in rows and rows["h_const"].fillna(False).astype(bool).any():
        knobs += ", h_const"
    return f"{name} ({knobs})"


def _post_models(grid: pd.DataFrame, name: str) -> list[Model]:
    """A post-fine-tuning defense, one model per value of its param. A knob of one word reads after the
    label ("noise std 0.08"); one of several is bracketed, so the row still reads as one name
    ("Antidote (dense ratio 0.1)")."""
    record = defenses.get(name)
    base = _undefended(record.finetune_adapter)
    paired = record.finetune_adapter in PAIRED_ADAPTERS
    values = sorted(grid.loc[grid["method"].eq(name), "value"].dropna().unique()) if record.param else []
    if not values:
        return [Model(record.label, {"method": name}, record.label if paired else "", base)]
    out = []
    for value in values:
        knob = f"{record.param.replace('_', ' ')} {value:g}"
        shown = f"{record.label} ({knob})" if "_" in record.param else f"{record.label} {knob}"
        out.append(Model(shown, {"method": name, "value": value}, shown if paired else "", base))
    return out


def _trained_models(grid: pd.DataFrame, name: str) -> list[Model]:
    """Each setting of a trained defense read through its post-fine-tuning half, then its controls;
    the defense is paired with the undefended model and with its first control."""
    record, out = defenses.get(name), []
    base = _undefended(record.finetune_adapter)
    for setting in dict.fromkeys(grid.loc[grid["method"].eq(name), SETTING].dropna()):
        selector = {"method": name, "variant": f"w+{record.post_half}", SETTING: setting}
        knobs = _setting_label(select(grid, selector), setting, record.param)
        controls = [{"method": c, SETTING: setting} for c in record.controls]
        out.append(Model(f"{defenses.label(record.post_half)}, {knobs}", selector, f"{record.label} {knobs}", base,
                         controls[0] if controls else None))
        for control, sel in zip(record.controls, controls):
            shown = f"{defenses.printed_label(control)} ({setting})"
            out.append(Model(shown, sel, shown, base))
    return out


def _models(grid: pd.DataFrame) -> list[Model]:
    """Every model in the grid, in reading order: the undefended model; the post-fine-tuning defenses
    of the attacked run; each trained defense's settings with their controls; then per other adapter
    (a fresh LoRA on the merged alignment) its undefended model and the defenses scored on it.
    Defenses in registry order."""
    present, by_adapter = set(grid["method"]), {}
    for name in defenses.names(POST, controls=False):
        if name in present:
            by_adapter.setdefault(defenses.get(name).finetune_adapter, []).append(name)
    out = [Model("attacked", _undefended("continue"))]
    for name in by_adapter.pop("continue", []):
        out += _post_models(grid, name)
    for name in defenses.trained_with_half():
        if name in present:
            out += _trained_models(grid, name)
    for adapter, names in by_adapter.items():
        out.append(Model(f"attacked, {adapter} adapter", _undefended(adapter)))
        for name in names:
            out += _post_models(grid, name)
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
        for model in _models(at_p):
            test, second = (select(at_p, model.selector, harmful_set=s) for s in SETS)
            if test.empty:
                continue
            pair = [" / ".join(x for x in (spread(test[m]), spread(second[m])) if x) for m in ("HS", "refusal", "other")]
            plus = " / ".join(x for x in (spread(test["HS+"]), spread(second["HS+"])) if x)
            lines.append(f"| {p:g} | {model.label} | {len(test)} | "
                         + " | ".join([*pair, spread(test[f"FA_{task}"]), plus]) + " |")
    return "\n".join(lines)


def _paired(defended: pd.DataFrame, base: pd.DataFrame, metric: str) -> pd.Series:
    return (defended[metric] - base[metric]).dropna()  # aligned on seed: only seeds both ran


def _with_seeds(diff: pd.Series) -> str:
    if diff.empty:
        return ""
    return f"{spread(diff)} ({', '.join(f'{v:+.0f}' for v in diff)})" if len(diff) > 1 else f"{diff.iloc[0]:+.0f}"


def paired_table(grid: pd.DataFrame, task: str = "sentiment") -> str:
    """Markdown: each defense minus the undefended model of the same seed (a trained defense: also minus
    its same-norm control, and the control itself minus the undefended model: what a perturbation of
    the defense's norm does without its direction), mean ± std with the per-seed differences in brackets."""
    lines = ["| p | defense | seeds | HS vs none, AdvBench | HS vs none, StrongREJECT | HS vs same-norm control "
             "(AdvBench / StrongREJECT) | refusal vs none (AdvBench) | other vs none (AdvBench) | FA vs none |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in sorted(grid["p"].unique()):
        at_p = grid[grid["p"].eq(p)]
        for model in (m for m in _models(at_p) if m.paired):
            test, base = select(at_p, model.selector, harmful_set="test"), select(at_p, model.base, harmful_set="test")
            if test.empty:
                continue
            second = _paired(select(at_p, model.selector, harmful_set="strongreject"),
                             select(at_p, model.base, harmful_set="strongreject"), "HS")
            controls = ""
            if model.control is not None:
                controls = " / ".join(spread(_paired(select(at_p, model.selector, harmful_set=s),
                                                     select(at_p, model.control, harmful_set=s), "HS")) for s in SETS)
            cells = [_with_seeds(_paired(test, base, "HS")), _with_seeds(second), controls,
                     spread(_paired(test, base, "refusal")), spread(_paired(test, base, "other")),
                     _with_seeds(_paired(test, base, f"FA_{task}"))]
            lines.append(f"| {p:g} | {model.paired} | {len(test)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tables_text(folder) -> str | None:
    """The level and paired tables of the grid files in `folder` as markdown (`panacea-lab tables`), or
    None when it holds none."""
    grid = read_grid(folder)
    return None if grid is None else f"{level_table(grid)}\n\n{paired_table(grid)}"
