"""Safety coefficients across models: where eps's norm sits along each model's depth, and whether the
layers that hold most of it carry its effect.

The paper reads "distinct safety coefficients per model" from per-layer shares of eps over four 7B
models. Models differ in depth, so each layer is placed at its relative depth (layer / (layers - 1));
Gaussian noise on the same tensors is each model's reference, since its shares follow tensor sizes
alone. The ablation panel shows HS with eps on the top-k layers by share, on every layer but them, and
each part's same-norm random control, per model (`studies.layer_ablation`, kinds top_k / all_but_top_k).
"""
from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
from matplotlib.figure import Figure

from panacea_lab.plotting import style
from panacea_lab.plotting.figure_parts import finish, subplots

SHARE_COLUMNS = ("layer", "module", "eps_share", "noise_share")
PARTS = {"top_k": "top {}", "all_but_top_k": "all but top {}"}


def depth_profile(shares: pd.DataFrame, model: str) -> pd.DataFrame:
    """Per decoder layer of one model: eps's and noise's share of the squared norm (summed over
    modules), at relative depth 0 (first layer) to 1 (last)."""
    missing = [c for c in SHARE_COLUMNS if c not in shares.columns]
    if missing:
        raise ValueError(f"{model}: the shares frame lacks {missing}; pass an eps_shares results file's rows")
    per_layer = shares[shares["layer"] >= 0].groupby("layer", as_index=False)[["eps_share", "noise_share"]].sum()
    last = max(int(per_layer["layer"].max()), 1)
    return per_layer.assign(model=model, depth=per_layer["layer"] / last, layers=last + 1)[
        ["model", "layer", "layers", "depth", "eps_share", "noise_share"]]


def concentration(profile: pd.DataFrame, ks=(1, 3)) -> dict:
    """How concentrated one model's eps is: the top-k layers' share (eps and, for the same layers, noise),
    the relative depth of its largest layer, and the total variation distance from noise's shares."""
    from panacea_lab.studies.layer_ablation import rank_layers

    order = rank_layers(dict(zip(profile["layer"].astype(int), profile["eps_share"])))
    ranked = profile.set_index(profile["layer"].astype(int)).loc[order]
    out = {"model": profile["model"].iloc[0], "layers": int(profile["layers"].iloc[0]),
           "top_layer": int(ranked["layer"].iloc[0]), "top_depth": float(ranked["depth"].iloc[0])}
    for k in ks:
        out[f"top{k}_eps_share"] = float(ranked["eps_share"].head(k).sum())
        out[f"top{k}_noise_share"] = float(ranked["noise_share"].head(k).sum())
    out["tv_from_noise"] = 0.5 * float((profile["eps_share"] - profile["noise_share"]).abs().sum())
    return out


def ablation_summary(rows: pd.DataFrame, model: str) -> pd.DataFrame:
    """One model's layer-ablation rows as (model, part, variant, share, HS, refusal, other): w alone,
    the whole eps and each top-k part, eps (variant "w+<half>") beside its control ("control")."""
    keep = rows[rows["param"].isin(["all", *PARTS]) | rows["variant"].eq("w")].copy()

    def part(row) -> str:
        if row["variant"] == "w":
            return "w alone"
        return "every layer" if row["param"] == "all" else PARTS[row["param"]].format(int(float(row["value"])))

    keep["part"] = keep.apply(part, axis=1)
    cols = ["part", "variant", "share", "HS", "refusal", "other"]
    return keep[cols].assign(model=model)[["model", *cols]].reset_index(drop=True)


@style.paper_figure
def across_models_figure(profiles: Mapping[str, pd.DataFrame],
                         ablations: Mapping[str, pd.DataFrame] | None = None) -> Figure:
    """Left: eps's share per layer against relative depth, one line per model (noise dashed, same
    colour). Right, when ablation summaries are given: HS per model with eps (filled) and its
    same-norm control (hatched) on each part."""
    ablations = {m: a for m, a in (ablations or {}).items() if not a.empty}
    fig, axes = subplots(2 if ablations else 1)
    for i, (model, prof) in enumerate(profiles.items()):
        colour = f"C{i}"
        axes[0].plot(prof["depth"], prof["eps_share"], marker="o", markersize=3, color=colour,
                     label=f"{model} ({int(prof['layers'].iloc[0])} layers)")
        axes[0].plot(prof["depth"], prof["noise_share"], linestyle="--", linewidth=0.8, color=colour)
    axes[0].set_ylim(bottom=0)
    finish(axes[0], "relative depth (layer / (layers - 1))", "share of ||eps||²",
           "per layer (dashed: noise)")
    axes[0].legend(fontsize="small", frameon=False)
    if ablations:
        ax, labels, x = axes[1], [], 0.0
        for i, (model, summary) in enumerate(ablations.items()):
            for part in dict.fromkeys(summary["part"]):
                here = summary[summary["part"].eq(part)].set_index("variant")["HS"]
                for variant, value in here.items():  # w alone centred; the treated part left, its control right
                    shift = 0.0 if variant == "w" else (0.2 if variant == "control" else -0.2)
                    ax.bar(x + shift, value, width=0.4, color=f"C{i}", alpha=0.4 if variant == "w" else 0.9,
                           edgecolor="black", linewidth=0.3, hatch="//" if variant == "control" else None)
                labels.append((x, part))
                x += 1.0
            x += 0.6
        ax.set_xticks([p for p, _ in labels], [t for _, t in labels], rotation=60, ha="right", fontsize="x-small")
        ax.set_ylim(0, 100)
        finish(ax, "", "HS (%)", "eps on part of the layers (hatched: control)")
    return fig
