"""Output directories of the commands that write a model: built beside, swapped in, never over others' files.

Why: `--out DIR` is typed by hand, and a command that replaced whatever DIR held would delete a user's
folder. A command may replace only a directory that is empty or that it wrote itself, recognised by the
record it leaves inside (the base model's recipe.json, the SmolLM2 conversion record).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from panacea_lab.config import ConfigError


def check_out_dir(out: Path, written_by_us: Callable[[Path], bool], command: str) -> None:
    """Refuse (ConfigError, before any work) an `out` that is a file or a non-empty directory we did not write."""
    if out.is_symlink():
        raise ConfigError(f"{command} --out {out}: a symbolic link, which would be replaced by a directory; "
                          "pass the directory it points to")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{command} --out {out}: not a directory; choose a new or empty directory")
    if out.is_dir() and any(out.iterdir()) and not written_by_us(out):
        raise ConfigError(f"{command} --out {out}: the directory holds files that {command} did not write, and "
                          "they would be replaced; choose a new or empty directory (or remove this one yourself)")


def temp_beside(out: Path) -> Path:
    """A fresh directory next to `out` (same filesystem, so publishing it is one rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))


def publish(tmp: Path, out: Path) -> None:
    """Put the finished `tmp` at `out`: the old directory moves aside, `tmp` is renamed in, the old one goes.

    If the rename fails the old directory is put back, so `out` is never left missing."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-old-"))
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
