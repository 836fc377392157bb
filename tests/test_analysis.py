"""Safety coefficients (shares of ||delta||^2) and the FA/HS Pareto front."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from panacea_lab.tables.coefficients import pareto_front, safety_coefficients
from panacea_lab.defenses.perturb import norms_by_layer_module


def _name(layer: int, module: str, part: str) -> str:
    attn = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
    return f"base_model.model.model.layers.{layer}.{attn}.{module}.{part}.default.weight"


def _delta(live_layers=(0, 1, 2), seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for layer in range(3):
        for module in ("q_proj", "v_proj", "down_proj"):
            for part, shape in (("lora_A", (2, 8)), ("lora_B", (8, 2))):
                t = torch.randn(shape, generator=gen)
                out[_name(layer, module, part)] = t if layer in live_layers else torch.zeros(shape)
    return out


def test_shares_sum_to_one_and_are_tidy():
    coef = safety_coefficients(_delta())
    assert list(coef.columns) == ["layer", "module", "sq_norm", "share"]
    assert len(coef) == 9 and coef["share"].sum() == pytest.approx(1.0)
    assert (coef["share"] > 0).all()
    assert coef["sq_norm"].sum() == pytest.approx(norms_by_layer_module(_delta())["sq_norm"].sum())


def test_a_delta_on_one_layer_puts_all_mass_there():
    coef = safety_coefficients(_delta(live_layers=(1,)), by="layer")
    shares = dict(zip(coef["layer"], coef["share"]))
    assert shares == {0: 0.0, 1: pytest.approx(1.0), 2: 0.0}


def test_shares_by_module_match_a_hand_computation():
    delta = {_name(0, "q_proj", "lora_A"): torch.tensor([[3.0]]), _name(1, "q_proj", "lora_B"): torch.tensor([[0.0]]),
             _name(0, "v_proj", "lora_B"): torch.tensor([[4.0]])}
    coef = safety_coefficients(delta, by=("module",))
    assert dict(zip(coef["module"], coef["share"])) == {"q_proj": pytest.approx(9 / 25), "v_proj": pytest.approx(16 / 25)}


def test_bad_grouping_and_zero_delta_are_rejected():
    with pytest.raises(ValueError, match="by"):
        safety_coefficients(_delta(), by=("head",))
    with pytest.raises(ValueError, match="zero norm"):
        safety_coefficients(_delta(live_layers=()))


def test_pareto_front_drops_dominated_points_and_sorts_by_x():
    df = pd.DataFrame({"method": ["sft", "noise", "panacea", "bad", "twin"],
                       "FA": [90.0, 80.0, 89.0, 85.0, 89.0],
                       "HS": [40.0, 10.0, 12.0, 30.0, 12.0]})
    front = pareto_front(df)
    assert list(front["method"]) == ["noise", "panacea", "twin", "sft"]  # "bad" is beaten by panacea
    assert list(front.index) == [1, 2, 4, 0]
    assert list(pareto_front(df.assign(HS=[40.0, 10.0, 12.0, 30.0, 9.0]))["method"]) == ["twin", "sft"]


def test_pareto_front_names_a_missing_column():
    with pytest.raises(ValueError, match="'acc'"):
        pareto_front(pd.DataFrame({"FA": [1.0], "HS": [2.0]}), x="acc")
