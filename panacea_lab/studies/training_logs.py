"""What a Panacea run's training log says about its clamp: on how many steps the lambda term acted.

Why: the update is G_f - lambda * grad min(h(w + eps), clamp) (with h(w) constant), so on a step where
h(w + eps) is above the clamp the term is zero and the step is plain SFT. Two step rules that reach
different h(w + eps) therefore train w towards the perturbation on different shares of steps; the
log's `h_eps` column (logged every step) measures it, from the run store, without training.
"""
from __future__ import annotations

import statistics


def clamp_activity(log: list[dict], clamp: float) -> dict:
    """{steps, lambda_active: % of logged steps with h(w + eps) <= clamp, median and last-20 mean of h(w + eps)}."""
    h = [row["h_eps"] for row in log if "h_eps" in row]
    if not h:
        raise ValueError("the log has no h_eps column: not a Panacea run (or an amortized one without it)")
    return {"steps": len(h), "lambda_active": round(100.0 * sum(x <= clamp for x in h) / len(h), 2),
            "median_h_eps": round(statistics.median(h), 4), "last20_h_eps": round(statistics.fmean(h[-20:]), 4)}
