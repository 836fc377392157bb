"""Plots: labelled figures whose drawn data is the data asked for, and byte-reproducible saved files."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from panacea_lab.analysis.coefficients import pareto_front  # noqa: E402
from panacea_lab.analysis.plots import (  # noqa: E402
    MODULE_ORDER,
    coefficient_heatmap,
    heatmap_frame,
    method_bars,
    method_family,
    metric_vs_param,
    metric_vs_ratio,
    metric_vs_step,
    pareto,
    save_figure,
    training_curves,
)

RATIOS, SEEDS, STDS, RHOS = (0.0, 0.05, 0.1, 0.2), (0, 1, 2), (0.01, 0.02, 0.04), (0.5, 1.0)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _metrics(rng, hs: float, fa: float) -> dict:
    hs = float(np.clip(hs + rng.normal(0, 3), 0, 100))
    return {"HS": hs, "refusal": 100 - hs - 5, "other": 5.0, "FA_sentiment": float(np.clip(fa + rng.normal(0, 2), 0, 100))}


def attack_frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [{"model": "base", "p": np.nan, "seed": np.nan, **_metrics(rng, 60, 50), "FA_topic": 40.0},
            {"model": "aligned", "p": np.nan, "seed": np.nan, **_metrics(rng, 5, 52), "FA_topic": 41.0}]
    rows += [{"model": "fine-tuned", "p": p, "seed": s, **_metrics(rng, 5 + 300 * p, 90), "FA_topic": np.nan}
             for s in SEEDS for p in RATIOS]
    return pd.DataFrame(rows)


def defense_frame(ratios=(0.1,)) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for s in SEEDS:
        for p in ratios:
            add = lambda model, hs, fa, **kw: rows.append({"model": model, "p": p, "seed": s, **kw,  # noqa: E731
                                                           **_metrics(rng, hs, fa)})
            add("no defense", 40, 90)
            for std in STDS:
                add(f"noise std={std:g}", 40 - 400 * std, 90 - 600 * std, std=std)
            add("antidote 0.1", 25, 80)
            for rho in RHOS:
                norm = rho * (1 + 0.1 * s)
                add(f"panacea rho={rho:g} (w)", 35, 89, rho=rho)
                add(f"panacea rho={rho:g} (w+eps)", 15 / rho, 88, rho=rho, norm=norm)
                add(f"same-norm random rho={rho:g}", 38, 89, rho=rho, norm=norm)
    return pd.DataFrame(rows)


def coeff_frame(layers=4, shuffle=True) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    df = pd.DataFrame([{"layer": layer, "module": m} for layer in range(layers) for m in MODULE_ORDER])
    for col in ("eps_share", "noise_share"):
        raw = rng.random(len(df))
        df[col] = raw / raw.sum()
    return df.sample(frac=1.0, random_state=0).reset_index(drop=True) if shuffle else df


def train_log() -> list[dict]:
    return [{"step": i, "loss": 2.0 / (1 + i), "h": 1.0 + 0.05 * i, "h_eps": 1.5 + 0.2 * i, "grad_h_norm": 3.0 - 0.1 * i}
            for i in range(10)]


def trajectory_frame() -> pd.DataFrame:
    """Two runs x two seeds; HS rises with step, faster for p=0.2."""
    return pd.DataFrame([{"run": f"p={p}", "seed": s, "step": k * 10, "HS": min(100.0, p * 100 * k + s),
                          "FA_sentiment": 70.0 + k} for p in (0.1, 0.2) for s in (0, 2) for k in range(4)])


PLOTS = {
    "method_bars": (lambda: method_bars(defense_frame(), metrics=("HS", "FA_sentiment")), False),
    "metric_vs_step": (lambda: metric_vs_step(trajectory_frame()), True),
    "metric_vs_ratio": (lambda: metric_vs_ratio(attack_frame()), True),
    "metric_vs_param": (lambda: metric_vs_param(defense_frame(), "std"), True),
    "metric_vs_param_norm": (lambda: metric_vs_param(defense_frame(), "norm", metrics="HS"), True),
    "pareto": (lambda: pareto(defense_frame()), True),
    "heatmap": (lambda: coefficient_heatmap(coeff_frame()), False),
    "training_curves": (lambda: training_curves(train_log()), True),
}


def _plot_axes(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


@pytest.mark.parametrize("name", PLOTS)
def test_every_axes_has_a_title_labels_and_a_legend_when_multi_series(name):
    make, multi = PLOTS[name]
    fig = make()
    assert isinstance(fig, matplotlib.figure.Figure)
    axes = _plot_axes(fig)
    assert axes
    for ax in axes:
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    if multi:
        assert axes[0].get_legend() is not None and len(axes[0].get_legend().get_texts()) > 1


def test_metric_vs_ratio_draws_the_mean_over_seeds_and_reference_lines():
    df = attack_frame()
    fig = metric_vs_ratio(df, metrics=("HS", "FA_sentiment"))
    expected = df[df["model"] == "fine-tuned"].groupby("p")[["HS", "FA_sentiment"]].mean()
    for ax, metric in zip(fig.axes, ("HS", "FA_sentiment")):
        assert ax.get_ylabel().endswith("(%)") and ax.get_xlabel() == "harmful ratio p"
        mean_line = ax.lines[0]
        np.testing.assert_allclose(mean_line.get_xdata(), expected.index.to_numpy())
        np.testing.assert_allclose(mean_line.get_ydata(), expected[metric].to_numpy())
        refs = {line.get_label(): line.get_ydata()[0] for line in ax.lines[1:]}
        assert set(refs) == {"base", "aligned"}
        assert refs["aligned"] == pytest.approx(df.loc[df["model"] == "aligned", metric].item())
    assert fig.axes[1].get_ylabel() == "fine-tuning accuracy FA (%)"
    assert len(metric_vs_ratio(df, "HS", reference=False).axes[0].lines) == 1


def test_metric_vs_param_plots_each_family_against_its_parameter():
    df = defense_frame()
    ax = metric_vs_param(df, "std", metrics="HS").axes[0]
    noise = df[df["std"].notna()].groupby("std")["HS"].mean()
    np.testing.assert_allclose(ax.lines[0].get_xdata(), noise.index.to_numpy())
    np.testing.assert_allclose(ax.lines[0].get_ydata(), noise.to_numpy())
    assert ax.lines[-1].get_label() == "no defense"
    assert ax.lines[-1].get_ydata()[0] == pytest.approx(df.loc[df["model"] == "no defense", "HS"].mean())
    ax = metric_vs_param(df, "rho", metrics="HS").axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "panacea (w)", "panacea (w+eps)", "same-norm random", "no defense"]
    assert ax.get_xlabel() == "perturbation radius rho"


def test_metric_vs_param_needs_one_ratio():
    df = defense_frame(ratios=(0.05, 0.1))
    with pytest.raises(ValueError, match="pass p="):
        metric_vs_param(df)
    assert "p=0.05" in metric_vs_param(df, p=0.05).axes[0].get_title()
    with pytest.raises(ValueError, match="no rows at that ratio"):
        metric_vs_param(df, p=0.3)


def test_method_family_strips_parameters_only():
    assert [method_family(m) for m in ("no defense", "noise std=0.02", "antidote 0.1", "panacea rho=1 (w)",
                                       "panacea rho=0.5 (w+eps)", "same-norm random rho=1e-2", "llama2-7b")] == [
        "no defense", "noise", "antidote", "panacea (w)", "panacea (w+eps)", "same-norm random", "llama2-7b"]


def test_pareto_steps_through_each_familys_front():
    df = defense_frame()
    ax = pareto(df).axes[0]
    families = [t.get_text() for t in ax.get_legend().get_texts()]
    assert families == ["no defense", "noise", "antidote", "panacea (w)", "panacea (w+eps)", "same-norm random"]
    noise = df[df["std"].notna()].groupby("model")[["FA_sentiment", "HS"]].mean()
    front = pareto_front(noise, "FA_sentiment", "HS")
    np.testing.assert_allclose(ax.lines[1].get_xdata(), front["FA_sentiment"].to_numpy())
    np.testing.assert_allclose(ax.lines[1].get_ydata(), front["HS"].to_numpy())
    ax = pareto(df, group_by="model").axes[0]  # a column works as the grouping too
    assert len(ax.get_legend().get_texts()) == df["model"].nunique()


@pytest.mark.parametrize("normalise,axis", [("layer", 1), ("module", 0)])
def test_heatmap_normalisation_sums_rows_or_columns_to_one(normalise, axis):
    table = heatmap_frame(coeff_frame(), normalise=normalise)
    np.testing.assert_allclose(table.sum(axis=axis).to_numpy(), 1.0)
    assert list(table.columns) == list(MODULE_ORDER) and list(table.index) == [0, 1, 2, 3]


def test_heatmap_filters_renormalise_and_the_artist_shows_the_frame():
    coeffs = coeff_frame()
    table = heatmap_frame(coeffs, modules=["v_proj", "q_proj", "k_proj"], layers=[2, 0])
    assert list(table.columns) == ["q_proj", "k_proj", "v_proj"] and list(table.index) == [0, 2]
    assert table.to_numpy().sum() == pytest.approx(1.0)
    raw = heatmap_frame(coeffs, normalise=None)
    assert raw.loc[3, "down_proj"] == pytest.approx(
        coeffs.query("layer == 3 and module == 'down_proj'")["eps_share"].item())
    fig = coefficient_heatmap(coeffs, "noise_share", normalise="layer", layers=[1, 3])
    drawn = np.asarray(fig.axes[0].collections[0].get_array()).reshape(2, len(MODULE_ORDER))
    np.testing.assert_allclose(drawn, heatmap_frame(coeffs, "noise_share", "layer", layers=[1, 3]).to_numpy())
    assert heatmap_frame(coeffs).equals(heatmap_frame(coeffs.iloc[::-1]))  # input order does not matter


def test_heatmap_rejects_bad_selections():
    with pytest.raises(ValueError, match="normalise"):
        heatmap_frame(coeff_frame(), normalise="row")
    with pytest.raises(ValueError, match="lm_head"):
        heatmap_frame(coeff_frame(), modules=["lm_head"])
    with pytest.raises(ValueError, match="zero eps_share"):
        heatmap_frame(coeff_frame().assign(eps_share=0.0), normalise="layer")


def test_save_figure_is_byte_reproducible_and_writes_the_csv(tmp_path):
    df = attack_frame()
    first = save_figure(metric_vs_ratio(df), tmp_path / "a" / "attack.png", data=df)
    fig = metric_vs_ratio(df)
    second = save_figure(fig, tmp_path / "b" / "attack.png", data=df)
    assert first.read_bytes() == second.read_bytes() and b"Matplotlib version" not in first.read_bytes()
    assert not plt.fignum_exists(fig.number)
    back = pd.read_csv(first.with_suffix(".csv"))
    pd.testing.assert_frame_equal(back, df)
    assert sorted(p.name for p in first.parent.iterdir()) == ["attack.csv", "attack.png"]  # no temp files left
    with pytest.raises(ValueError, match=r"\.png"):
        save_figure(metric_vs_ratio(df), tmp_path / "attack.pdf")


@pytest.mark.parametrize("call,column", [
    (lambda: metric_vs_ratio(attack_frame().drop(columns="HS")), "HS"),
    (lambda: metric_vs_ratio(attack_frame(), metrics=("FA_math",)), "FA_math"),
    (lambda: metric_vs_param(defense_frame().drop(columns="std")), "std"),
    (lambda: pareto(defense_frame(), x="FA_topic"), "FA_topic"),
    (lambda: coefficient_heatmap(coeff_frame().drop(columns="eps_share")), "eps_share"),
    (lambda: training_curves([{"step": 0, "h": 1.0}]), "loss"),
])
def test_a_missing_column_is_named(call, column):
    with pytest.raises(ValueError, match=f"'{column}' not in the .* frame \\(has "):
        call()


def test_empty_or_unscored_inputs_say_what_produced_nothing():
    with pytest.raises(ValueError, match="empty"):
        training_curves([])
    with pytest.raises(ValueError, match=r"no \['fine-tuned'\] rows"):
        metric_vs_ratio(attack_frame().query("model != 'fine-tuned'"))
    with pytest.raises(ValueError, match="not scored"):
        metric_vs_ratio(attack_frame(), metrics="FA_topic")


def test_metric_vs_ratio_draws_one_band_per_named_series():
    frame = attack_frame()
    other = frame[frame["model"] == "fine-tuned"].assign(model="noise std=0.02", HS=lambda d: d["HS"] / 2)
    both = pd.concat([frame, other])
    fig = metric_vs_ratio(both, metrics="HS", reference=False, series=("fine-tuned", "noise std=0.02"))
    ax = fig.axes[0]
    means = [list(line.get_ydata()) for line in ax.lines]
    expected = [list(both[both["model"] == m].groupby("p")["HS"].mean()) for m in ("fine-tuned", "noise std=0.02")]
    assert len(means) == 2
    for got, want in zip(means, expected):
        assert got == pytest.approx(want)
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"fine-tuned", "noise std=0.02"}


def test_metric_vs_step_draws_the_seed_mean_per_run_in_step_order():
    df = trajectory_frame().sample(frac=1.0, random_state=1)  # order must not matter
    ax = metric_vs_step(df, metrics="HS").axes[0]
    assert sorted(line.get_label() for line in ax.lines) == ["p=0.1", "p=0.2"]
    by_label = {line.get_label(): line for line in ax.lines}
    assert list(by_label["p=0.1"].get_xdata()) == [0, 10, 20, 30]
    assert list(by_label["p=0.1"].get_ydata()) == [1.0, 11.0, 21.0, 31.0]  # mean of seeds 0 and 2


def test_method_bars_show_the_seed_mean_of_each_method_in_order():
    df = pd.DataFrame([{"model": m, "p": 0.1, "seed": s, "HS": h + s} for m, h in (("b", 10.0), ("a", 50.0))
                       for s in (0, 2)])
    ax = method_bars(df, metrics="HS").axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["b", "a"]
    assert [bar.get_height() for bar in ax.patches] == [11.0, 51.0]
