"""Shared file reading for the adapters: one place for missing files, empty data and formats.

Why a module of its own: every upstream source is a CSV, a JSON array, JSON lines (maybe gzipped) or
a parquet export, and every reader must fail the same way: a missing file names what provides it,
an empty one names the file. Nothing here touches the network.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from typing import Any, Iterable

FETCH_HINT = "run `panacea-lab fetch-data` (or `make fetch-data`) to extract it from its package (data/README.md)"
PAPER_HINT = ("the paper's datasets are never downloaded by panacea-lab: data/README.md says where to get this "
              "file and where to place it")


def require(path: str | Path, hint: str) -> Path:
    """The path as a Path if it exists; else FileNotFoundError saying what provides it."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{p} not found: {hint}")
    return p


def nonempty(rows: list, path: str | Path, what: str = "usable rows") -> list:
    if not rows:
        raise ValueError(f"{path}: no {what} (empty or filtered to nothing)")
    return rows


def read_text(path: Path) -> str:
    """UTF-8 text, gunzipped when the name ends in .gz."""
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
            return f.read()
    return path.read_text(encoding="utf-8")


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_records(path: Path) -> list[dict[str, Any]]:
    """Rows of a .json (array, or the JSON lines `Dataset.to_json` writes), .jsonl(.gz) or .parquet file."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pandas as pd  # pyarrow comes with `datasets`; pandas names it if it is missing

        return pd.read_parquet(path).to_dict("records")
    text = read_text(path)
    if ".jsonl" in name:
        return _json_lines(text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return _json_lines(text)  # a .json file holding JSON lines
    if isinstance(data, dict):  # one record, or {"data": [...]}-style wrappers
        data = data.get("data", data.get("examples", [data]))
    return list(data)


def _skip_comment_lines(text: str) -> str:
    """Drop leading `# ...` lines (PyRIT's CSVs start with `# dataset_version=1.2`)."""
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines) and lines[i].startswith("#"):
        i += 1
    return "".join(lines[i:])


def read_csv(path: Path, header: bool = True, delimiter: str = ",", quoting: int = csv.QUOTE_MINIMAL):
    """Rows of a CSV/TSV: dicts by header, or lists when `header` is False. Quoted newlines survive."""
    text = _skip_comment_lines(read_text(path))
    stream = io.StringIO(text, newline="")
    if header:
        return list(csv.DictReader(stream, delimiter=delimiter, quoting=quoting))
    return [row for row in csv.reader(stream, delimiter=delimiter, quoting=quoting) if row]


def dedupe(items: Iterable, key) -> list:
    """Keep the first item of each key, in order."""
    seen, out = set(), []
    for item in items:
        k = key(item)
        if k not in seen:
            seen.add(k)
            out.append(item)
    return out


def columns(rows: list[dict], needed: tuple[str, ...], path: Path) -> None:
    """A clear error when a file lacks the columns of its upstream format."""
    if rows:
        missing = [c for c in needed if c not in rows[0]]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {sorted(rows[0])}")
