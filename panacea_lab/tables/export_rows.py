"""Sweep rows as a machine-readable file: JSON or CSV by extension, one record per evaluation.

Schema (README "Results as data"): label, method, variant, param, value, p, seed, HS, refusal,
other, FA_<task>, and any extra columns of the sweep (norm, preset, train_seconds). JSON wraps the
records with the provenance of the run (versions, git hash, command); CSV carries the same
provenance in `#` comment lines before the header.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import pandas as pd

from panacea_lab.config import ConfigError
from panacea_lab.training.store import provenance

FORMATS = (".json", ".csv")


def check_output_path(path: str | Path, name: str = "output") -> Path:
    """The output path, or a ConfigError naming what to fix (wrong extension, missing folder)."""
    path = Path(path)
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
    meta = {**provenance(), "command": command, **(extra or {})}
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
