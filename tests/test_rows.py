"""Row selections read the registry, so the same mask picks the same kind of row whatever the methods are
called: the rows of a defense sweep, built here as the sweep lays them out, without training anything."""
from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from panacea_lab import defenses, settings
from panacea_lab.tables import rows
from panacea_lab.studies.sweeps import methods_of
from panacea_lab.config import ALIGNMENT, POST
from panacea_lab.defenses.registry import UNDEFENDED

TRAINED = defenses.get(defenses.trained_with_half()[0])  # Panacea: w, w + eps and its controls
SWEPT = next(n for n in defenses.names(POST, controls=False) if defenses.get(n).param and not defenses.get(n).post_half
             and defenses.get(n).sweep)  # noise: a post-fine-tuning defense with a knob


def _row(method, variant="w", param=None, value=None, p=0.1):
    return {"method": method, "variant": variant, "param": param, "value": value, "p": p, "seed": 0, "HS": 1.0}


def sweep_rows(values=(0.01, 0.02, 0.04, 0.08), trained_values=(0.5, 1.0)) -> pd.DataFrame:
    """No defense (continued and fresh adapter), one post-fine-tuning defense at `values`, and the trained
    defense at `trained_values` with its w, w + half and every control of the same value."""
    out = [_row(UNDEFENDED), _row(UNDEFENDED, "fresh"), _row("base", p=None), _row("aligned", p=None)]
    out += [_row(SWEPT, "w", defenses.get(SWEPT).param, v) for v in values]
    for v in trained_values:
        out += [_row(TRAINED.name, variant, TRAINED.param, v) for variant in ("w", f"w+{TRAINED.post_half}")]
        out += [_row(c, "control", TRAINED.param, v) for c in TRAINED.controls]
    return pd.DataFrame(out)


def test_each_mask_picks_its_kind_of_row():
    df = sweep_rows()
    assert df[rows.undefended(df)]["variant"].tolist() == ["w", "fresh"]
    assert set(df[rows.post_fine_tuning(df)]["method"]) == {SWEPT}
    assert set(df[rows.trained(df)]["method"]) == {TRAINED.name}
    assert set(df[rows.controls(df)]["method"]) == set(TRAINED.controls) and df[rows.controls(df)]["variant"].eq(
        "control").all()
    half = df[rows.through_post_half(df)]
    assert set(half["method"]) == {TRAINED.name} and half["value"].tolist() == [0.5, 1.0]


def test_served_drops_only_the_bare_w_of_a_defense_with_a_post_half():
    df = sweep_rows()
    dropped = df[~rows.served(df)]
    assert set(dropped["method"]) == {TRAINED.name} and dropped["variant"].eq("w").all() and len(dropped) == 2
    aligned_stage = defenses.names(ALIGNMENT)[0]  # a trained defense without a post half keeps its w
    other = pd.DataFrame([_row(aligned_stage)])
    assert rows.served(other).all()


def test_of_picks_a_config_at_its_value_without_its_controls():
    df = sweep_rows()
    chosen = settings.get().defense(TRAINED.name, **{TRAINED.param: 1.0})
    picked = df[rows.of(df, chosen)]
    assert picked["variant"].tolist() == ["w", f"w+{TRAINED.post_half}"] and picked["value"].eq(1.0).all()
    post = defenses.get(SWEPT).make(**{defenses.get(SWEPT).param: 0.04})
    both = df[rows.of(df, post, chosen)]
    assert len(both) == 3 and set(both["method"]) == {SWEPT, TRAINED.name}
    assert not rows.of(df).any()  # no config: no row


def test_middle_each_keeps_one_config_per_defense_in_the_order_given():
    grid = {SWEPT: {defenses.get(SWEPT).param: [0.01, 0.02, 0.04, 0.08]}, TRAINED.name: {TRAINED.param: [2.0]}}
    middle = rows.middle_each(methods_of(grid))
    assert [c.name for c in middle] == [SWEPT, TRAINED.name]
    assert getattr(middle[0], defenses.get(SWEPT).param) == 0.04 and getattr(middle[1], TRAINED.param) == 2.0
    assert rows.middle_each([]) == []


def test_the_masks_select_the_rows_a_figure_draws_across_ratios():
    """Notebook 03's figure across p: no defense, each post-fine-tuning defense at the middle of its
    values, the trained defense at the drawn value (its w and w + half), nothing else."""
    df = pd.concat([sweep_rows(), sweep_rows().assign(p=0.2)], ignore_index=True)
    drawn = dataclasses.replace(settings.get().defense(TRAINED.name), **{TRAINED.param: 0.5})
    posts = methods_of({SWEPT: {defenses.get(SWEPT).param: [0.01, 0.02, 0.04, 0.08]}})
    shown = df[rows.undefended(df) | rows.of(df, *rows.middle_each(posts), drawn)]
    per_ratio = {p: list(g[["method", "variant"]].itertuples(index=False)) for p, g in shown.groupby("p")}
    assert per_ratio[0.1] == per_ratio[0.2] and len(per_ratio[0.1]) == 5
    assert shown.loc[shown["method"].eq(SWEPT), "value"].eq(0.04).all()


@pytest.mark.parametrize("column", ["method", "variant"])
def test_a_frame_without_the_column_is_refused(column):
    with pytest.raises(KeyError):
        (rows.served if column == "variant" else rows.undefended)(sweep_rows().drop(columns=column))


def test_a_row_says_what_its_numbers_were_scored_on_and_carries_no_timing(tmp_path):
    from panacea_lab.studies.sweeps import result_row
    from panacea_lab.tables.export_rows import read_rows, write_rows

    ev = {"HS": 10.0, "refusal": 85.0, "other": 5.0, "FA": {"sentiment": 80.0}, "judge": "keyword", "n_harmful": 100,
          "config": {"stage": "attack", "eval": {"split": "test"},
                     "target": {"align": {"model": {"path": "/models/SmolLM2-135M-Instruct"}}, "p": 0.1}}}
    row = result_row(ev, method="none", label="no defense", p=0.1, seed=0, train_seconds=12.5)
    assert (row["base_model"], row["judge"], row["split"], row["n_harmful"]) == ("SmolLM2-135M-Instruct", "keyword",
                                                                                  "test", 100)
    base = {**ev, "config": {"stage": "base", "eval": {"split": "validation"}, "target": {"path": "embedded"}}}
    assert result_row(base, method="base", label="base")["base_model"] == "embedded"
    out = write_rows(pd.DataFrame([row]), tmp_path / "rows.csv", "test")
    assert "train_seconds" not in read_rows(out).columns and "finished_at" not in out.read_text()
