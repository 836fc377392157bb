"""Content hashes of files and directories, streamed and memoised per process.

Why: a stored result records what it was computed from (base weights, data manifest) by content,
and a stored artifact is checked against the hash written beside it. A 500 MB model directory hashes
in about a second; the memo, keyed by (device, inode, size, mtime), makes every later call free
while any rewrite, truncation or replacement of a file changes the key and so its hash.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

CHUNK = 1 << 20  # 1 MiB reads: constant memory for any file size
_memo: dict[tuple[int, int, int, int], str] = {}


def _key(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def stream_sha256(fh, out=None) -> tuple[str, int]:
    """sha256 and size of a binary stream read in 1 MiB blocks, each also written to `out` if given."""
    digest, size = hashlib.sha256(), 0
    for block in iter(lambda: fh.read(CHUNK), b""):
        digest.update(block)
        size += len(block)
        if out is not None:
            out.write(block)
    return digest.hexdigest(), size


def file_sha256(path: str | Path) -> str:
    """The sha256 (hex) of a file's bytes; raises FileNotFoundError when it is absent."""
    path = Path(path)
    key = _key(path.stat())
    if key not in _memo:
        with open(path, "rb") as fh:
            _memo[key] = stream_sha256(fh)[0]
    return _memo[key]


def dir_files(path: str | Path) -> list[str]:
    """Relative POSIX names of the regular files below `path`, sorted (symlinks to files included)."""
    root = Path(path)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def dir_sha256(path: str | Path, keep: Callable[[str], bool] | None = None) -> str:
    """A stable hash of a directory: every file's relative name and content hash, in sorted order
    (only the files whose relative name `keep` accepts, when given).

    Renaming, adding, removing or editing any file changes it; where the directory lives does not.
    """
    root = Path(path)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory")
    digest = hashlib.sha256()
    for name in filter(keep, dir_files(root)):
        digest.update(f"{name}\0{file_sha256(root / name)}\n".encode())
    return digest.hexdigest()


def content_sha256(path: str | Path) -> str:
    """`dir_sha256` of a directory, `file_sha256` of a file: what a result's provenance records as an input."""
    return dir_sha256(path) if Path(path).is_dir() else file_sha256(path)
