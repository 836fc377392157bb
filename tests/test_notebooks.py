"""Every notebook has a `parameters` cell and runs headless under papermill with smoke parameters."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import jupytext
import nbformat
import papermill
import pandas as pd
import pytest
import yaml

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.py"))
SMOKE_ALIGN = {"n_refusal": 16, "n_replay_per_task": 2, "epochs": 1}
REPO = Path(__file__).resolve().parent.parent
PROGRESS_BAR = re.compile(r"it/s|s/it|%\|")  # a tqdm bar's line, as text or as a widget's plain-text form


def smoke_parameters(name: str, model_dir: str, tmp: Path) -> dict:
    if name == "06_real_model":  # it reads results files (a tiny model has no real-model specs to run)
        return {"results_dir": str(_committed_copy(tmp, "smollm2-rt")), "run_quick": False,
                "figures_dir": str(tmp / "figures"), "runs": str(tmp / "runs")}
    common = {"model": model_dir, "seeds": [0], "n_eval": 4, "runs": str(tmp / "runs"),
              "figures_dir": str(tmp / "figures"), "align_kw": SMOKE_ALIGN}
    per_notebook = {
        "00_workshop": {"ratio": 0.2, "n": 20, "defenses": {"noise": {"std": [0.01]}}, "rho": 0.3},
        "01_harmful_finetuning_attack": {"ratios": [0.0, 0.2], "n": 20, "sample_counts": [10, 20],
                                         "ratio_for_n": 0.2, "step_ratios": [0.2], "score_every": 2,
                                         "n_eval_steps": 4, "step_methods": ["none", "vaccine", "panacea"]},
        "02_random_perturbation": {"ratio": 0.2, "n": 20, "defenses": {"noise": {"std": [0.01, 0.05]}}},
        "03_panacea": {"ratios": [0.2], "n": 20, "defenses": {"noise": {"std": [0.01]}, "antidote": {}},
                       "rhos": [0.3], "rho": 0.3,
                       "ablation_rhos": [0.3], "ablation_lams": [1e-3, 1e-1], "ablation_ratio": 0.2,
                       "baselines": ["none", "repnoise", "lisa"], "baseline_ratios": [0.2],
                       "axis_tasks": ["topic"], "axis_ns": [10, 20], "axis_ratio": 0.2},
        "04_safety_coefficients": {"ratios": [0.2], "n": 20, "rho": 0.3},
        "05_system_overhead": {"steps": 2, "warmup": 1, "batch_size": 4},
    }
    return {**common, **per_notebook.get(name, {})}


def _committed_copy(tmp: Path, folder: str) -> Path:
    """A results folder's committed files, copied (a notebook that reads them may not write beside them)."""
    import shutil

    return Path(shutil.copytree(REPO / "results" / folder, tmp / "results" / folder))


def declared_parameters(ipynb: Path) -> set[str]:
    return set(papermill.inspect_notebook(str(ipynb)))


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("source", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_a_parameters_cell(source):
    nb = jupytext.read(source)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code"


@pytest.mark.slow
@pytest.mark.parametrize("source", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_headless_with_smoke_parameters(source, tiny_model_dir, tmp_path):
    ipynb = tmp_path / f"{source.stem}.ipynb"
    nbformat.write(jupytext.read(source), ipynb)
    out = tmp_path / f"{source.stem}.out.ipynb"
    declared = declared_parameters(ipynb)
    params = {k: v for k, v in smoke_parameters(source.stem, str(tiny_model_dir), tmp_path).items()
              if k in declared or k not in ("seeds", "n_eval", "align_kw")}  # those three are optional
    unknown = set(params) - declared
    assert not unknown, f"smoke parameters {sorted(unknown)} are not declared in the notebook's parameters cell"
    # run outside notebooks/: no notebook may depend on the folder it runs in
    papermill.execute_notebook(str(ipynb), str(out), parameters=params, cwd=str(tmp_path),
                               kernel_name="python3", progress_bar=False, execution_timeout=600)
    figures = sorted((tmp_path / "figures").glob("*.png"))
    assert figures, "the notebook saved no figure"
    assert all(f.with_suffix(".csv").exists() for f in figures)
    executed = nbformat.read(out, as_version=4)
    assert_figures_are_shown(executed, figures)
    assert_cells_are_quiet(executed)
    if params.get("run_quick") is False:  # it only read: the run store holds nothing
        assert not any((tmp_path / "runs").rglob("result.json")), "it trained"


def _lines(output) -> list[str]:
    """The lines an output shows: a stream's text, or a display's plain-text form (a widget's too)."""
    text = output.get("text", "") if output.output_type == "stream" else output.get("data", {}).get("text/plain", "")
    return [line for line in re.split(r"[\r\n]", "".join(text)) if line.strip()]


def _first_line(cell) -> str:
    return next(iter(cell.source.strip().splitlines()), "")


def assert_figures_are_shown(nb, saved: list[Path]) -> None:
    """Every cell that saves a figure shows it as a PNG output, and the notebook shows every figure it saved."""
    cells = [c for c in nb.cells if c.cell_type == "code"]
    images = [sum("image/png" in o.get("data", {}) for o in c.outputs) for c in cells]
    unshown = [_first_line(c) for c, k in zip(cells, images) if "save_figure(" in c.source and not k]
    assert not unshown, f"cells that save a figure but show no image: {unshown}"
    assert sum(images) >= len(saved), f"{len(saved)} figures saved, {sum(images)} shown"


def assert_cells_are_quiet(nb, max_warnings: int = 5, max_bars: int = 3) -> None:
    """No cell repeats a warning over and over or leaves a trail of progress bars (one per run or evaluation)."""
    for cell in (c for c in nb.cells if c.cell_type == "code"):
        warned = [line for o in cell.outputs if o.output_type == "stream" and o.name == "stderr"
                  for line in _lines(o) if "Warning" in line]
        bars = [line for o in cell.outputs for line in _lines(o) if PROGRESS_BAR.search(line)]
        first = _first_line(cell)
        assert len(warned) <= max_warnings, f"{first!r}: {len(warned)} warning lines, e.g. {warned[0]}"
        assert len(bars) <= max_bars, f"{first!r}: {len(bars)} progress bars, e.g. {bars[:2]}"


PARAMS = Path(__file__).resolve().parent.parent / "notebooks" / "params"
PARAM_SETS = sorted(PARAMS.glob("*/*.yaml"))


@pytest.mark.parametrize("param_file", PARAM_SETS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_parameter_sets_name_only_declared_parameters(param_file, tmp_path):
    source = param_file.parents[2] / f"{param_file.stem}.py"
    assert source.exists(), f"{param_file} names no notebook"
    ipynb = tmp_path / f"{source.stem}.ipynb"
    nbformat.write(jupytext.read(source), ipynb)
    declared = papermill.inspect_notebook(str(ipynb))
    values = yaml.safe_load(param_file.read_text())
    assert set(values) <= set(declared), f"undeclared: {sorted(set(values) - set(declared))}"
    for name, value in values.items():  # same kind of value as the default (a list stays a list)
        default = ast.literal_eval(declared[name]["default"])
        if default is None or value is None:  # "None: the setting's value" takes any kind; None turns a knob off
            continue
        assert isinstance(value, type(default)) or isinstance(default, float) and isinstance(value, int), name


def _defaults(source: Path) -> dict:
    """A notebook's parameters cell as {name: default value}."""
    cell = next(c for c in jupytext.read(source).cells if "parameters" in c.metadata.get("tags", []))
    return {t.id: ast.literal_eval(a.value) for a in ast.parse(cell.source).body
            if isinstance(a, ast.Assign) for t in a.targets if isinstance(t, ast.Name)}


def test_parameter_names_mean_the_same_in_every_notebook():
    """One vocabulary: a harmful ratio is `ratio` (one value), `ratios` (a list) or `<what>_ratio(s)`, never
    `p`; a name two notebooks share takes the same kind of value in both (so a parameter file or a
    reader moving between notebooks never meets `ratio` as a list in one and a number in another)."""
    kinds: dict[str, dict[str, type]] = {}
    for source in NOTEBOOKS:
        for name, default in _defaults(source).items():
            assert name != "p" and not name.endswith("_p"), f"{source.stem}: {name!r} names a ratio: use *_ratio"
            if name.endswith("ratios") or name.endswith("seeds"):
                assert isinstance(default, list), f"{source.stem}: {name} is plural, so a list"
            if default is not None:
                kinds.setdefault(name, {})[source.stem] = float if isinstance(default, int | float) else type(default)
    mixed = {name: seen for name, seen in kinds.items() if len(set(seen.values())) > 1}
    assert not mixed, f"parameters with different kinds of value across notebooks: {mixed}"


def _figures_dirs():
    """(where, figures_dir) of every notebook's default and every parameter set that names one."""
    import yaml

    for source in NOTEBOOKS:
        defaults = _defaults(source)
        if "figures_dir" in defaults:
            yield source.stem, defaults["figures_dir"]
    for param_file in PARAM_SETS:
        values = yaml.safe_load(param_file.read_text())
        if "figures_dir" in values:
            yield f"{param_file.parent.name}/{param_file.stem}", values["figures_dir"]


@pytest.mark.parametrize("where,figures_dir", list(_figures_dirs()), ids=lambda v: str(v))
def test_figures_stay_in_the_repository(where, figures_dir):
    """A relative figures_dir is the repository root's (notebooks join it to PACKAGE_ROOT), so running
    papermill from any folder writes figures inside the repository, never beside it: into figures/, or
    build/figures/ for a machine's own measurement (notebook 05's timings)."""
    from panacea_lab.paths import PACKAGE_ROOT

    resolved = (PACKAGE_ROOT / figures_dir).resolve()
    assert any(resolved.is_relative_to(PACKAGE_ROOT / d) for d in ("figures", "build/figures")), (
        f"{where}: figures_dir = {figures_dir!r} -> {resolved}")


@pytest.mark.slow
@pytest.mark.parametrize("params", ["", "real-multiemo"])
def test_the_real_model_figures_are_drawn_from_the_committed_results_without_the_model(tmp_path, params):
    """`make figures` needs neither SmolLM2 nor its data: notebook 06 redraws from results/smollm2-rt
    (its defaults) and, with the real-multiemo parameter set, from results/smollm2."""
    from panacea_lab.studies.calibration import read_calibrations
    from panacea_lab.tables.export_rows import read_rows

    source = next(p for p in NOTEBOOKS if p.stem == "06_real_model")
    ipynb = tmp_path / "06.ipynb"
    nbformat.write(jupytext.read(source), ipynb)
    home = tmp_path / "empty-home"  # no converted model, no fetched data
    overrides = yaml.safe_load((PARAMS / params / "06_real_model.yaml").read_text()) if params else {}
    papermill.execute_notebook(str(ipynb), str(tmp_path / "06.out.ipynb"), cwd=str(tmp_path), kernel_name="python3",
                               parameters={**overrides, "panacea_home": str(home),
                                           "figures_dir": str(tmp_path / "figures"), "runs": str(tmp_path / "runs")},
                               progress_bar=False, execution_timeout=300)
    defaults = _defaults(source)
    results = source.parent.parent / overrides.get("results_dir", defaults["results_dir"])
    prefix = overrides.get("figure_prefix", defaults["figure_prefix"])
    committed = {name: read_rows(path) for name, path in
                 (("defend", results / "defend_p0.1.csv"), ("eps", results / "eps_shares_p0.1_seed0.csv"))
                 if path.exists()}
    if (calibrations := read_calibrations(results, 0.1)) is not None:  # every sweep, each setting once
        committed["calibration"] = calibrations
    assert committed or sorted(results.glob("grid_p*.csv")), f"nothing committed in {results}"
    drawn_from = {}
    if "defend" in committed:
        committed["defend"] = committed["defend"].query("method in ['none', 'noise', 'panacea', 'random_direction'] "
                                                        "and harmful_set == 'test'")
        drawn_from[f"{prefix}_defenses"] = ("defend", ["HS", "other"])
    if "eps" in committed:
        drawn_from[f"{prefix}_heatmap"] = ("eps", ["eps_share"])
    if "calibration" in committed:
        drawn_from[f"{prefix}_calibration"] = ("calibration", ["HS", "other"])
        committed["calibration"] = committed["calibration"].query("method == 'none' or variant == 'w+eps'")
    grids = sorted(results.glob("grid_p*.csv"))
    for harmful_set in {s for f in grids for s in read_rows(f)["harmful_set"]}:
        drawn_from[f"{prefix}_grid_{harmful_set}"] = (None, ["HS", "other"])
    for name, (summary, columns) in drawn_from.items():
        for suffix in (".png", ".pdf", ".csv"):
            assert (tmp_path / "figures" / f"{name}{suffix}").exists(), f"{name}{suffix}"
        if summary is not None:
            drawn = read_rows(tmp_path / "figures" / f"{name}.csv")
            # the figure's CSV holds 6 significant digits of the committed numbers
            pd.testing.assert_frame_equal(drawn[columns].reset_index(drop=True),
                                          committed[summary][columns].reset_index(drop=True), check_dtype=False,
                                          rtol=1e-5)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("result.json")), "it trained"


@pytest.mark.slow
def test_notebook_06_runs_the_quick_run_specs_into_its_results_folder(tiny_model_dir, tmp_path):
    """With the model and the data at hand, notebook 06 runs its folder's quick-run specs (attack, defend,
    eps shares) through the runner, writes their files into `results_dir` (not results/), and draws them."""
    from panacea_lab.tables.export_rows import read_rows

    specs = tmp_path / "experiments" / "toy"
    specs.mkdir(parents=True)
    base = {"model": str(tiny_model_dir), "ratios": [0.2], "seeds": [0], "attack": {"n": 20, "epochs": 1.0},
            "align": {"n_refusal": 16, "n_replay_per_task": 2, "epochs": 1.0}, "eval": {"n_eval": 4}}
    trained = {"panacea": {"rho": [0.3]}}
    for name, more in {"attack_p0.2": {"sweep": "attack", "reference_tasks": ["sentiment"]},
                       "defend_p0.2": {"sweep": "defend", "defenses": {"noise": {"std": [0.05]}, **trained},
                                       "controls": ["random_direction"]},
                       "eps_shares_p0.2_seed0": {"sweep": "eps_shares", "defenses": trained}}.items():
        (specs / f"{name}.yaml").write_text(yaml.safe_dump({**base, **more}))
    ipynb = tmp_path / "06.ipynb"
    nbformat.write(jupytext.read(next(p for p in NOTEBOOKS if p.stem == "06_real_model")), ipynb)
    results = tmp_path / "results" / "toy"
    papermill.execute_notebook(str(ipynb), str(tmp_path / "06.out.ipynb"), cwd=str(tmp_path), kernel_name="python3",
                               parameters={"experiments_dir": str(specs), "results_dir": str(results), "ratio": 0.2,
                                           "run_quick": True, "figures_dir": str(tmp_path / "figures"),
                                           "runs": str(tmp_path / "runs"), "figure_prefix": "toy",
                                           "panacea_home": str(tmp_path / "home")},  # nothing fetched
                               progress_bar=False, execution_timeout=600)
    written = {p.stem: read_rows(p) for p in results.glob("*.csv")}
    assert set(written) == {"attack_p0.2", "defend_p0.2", "eps_shares_p0.2_seed0"}
    assert written["defend_p0.2"]["method"].nunique() == 4 and len(written["eps_shares_p0.2_seed0"]) > 0
    assert {p.name for p in (tmp_path / "figures").glob("*.png")} == {"toy_defenses.png", "toy_heatmap.png"}
    assert_cells_are_quiet(nbformat.read(tmp_path / "06.out.ipynb", as_version=4))
