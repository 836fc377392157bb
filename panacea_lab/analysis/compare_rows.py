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

RUN = ["method", "variant", "value", "p", "seed", "harmful_set", "panacea_setting"]  # one evaluated model
METRICS = ["HS", "refusal", "other", "HS+", "norm"]


def compare(committed: pd.DataFrame, rerun: pd.DataFrame) -> dict:
    """{"matched": n, "missing": runs only `committed` holds, "added": runs only `rerun` holds,
    "differs": {metric: runs whose values differ}} over the run columns both frames carry; FA_*
    columns count as metrics. NaN equals NaN (no FA on a second test set)."""
    keys = [k for k in RUN if k in committed and k in rerun]
    metrics = [m for m in committed if m in rerun and (m in METRICS or m.startswith("FA_"))]
    both = committed.merge(rerun, on=keys, how="outer", suffixes=("_a", "_b"), indicator=True)
    matched = both[both["_merge"].eq("both")]
    differs = {}
    for m in metrics:
        a, b = matched[f"{m}_a"], matched[f"{m}_b"]
        if n := int((~(a.eq(b) | (a.isna() & b.isna()))).sum()):
            differs[m] = n
    return {"matched": len(matched), "missing": int(both["_merge"].eq("left_only").sum()),
            "added": int(both["_merge"].eq("right_only").sum()), "differs": differs}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    subset = "--subset" in argv
    files = [a for a in argv if a != "--subset"]
    if len(files) != 2 or not all(Path(a).is_file() for a in files):
        print("usage: python -m panacea_lab.analysis.compare_rows COMMITTED.csv RERUN.csv [--subset] "
              "(two summary files)", file=sys.stderr)
        return 2
    result = compare(read_rows(files[0]), read_rows(files[1]))
    print(result)
    return 1 if (result["missing"] and not subset) or result["differs"] or not result["matched"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
