"""Run store: every stage cached under runs/<stage>/<config hash>/, written atomically, with provenance.

A stage directory either exists complete (result.json last, then one rename) or not at all, so a
run killed mid-way leaves nothing half-written and a restart recomputes only what is missing.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

from panacea_lab.config import PACKAGE_ROOT, config_hash, to_dict

DEFAULT_ROOT = Path(os.environ.get("PANACEA_RUNS", PACKAGE_ROOT / "runs"))
_PACKAGES = ("torch", "transformers", "peft", "accelerate", "tokenizers", "numpy", "pandas")


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


def provenance() -> dict:
    return {"versions": versions(), "git": git_hash(), "platform": platform.platform(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_json_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1, default=str)
    os.replace(tmp, path)


class RunStore:
    def __init__(self, root: str | Path | None = None, read_only: bool | None = None):
        """`read_only` (default: env PANACEA_CACHE_ONLY=1) serves cached stages and refuses to compute;
        `make figures` uses it to re-render every figure without training."""
        self.root = Path(root) if root is not None else DEFAULT_ROOT
        self.read_only = os.environ.get("PANACEA_CACHE_ONLY") == "1" if read_only is None else read_only

    def path(self, stage: str, cfg) -> Path:
        return self.root / stage / config_hash(cfg)

    def load(self, stage: str, cfg) -> dict | None:
        """The cached result of `stage` for `cfg`, or None when it was never completed."""
        result = self.path(stage, cfg) / "result.json"
        return json.loads(result.read_text()) if result.exists() else None

    def save(self, stage: str, cfg, result: dict, write_artifacts: Callable[[Path], None] | None = None) -> dict:
        """Write artifacts, then result.json (config, seed, provenance), then publish by one rename."""
        final = self.path(stage, cfg)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}-"))
        try:
            if write_artifacts is not None:
                write_artifacts(tmp)
            record = {"stage": stage, "key": final.name, "config": to_dict(cfg),
                      "seed": getattr(cfg, "seed", None), "provenance": provenance(), **result}
            write_json_atomic(tmp / "result.json", record)
            if final.exists():  # a concurrent run finished the same stage first: keep theirs
                shutil.rmtree(tmp)
                return self.load(stage, cfg)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.load(stage, cfg)  # as stored, so a fresh result and a cached one are the same object

    def cached(self, stage: str, cfg, compute: Callable[[], tuple[dict, Callable | None]]) -> dict:
        """Load `stage` for `cfg` or compute it once; `compute` returns (result, artifact writer)."""
        hit = self.load(stage, cfg)
        if hit is not None:
            return hit
        if self.read_only:
            raise FileNotFoundError(f"stage {stage!r} ({config_hash(cfg)}) is not in the run store {self.root} and the "
                                    "store is read-only: compute it first (`make reproduce`)")
        t0 = time.perf_counter()
        result, writer = compute()
        result.setdefault("timings", {})["stage_seconds"] = time.perf_counter() - t0
        return self.save(stage, cfg, result, writer)
