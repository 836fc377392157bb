"""The real-model grid tables: seeds paired by seed, a run written twice counted once, and the
generated results pages equal to what the committed summaries give (tests/test_report.py)."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pytest

from panacea_lab.tables import grid_tables
from panacea_lab.tables.export_rows import write_rows
from panacea_lab.config import POST, DefenseConfig
from panacea_lab.defenses.registry import REGISTRY, Defense
from panacea_lab.paths import PACKAGE_ROOT


def _seed(seed, hs_none, hs_eps, hs_control, fa=(80.0, 78.0), p=0.1, setting="chosen"):
    """One seed's rows on AdvBench (test) and StrongREJECT: no defense, Panacea w + eps, its control."""
    rows = []
    for harmful_set, shift in (("test", 0.0), ("strongreject", -5.0)):
        fa_none, fa_eps = fa if harmful_set == "test" else (None, None)
        common = {"p": p, "seed": seed, "harmful_set": harmful_set, "value": 1.0}
        rows += [{**common, "method": "none", "variant": "w", "label": "no defense", "HS": hs_none + shift,
                  "refusal": 100 - hs_none - shift, "other": 0.0, "FA_sentiment": fa_none, "panacea_setting": setting},
                 {**common, "method": "panacea", "variant": "w+eps", "label": "eps", "HS": hs_eps + shift,
                  "refusal": 100 - hs_eps - shift, "other": 0.0, "FA_sentiment": fa_eps, "panacea_setting": setting,
                  "lam": 0.01, "h_const": True},
                 {**common, "method": "random_direction", "variant": "control", "label": "random", "HS": hs_control,
                  "refusal": 0.0, "other": 100 - hs_control, "FA_sentiment": fa_none, "panacea_setting": setting,
                  "lam": 0.01, "h_const": True}]
    return pd.DataFrame(rows).assign(**{"HS+": lambda d: d["HS"] + d["other"]})


def test_differences_pair_seeds_and_a_rewritten_run_counts_once(tmp_path):
    write_rows(pd.concat([_seed(0, 90, 70, 91), _seed(1, 80, 78, 80)]), tmp_path / "grid_p0.1_seed0.csv", "test")
    write_rows(_seed(1, 80, 60, 80), tmp_path / "grid_p0.1_seed1.csv", "test")  # seed 1 again: this one counts
    grid = grid_tables.read_grid(tmp_path)
    assert grid["method"].eq("none").sum() == 4  # 2 seeds x 2 sets, not 3 seeds
    assert grid.loc[grid["method"].eq("none"), "panacea_setting"].isna().all()  # only Panacea rows carry a setting
    paired = grid_tables.paired_table(grid)
    row = next(line for line in paired.splitlines() if "Panacea chosen" in line)
    assert "(rho 1, lambda 0.01, h_const)" in row
    # HS 70 - 90 = -20 and 60 - 80 = -20 (paired), not the difference of means of unpaired seeds
    assert "| -20.0 ± 0.0 (-20, -20) |" in row
    assert "| -2.0 ± 0.0 (-2, -2) |" in row  # FA, test split only
    control = next(line for line in paired.splitlines() if "same-norm random direction (chosen)" in line)
    # AdvBench 91 - 90 and 80 - 80; StrongREJECT (none 5 lower there, the control not) 91 - 85 and 80 - 75
    assert "| 2 | 0.5 ± 0.7 (+1, +0) | 5.5 ± 0.7 (+6, +5) |  |" in control
    level = grid_tables.level_table(grid)
    assert "| 0.1 | attacked | 2 | 85.0 ± 7.1 / 80.0 ± 7.1 |" in level


def test_a_seed_only_one_side_ran_is_left_out_of_the_difference(tmp_path):
    both = _seed(0, 90, 70, 91)
    lone_none = _seed(1, 50, 0, 50).query("method == 'none'")  # seed 1 has no Panacea run
    write_rows(pd.concat([both, lone_none]), tmp_path / "grid_p0.1.csv", "test")
    row = next(line for line in grid_tables.paired_table(grid_tables.read_grid(tmp_path)).splitlines()
               if "Panacea" in line)
    assert "| 1 | -20 |" in row  # one seed, shown without a spread


def test_spread_is_mean_and_sample_std_or_the_one_value():
    assert grid_tables.spread([1, 2, 3]) == "2.0 ± 1.0"
    assert grid_tables.spread([7]) == "7"
    assert grid_tables.spread([]) == ""
    from panacea_lab.cli import main

    assert main(["tables", str(PACKAGE_ROOT / "does-not-exist")]) == 2  # one line naming what is missing


@dataclass(frozen=True)
class _ShrinkConfig(DefenseConfig):
    """A toy post-fine-tuning defense, scored on a fresh adapter (its rows are never computed here)."""

    name = "shrink"
    stage = POST

    factor: float = 0.5


def test_a_registered_defense_enters_both_tables_with_its_record_s_label(tmp_path, monkeypatch):
    record = Defense(name="shrink", stage=POST, config=_ShrinkConfig, label="Shrink", param="factor",
                     transform=lambda model, cfg, ctx: model, finetune_adapter="fresh")
    monkeypatch.setitem(REGISTRY, "shrink", record)
    rows = []
    for seed, (hs_fresh, hs_shrink) in enumerate(((60.0, 40.0), (70.0, 45.0))):
        for harmful_set in grid_tables.SETS:
            common = {"p": 0.1, "seed": seed, "harmful_set": harmful_set, "other": 0.0,
                      "FA_sentiment": 80.0 if harmful_set == "test" else None}
            rows += [{**common, "method": "none", "variant": "fresh", "label": "x", "HS": hs_fresh,
                      "refusal": 100 - hs_fresh},
                     {**common, "method": "shrink", "variant": "w", "label": "x", "param": "factor", "value": 0.5,
                      "HS": hs_shrink, "refusal": 100 - hs_shrink}]
    grid = pd.concat([_seed(0, 90, 70, 91), _seed(1, 80, 60, 80), pd.DataFrame(rows)], ignore_index=True)
    write_rows(grid.assign(**{"HS+": lambda d: d["HS"] + d["other"]}), tmp_path / "grid_p0.1.csv", "test")
    grid = grid_tables.read_grid(tmp_path)
    level = grid_tables.level_table(grid).splitlines()
    assert [line.split(" | ")[1] for line in level[2:]] == [
        "attacked", "Panacea w + eps, chosen (rho 1, lambda 0.01, h_const)", "same-norm random direction (chosen)",
        "attacked, fresh adapter", "Shrink factor 0.5"]  # after the undefended run it transforms
    assert level[-1].startswith("| 0.1 | Shrink factor 0.5 | 2 | 42.5 ± 3.5 / 42.5 ± 3.5 |")
    paired = next(line for line in grid_tables.paired_table(grid).splitlines() if "Shrink" in line)
    # paired with the fresh-adapter attack of the same seed: 40 - 60 and 45 - 70
    assert paired.startswith("| 0.1 | Shrink factor 0.5 | 2 | -22.5 ± 3.5 (-20, -25) |")
    assert grid.loc[grid["method"].eq("shrink"), "panacea_setting"].isna().all()  # not a trained setting's row
