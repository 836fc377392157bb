"""A rerun reproduces a committed summary file: same runs, same metrics; a changed value, a lost run
or a rerun of nothing is reported and fails the command."""
from __future__ import annotations

import pandas as pd

from panacea_lab.cli import main as cli
from panacea_lab.tables.compare_rows import compare


def main(argv):
    return cli(["compare-rows", *argv])
from panacea_lab.tables.export_rows import write_rows


def _rows():
    rows = []
    for seed in (0, 1):
        for harmful_set, fa in (("test", 80.0), ("strongreject", None)):
            rows += [{"method": "none", "variant": "w", "value": None, "p": 0.1, "seed": seed,
                      "harmful_set": harmful_set, "HS": 90.0, "refusal": 8.0, "other": 2.0, "FA_sentiment": fa},
                     {"method": "panacea", "variant": "w+eps", "value": 1.0, "p": 0.1, "seed": seed,
                      "harmful_set": harmful_set, "HS": 70.0, "refusal": 20.0, "other": 10.0, "FA_sentiment": fa}]
    return pd.DataFrame(rows)


def test_identical_runs_match_and_nan_equals_nan():
    result = compare(_rows(), _rows().sample(frac=1.0, random_state=0))  # row order does not matter
    assert result == {"matched": 8, "missing": 0, "added": 0, "lacks": [], "differs": {}}


def test_a_changed_value_and_a_lost_run_are_reported(tmp_path):
    rerun = _rows()
    rerun.loc[1, "HS"] = 71.0  # seed 0's Panacea on AdvBench
    rerun.loc[3, "FA_sentiment"] = 79.0  # an FA where the committed file has none (StrongREJECT)
    rerun = rerun.drop(index=7)
    result = compare(_rows(), rerun)
    assert result == {"matched": 7, "missing": 1, "added": 0, "lacks": [], "differs": {"HS": 1, "FA_sentiment": 1}}
    write_rows(_rows(), tmp_path / "a.csv", "test")
    write_rows(rerun, tmp_path / "b.csv", "test")
    write_rows(_rows().iloc[:2], tmp_path / "part.csv", "test")
    assert main([str(tmp_path / "a.csv"), str(tmp_path / "a.csv")]) == 0
    assert main([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]) == 1
    assert main([str(tmp_path / "a.csv"), str(tmp_path / "part.csv")]) == 1  # runs lost...
    assert main([str(tmp_path / "a.csv"), str(tmp_path / "part.csv"), "--subset"]) == 0  # ...unless a subset was rerun
    assert main([str(tmp_path / "a.csv"), str(tmp_path / "nope.csv")]) == 2


def test_a_rerun_without_a_metric_or_a_run_column_or_with_a_run_twice_does_not_pass(tmp_path):
    import pytest

    assert compare(_rows(), _rows().drop(columns="HS"))["lacks"] == ["HS"]
    extra = pd.concat([_rows(), _rows().iloc[:1].assign(p=0.2)], ignore_index=True)
    assert compare(_rows(), extra)["added"] == 1
    with pytest.raises(ValueError, match="no \\['seed'\\] column"):
        compare(_rows(), _rows().drop(columns="seed"))
    with pytest.raises(ValueError, match="rerun file holds a run twice"):
        compare(_rows(), pd.concat([_rows(), _rows().iloc[:1]]))
    write_rows(_rows(), tmp_path / "a.csv", "test")
    write_rows(_rows().drop(columns="HS"), tmp_path / "no_hs.csv", "test")
    write_rows(pd.concat([_rows(), _rows().iloc[:1]]), tmp_path / "twice.csv", "test")
    assert main([str(tmp_path / "a.csv"), str(tmp_path / "no_hs.csv")]) == 1
    assert main([str(tmp_path / "a.csv"), str(tmp_path / "twice.csv")]) == 2
