"""The generated results pages and the front page's verdict: intervals computed by hand agree, the words
follow the rule, rows pair by seed, and the committed pages equal what the committed files give."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from panacea_lab.config import ConfigError
from panacea_lab.paths import PACKAGE_ROOT
from panacea_lab.report import verdict
from panacea_lab.report.intervals import Paired, judge, t975
from panacea_lab.report.pages import stale
from panacea_lab.tables.export_rows import write_rows


def test_the_interval_is_the_student_t_one_computed_by_hand():
    # mean -21, sample sd sqrt(79) = 8.888, t(0.975, 2) = 4.303: half-width 4.303 * 8.888 / sqrt(3) = 22.08
    paired = Paired((-28.0, -11.0, -24.0))
    lo, hi = paired.interval
    assert paired.mean == pytest.approx(-21.0)
    assert (lo, hi) == (pytest.approx(-43.08, abs=0.01), pytest.approx(1.08, abs=0.01))
    assert paired.text() == "-21.0 [-43.1, +1.1]"
    assert Paired((5.0,)).interval is None and Paired((5.0,)).text() == "+5.0 (1 seed)"
    assert t975(2) == 4.303 and t975(11) == 2.228 and t975(100) == 1.96  # an unlisted df takes the wider one below


@pytest.mark.parametrize("diffs, expect, size, words", [
    ((-28, -11, -24), "lower", -21.2, "no change shown"),  # the interval reaches above 0
    ((-5, -3, -7), "lower", -21.2, "lower, and smaller than the paper's -21.2"),
    ((-90, -88, -91), "lower", -21.2, "lower, and larger than the paper's -21.2"),
    ((-4, 0, -7), "lower", -21.2, "no change shown, and smaller than the paper's -21.2"),
    ((3, 4, 5), "none", None, "higher"),
    ((-3, -3, -4), "kept", None, "kept (no loss beyond 5 shown)"),
    ((-1, 0, -9), "kept", None, "undecided (a loss beyond 5 not excluded)"),
    ((-84, -85, -83), "kept", None, "lost (more than 5)"),
])
def test_the_words_follow_the_interval(diffs, expect, size, words):
    assert judge(Paired(tuple(map(float, diffs))), expect, size, margin=5) == words


def _rows(seed, hs_none, hs_eps, fa_none=80.0, fa_eps=79.0, p=0.1):
    return [{"method": "none", "variant": "w", "p": p, "seed": seed, "HS": hs_none, "FA_sentiment": fa_none},
            {"method": "none", "variant": "fresh", "p": p, "seed": seed, "HS": 0.0, "FA_sentiment": fa_none},
            {"method": "tonic", "variant": "w+eps", "p": p, "seed": seed, "HS": hs_eps, "FA_sentiment": fa_eps}]


def _claim(**cell):
    return {"claim": "tonic lowers HS", "paper": "-", "metric": "HS", "expect": "lower",
            "treated": {"method": "tonic"}, "reference": {"method": "none", "variant": "w"},
            "cells": {"toy": {"files": ["toy/*"], **cell}}}


def test_a_cell_pairs_each_seed_with_its_own_undefended_model(tmp_path):
    # seed order differs between the files and the rows: pairing must go by seed, not by position
    (tmp_path / "toy").mkdir()
    write_rows(pd.DataFrame(_rows(1, 80, 70) + _rows(0, 90, 60)), tmp_path / "toy" / "a.csv")
    write_rows(pd.DataFrame(_rows(2, 50, 50) + _rows(0, 40, 40, p=0.2)), tmp_path / "toy" / "b.csv")
    claim = _claim()
    cell = verdict.paired_cell(tmp_path, claim, claim["cells"]["toy"])
    assert cell.by_ratio[0.1].diffs == (-30.0, -10.0, 0.0)  # seeds 0, 1, 2
    assert cell.by_ratio[0.2].diffs == (0.0,)
    assert [f.name for f in cell.sources[0.1]] == ["a.csv", "b.csv"]
    fa = verdict.paired_cell(tmp_path, {**claim, "metric": "FA"}, claim["cells"]["toy"])
    assert fa.by_ratio[0.1].diffs == (-1.0, -1.0, -1.0)  # FA_<task> found by itself


def test_a_selector_that_matches_two_rows_per_seed_fails_and_names_the_claim(tmp_path):
    (tmp_path / "toy").mkdir()
    write_rows(pd.DataFrame(_rows(0, 90, 60)), tmp_path / "toy" / "a.csv")
    claim = {**_claim(), "reference": {"method": "none"}}  # both the continued and the fresh adapter
    with pytest.raises(ConfigError, match="tonic lowers HS.*reference selector must match one row"):
        verdict.paired_cell(tmp_path, claim, claim["cells"]["toy"])
    with pytest.raises(ConfigError, match="matches no file"):
        verdict.paired_cell(tmp_path, claim, {"files": ["toy/nothing*"]})


def test_the_committed_pages_and_the_readme_verdict_are_what_the_results_give():
    assert stale(PACKAGE_ROOT) == [], "run `panacea-lab report` and commit docs/results/ and README.md"


def test_every_verdict_claim_has_a_paper_column_and_known_rule():
    spec = yaml.safe_load((PACKAGE_ROOT / "results/verdict.yaml").read_text())
    for claim in spec["claims"]:
        assert claim["expect"] in ("lower", "kept", "none"), claim["claim"]
        assert set(claim["cells"]) <= set(spec["columns"]), claim["claim"]


def test_the_readme_is_a_front_page():
    text = (PACKAGE_ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert "make reproduce" in text and "make test" in text


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)|src=\"([^\"]+)\"")


@pytest.mark.parametrize("page", ["README.md", *sorted(p.relative_to(PACKAGE_ROOT).as_posix()
                                                        for p in (PACKAGE_ROOT / "docs").rglob("*.md"))])
def test_every_relative_link_in_the_documentation_resolves(page):
    path = PACKAGE_ROOT / page
    broken = []
    for match in LINK.finditer(path.read_text()):
        target = match.group(1) or match.group(2)
        if re.match(r"[a-z]+:", target):
            continue  # an external address
        if not (path.parent / target).exists():
            broken.append(target)
    assert not broken, f"{page} links to files that do not exist: {broken}"


def test_the_command_line_reports_its_version_and_checks_the_pages(capsys):
    from panacea_lab.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and re.match(r"panacea-lab \d+\.\d+", capsys.readouterr().out)
    assert main(["report", "--check"]) == 0
    assert "current" in capsys.readouterr().out


def test_debug_shows_the_traceback_where_the_default_is_one_line(capsys):
    from panacea_lab.cli import main

    assert main(["tables", "/nonexistent-folder"]) == 2
    assert capsys.readouterr().err.startswith("panacea-lab: no grid_p*.csv")
    with pytest.raises(FileNotFoundError):
        main(["--debug", "tables", "/nonexistent-folder"])


def test_the_fidelity_pages_lora_rows_are_read_from_the_presets(monkeypatch):
    import dataclasses

    from panacea_lab.models import presets
    from panacea_lab.report.pages import lora_table

    for preset in presets.PRESETS.values():
        assert f"| {preset.name} | {preset.hub_id} | {preset.lora_r} | {preset.lora_alpha} |" in lora_table()
    changed = dataclasses.replace(presets.PRESETS["smollm2-135m"], lora_r=32, lora_alpha=4)
    monkeypatch.setitem(presets.PRESETS, "smollm2-135m", changed)
    assert "| smollm2-135m | HuggingFaceTB/SmolLM2-135M-Instruct | 32 | 4 | 0.125 |" in lora_table()


def test_a_comparison_row_pairs_two_settings_of_the_same_runs_on_every_metric(tmp_path):
    """Two named settings of one defense, paired by seed: each metric's differences, and a cell's own
    selector overriding the comparison's (another file's setting name)."""
    from panacea_lab.report.comparisons import comparisons_table, comparison_rows

    def rows(seed, setting, hs, refusal, fa):
        return {"method": "tonic", "variant": "w+eps", "p": 0.1, "seed": seed, "setting": setting, "HS": hs,
                "refusal": refusal, "other": 100 - hs - refusal, "FA_sentiment": fa}

    (tmp_path / "toy").mkdir()
    write_rows(pd.DataFrame([rows(s, "fast", 10 + s, 80, 70) for s in range(3)]
                            + [rows(s, "exact", 12, 70 + 2 * s, 71) for s in range(3)]), tmp_path / "toy" / "a.csv")
    write_rows(pd.DataFrame([rows(0, "fast", 5, 90, 60), rows(0, "reference", 5, 95, 61)]), tmp_path / "toy" / "b.csv")
    comparison = {"name": "fast minus exact", "treated": {"setting": "fast"}, "reference": {"setting": "exact"},
                  "cells": [{"title": "A", "files": ["toy/a"]},
                            {"title": "B", "files": ["toy/b"], "reference": {"setting": "reference"}}]}
    (title, p, paired), (title_b, _, paired_b) = comparison_rows(tmp_path, comparison)
    assert (title, p, title_b) == ("A", 0.1, "B")
    assert paired["HS"].diffs == (-2.0, -1.0, 0.0) and paired["refusal"].diffs == (10.0, 8.0, 6.0)
    assert paired["other"].diffs == (-8.0, -7.0, -6.0) and paired["FA"].diffs == (-1.0, -1.0, -1.0)
    assert paired_b["refusal"].diffs == (-5.0,)
    table = comparisons_table(tmp_path, {"comparisons": [comparison]})
    assert "| fast minus exact | A | 0.1 | 3 | -1.0 [-3.5, +1.5] | +8.0 [+3.0, +13.0] |" in table
