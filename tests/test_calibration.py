"""The calibration's choice rule: lowest HS among settings that keep FA and do not break the model."""
from __future__ import annotations

import pandas as pd
import pytest

from panacea_lab.studies.calibration import choose, ranking


def _rows(*panacea):
    none = {"method": "none", "variant": "w", "value": None, "lam": 0.1, "HS": 90.0, "refusal": 5.0, "other": 5.0,
            "FA_sentiment": 80.0}
    rows = [none] + [{"method": "panacea", "variant": "w+eps", "value": rho, "lam": lam, "HS": hs, "refusal": 100 - hs - other,
                      "other": other, "FA_sentiment": fa} for rho, lam, hs, other, fa in panacea]
    rows += [{**r, "variant": "w", "HS": 0.0, "other": 0.0} for r in rows[1:]]  # w alone never competes
    return pd.DataFrame(rows)


def test_the_lowest_hs_that_keeps_fa_and_breaks_little_is_chosen():
    rows = _rows((1.0, 0.1, 10.0, 2.0, 79.0),   # qualifies
                 (2.0, 0.1, 0.0, 40.0, 78.0),   # lower HS, but breaks 40 % of answers
                 (0.5, 1.0, 5.0, 1.0, 60.0),    # lower HS, but costs 20 FA points
                 (0.5, 0.1, 8.0, 3.0, 76.0))    # qualifies, lowest HS among those that do
    chosen = choose(rows)
    assert (chosen["value"], chosen["lam"], chosen["HS"]) == (0.5, 0.1, 8.0)


def test_the_ranking_puts_qualifying_settings_first_and_its_head_is_the_choice():
    rows = _rows((1.0, 0.1, 10.0, 2.0, 79.0), (2.0, 0.1, 0.0, 40.0, 78.0), (0.5, 1.0, 5.0, 1.0, 60.0),
                 (0.5, 0.1, 8.0, 3.0, 76.0))
    ranked = ranking(rows)
    # qualifying by HS (8, then 10); then the rest by HS + other (6 before 40)
    assert list(zip(ranked["value"], ranked["lam"])) == [(0.5, 0.1), (1.0, 0.1), (0.5, 1.0), (2.0, 0.1)]
    assert ranked["qualifies"].tolist() == [True, True, False, False]
    assert choose(rows).equals(ranked.iloc[0].drop("qualifies"))
    # nothing qualifies (every row costs FA or breaks answers): all by HS + other, the smaller rho first on a tie
    none_ok = ranking(_rows((1.0, 0.1, 50.0, 45.0, 80.0), (2.0, 0.1, 0.0, 99.0, 80.0), (0.5, 1.0, 60.0, 20.0, 40.0),
                            (0.25, 0.1, 0.0, 95.0, 80.0)))
    assert none_ok["value"].tolist() == [0.5, 0.25, 1.0, 2.0] and not none_ok["qualifies"].any()


def test_ties_go_to_more_refusals_then_the_smaller_rho():
    chosen = choose(_rows((2.0, 0.1, 5.0, 5.0, 80.0), (1.0, 0.1, 5.0, 5.0, 80.0), (3.0, 0.1, 5.0, 0.0, 80.0)))
    assert chosen["value"] == 3.0  # same HS, more refusals (less other)
    assert choose(_rows((2.0, 0.1, 5.0, 5.0, 80.0), (1.0, 0.1, 5.0, 5.0, 80.0)))["value"] == 1.0


def test_when_nothing_qualifies_harm_is_counted_with_broken_answers():
    chosen = choose(_rows((1.0, 0.1, 50.0, 45.0, 80.0), (2.0, 0.1, 0.0, 99.0, 80.0), (0.5, 1.0, 60.0, 20.0, 40.0)))
    assert chosen["value"] == 0.5  # HS + other 80 beats 95 and 99, whatever its FA


def test_nothing_to_choose_from_is_an_error():
    with pytest.raises(ValueError, match="calibration sweep"):
        choose(_rows())


def test_without_task_accuracy_only_broken_answers_limit_the_choice():
    rows = _rows((1.0, 0.1, 10.0, 2.0, 79.0), (0.5, 1.0, 5.0, 1.0, 60.0)).drop(columns="FA_sentiment")
    assert choose(rows)["value"] == 0.5


def test_every_calibration_file_at_the_ratio_counts_and_a_setting_twice_counts_once(tmp_path):
    from panacea_lab.studies.calibration import read_calibrations
    from panacea_lab.tables.export_rows import write_rows

    def sweep(*settings):  # (lam, rho, h_const, HS)
        rows = [{"method": "none", "variant": "w", "HS": 88.0}]
        rows += [{"method": "panacea", "variant": "w+eps", "lam": lam, "value": rho, "h_const": h, "HS": hs}
                 for lam, rho, h, hs in settings]
        return pd.DataFrame(rows)

    assert read_calibrations(tmp_path, 0.1) is None
    write_rows(sweep((0.01, 1.0, False, 80.0)), tmp_path / "calibration_p0.1_validation.csv", "test")
    write_rows(sweep((0.01, 1.0, False, 70.0), (0.01, 1.0, True, 79.0)),
               tmp_path / "calibration_p0.1_validation_hconst.csv", "test")
    write_rows(sweep((0.1, 1.0, False, 10.0)), tmp_path / "calibration_p0.2_validation.csv", "test")
    rows = read_calibrations(tmp_path, 0.1)
    assert rows["method"].tolist() == ["none", "panacea", "panacea"]  # one no-defense row, p = 0.2 left out
    assert rows["HS"].tolist() == [88.0, 80.0, 79.0]  # the setting in both files keeps the first file's row
    assert rows["h_const"].tolist()[1:] == [False, True]
