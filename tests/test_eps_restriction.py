"""Restricted and rescaled eps: the pure `restrict`, the `eps` / `eps_control` transforms, their configs."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from panacea_lab import defenses
from panacea_lab.config import ConfigError, config_hash, from_dict, to_dict
from panacea_lab.defenses.panacea import EpsConfig, EpsControlConfig
from panacea_lab.defenses.perturb import applied, global_norm, gaussian_noise, named_trainable, parse_param_name, restrict
from panacea_lab.models.loading import attach_lora, load_base
from panacea_lab.pipeline.evaluations import apply_post, lora_names


@pytest.fixture
def model(tiny_cfg):
    return attach_lora(load_base(tiny_cfg, torch.device("cpu")), tiny_cfg, seed=0)


@pytest.fixture
def eps(model):
    """A stand-in for a stored eps: one tensor per LoRA A/B of the tiny model (2 layers x 7 modules)."""
    return gaussian_noise(named_trainable(model), 0.1, seed=5)


def _ctx(model, eps):
    return SimpleNamespace(seed=0, lora_names=lora_names(model), artifact=lambda name: {k: v.clone() for k, v in eps.items()})


def _lora(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_restrict_keeps_the_chosen_tensors_times_their_factor_and_leaves_delta_alone(eps):
    before = {k: v.clone() for k, v in eps.items()}
    part = restrict(eps, layers=(1,), modules=("q_proj", "down_proj"), layer_scales=(0.5, 3.0), scale=2.0)
    expected = {n for n in eps if parse_param_name(n)[0] == 1 and parse_param_name(n)[1] in ("q_proj", "down_proj")}
    assert set(part) == expected and len(expected) == 4  # lora_A and lora_B of two modules
    for n in expected:
        assert torch.equal(part[n], eps[n] * 6.0)
    assert all(torch.equal(eps[n], before[n]) for n in eps)


def test_restrict_without_a_selection_is_eps_itself_and_zero_factors_drop_tensors(eps):
    assert restrict(eps) == eps  # the same tensors, not copies: the unrestricted eps is applied as before
    part = restrict(eps, layer_scales=(0.0, 1.0))
    assert set(part) == {n for n in eps if parse_param_name(n)[0] == 1}
    assert restrict(eps, scale=0.0) == {}


@pytest.mark.parametrize("kw, field, hint", [
    ({"layers": (2,)}, "layers", "0..1"),
    ({"modules": ("c_attn",)}, "modules", "q_proj"),
    ({"layer_scales": (1.0,)}, "layer_scales", "one per decoder layer (2"),
    ({"layer_scales": (1.0, -0.5)}, "layer_scales[1]", ">= 0"),
    ({"scale": float("nan")}, "scale", ">= 0"),
])
def test_restrict_refuses_what_eps_does_not_cover_naming_the_field(eps, kw, field, hint):
    with pytest.raises(ConfigError) as err:
        restrict(eps, **kw)
    assert str(err.value).startswith(field) and hint in str(err.value)


def test_eps_config_default_key_is_unchanged_and_restrictions_are_hashable_and_sorted():
    assert to_dict(EpsConfig()) == {"name": "eps", "scale": 1.0}  # results stored before restrictions keep their key
    cfg = EpsConfig(layers=[3, 1], modules=["v_proj", "q_proj"], layer_scales=["0.5", 1])
    assert cfg == EpsConfig(layers=(1, 3), modules=("q_proj", "v_proj"), layer_scales=(0.5, 1.0))
    assert hash(cfg) == hash(EpsConfig(layers=(1, 3), modules=("q_proj", "v_proj"), layer_scales=(0.5, 1.0)))
    assert from_dict(EpsConfig, {k: v for k, v in to_dict(cfg).items() if k != "name"}) == cfg
    assert config_hash(EpsControlConfig(layers=(1,), seed=1)) != config_hash(EpsControlConfig(layers=(1,), seed=2))


@pytest.mark.parametrize("kw, field", [({"scale": -1}, "scale"), ({"layer_scales": (1, -2)}, "layer_scales[1]"),
                                       ({"layers": (-1,)}, "layers"), ({"layers": (1, 1)}, "layers"),
                                       ({"modules": ("",)}, "modules")])
def test_bad_eps_config_names_the_field(kw, field):
    with pytest.raises(ConfigError, match=rf"^{field.replace('[', '.').replace(']', '.')} = "):
        EpsConfig(**kw)


def test_eps_transform_adds_the_restricted_eps_and_touches_nothing_else(model, eps):
    w = _lora(model)
    apply_post(model, EpsConfig(layers=(0,), modules=("v_proj",), scale=0.5), _ctx(model, eps))
    for n, p in _lora(model).items():
        chosen = parse_param_name(n)[:2] == (0, "v_proj")
        assert torch.equal(p, w[n] + eps[n] * 0.5 if chosen else w[n]), n


def test_an_unknown_layer_is_refused_by_the_transform_with_the_range(model, eps):
    with pytest.raises(ConfigError, match=r"^layers = \(4,\).*\(0\.\.1\)"):
        apply_post(model, EpsConfig(layers=(4,)), _ctx(model, eps))


def test_eps_control_is_a_random_direction_of_the_restricted_norm_over_exactly_its_tensors(model, eps):
    w = _lora(model)
    cfg = EpsControlConfig(layers=(1,), layer_scales=(1.0, 2.0), seed=3)
    part = restrict(eps, cfg.layers, cfg.modules, cfg.layer_scales)
    apply_post(model, cfg, _ctx(model, eps))
    moved = {n: p - w[n] for n, p in _lora(model).items()}
    assert {n for n, d in moved.items() if d.abs().sum() > 0} == set(part)
    assert global_norm({n: moved[n] for n in part}) == pytest.approx(global_norm(part), rel=1e-5)
    cosine = sum((moved[n] * part[n]).sum() for n in part) / global_norm(part) ** 2
    assert abs(float(cosine)) < 0.5  # a random direction, not eps itself
    assert defenses.get("eps_control").control and not defenses.get("eps").control


def test_eps_control_of_an_empty_restriction_adds_nothing(model, eps):
    w = _lora(model)
    apply_post(model, EpsControlConfig(scale=0.0), _ctx(model, eps))
    assert all(torch.equal(p, w[n]) for n, p in _lora(model).items())


def test_applying_to_the_model_and_leaving_the_block_restores_w_bit_for_bit(model, eps):
    w = _lora(model)
    part = restrict(eps, layers=(0,), layer_scales=(3.0, 1.0))
    with applied(model, part):
        assert not torch.equal(dict(model.named_parameters())[next(iter(part))].detach(), w[next(iter(part))])
    assert all(torch.equal(p, w[n]) for n, p in _lora(model).items())
