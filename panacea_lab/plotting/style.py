"""One look for every figure: a fixed colour and marker per method, print sizes, fonts and file metadata.

A method keeps its colour in every figure, so a reader can follow Panacea w+eps from the Pareto
plot to the bar chart without reading legends. Colours and markers are part of each defense's registry
record (no hashing, no order of appearance); a name the registry does not know is drawn in `UNKNOWN`
grey rather than taking a method's colour.
Sizes are a two-column paper's (3.3 in one column, 6.9 in both) with no text under 7 pt at that size.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import matplotlib.pyplot as plt
import pandas as pd

SINGLE_COLUMN = 3.3  # inches: one column of a two-column paper
DOUBLE_COLUMN = 6.9  # inches: the full text width
PANEL_HEIGHT = 2.3  # inches
MIN_FONT_PT = 7.0
DPI = 300  # PNG resolution: print quality at these sizes (the PDF beside it is vector)

# Applied while a figure is drawn and saved only (plt.rc_context): the caller's style is left alone.
# TrueType (42) fonts in the PDF: venues reject Type 3 fonts, and text stays selectable.
RC = {"font.size": 8.0, "axes.titlesize": 8.0, "axes.labelsize": 8.0, "xtick.labelsize": 7.0,
      "ytick.labelsize": 7.0, "legend.fontsize": 7.0, "legend.title_fontsize": 7.0, "figure.titlesize": 8.0,
      "lines.linewidth": 1.2, "lines.markersize": 4.0, "axes.linewidth": 0.6, "pdf.fonttype": 42,
      "ps.fonttype": 42}

# Fixed file metadata: matplotlib otherwise stamps its version (PNG) and the date (PDF), so reruns differ.
PNG_METADATA = {"Software": None}
PDF_METADATA = {"Creator": None, "Producer": None, "CreationDate": None}


@dataclass(frozen=True)
class Style:
    """How one method is drawn: its colour (lines, points, bars) and its marker."""

    color: str
    marker: str


def method_styles() -> dict[str, Style]:
    """Every method's style, read from the registry at call time (a defense registered later, e.g. in a
    test or a notebook, is drawn in its own colour): the reference models, each record's colour and
    marker, and a record's per-variant styles as "name (variant)" (Panacea's w + eps)."""
    from panacea_lab import defenses
    from panacea_lab.defenses.registry import REFERENCES

    out = {name: Style(color, marker) for name, (_, color, marker) in REFERENCES.items()}
    for name, record in defenses.REGISTRY.items():
        out[name] = Style(record.color, record.marker)
        out.update({f"{name} ({variant})": Style(*look) for variant, look in record.variant_styles.items()})
    return out


UNKNOWN = Style("#8C8C8C", "o")  # grey: no method's colour, so an unmapped name cannot pass for one


def _aliases() -> dict[str, str]:
    """Display labels (folded to lower case) -> the identifier they show, from the registry's labels, so
    that a frame without typed columns (e.g. a CSV written by hand) still finds its styles."""
    from panacea_lab import defenses
    from panacea_lab.defenses.registry import REFERENCES, UNDEFENDED, UNDEFENDED_LABELS

    out = {label.lower(): name for name, (label, _, _) in REFERENCES.items()}
    out.update({label: UNDEFENDED for label in UNDEFENDED_LABELS})
    for name, record in defenses.REGISTRY.items():
        out.setdefault(record.label.lower(), name)
        out.update({f"{record.label.lower()} ({variant})": f"{name} ({variant})" for variant in record.variant_styles})
    return out


# Curves of one training log (not methods): the training loss in black, h(w) and h(w + eps) in the
# blues of a trained defense's w and w + eps rows, the harmful gradient's norm in purple.
CURVE_STYLES = {"loss": Style("#000000", "o"), "h": Style("#56B4E9", "P"), "h_eps": Style("#0072B2", "*"),
                "grad_h_norm": Style("#AA4499", "d")}

LINESTYLES = ("-", "--", ":", "-.")  # series sharing a method's style in one panel differ by line style
TWIN_MARKERS = ("s", "^", "D", "v", "P", "X")  # ... and, without a line (under 3 points), by an open marker of another shape


def method_key(name: object) -> str:
    """The `method_styles()` key `name` spells: an identifier as it is, a display label folded to its
    identifier; `name` itself when unknown."""
    key = str(name).strip()
    styles = method_styles()
    if key in styles:
        return key
    return _aliases().get(key.lower(), key.lower())


def method_style(name: object) -> Style:
    """The fixed style of the method `name`; `UNKNOWN` grey for a name the map does not hold."""
    return method_styles().get(method_key(name), UNKNOWN)


def style_names(df: pd.DataFrame, fallback: pd.Series) -> pd.Series:
    """Per row, the name its style is looked up by: the typed `method` column when the frame has one
    (with its `variant`, e.g. 'panacea' + 'w+eps', where that pair has a style of its own), else `fallback`.

    Rows whose method is missing (reference rows of a mixed frame) keep their `fallback` name.
    """
    if "method" not in df.columns:
        return fallback.astype(str)
    method = df["method"].astype("string")
    if "variant" in df.columns:
        paired = method + " (" + df["variant"].astype("string") + ")"
        styles = method_styles()
        known = paired.map(lambda s: not pd.isna(s) and s in styles).astype(bool)
        method = paired.where(known, method)
    return method.fillna(fallback.astype("string")).astype(str)


def figure_width(n_panels: int) -> float:
    """One column for a single panel, the full text width for two or more."""
    return SINGLE_COLUMN if n_panels <= 1 else DOUBLE_COLUMN


F = TypeVar("F", bound=Callable)


def paper_figure(fn: F) -> F:
    """Draw under `RC` (fonts are fixed when text is created), leaving the caller's rcParams unchanged."""
    @functools.wraps(fn)
    def drawn(*args, **kwargs):
        with plt.rc_context(RC):
            return fn(*args, **kwargs)
    return drawn  # type: ignore[return-value]
