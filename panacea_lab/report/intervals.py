"""Paired differences over seeds with a 95% Student-t interval, and the words a verdict may use for
them: a claim is called shown only when its interval says so, never from a mean alone."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

# two-sided 95% quantiles of Student's t by degrees of freedom (n seeds - 1); beyond 30: the normal's
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t975(df: int) -> float:
    if df < 1:
        raise ValueError("an interval needs at least two paired seeds")
    known = [d for d in T975 if d <= df]
    return T975[max(known)] if df <= 30 else 1.960  # a smaller df's quantile: slightly wider, never narrower


@dataclass(frozen=True)
class Paired:
    """Differences treated - reference, one per seed (and ratio), with their mean and 95% interval."""

    diffs: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float:
        return sum(self.diffs) / self.n

    @property
    def interval(self) -> tuple[float, float] | None:
        if self.n < 2:
            return None
        sd = pd.Series(self.diffs).std()
        half = t975(self.n - 1) * sd / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    def text(self) -> str:
        """'-21.0 [-43.1, +1.1]' (n = 1: the one difference, no interval)."""
        if self.interval is None:
            return f"{self.mean:+.1f} (1 seed)"
        lo, hi = self.interval
        return f"{self.mean:+.1f} [{lo:+.1f}, {hi:+.1f}]"


def judge(paired: Paired, expect: str, size: float | None = None, margin: float = 0.0) -> str:
    """The verdict words for one interval. expect 'lower': the interval below 0 (and, given the
    paper's `size`, whether it excludes it); 'kept': no loss larger than `margin` (the interval's
    lower end above -margin); 'none': whether any effect is shown at all."""
    if paired.interval is None:
        return "one seed: no interval"
    lo, hi = paired.interval
    if expect == "kept":
        if lo >= -margin:
            return f"kept (no loss beyond {margin:g} shown)"
        return f"lost (more than {margin:g})" if hi < -margin else f"undecided (a loss beyond {margin:g} not excluded)"
    if hi < 0:
        words = "lower"
    elif lo > 0:
        words = "higher"
    else:
        words = "no change shown"
    if expect == "lower" and size is not None:
        if lo > size:
            words += f", and smaller than the paper's {size:+g}"
        elif hi < size:
            words += f", and larger than the paper's {size:+g}"
    return words
