"""Analysis over results and perturbations: safety coefficients and Pareto fronts (tidy frames in, out).

Safety coefficients (Panacea, sec. on layer-wise analysis): how a perturbation's squared norm is
shared among layers (and q/k/v/...); squared norms add up over disjoint tensors, so shares sum to 1.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from torch import Tensor

from panacea_lab.defenses.perturb import norms_by_layer_module

GROUP_COLUMNS = ("name", "layer", "module", "part")


def safety_coefficients(delta: Mapping[str, Tensor] | pd.DataFrame,
                        by: Sequence[str] = ("layer", "module")) -> pd.DataFrame:
    """Each group's share of ||delta||^2: columns [*by, sq_norm, share], sorted by `by`, shares sum to 1.

    `delta` is a perturbation dict or the frame `norms_by_layer_module` already made from one.
    """
    by = [by] if isinstance(by, str) else list(by)
    bad = [c for c in by if c not in GROUP_COLUMNS]
    if not by or bad:
        raise ValueError(f"by = {by!r}: group by one or more of {list(GROUP_COLUMNS)}")
    norms = delta if isinstance(delta, pd.DataFrame) else norms_by_layer_module(delta)
    total = float(norms["sq_norm"].sum())
    if not total > 0:
        raise ValueError("delta has zero norm: there is nothing to share out (did the perturbation get applied "
                         "before it was measured, or is std / rho 0?)")
    out = norms.groupby(by, sort=True, as_index=False)["sq_norm"].sum()
    out["share"] = out["sq_norm"] / total
    return out.reset_index(drop=True)


def pareto_front(df: pd.DataFrame, x: str = "FA", y: str = "HS") -> pd.DataFrame:
    """The rows no other row dominates (higher-or-equal x and lower-or-equal y, one strictly), sorted by x.

    Defaults read "maximise fine-tuning accuracy, minimise harmful score". Rows with a missing x or y
    are left out; equal points are all kept. The original index is kept to map rows back.
    """
    missing = [c for c in (x, y) if c not in df.columns]
    if missing:
        raise ValueError(f"column {missing[0]!r} not in the frame (has {list(df.columns)}): pass x= and y= "
                         "naming the accuracy-like and harm-like columns")
    data = df.dropna(subset=[x, y])
    xs, ys = data[x].to_numpy(dtype=float), data[y].to_numpy(dtype=float)
    no_worse = (xs[None, :] >= xs[:, None]) & (ys[None, :] <= ys[:, None])  # [i, j]: j at least as good as i
    better = (xs[None, :] > xs[:, None]) | (ys[None, :] < ys[:, None])
    dominated = np.any(no_worse & better, axis=1)
    return data.iloc[np.flatnonzero(~dominated)].sort_values(x, kind="stable")
