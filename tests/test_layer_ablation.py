"""Layer ablation of Panacea's eps (cached evaluations of one run), its figures, and the live scorer."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from matplotlib.figure import Figure
from safetensors.torch import load_file

from panacea_lab import pipeline
from panacea_lab.plotting.ablation_plots import ablation_figure, ablation_figures, ablation_rows
from panacea_lab.studies.layer_ablation import Restriction, eps_parts, layer_ablation, restrictions, share_of
from panacea_lab.explorer.live_eps import LiveEps
from panacea_lab.config import ConfigError, EvalConfig
from panacea_lab.defenses.panacea import EpsConfig, EpsControlConfig
from panacea_lab.defenses.perturb import applied
from panacea_lab.pipeline.context import EvalContext
from panacea_lab.pipeline.evaluations import apply_post
from panacea_lab.pipeline.stages import artifact

EVAL = EvalConfig(n_harmful=4, n_task=4, max_new_tokens=8, tasks=("sentiment",))


@pytest.fixture
def run(panacea_run):
    return panacea_run


def test_restrictions_cover_every_kind_over_the_layers_and_modules_present():
    parts = restrictions([0, 1, 2], ["q_proj", "v_proj"])
    by_kind = {k: [(r.value, r.layers, r.modules) for r in parts if r.param == k]
               for k in ("layer", "all_but_layer", "first_k", "last_k", "module")}
    assert by_kind["layer"] == [(0, (0,), ()), (1, (1,), ()), (2, (2,), ())]
    assert by_kind["all_but_layer"] == [(0, (1, 2), ()), (1, (0, 2), ()), (2, (0, 1), ())]
    assert by_kind["first_k"] == [(1, (0,), ()), (2, (0, 1), ())]  # k = 3 is the whole eps
    assert by_kind["last_k"] == [(1, (2,), ()), (2, (1, 2), ())]
    assert by_kind["module"] == [("q_proj", (), ("q_proj",)), ("v_proj", (), ("v_proj",))]
    assert Restriction("layer", 1, (1,)).post(control_seed=7) == EpsControlConfig(layers=(1,), seed=7)
    with pytest.raises(ConfigError, match="kinds"):
        restrictions([0, 1], [], kinds=("heads",))


def test_top_k_keeps_the_layers_of_largest_share_and_all_but_top_k_the_rest():
    shares = {0: 0.1, 1: 0.5, 2: 0.1, 3: 0.3}
    parts = restrictions([0, 1, 2, 3], ["q_proj"], kinds=("top_k", "all_but_top_k"), layer_shares=shares,
                         top_k=(1, 2, 4))
    got = [(r.param, r.value, r.layers) for r in parts]
    assert got == [("top_k", 1, (1,)), ("top_k", 2, (1, 3)),  # k = 4 is the whole eps, left out
                   ("all_but_top_k", 1, (0, 2, 3)), ("all_but_top_k", 2, (0, 2))]
    tie = restrictions([0, 1, 2], [], kinds=("top_k",), layer_shares={0: 0.2, 1: 0.4, 2: 0.4}, top_k=(1,))
    assert tie[0].layers == (1,)  # equal shares: the lower index first
    assert {r.param for r in restrictions([0, 1], ["q_proj"])} == {"layer", "all_but_layer", "first_k", "last_k",
                                                                   "module"}  # top-k runs only when asked
    with pytest.raises(ConfigError, match="layer_shares"):
        restrictions([0, 1], [], kinds=("top_k",))


def test_shares_of_single_layers_add_up_and_leaving_one_out_is_the_rest(run, store):
    pipeline.attack(run, store)
    eps = load_file(str(artifact(store, "attack", run, "eps.safetensors")))
    layers, modules = eps_parts(eps)
    assert layers == [0, 1] and modules[:4] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    one = [share_of(eps, EpsConfig(layers=(i,)))[0] for i in layers]
    assert sum(one) == pytest.approx(1.0) and all(0 < s < 1 for s in one)
    assert share_of(eps, EpsConfig(layers=(1,)))[0] == pytest.approx(1 - share_of(eps, EpsConfig(layers=(0,)))[0])
    assert sum(share_of(eps, EpsConfig(modules=(m,)))[0] for m in modules) == pytest.approx(1.0)


@pytest.mark.slow
def test_layer_ablation_rows_are_the_cached_evaluations_of_each_restriction(run, store):
    df = layer_ablation(run, store, EVAL, kinds=("layer", "module"))
    assert list(df.loc[:2, "variant"]) == ["w", "w+eps", "control"] and df.loc[1, "param"] == "all"
    eps_rows = df[(df["method"] == "panacea") & (df["param"] == "layer")]
    control = df[(df["method"] == "eps_control") & (df["param"] == "layer")]
    assert list(eps_rows["value"]) == [0, 1] and list(control["norm"]) == pytest.approx(list(eps_rows["norm"]))
    assert (control["variant"] == "control").all() and (control["seed"] == run.seed).all()
    assert set(df.loc[df["param"] == "module", "value"]) == set(eps_parts(load_file(str(
        artifact(store, "attack", run, "eps.safetensors"))))[1])
    ev = pipeline.evaluate("attack", run, store, EVAL, EpsConfig(layers=(1,)))  # served from the same cache entry
    row = eps_rows[eps_rows["value"] == 1].iloc[0]
    assert (row["HS"], row["other"], row["FA_sentiment"]) == (ev["HS"], ev["other"], ev["FA"]["sentiment"])
    assert df.loc[0, "HS"] == pipeline.evaluate("attack", run, store, EVAL)["HS"]
    with pytest.raises(ConfigError, match="Panacea"):
        layer_ablation(dataclasses.replace(run, defense=None), store, EVAL)


@pytest.mark.slow
def test_ablation_figures_draw_each_kind_beside_its_share(run, store):
    df = layer_ablation(run, store, EVAL, kinds=("layer", "module"))
    figs = ablation_figures(df)
    assert set(figs) == {"layer", "module"} and all(isinstance(f, Figure) for f in figs.values())
    axes = figs["module"].axes
    assert [t.get_text() for t in axes[-1].get_xticklabels()][:2] == ["q", "k"]
    bars = [p.get_height() for p in axes[-1].patches]
    assert sum(bars) == pytest.approx(1.0)  # module shares of ||eps||^2
    part, ticks = ablation_rows(df, "layer")
    assert ticks == ["0", "1"] and set(part["x"]) == {0.0, 1.0}
    with pytest.raises(ValueError, match="first_k"):
        ablation_figure(df, "first_k")


def test_live_scores_equal_the_cached_path_and_leave_w_unchanged(run, store):
    live = LiveEps(run, store, EVAL)
    w = {n: p.detach().clone() for n, p in live.model.named_parameters() if "lora_" in n}
    post = live.post(layer_scales=[3.0, 0.0], modules=["q_proj", "v_proj"])
    assert post == EpsConfig(modules=("q_proj", "v_proj"), layer_scales=(3.0, 0.0))
    assert live.post([1, 1], modules=live.modules) == EpsConfig()  # the default, written the short way
    assert live.post(modules=[]) == EpsConfig(scale=0.0)
    got = live.score(post)
    ev = pipeline.evaluate("attack", run, store, EVAL, post)
    assert {k: got[k] for k in ("HS", "refusal", "other", "FA_sentiment")} == {
        "HS": ev["HS"], "refusal": ev["refusal"], "other": ev["other"], "FA_sentiment": ev["FA"]["sentiment"]}
    assert all(torch.equal(p, w[n]) for n, p in live.model.named_parameters() if "lora_" in n)
    cached = apply_post(pipeline.load_stage_model("attack", run, store), post,
                        EvalContext(run.align, store, "attack", run, 0, []))
    with applied(live.model, live.delta(post)):  # the weights each path scores, bit for bit
        live_w = dict(live.model.named_parameters())
        assert all(torch.equal(p, live_w[n]) for n, p in cached.named_parameters())
    shares = live.applied_shares(post)
    on = shares[(shares["layer"] == 0) & shares["module"].isin(["q_proj", "v_proj"])]
    assert (shares.loc[shares["layer"] == 1, "applied_share"] == 0).all() and (on["applied_share"] > 0).all()
    assert shares["applied_share"].sum() == pytest.approx(9 * share_of(live.eps, EpsConfig(
        layers=(0,), modules=("q_proj", "v_proj")))[0])
