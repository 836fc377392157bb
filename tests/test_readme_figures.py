"""The documentation's figure list and the files in figures/ agree: every figure the README or a docs
page shows or names exists as PNG, PDF and the CSV behind it, and every figure at the top of figures/
is described there (the catalogue is docs/notebooks.md)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
NAMED = sorted(set(re.findall(r"figures/([\w./-]+?\.png)", README)))


def test_the_readme_names_figures():
    assert len(NAMED) >= 10


def test_every_figure_the_readme_names_exists_as_png_pdf_and_csv():
    missing = [f"figures/{name} ({suffix})" for name in NAMED for suffix in (".png", ".pdf", ".csv")
               if not (ROOT / "figures" / name).with_suffix(suffix).exists()]
    assert not missing, f"README names figures that are not there: {missing}"


def test_every_top_level_figure_is_described_in_the_readme():
    files = sorted(p.name for p in (ROOT / "figures").glob("*.png"))
    described = {name for name in NAMED if "/" not in name}
    undescribed = [name for name in files if name not in described]
    assert not undescribed, f"figures/ holds figures the README does not describe: {undescribed}"


def test_every_figure_folder_is_named_in_the_readme():
    folders = sorted(p.name for p in (ROOT / "figures").iterdir() if p.is_dir())
    unnamed = [f for f in folders if f"figures/{f}/" not in README]
    assert not unnamed, f"figure folders the README never names: {unnamed}"


def test_every_png_has_its_pdf_beside_it():
    lone = [str(p.relative_to(ROOT)) for p in (ROOT / "figures").rglob("*.png") if not p.with_suffix(".pdf").exists()]
    assert not lone, f"PNG without its vector PDF (rerun the notebook that draws it): {lone}"
