"""Figure files: a PNG and a vector PDF beside the CSV they were drawn from, byte-identical on rerun.

Same data, same bytes: regenerated figures only show up in a diff when they changed. Files are
written through a temporary file and renamed, so a reader never sees half a figure. In a notebook
the figure is also shown as the output of the cell that drew it, before it is closed.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from panacea_lab.config import TIMING_COLUMNS
from panacea_lab.plotting import style

FLOAT_FORMAT = "%.6g"  # equal metrics give equal bytes across machines (float noise below 1e-6 relative dropped)


def _atomic_write(path: Path, write: Callable, binary: bool) -> None:
    """Write through a temp file in the same folder, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def in_kernel() -> bool:
    """True inside a Jupyter kernel (papermill, JupyterLab), False in a plain process (CLI, tests)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in shell.config


def _show(fig: Figure) -> None:
    """Show `fig` once as a cell output. Closing it right after keeps the inline backend from
    drawing it a second time at the end of the cell (it only draws figures still open)."""
    from IPython.display import display

    display(fig)


def save_figure(fig: Figure, path: str | os.PathLike, data: pd.DataFrame | None = None) -> Path:
    """Write `fig` as `path` (PNG, fixed dpi) and the same name .pdf (vector, TrueType fonts), with
    no version or date stamped in either, and `data` as the .csv beside them (floats to 6 significant
    digits, per-run timings left out, so a rerun on another machine gives the same bytes). Closes `fig`, so a
    long sweep does not keep every figure in memory; in a notebook kernel it is shown first.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path = {str(path)!r}: save_figure writes NAME.png and NAME.pdf, give a path ending in .png")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with plt.rc_context(style.RC):  # the PDF's font type is read at save time
            _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=style.DPI, metadata=style.PNG_METADATA),
                          binary=True)
            _atomic_write(path.with_suffix(".pdf"),
                          lambda f: fig.savefig(f, format="pdf", metadata=style.PDF_METADATA), binary=True)
        if data is not None:
            frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
            frame = frame.drop(columns=[c for c in TIMING_COLUMNS if c in frame.columns])
            _atomic_write(path.with_suffix(".csv"), lambda f: frame.to_csv(f, index=False, float_format=FLOAT_FORMAT),
                          binary=False)
        if in_kernel():
            _show(fig)
    finally:
        plt.close(fig)
    return path
