"""Two summary files of the same runs, compared row by row: a rerun (from an empty run store, on
another machine, after a refactor) reproduces a committed file when every run both files hold has
the same metrics and none of the committed runs is missing.

`python -m panacea_lab.analysis.compare_rows COMMITTED RERUN [--subset]` prints what differs and
exits 1 when anything does (`--subset`: the rerun covers only some of the committed runs, so runs it
lacks do not count).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from panacea_lab.analysis.export_rows import read_rows
from panacea_lab.analysis.grid_tables import SAME_RUN  # the columns that name one evaluated model

METRICS = ["HS", "refusal", "other", "HS+", "norm"]


def compare(committed: pd.DataFrame, rerun: pd.DataFrame) -> dict:
    """{"matched": n, "missing": runs only `committed` holds, "added": runs only `rerun` holds,
    "lacks": committed metrics the rerun has no column for, "differs": {metric: runs whose values
    differ}}; FA_* columns count as metrics, NaN equals NaN (no FA on a second test set). A ValueError
    when the rerun lacks a run column of the committed file or either file holds a run twice."""
    keys = [k for k in SAME_RUN if k in committed]
    if absent := [k for k in keys if k not in rerun]:
        raise ValueError(f"the rerun has no {absent} column: it cannot be matched run by run")
    for name, frame in (("committed", committed), ("rerun", rerun)):
        if frame.duplicated(keys).any():
            raise ValueError(f"the {name} file holds a run twice (same {keys})")
    metrics = [m for m in committed if m in METRICS or m.startswith("FA_")]
    both = committed.merge(rerun, on=keys, how="outer", suffixes=("_a", "_b"), indicator=True)
    matched = both[both["_merge"].eq("both")]
    lacks = [m for m in metrics if m not in rerun]
    metrics = [m for m in metrics if m in rerun]
    differs = {}
    for m in metrics:
        a, b = matched[f"{m}_a"], matched[f"{m}_b"]
        if n := int((~(a.eq(b) | (a.isna() & b.isna()))).sum()):
            differs[m] = n
    return {"matched": len(matched), "missing": int(both["_merge"].eq("left_only").sum()),
            "added": int(both["_merge"].eq("right_only").sum()), "lacks": lacks, "differs": differs}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    subset = "--subset" in argv
    files = [a for a in argv if a != "--subset"]
    if len(files) != 2 or not all(Path(a).is_file() for a in files):
        print("usage: python -m panacea_lab.analysis.compare_rows COMMITTED.csv RERUN.csv [--subset] "
              "(two summary files)", file=sys.stderr)
        return 2
    try:
        result = compare(read_rows(files[0]), read_rows(files[1]))
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    print(result)
    failed = (result["missing"] and not subset) or result["lacks"] or result["differs"] or not result["matched"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
