"""Plots: labelled figures whose drawn data is the data asked for, and byte-reproducible saved files."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from matplotlib.collections import LineCollection, PolyCollection  # noqa: E402
from matplotlib.colors import LogNorm, to_hex  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from panacea_lab.plotting import style  # noqa: E402
from panacea_lab.tables.coefficients import pareto_front  # noqa: E402
from panacea_lab.plotting.plots import (  # noqa: E402
    MODULE_ORDER,
    coefficient_heatmap,
    grid_heatmap,
    heatmap_frame,
    method_bars,
    method_family,
    metric_vs_param,
    metric_vs_ratio,
    metric_vs_step,
    overhead_bars,
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


def overhead_frame() -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "device": "cpu", "batch_size": 4, "seconds_per_step": s, "peak_mib": mib,
                          "memory": "RSS above the loaded model"}
                         for m, s, mib in (("none", 0.2, 100.0), ("panacea", 0.6, 180.0), ("lisa", 0.25, 120.0))])


PLOTS = {
    "method_bars": (lambda: method_bars(defense_frame(), metrics=("HS", "FA_sentiment")), False),
    "overhead_bars": (lambda: overhead_bars(overhead_frame()), False),
    "grid_heatmap": (lambda: grid_heatmap(defense_frame().dropna(subset=["rho"]), "rho", "seed", "HS", "HS grid"),
                     False),
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


def _legend_texts(fig) -> list[str]:
    """The entries of the figure's one legend (drawn below the panels, shared by all of them)."""
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
    return [t.get_text() for t in fig.legends[0].get_texts()]


def _all_text(fig) -> str:
    return " | ".join(t.get_text() for t in fig.findobj(Text) if t.get_visible())


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
        assert len(_legend_texts(fig)) > 1


@pytest.mark.parametrize("name", PLOTS)
def test_every_figure_is_one_or_two_columns_wide_with_no_text_under_7pt(name):
    before = dict(plt.rcParams)
    fig = PLOTS[name][0]()
    fig.canvas.draw()  # tick labels exist once drawn
    assert fig.get_figwidth() in (style.SINGLE_COLUMN, style.DOUBLE_COLUMN)
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    assert texts and min(t.get_fontsize() for t in texts) >= style.MIN_FONT_PT
    assert dict(plt.rcParams) == before  # the paper style is applied to the figure only


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
    fig = metric_vs_param(df, "rho", metrics="HS")
    assert _legend_texts(fig) == ["panacea (w)", "panacea (w+eps)", "same-norm random", "no defense"]
    assert fig.axes[0].get_xlabel() == "perturbation radius rho"


def test_metric_vs_param_needs_one_ratio():
    df = defense_frame(ratios=(0.05, 0.1))
    with pytest.raises(ValueError, match="pass p="):
        metric_vs_param(df)
    assert "p=0.05" in _all_text(metric_vs_param(df, p=0.05))  # the ratio is named once, in the legend note
    with pytest.raises(ValueError, match="no rows at that ratio"):
        metric_vs_param(df, p=0.3)


def test_method_family_strips_parameters_only():
    assert [method_family(m) for m in ("no defense", "noise std=0.02", "antidote 0.1", "panacea rho=1 (w)",
                                       "panacea rho=0.5 (w+eps)", "same-norm random rho=1e-2", "llama2-7b")] == [
        "no defense", "noise", "antidote", "panacea (w)", "panacea (w+eps)", "same-norm random", "llama2-7b"]


def test_pareto_steps_through_each_familys_front():
    df = defense_frame()
    fig = pareto(df)
    ax = fig.axes[0]
    assert _legend_texts(fig) == ["no defense", "noise", "antidote", "panacea (w)", "panacea (w+eps)",
                                  "same-norm random"]
    noise = df[df["std"].notna()].groupby("model")[["FA_sentiment", "HS"]].mean()
    front = pareto_front(noise, "FA_sentiment", "HS")
    noise_color = to_hex(style.method_style("noise").color)
    steps = [line for line in ax.lines if to_hex(line.get_color()) == noise_color]
    assert len(steps) == 1
    np.testing.assert_allclose(steps[0].get_xdata(), front["FA_sentiment"].to_numpy())
    np.testing.assert_allclose(steps[0].get_ydata(), front["HS"].to_numpy())
    black = [line for line in ax.lines if to_hex(line.get_color()) == "#000000"]
    assert not black  # the undefended model is one point: no front drawn for it
    fig = pareto(df, group_by="model")  # a column works as the grouping too
    assert len(_legend_texts(fig)) == df["model"].nunique()


def test_two_series_of_one_style_in_a_pareto_plot_are_told_apart():
    df = typed_frame()
    fresh = df[df["method"].eq("none")].assign(label="no defense (fresh adapter)", variant="fresh", HS=0.0)
    fig = pareto(pd.concat([df, fresh], ignore_index=True))
    points = {c.get_label(): c for c in fig.axes[0].collections}
    plain, hollow = points["no defense"], points["no defense (fresh adapter)"]
    assert len(hollow.get_facecolors()) == 0 or hollow.get_facecolors()[0][3] == 0  # an open marker
    assert to_hex(hollow.get_edgecolors()[0]) == to_hex(plain.get_facecolors()[0])  # in the same colour
    assert hollow.get_paths()[0].vertices.shape != plain.get_paths()[0].vertices.shape  # of another shape


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


def test_save_figure_writes_png_and_pdf_byte_identical_across_saves_and_the_csv(tmp_path):
    df = attack_frame()
    first = save_figure(metric_vs_ratio(df), tmp_path / "a" / "attack.png", data=df)
    fig = metric_vs_ratio(df)
    second = save_figure(fig, tmp_path / "b" / "attack.png", data=df)
    for suffix, magic in ((".png", b"\x89PNG"), (".pdf", b"%PDF")):
        one, two = first.with_suffix(suffix).read_bytes(), second.with_suffix(suffix).read_bytes()
        assert one.startswith(magic) and one == two
        assert b"Matplotlib" not in one and b"CreationDate" not in one  # no version or date stamped
    assert b"/FontFile2" in first.with_suffix(".pdf").read_bytes()  # TrueType (Type 42), not Type 3 fonts
    assert not plt.fignum_exists(fig.number)
    back = pd.read_csv(first.with_suffix(".csv"))
    pd.testing.assert_frame_equal(back, df, check_dtype=False)  # 11.0 is written 11 (6 significant digits)
    assert sorted(p.name for p in first.parent.iterdir()) == ["attack.csv", "attack.pdf", "attack.png"]
    with pytest.raises(ValueError, match=r"\.png"):
        save_figure(metric_vs_ratio(df), tmp_path / "attack.pdf")


def test_the_figure_csv_has_no_timings_and_equal_metrics_give_equal_bytes(tmp_path):
    df = attack_frame().assign(train_seconds=12.3)
    noisy = df.assign(HS=df["HS"] * (1 + 1e-9), train_seconds=99.9)  # another machine: float noise, another time
    one = save_figure(metric_vs_ratio(df), tmp_path / "a" / "f.png", data=df).with_suffix(".csv")
    two = save_figure(metric_vs_ratio(noisy), tmp_path / "b" / "f.png", data=noisy).with_suffix(".csv")
    assert one.read_bytes() == two.read_bytes()
    assert "train_seconds" not in one.read_text().splitlines()[0]
    moved = save_figure(metric_vs_ratio(df), tmp_path / "c" / "f.png", data=df.assign(HS=df["HS"] + 0.5))
    assert moved.with_suffix(".csv").read_bytes() != one.read_bytes()  # a real change still shows


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
    assert set(_legend_texts(fig)) == {"fine-tuned", "noise std=0.02"}


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
    zero = method_bars(df.assign(HS=lambda d: d["HS"].where(d["model"].eq("a"), 0.0)), metrics="HS").axes[0]
    assert [t.get_text() for t in zero.texts] == ["0", "51"]  # a bar of height 0 still says its value


def _colors_by_label(fig) -> dict[str, str]:
    """Legend label -> the colour of the artist drawn for it, over every panel (lines and scatters)."""
    out = {}
    for ax in _plot_axes(fig):
        for line in ax.lines:
            if not line.get_label().startswith("_"):
                out.setdefault(line.get_label(), to_hex(line.get_color()))
        for coll in ax.collections:
            if not coll.get_label().startswith("_") and len(coll.get_facecolors()):
                out.setdefault(coll.get_label(), to_hex(coll.get_facecolors()[0]))
    return out


def test_a_method_has_the_same_colour_in_every_figure():
    df = defense_frame()
    in_pareto = _colors_by_label(pareto(df))
    in_param = _colors_by_label(metric_vs_param(df, "rho", metrics="HS"))
    bars = method_bars(df, metrics="HS").axes[0]
    in_bars = {t.get_text(): to_hex(p.get_facecolor()) for t, p in zip(bars.get_xticklabels(), bars.patches)}
    panacea = style.method_style("panacea (w+eps)").color.lower()
    assert in_pareto["panacea (w+eps)"] == in_param["panacea (w+eps)"] == in_bars["panacea rho=1 (w+eps)"] == panacea
    assert in_pareto["no defense"] == in_param["no defense"] == in_bars["no defense"] == "#000000"
    assert in_pareto["noise"] == in_bars["noise std=0.02"] != in_pareto["panacea (w)"]
    assert len({in_pareto[f] for f in in_pareto}) == len(in_pareto)  # different methods, different colours


def test_a_typed_method_column_picks_the_style_and_unknown_names_are_grey():
    df = defense_frame().query("model in ['no defense', 'panacea rho=1 (w+eps)']").assign(
        model=lambda d: d["model"].map({"no defense": "ours", "panacea rho=1 (w+eps)": "theirs"}))
    df["method"] = df["model"].map({"ours": "panacea", "theirs": "vaccine"})
    df["variant"] = df["model"].map({"ours": "w+eps", "theirs": None})
    bars = method_bars(df, metrics="HS").axes[0]
    colors = {t.get_text(): to_hex(p.get_facecolor()) for t, p in zip(bars.get_xticklabels(), bars.patches)}
    assert colors == {"ours": style.method_style("panacea (w+eps)").color.lower(),
                      "theirs": style.method_style("vaccine").color.lower()}
    unknown = method_bars(df.drop(columns=["method", "variant"]), metrics="HS").axes[0]
    assert {to_hex(p.get_facecolor()) for p in unknown.patches} == {style.UNKNOWN.color.lower()}
    assert style.method_style("SFT (no defense)") == style.method_style("fine-tuned") == style.method_style("no defense")
    assert style.method_style("Vaccine") == style.method_style("vaccine") and style.method_style("x") == style.UNKNOWN


def _spread_artists(ax) -> list:
    return [c for c in ax.collections if isinstance(c, (PolyCollection, LineCollection))]


def test_one_seed_draws_no_spread_and_says_one_seed():
    one = attack_frame().query("seed != seed or seed == 0")  # reference rows (seed NaN) and seed 0
    fig = metric_vs_ratio(one, metrics="HS")
    assert not _spread_artists(fig.axes[0]) and "one seed" in _all_text(fig) and "±" not in _all_text(fig)
    fig = metric_vs_ratio(attack_frame(), metrics="HS")
    assert _spread_artists(fig.axes[0]) and "mean ± 1 std over 3 seeds" in _all_text(fig)
    bars = method_bars(defense_frame().query("seed == 0"), metrics="HS")
    assert not _spread_artists(bars.axes[0]) and "one seed" in _all_text(bars)
    bars = method_bars(defense_frame(), metrics="HS")
    assert len(_spread_artists(bars.axes[0])) == 1 and "over 3 seeds" in _all_text(bars)


def test_a_series_mixing_one_and_several_seeds_is_named_in_the_legend():
    frame = attack_frame()
    single = frame[(frame["model"] == "fine-tuned") & (frame["seed"] == 0)].assign(model="noise std=0.02")
    fig = metric_vs_ratio(pd.concat([frame, single]), metrics="HS", reference=False,
                          series=("fine-tuned", "noise std=0.02"))
    assert _legend_texts(fig) == ["fine-tuned", "noise std=0.02 (one seed)"]
    assert "where ≥ 2 seeds" in fig.legends[0].get_title().get_text()


def test_fewer_than_three_points_are_markers_without_a_line():
    short = attack_frame().query("p != p or p <= 0.05")  # two ratios
    line = metric_vs_ratio(short, metrics="HS", reference=False).axes[0].lines[0]
    assert line.get_linestyle() == "None" and line.get_marker() == style.method_style("no defense").marker
    assert metric_vs_ratio(attack_frame(), metrics="HS").axes[0].lines[0].get_linestyle() == "-"
    twice = defense_frame()  # two noise series in one panel keep noise's colour, told apart by line style
    ax = metric_vs_ratio(twice, metrics="HS", reference=False, series=("noise std=0.01", "noise std=0.02")).axes[0]
    assert [line.get_linestyle() for line in ax.lines] == ["None", "None"]  # one ratio: markers only
    assert len({to_hex(line.get_color()) for line in ax.lines}) == 1
    assert [line.get_markerfacecolor() for line in ax.lines][1] == "white" != ax.lines[0].get_markerfacecolor()
    stds = [f"noise std={std:g}" for std in STDS[:3]]
    three = metric_vs_ratio(twice, metrics="HS", reference=False, series=stds).axes[0]
    looks = {(line.get_marker(), line.get_markerfacecolor()) for line in three.lines}
    assert len(looks) == 3  # a third lineless twin: an open marker of another shape


@pytest.mark.parametrize("n_series", [2, 5])
def test_a_legend_of_long_names_stays_inside_the_figure(n_series):
    frame = attack_frame()
    names = [f"same-norm random direction rho=1 (w + eps) [setting number {i}]" for i in range(n_series)]
    tuned = frame[frame["model"] == "fine-tuned"]
    fig = metric_vs_ratio(pd.concat([tuned.assign(model=n) for n in names]), metrics=("HS", "refusal", "other"),
                          reference=False, series=names)
    fig.canvas.draw()
    box, page = fig.legends[0].get_window_extent(), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1, (box, page)
    assert _legend_texts(fig) == names


def test_percentage_axes_start_at_zero_and_a_moved_fa_axis_says_so():
    fig = metric_vs_ratio(attack_frame(), metrics=("HS", "FA_sentiment"))
    assert [ax.get_ylim()[0] for ax in fig.axes] == [0.0, 0.0]
    ax = pareto(defense_frame()).axes[0]
    assert ax.get_xlim()[0] == 0.0 and ax.get_ylim()[0] == 0.0
    moved = metric_vs_ratio(attack_frame(), metrics="FA_sentiment", fa_from=50).axes[0]
    assert moved.get_ylim()[0] == 50 and moved.get_ylabel().endswith("axis from 50")
    with pytest.raises(ValueError, match="fa_from"):
        metric_vs_ratio(attack_frame(), metrics="FA_sentiment", fa_from=100)


def test_pareto_tags_points_with_their_parameter_without_overprinting():
    points = {"no defense": (90, 80), "noise std=0.01": (85, 60), "noise std=0.02": (85.2, 60.1),
              "noise std=0.04": (50, 20), "panacea rho=1 (w+eps)": (88, 5)}
    df = pd.DataFrame([{"model": m, "seed": s, "FA_sentiment": fa, "HS": hs} for m, (fa, hs) in points.items()
                       for s in (0, 1)])
    tags = {t.get_text(): t.xy for t in pareto(df).axes[0].texts}
    assert tags.pop("std=0.04") == (50, 20)
    assert list(tags) in (["std=0.01"], ["std=0.02"])  # two tags on one spot: the second is left out
    assert "rho=1" not in tags  # a single point: its legend entry names it, no front, no tag


def test_heatmap_log_scale_when_one_cell_dominates():
    coeffs = coeff_frame()
    assert not isinstance(coefficient_heatmap(coeffs).axes[0].collections[0].norm, LogNorm)
    coeffs.loc[0, "eps_share"] = 1000.0  # one tensor holds nearly all of eps
    fig = coefficient_heatmap(coeffs)
    assert isinstance(fig.axes[0].collections[0].norm, LogNorm) and "(log scale)" in _all_text(fig)
    assert not isinstance(coefficient_heatmap(coeffs, scale="linear").axes[0].collections[0].norm, LogNorm)
    assert isinstance(coefficient_heatmap(coeff_frame(), scale="log").axes[0].collections[0].norm, LogNorm)
    with pytest.raises(ValueError, match="scale"):
        coefficient_heatmap(coeffs, scale="sqrt")


def test_overhead_bars_show_time_relative_to_the_baseline_in_method_colours():
    df = overhead_frame()
    fig = overhead_bars(df)
    time_ax, mem_ax = fig.axes
    assert [bar.get_height() for bar in time_ax.patches] == pytest.approx([1.0, 3.0, 1.25])
    assert [bar.get_height() for bar in mem_ax.patches] == [100.0, 180.0, 120.0]
    assert [to_hex(bar.get_facecolor()) for bar in time_ax.patches] == [
        style.method_style(m).color.lower() for m in ("no defense", "panacea (w+eps)", "lisa")]
    assert "cpu" in time_ax.get_title() and "RSS" in mem_ax.get_title()
    with pytest.raises(ValueError, match="baseline = 'vaccine'"):
        overhead_bars(df, baseline="vaccine")


def typed_frame() -> pd.DataFrame:
    """Rows as the sweeps now write them: display `label`, typed method / variant, param and value."""
    legacy = defense_frame()
    rows = []
    for _, r in legacy.iterrows():
        model = r["model"]
        method, variant, param, value = {
            "no defense": ("none", "w", None, None), "antidote 0.1": ("antidote", "w", "dense_ratio", 0.1)}.get(
            model, (None, "w", None, None))
        if model.startswith("noise"):
            method, param, value = "noise", "std", r["std"]
        elif model.startswith("panacea"):
            method, variant, param, value = "panacea", "w+eps" if "w+eps" in model else "w", "rho", r["rho"]
        elif model.startswith("same-norm"):
            method, variant, param, value = "random_direction", "control", "rho", r["rho"]
        rows.append({"label": model.replace("(w+eps)", "(w + eps)"), "method": method, "variant": variant,
                     "param": param, "value": value, "p": r["p"], "seed": r["seed"], "norm": r.get("norm"),
                     "HS": r["HS"], "FA_sentiment": r["FA_sentiment"]})
    return pd.DataFrame(rows)


def test_typed_rows_draw_like_labelled_ones_with_method_colours_and_param_tags():
    typed, legacy = typed_frame(), defense_frame()
    ax = metric_vs_param(typed, "std", metrics="HS").axes[0]
    noise = legacy[legacy["std"].notna()].groupby("std")["HS"].mean()
    np.testing.assert_allclose(ax.lines[0].get_xdata(), noise.index.to_numpy())
    np.testing.assert_allclose(ax.lines[0].get_ydata(), noise.to_numpy())
    fig = pareto(typed)
    colors = _colors_by_label(fig)
    assert colors["panacea (w + eps)"] == style.method_style("panacea (w+eps)").color.lower()
    assert colors["same-norm random"] == style.method_style("same-norm random").color.lower()
    tags = {t.get_text() for t in fig.axes[0].texts}
    assert "rho=1" in tags and "dense_ratio=0.1" not in tags  # a swept parameter is tagged, a single run is not


def test_a_parameter_that_doubles_gets_a_log_axis_ticked_at_its_values():
    df = defense_frame()
    wide = df[df["std"].eq(0.04)].assign(std=0.08, model="noise std=0.08", HS=0.0)
    df = pd.concat([df, wide], ignore_index=True)  # 0.01 ... 0.08: a factor of 8
    ax = metric_vs_param(df, "std", metrics="HS").axes[0]
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.01", "0.02", "0.04", "0.08"]
    narrow = df[df["std"].isna() | df["std"].isin([0.01, 0.02, 0.04])]  # a factor of 4: linear stays
    assert metric_vs_param(narrow, "std", metrics="HS").axes[0].get_xscale() == "linear"
    assert "noise std" in metric_vs_param(df, "std", metrics="HS").axes[0].get_title()  # words, not `std`


def test_heatmaps_meant_to_be_compared_share_one_colour_scale():
    from panacea_lab.plotting.plots import heatmap_frame, shared_scale

    eps = coeff_frame()
    eps.loc[0, "eps_share"] = 1000.0  # one tensor holds nearly all of eps: the pair goes on a log scale
    tables = [heatmap_frame(eps, value="eps_share"), heatmap_frame(eps, value="noise_share")]
    scale, (lo, hi) = shared_scale(tables)
    assert scale == "log" and lo == min(t.to_numpy().min() for t in tables) and hi == max(t.to_numpy().max() for t in tables)
    norms = [coefficient_heatmap(eps, value=v, scale=scale, limits=(lo, hi)).axes[0].collections[0].norm
             for v in ("eps_share", "noise_share")]
    assert all(isinstance(n, LogNorm) and (n.vmin, n.vmax) == (lo, hi) for n in norms)
    assert shared_scale([heatmap_frame(coeff_frame(), value="noise_share")])[0] == "linear"
    assert "share of ||eps||²" in coefficient_heatmap(eps).axes[0].get_title()  # words, not `eps_share`


def test_ratio_panels_give_each_comparison_its_column_and_each_role_one_look():
    from panacea_lab.plotting.plots import ratio_panels

    roles = {"no defense": ("none", "w"), "eps [a]": ("panacea", "w+eps"), "ctrl [a]": ("random_direction", "control"),
             "eps [b]": ("panacea", "w+eps"), "ctrl [b]": ("random_direction", "control"),
             "no defense (fresh)": ("none", "fresh"), "antidote": ("antidote", "w")}
    df = pd.DataFrame([{"label": name, "method": m, "variant": v, "p": p, "seed": s, "HS": 50 + 10 * p + s,
                        "refusal": 10.0, "other": 5.0, "FA_sentiment": 80.0}
                       for name, (m, v) in roles.items() for p in (0.05, 0.1, 0.2) for s in (0, 1)])
    panels = {"a": ["no defense", "eps [a]", "ctrl [a]"], "b": ["no defense", "eps [b]", "ctrl [b]"],
              "fresh": ["no defense (fresh)", "antidote"]}
    names = {"eps [a]": "Panacea", "eps [b]": "Panacea", "ctrl [a]": "control", "ctrl [b]": "control"}
    fig = ratio_panels(df, panels, ("HS", "refusal", "other", "FA_sentiment"), legend_names=names)
    axes = [ax for ax in fig.axes if ax.get_title() or ax.get_ylabel() or ax.lines]
    assert len(fig.axes) == 12 and [ax.get_title() for ax in fig.axes[:3]] == ["a", "b", "fresh"]
    assert all(ax.get_ylim() == (0.0, 105.0) for ax in axes)
    assert _legend_texts(fig) == ["no defense", "Panacea", "control", "no defense (fresh)", "antidote"]
    undefended = {line.get_label(): line.get_linestyle() for ax in fig.axes for line in ax.lines}
    assert undefended["no defense"] != undefended["no defense (fresh)"]  # one colour, told apart by the line
    with pytest.raises(ValueError, match="lack"):
        ratio_panels(df, {"x": ["nobody"]}, ("HS",))


def test_a_one_seed_share_of_prompts_shows_its_sampling_interval():
    from panacea_lab.plotting.figure_parts import wilson

    low, high = wilson(np.array([50.0]), np.array([100.0]))
    assert (round(low[0], 1), round(high[0], 1)) == (40.4, 59.6)  # the Wilson interval of 50/100, by hand
    df = attack_frame().query("seed == 0").assign(n_harmful=100)
    fig = metric_vs_ratio(df, metrics=("HS", "FA_sentiment"))
    hs, fa = fig.axes[:2]
    assert [c.get_label() for c in hs.containers] == ["_prompt-interval"]  # HS: a share of 100 prompts
    assert not fa.containers  # FA: no prompt count in the rows, no interval drawn
    assert "95% interval over its prompts" in _all_text(fig)  # the note says what the bars are
    three = metric_vs_ratio(attack_frame().assign(n_harmful=100), metrics=("HS",))
    assert not three.axes[0].containers  # several seeds: their spread, not the prompts'
