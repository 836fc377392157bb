"""Safety coefficients across models: relative depth, concentration, the ablation summary, the figure."""
from __future__ import annotations

import pandas as pd
import pytest
from matplotlib.figure import Figure

from panacea_lab.plotting.across_models import ablation_summary, across_models_figure, concentration, depth_profile


def _shares(layers: int, top: int) -> pd.DataFrame:
    rows = []
    for layer in range(layers):
        for module in ("q_proj", "v_proj"):
            eps = (0.5 if layer == top else 0.5 / (layers - 1)) / 2
            rows.append({"layer": layer, "module": module, "eps_share": eps, "noise_share": 0.5 / layers})
    rows.append({"layer": -1, "module": "lm_head", "eps_share": 0.0, "noise_share": 0.0})
    return pd.DataFrame(rows)


def test_depth_runs_from_0_to_1_and_each_layer_sums_its_modules():
    prof = depth_profile(_shares(5, top=4), "m")
    assert prof["depth"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert prof["eps_share"].sum() == pytest.approx(1.0) and prof.loc[4, "eps_share"] == pytest.approx(0.5)
    assert -1 not in prof["layer"].tolist()  # parameters outside the layers have no depth
    with pytest.raises(ValueError, match="noise_share"):
        depth_profile(_shares(3, 0).drop(columns="noise_share"), "m")


def test_concentration_ranks_layers_by_eps_share_and_compares_noise_on_the_same_layers():
    out = concentration(depth_profile(_shares(5, top=2), "m"), ks=(1, 3))
    assert out["top_layer"] == 2 and out["top_depth"] == 0.5
    assert out["top1_eps_share"] == pytest.approx(0.5) and out["top1_noise_share"] == pytest.approx(0.2)
    assert out["top3_eps_share"] == pytest.approx(0.5 + 2 * 0.125)
    assert out["tv_from_noise"] == pytest.approx(0.3)  # 0.5 - 0.2 on one layer, spread back over four


def test_the_ablation_summary_names_each_part_and_the_figure_draws_both_panels():
    rows = pd.DataFrame([
        {"method": "panacea", "variant": "w", "param": None, "value": None, "share": 0.0, "HS": 80, "refusal": 10, "other": 10},
        {"method": "panacea", "variant": "w+eps", "param": "all", "value": None, "share": 1.0, "HS": 20, "refusal": 70, "other": 10},
        {"method": "eps_control", "variant": "control", "param": "all", "value": None, "share": 1.0, "HS": 79, "refusal": 11, "other": 10},
        {"method": "panacea", "variant": "w+eps", "param": "top_k", "value": 3.0, "share": 0.6, "HS": 40, "refusal": 50, "other": 10},
        {"method": "eps_control", "variant": "control", "param": "all_but_top_k", "value": 1.0, "share": 0.5, "HS": 80, "refusal": 10, "other": 10},
        {"method": "panacea", "variant": "w+eps", "param": "layer", "value": 0.0, "share": 0.2, "HS": 60, "refusal": 30, "other": 10},
    ])
    summary = ablation_summary(rows, "m")
    assert summary["part"].tolist() == ["w alone", "every layer", "every layer", "top 3", "all but top 1"]
    assert summary["variant"].tolist() == ["w", "w+eps", "control", "w+eps", "control"]
    fig = across_models_figure({"m": depth_profile(_shares(4, 1), "m")}, {"m": summary})
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert len(across_models_figure({"m": depth_profile(_shares(4, 1), "m")}).axes) == 1
