"""Run store: every stage cached under runs/<stage>/<config hash>/, written atomically, with provenance.

A stage directory either exists complete (result.json last, then one rename) or not at all, so a
run killed mid-way leaves nothing half-written and a restart recomputes only what is missing.
result.json records the sha256 of every artifact beside it; an entry whose result.json is unreadable
or whose artifact was deleted, truncated or edited is moved to runs/.damaged/ and recomputed (or, in
a read-only store, reported with the directory to delete), so damage never reaches a loader.

The root's LAYOUT file names the key layout the store was written with (written on its first
write); a store of an earlier layout says once, when first written to, what it will recompute.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path, PurePosixPath
from dataclasses import dataclass
from typing import Callable

from panacea_lab.config import PACKAGE_ROOT, config_hash, to_dict
from panacea_lab.files import write_json_atomic  # noqa: F401 (re-exported)
from panacea_lab.hashing import content_sha256, dir_files, dir_sha256, file_sha256  # noqa: F401 (re-exported)

# PANACEA_RUNS set but empty falls back to runs/ (never the current folder); the command line refuses it
DEFAULT_ROOT = Path(os.environ.get("PANACEA_RUNS") or PACKAGE_ROOT / "runs")
RESULT = "result.json"
DAMAGED = ".damaged"  # under the store root: entries moved aside, kept for inspection
LAYOUT = "LAYOUT"  # at the store root: the key layout its entries were written with
LAYOUT_VERSION = 3  # 3: stage code and data keyed by content; 2: a defense's own code keyed per run; 1 (no file)
_LAYOUT_SAID: set[str] = set()  # store roots whose earlier layout this process has reported
_PACKAGES = ("torch", "transformers", "peft", "accelerate", "tokenizers", "numpy", "pandas")


@dataclass(frozen=True)
class Keyed:
    """A stage's config with the content hashes of what the stage reads (base weights, data, the
    code that computes it): all of them name the result, so a rebuilt model, a
    changed data file or changed stage code gets a new key instead of an old result."""

    config: object
    inputs: tuple[tuple[str, str], ...] = ()


def _parts(cfg) -> tuple[object, dict[str, str]]:
    return (cfg.config, dict(cfg.inputs)) if isinstance(cfg, Keyed) else (cfg, {})


class StoreDamage(FileNotFoundError):
    """A stored stage that cannot be trusted; the message names the file and what to do."""


def git_hash() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE_ROOT, capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PACKAGE_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def provenance(inputs: dict[str, str] | None = None) -> dict:
    """Code and environment of a result; `inputs` names what it was computed from by content hash
    (e.g. {"base_weights": dir_sha256(model_dir), "data_manifest": file_sha256(manifest)})."""
    out = {"versions": versions(), "git": git_hash(), "platform": platform.platform(),
           "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return {**out, "inputs": dict(inputs)} if inputs else out


def layout_of(root: Path) -> int:
    """The layout a store was written with: its LAYOUT file, 1 when absent or unreadable."""
    try:
        return int((root / LAYOUT).read_text().strip())
    except (OSError, ValueError):
        return 1


def _has_entries(root: Path) -> bool:
    return any(DAMAGED not in p.relative_to(root).parts for p in root.rglob(RESULT))


CHECKSUM = "record_sha256"  # of the record's own content: an edited metric no longer matches it


def record_sha256(record: dict) -> str:
    """The sha256 of a result record without its checksum field, keys sorted (the bytes on disk may differ)."""
    body = {k: v for k, v in record.items() if k != CHECKSUM}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def read_entry(stage_dir: Path) -> dict:
    """The record of a published stage directory, its artifacts checked; StoreDamage says what is wrong."""
    try:
        record = json.loads((stage_dir / RESULT).read_text())
    except FileNotFoundError:
        raise StoreDamage(f"{stage_dir / RESULT} is missing") from None
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise StoreDamage(f"{stage_dir / RESULT} is not valid JSON ({err}): truncated or edited") from None
    if not isinstance(record, dict):
        raise StoreDamage(f"{stage_dir / RESULT} holds a {type(record).__name__}, not a result record")
    if CHECKSUM in record and record[CHECKSUM] != record_sha256(record):  # entries written before it: unchecked
        raise StoreDamage(f"{stage_dir / RESULT} does not match its recorded checksum: edited or damaged")
    artifacts = record.get("artifacts") or {}
    if not isinstance(artifacts, dict):
        raise StoreDamage(f"{stage_dir / RESULT}: `artifacts` is a {type(artifacts).__name__}, not a name -> sha256 map")
    for name, sha in artifacts.items():
        path = stage_dir / name
        if not path.is_file():
            raise StoreDamage(f"artifact {path} is missing")
        if file_sha256(path) != sha:
            raise StoreDamage(f"artifact {path} does not match its recorded sha256: truncated or modified")
    return record


class RunStore:
    def __init__(self, root: str | Path | None = None, read_only: bool | None = None):
        """`read_only` (default: env PANACEA_CACHE_ONLY=1) serves cached stages and refuses to compute;
        `make figures` uses it to re-render every figure without training."""
        self.root = Path(root) if root is not None else DEFAULT_ROOT
        self.read_only = os.environ.get("PANACEA_CACHE_ONLY") == "1" if read_only is None else read_only
        self._layout_marked = False

    def mark_layout(self) -> None:
        """Before the first write: record the current layout at the root. A store holding entries of an
        earlier one says so in one line (once per process and root): its keys changed (the code and
        data are keyed by their content since layout 3), so its runs are recomputed."""
        if self._layout_marked:
            return
        if layout_of(self.root) < LAYOUT_VERSION:
            said = str(self.root.absolute())
            if said not in _LAYOUT_SAID and self.root.is_dir() and _has_entries(self.root):
                _LAYOUT_SAID.add(said)
                print(f"panacea-lab: run store {self.root}: written by an earlier layout; its runs get new keys "
                      "(code and data keyed by content) and are recomputed", file=sys.stderr)
            write_json_atomic(self.root / LAYOUT, LAYOUT_VERSION)
        self._layout_marked = True

    def path(self, stage: str, cfg) -> Path:
        return self.root / stage / config_hash(cfg)

    def load(self, stage: str, cfg) -> dict | None:
        """The cached result of `stage` for `cfg`, or None when it was never completed.

        A damaged entry is moved aside (so the caller recomputes it) and None returned; a read-only
        store cannot recompute, so there it raises StoreDamage naming the directory to delete."""
        final = self.path(stage, cfg)
        if not final.exists():
            return None
        try:
            return read_entry(final)
        except StoreDamage as err:
            if self.read_only:
                raise StoreDamage(f"{err}; delete {final} and compute the stage again (the store is "
                                  "read-only: unset PANACEA_CACHE_ONLY)") from None
            aside = self._move_aside(stage, final)
            print(f"panacea-lab: {err}; moved {final} to {aside} so that the stage is computed again",
                  file=sys.stderr)
            return None

    def _move_aside(self, stage: str, final: Path) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        aside = self.root / DAMAGED / f"{stage.replace('/', '_')}-{final.name}-{stamp}-{os.getpid()}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        try:
            final.rename(aside)
        except FileNotFoundError:  # another process moved it first
            pass
        return aside

    def artifact(self, stage: str, cfg, name: str) -> Path:
        """The checked path of artifact `name` (a file, or a folder of files, e.g. "adapter") of a completed
        stage; FileNotFoundError (one line) when the stage is missing or the artifact is not there."""
        record = self.load(stage, cfg)
        final = self.path(stage, cfg)
        if record is None:
            raise FileNotFoundError(f"stage {stage!r} ({final.name}) is not completed in the run store {self.root}: "
                                    "run that stage first")
        name = PurePosixPath(name).as_posix().strip("/")
        recorded = record.get("artifacts")
        if recorded is None:  # written before hashes were recorded: existence is all that can be checked
            recorded = dir_files(final)
        if not any(n == name or n.startswith(name + "/") for n in recorded):
            held = sorted({n.split("/", 1)[0] for n in recorded} - {RESULT}) or ["no artifact"]
            raise FileNotFoundError(f"stage {stage!r} ({final}) has no artifact {name!r}; it holds "
                                    f"{', '.join(held)}")
        return final / name

    def save(self, stage: str, cfg, result: dict, write_artifacts: Callable[[Path], None] | None = None,
             inputs: dict[str, str] | None = None) -> dict:
        """Write artifacts, then result.json (config, seed, provenance, artifact hashes), then publish by
        one rename. When another writer published the same stage first, theirs is kept and returned."""
        self.mark_layout()
        final = self.path(stage, cfg)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}-"))
        try:
            if write_artifacts is not None:
                write_artifacts(tmp)
            artifacts = {name: file_sha256(tmp / name) for name in dir_files(tmp)}
            config, key_inputs = _parts(cfg)
            inputs = {**key_inputs, **(inputs or {})}
            record = {"stage": stage, "key": final.name, "config": to_dict(config),
                      "seed": getattr(config, "seed", None), "provenance": provenance(inputs or None), **result,
                      "artifacts": artifacts}
            record = json.loads(json.dumps(record, default=str))  # as it reads back, so the checksum matches
            write_json_atomic(tmp / RESULT, {**record, CHECKSUM: record_sha256(record)})
            return self._publish(stage, cfg, tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _publish(self, stage: str, cfg, tmp: Path, final: Path) -> dict:
        for _ in range(3):
            try:
                tmp.rename(final)
                return self.load(stage, cfg)  # as stored: a fresh result and a cached one are the same object
            except OSError as err:
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            theirs = self.load(stage, cfg)  # another writer finished first (a damaged entry is moved aside)
            if theirs is not None:
                shutil.rmtree(tmp, ignore_errors=True)
                return theirs
        raise OSError(f"could not publish {final}: it keeps reappearing damaged; remove it and run again")

    def cached(self, stage: str, cfg, compute: Callable[[], tuple[dict, Callable | None]],
               inputs: dict[str, str] | None = None) -> dict:
        """Load `stage` for `cfg` or compute it once; `compute` returns (result, artifact writer).

        `inputs` (content hashes of what the stage reads) is recorded in the provenance of a new result."""
        hit = self.load(stage, cfg)
        if hit is not None:
            return hit
        if self.read_only:
            raise FileNotFoundError(f"stage {stage!r} ({config_hash(cfg)}) is not in the run store {self.root} and the "
                                    "store is read-only: compute it first (`make reproduce`)")
        self.mark_layout()  # before computing: an earlier layout's store says what it recomputes first
        t0 = time.perf_counter()
        result, writer = compute()
        result.setdefault("timings", {})["stage_seconds"] = time.perf_counter() - t0
        return self.save(stage, cfg, result, writer, inputs)
