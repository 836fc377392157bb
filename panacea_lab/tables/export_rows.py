"""Sweep rows as a machine-readable file: JSON or CSV by extension, one record per evaluation.

Schema (docs/pipeline.md, "Results as data"): label, method, variant, param, value, p, seed, HS,
refusal, other, FA_<task>; what the numbers were scored on: base_model, judge, split, n_harmful (the
number of harmful prompts behind HS, refusal and other); then any extra columns of the sweep (norm,
preset, ...). Timings are left out (they stay in the run store). JSON wraps the records with the
provenance of the run (versions, git hash, command); CSV carries the same provenance in `#`
comment lines before the header.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import pandas as pd

from panacea_lab.config import TIMING_COLUMNS, ConfigError
from panacea_lab.training.store import provenance

FORMATS = (".json", ".csv")


def check_output_path(path: str | Path, name: str = "output") -> Path:
    """The output path, or a ConfigError naming what to fix (wrong extension, missing folder)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{name} = {str(path)!r}: that is a folder; name a file inside it")
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(f"{name} = {str(path)!r}: end the name with .json or .csv")
    if not path.parent.is_dir():
        raise ConfigError(f"{name} = {str(path)!r}: the folder {str(path.parent)!r} does not exist; create it first")
    return path


def _clean(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


def write_rows(df: pd.DataFrame, path: str | Path, command: str = "", extra: dict | None = None) -> Path:
    """Write `df`'s rows atomically (a reader never sees half a file); `extra` adds header entries
    (an experiment's spec)."""
    path = check_output_path(path)
    meta = {k: v for k, v in provenance().items() if k != "finished_at"}  # no timestamp: a rerun writes equal bytes
    meta = {**meta, "command": command, **(extra or {})}
    df = df.drop(columns=[c for c in TIMING_COLUMNS if c in df.columns])
    if path.suffix.lower() == ".json":
        records = [{k: _clean(v) for k, v in row.items()} for row in df.to_dict(orient="records")]
        text = json.dumps({"provenance": meta, "rows": records}, indent=1, default=str)
    else:
        header = "".join(f"# {k}: {json.dumps(v, default=str)}\n" for k, v in meta.items())
        text = header + df.to_csv(index=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return path


def read_rows(path: str | Path) -> pd.DataFrame:
    """The rows `write_rows` wrote, as a data frame (provenance dropped)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return pd.DataFrame(json.loads(path.read_text())["rows"])
    return pd.read_csv(path, comment="#")
