"""The verdict table: each claim of `results/verdict.yaml` tested on the committed results files, as a
paired difference per ratio with its 95% interval and words chosen by rule (`intervals.judge`), so
the front page can say no more than its files.

The claims, their rows and their scope are data; this module knows no method by name."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from panacea_lab.config import ConfigError
from panacea_lab.report.intervals import Paired, judge
from panacea_lab.tables.export_rows import read_rows

PAIR_ON = ("p", "seed", "harmful_set")  # a treated row meets the undefended row of the same run and test set


@dataclass(frozen=True)
class Cell:
    """One claim on one model: the paired difference at each ratio, and the files behind it."""

    by_ratio: dict  # p -> Paired
    sources: dict  # p -> the files holding that ratio's rows


def _files(results: Path, patterns) -> list[Path]:
    out = []
    for pattern in patterns:
        found = sorted(results.glob(f"{pattern}.csv"))
        if not found:
            raise ConfigError(f"verdict: {pattern!r} matches no file under {results}")
        out += found
    return out


def _select(rows: pd.DataFrame, selector: dict) -> pd.DataFrame:
    keep = pd.Series(True, index=rows.index)
    for column, value in selector.items():
        if column not in rows.columns:
            raise ConfigError(f"verdict: the rows have no column {column!r} (a selector names it)")
        keep &= rows[column].eq(value)
    return rows[keep]


def _metric(rows: pd.DataFrame, metric: str) -> str:
    if metric != "FA":
        return metric
    tasks = [c for c in rows.columns if c.startswith("FA_") and rows[c].notna().any()]
    if len(tasks) != 1:
        raise ConfigError(f"verdict: metric FA needs one task's FA column, found {tasks}")
    return tasks[0]


def paired_cell(results: Path, claim: dict, cell: dict) -> Cell:
    files = _files(results, cell["files"])
    rows = pd.concat([read_rows(f).assign(_file=str(f)) for f in files], ignore_index=True)
    rows = _select(rows, cell.get("where", {}))
    if "harmful_set" not in rows.columns:
        rows = rows.assign(harmful_set="test")
    treated = _select(rows, {**claim["treated"], **cell.get("treated", {})})
    reference = _select(rows, {**claim["reference"], **cell.get("reference", {})})
    metric = _metric(rows, claim["metric"])
    for name, part in (("treated", treated), ("reference", reference)):
        if part.duplicated(list(PAIR_ON)).any() or part.empty:
            raise ConfigError(f"verdict: {claim['claim']!r}: the {name} selector must match one row per "
                              f"ratio, seed and test set in {[f.name for f in files]}, matched {len(part)}")
    both = treated.merge(reference, on=list(PAIR_ON), suffixes=("", "_ref"))
    both = both.assign(diff=both[metric] - both[f"{metric}_ref"]).dropna(subset=["diff"])
    by_ratio = {p: Paired(tuple(at.sort_values("seed")["diff"])) for p, at in both.groupby("p", sort=True)}
    sources = {p: tuple(Path(f) for f in dict.fromkeys(at["_file"])) for p, at in treated.groupby("p", sort=True)}
    return Cell(by_ratio, sources)


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def cells(results: Path, spec: dict) -> list[dict]:
    """Every claim with its computed cells: {column name: Cell}."""
    return [{**claim, "computed": {col: paired_cell(results, claim, cell) for col, cell in claim["cells"].items()}}
            for claim in spec["claims"]]


def _cell_text(cell: Cell, link) -> str:
    return "<br>".join(f"[p {p:g}]({link(cell.sources[p])}): {paired.text()}" for p, paired in cell.by_ratio.items())


def _verdict_text(claim: dict, spec: dict) -> str:
    """Per column, the ratios grouped by the words their intervals earn."""
    parts = []
    for col, cell in claim["computed"].items():
        words: dict[str, list[str]] = {}
        for p, paired in cell.by_ratio.items():
            said = judge(paired, claim["expect"], claim.get("size"), spec.get("margin", 0.0))
            words.setdefault(said, []).append(f"{p:g}")
        said = "; ".join(f"at p {', '.join(ps)}: {w}" for w, ps in words.items())
        parts.append(f"{spec['columns'][col]['title']}: {said}")
    return "<br>".join(parts)


def verdict_table(claims: list[dict], spec: dict, link) -> str:
    """Markdown: claim | paper | one column per model | verdict. `link(files)` gives the address of
    the file (or page) behind a cell's ratio."""
    columns = list(spec["columns"])
    head = ["claim", "paper", *(spec["columns"][c]["title"] for c in columns), "verdict (95% interval, by rule)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for claim in claims:
        row = [claim["claim"], claim["paper"],
               *(_cell_text(claim["computed"][c], link) if c in claim["computed"] else "not run" for c in columns),
               _verdict_text(claim, spec)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def scope_lines(spec: dict) -> str:
    return "\n".join(f"- **{c['title']}**: {' '.join(c['scope'].split())}." for c in spec["columns"].values())
