"""The notebooks' shared setup: the same parameters name the same runs in every notebook.

A notebook's setup is read from its source (its parameters cell's defaults and its one `setup(...)`
call) and built here, without executing the notebook.
"""
from __future__ import annotations

import ast
import dataclasses
import warnings
from pathlib import Path

import jupytext
import matplotlib.pyplot as plt
import pytest

from panacea_lab.plotting import figure_files

from panacea_lab.studies import recipe
from panacea_lab.studies.sweeps import attacks
from panacea_lab.config import ConfigError
from panacea_lab.notebook_setup import Setup, quiet_output, setup
from panacea_lab.paths import PACKAGE_ROOT

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
OWN_SETUP = {"06_real_model"}  # a real model's presets and LoRA: it builds its configs itself
SHARED = [p for p in NOTEBOOKS if p.stem not in OWN_SETUP]


def _code(source: Path) -> list[str]:
    return [c.source for c in jupytext.read(source).cells if c.cell_type == "code"]


def _defaults(source: Path) -> dict:
    cell = next(c for c in jupytext.read(source).cells if "parameters" in c.metadata.get("tags", []))
    return {t.id: ast.literal_eval(a.value) for a in ast.parse(cell.source).body
            if isinstance(a, ast.Assign) for t in a.targets if isinstance(t, ast.Name)}


def _setup_calls(source: Path) -> list[ast.Call]:
    return [node for cell in _code(source) for node in ast.walk(ast.parse(cell))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setup"]


def notebook_setup(stem: str, **parameters) -> Setup:
    """What notebook `stem`'s setup cell builds under its defaults, with `parameters` changed."""
    source = NOTEBOOK_DIR / f"{stem}.py"
    values = {**_defaults(source), **parameters}
    (call,) = _setup_calls(source)
    assert not call.args, f"{stem}: setup takes keyword arguments only"
    kwargs = {kw.arg: eval(compile(ast.Expression(kw.value), stem, "eval"), {}, dict(values)) for kw in call.keywords}
    return setup(**kwargs, quiet=False)


@pytest.mark.parametrize("setting", ["paper-recipe", "embedded", "paper"])
def test_notebook_04_analyses_the_runs_notebook_03_trains(setting):
    trained, analysed = notebook_setup("03_panacea", setting=setting), notebook_setup("04_safety_coefficients",
                                                                                      setting=setting)
    assert analysed.align_cfg == trained.align_cfg
    assert analysed.attack_kw == trained.attack_kw
    assert analysed.panacea == trained.panacea
    # notebook 04's Panacea run is the one notebook 03's defense sweep trains (its attack under the Panacea)
    for _, p, cfg in attacks(trained.align_cfg, trained.task, [0.1], [0], trained.preset, **trained.attack_kw):
        assert analysed.attack(p, 0, defense=analysed.panacea) == dataclasses.replace(cfg, defense=trained.panacea)


def test_the_paper_recipe_reaches_the_configs():
    lab = notebook_setup("04_safety_coefficients", setting="paper-recipe")
    n = _defaults(NOTEBOOK_DIR / "04_safety_coefficients.py")["n"]
    assert lab.align_cfg == recipe.align_config("paper-recipe", recipe.model_config("paper-recipe"))
    assert lab.align_cfg.model.lora_r == 32 and lab.align_cfg.schedule == "constant"
    assert lab.attack_kw == recipe.attack_overrides("paper-recipe", n=n)
    assert lab.attack(0.1, 0).epochs == 20 and lab.attack(0.1, 0).n == n


@pytest.mark.parametrize("setting", ["paper-recipe", "embedded"])
def test_every_notebook_aligns_the_same_model_for_the_same_setting(setting):
    with_setting = [p.stem for p in SHARED if "setting" in _defaults(p)]
    assert len(with_setting) >= 5
    aligned = {stem: notebook_setup(stem, setting=setting).align_cfg for stem in with_setting}
    assert len(set(aligned.values())) == 1, aligned


@pytest.mark.parametrize("source", SHARED, ids=lambda p: p.stem)
def test_notebook_builds_its_configs_through_the_shared_setup(source):
    """One `setup(...)` call, and no copy of what it builds (store, model and alignment, figure folder)."""
    assert len(_setup_calls(source)) == 1
    code = "\n".join(_code(source))
    assert "from panacea_lab.notebook_setup import setup" in code
    copies = [s for s in ("RunStore(", "AlignConfig(", "ModelConfig(", "recipe.", "PACKAGE_ROOT", "settings.get(")
              if s in code]
    assert not copies, f"{source.stem} builds {copies} itself"


def test_setup_resolves_figures_in_the_repository_and_names_an_unknown_setting(tmp_path):
    assert setup(figures_dir="figures", quiet=False).figures == PACKAGE_ROOT / "figures"
    assert setup(figures_dir=str(tmp_path), quiet=False).figures == tmp_path
    assert setup(runs=str(tmp_path / "runs"), quiet=False).store.root == tmp_path / "runs"
    with pytest.raises(ConfigError, match="setting = 'nope'"):
        setup(setting="nope")


def test_setup_outside_a_kernel_leaves_warnings_and_progress_bars_alone():
    from transformers.utils import logging as hf_logging

    from panacea_lab.training import loop

    filters, bar = list(warnings.filters), loop.tqdm
    setup()
    assert warnings.filters == filters and loop.tqdm is bar and hf_logging.is_progress_bar_enabled()


def test_quiet_output_silences_the_third_party_noise_only(monkeypatch):
    from huggingface_hub.utils import enable_progress_bars
    from transformers.utils import logging as hf_logging

    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")  # restored after the test
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet_output()
            warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
            warnings.warn("a warning of our own", FutureWarning)
        assert [str(w.message) for w in caught] == ["a warning of our own"]
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()
        enable_progress_bars()


@pytest.mark.parametrize("kernel", [False, True])
def test_save_figure_shows_the_figure_once_in_a_kernel_and_always_closes_it(kernel, tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr(figure_files, "in_kernel", lambda: kernel)
    monkeypatch.setattr(figure_files, "_show", shown.append)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    path = figure_files.save_figure(fig, tmp_path / "f.png")
    assert path == tmp_path / "f.png" and path.exists()
    assert shown == ([fig] if kernel else [])
    assert fig.number not in plt.get_fignums()  # closed: the inline backend cannot draw it a second time
