"""Two summary files of the same runs, compared row by row: a rerun (from an empty run store, on
another machine, after a refactor) reproduces a committed file when every run both files hold has
the same metrics and none of the committed runs is missing.

`panacea-lab compare-rows COMMITTED RERUN [--subset]` prints what differs and exits 1 when
anything does (`--subset`: the rerun covers only some of the committed runs, so runs it
lacks do not count).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from panacea_lab.tables.export_rows import read_rows
from panacea_lab.tables.grid_tables import SAME_RUN  # the columns that name one evaluated model

METRICS = ["HS", "refusal", "other", "HS+", "norm"]


def _close(a: pd.Series, b: pd.Series) -> pd.Series:
    """Equal numbers, up to float noise (a relative 1e-6: a norm's eighth digit moves between library
    versions; a percentage of 100 prompts moves by 1); text compared exactly."""
    num_a, num_b = pd.to_numeric(a, errors="coerce"), pd.to_numeric(b, errors="coerce")
    both = num_a.notna() & num_b.notna()
    close = (num_a - num_b).abs() <= 1e-6 * num_b.abs().clip(lower=1e-3)
    return (both & close) | (~both & a.astype(str).eq(b.astype(str)))


def _typed(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Key columns as numbers where they hold numbers (a file read back has NaN where a fresh frame has
    None), so the two sides merge on equal values."""
    out = frame.copy()
    for k in keys:
        try:
            out[k] = pd.to_numeric(out[k])
        except (ValueError, TypeError):
            out[k] = out[k].astype(object).where(out[k].notna(), None)
    return out


def compare(committed: pd.DataFrame, rerun: pd.DataFrame, keys=None, metrics=None) -> dict:
    """{"matched": n, "missing": runs only `committed` holds, "added": runs only `rerun` holds,
    "lacks": committed metrics the rerun has no column for, "differs": {metric: runs whose values
    differ}}; FA_* columns count as metrics, NaN equals NaN (no FA on a second test set). A ValueError
    when the rerun lacks a run column of the committed file or either file holds a run twice."""
    keys = [k for k in (keys or SAME_RUN) if k in committed]
    unset = [k for k in keys if k not in rerun and committed[k].isna().all()]  # a key the rows leave empty
    rerun = rerun.assign(**{k: float("nan") for k in unset}) if unset else rerun
    if absent := [k for k in keys if k not in rerun]:
        raise ValueError(f"the rerun has no {absent} column: it cannot be matched run by run")
    committed, rerun = _typed(committed, keys), _typed(rerun, keys)
    for name, frame in (("committed", committed), ("rerun", rerun)):
        if frame.duplicated(keys).any():
            raise ValueError(f"the {name} file holds a run twice (same {keys})")
    metrics = [m for m in committed if m in (metrics or METRICS) or (metrics is None and m.startswith("FA_"))]
    both = committed.merge(rerun, on=keys, how="outer", suffixes=("_a", "_b"), indicator=True)
    matched = both[both["_merge"].eq("both")]
    lacks = [m for m in metrics if m not in rerun]
    metrics = [m for m in metrics if m in rerun]
    differs = {}
    for m in metrics:
        a, b = matched[f"{m}_a"], matched[f"{m}_b"]
        if n := int((~(_close(a, b) | (a.isna() & b.isna()))).sum()):
            differs[m] = n
    return {"matched": len(matched), "missing": int(both["_merge"].eq("left_only").sum()),
            "added": int(both["_merge"].eq("right_only").sum()), "lacks": lacks, "differs": differs}


def check_files(committed: str | Path, rerun: str | Path, subset: bool = False) -> tuple[int, str]:
    """(exit status, what to print) for `panacea-lab compare-rows`: 0 when the rerun reproduces the
    committed file (every committed run, unless `subset`), 1 when it does not, 2 when the files cannot
    be matched run by run."""
    try:
        result = compare(read_rows(committed), read_rows(rerun))
    except ValueError as error:
        return 2, str(error)
    failed = (result["missing"] and not subset) or result["lacks"] or result["differs"] or not result["matched"]
    return (1 if failed else 0), str(result)
