"""One look for every figure: a fixed colour and marker per method, print sizes, fonts and file metadata.

A method keeps its colour in every figure, so a reader can follow Panacea w+eps from the Pareto
plot to the bar chart without reading legends. The map is a fixed dict (no hashing, no order of
appearance); a name it does not know is drawn in `UNKNOWN` grey rather than taking a method's colour.
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


# Colour-blind-safe hues (Okabe-Ito and Paul Tol's sets); markers tell apart the closest pairs.
METHOD_STYLES: dict[str, Style] = {
    "no defense": Style("#000000", "o"),
    "base": Style("#999933", "v"),
    "aligned": Style("#117733", "^"),
    "noise": Style("#E69F00", "s"),
    "antidote": Style("#CC79A7", "D"),
    "panacea (w)": Style("#56B4E9", "P"),
    "panacea (w+eps)": Style("#0072B2", "*"),
    "panacea amortized": Style("#332288", "X"),
    "same-norm random": Style("#D55E00", "h"),
    "harmful ascent": Style("#882255", "<"),
    "vaccine": Style("#44AA99", ">"),
    "repnoise": Style("#DDCC77", "p"),
    "booster": Style("#AA4499", "d"),
    "lisa": Style("#661100", "8"),
}
UNKNOWN = Style("#8C8C8C", "o")  # grey: no method's colour, so an unmapped name cannot pass for one

# Other spellings of the same method: display labels, typed method names, step-rule and transform names.
ALIASES = {
    "fine-tuned": "no defense", "sft": "no defense", "sft (no defense)": "no defense", "none": "no defense",
    "no_defense": "no defense", "undefended": "no defense",
    "panacea": "panacea (w+eps)", "panacea (eps)": "panacea (w+eps)", "eps": "panacea (w+eps)", "panacea_k4": "panacea amortized",
    "panacea (control)": "same-norm random", "random_direction": "same-norm random",
    "same_norm_random": "same-norm random", "harmful_ascent": "harmful ascent", "rep_noise": "repnoise",
}

# Curves of one training log (not methods): h(w) and h(w+eps) take Panacea's w and w+eps colours.
CURVE_STYLES = {"loss": METHOD_STYLES["no defense"], "h": METHOD_STYLES["panacea (w)"],
                "h_eps": METHOD_STYLES["panacea (w+eps)"], "grad_h_norm": METHOD_STYLES["booster"]}

LINESTYLES = ("-", "--", ":", "-.")  # series sharing a method's style in one panel differ by line style
TWIN_MARKERS = ("s", "^", "D", "v", "P", "X")  # ... and, without a line (under 3 points), by an open marker of another shape


def method_key(name: object) -> str:
    """The `METHOD_STYLES` key `name` spells (case and alias folded), or `name` itself when unknown."""
    key = str(name).strip().lower()
    return ALIASES.get(key, key)


def method_style(name: object) -> Style:
    """The fixed style of the method `name`; `UNKNOWN` grey for a name the map does not hold."""
    return METHOD_STYLES.get(method_key(name), UNKNOWN)


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
        known = paired.map(lambda s: not pd.isna(s) and method_key(s) in METHOD_STYLES).astype(bool)
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
