"""Every notebook has a `parameters` cell and runs headless under papermill with smoke parameters."""
from __future__ import annotations

import ast
from pathlib import Path

import jupytext
import nbformat
import papermill
import pytest
import yaml

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.py"))
SMOKE_ALIGN = {"n_refusal": 16, "n_replay_per_task": 2, "epochs": 1}


def smoke_parameters(name: str, model_dir: str, tmp: Path) -> dict:
    common = {"model": model_dir, "seeds": [0], "n_eval": 4, "runs": str(tmp / "runs"),
              "figures_dir": str(tmp / "figures"), "align_kw": SMOKE_ALIGN}
    per_notebook = {
        "00_workshop": {"ratio": 0.2, "n": 20, "stds": [0.01], "rho": 0.3},
        "01_harmful_finetuning_attack": {"ratios": [0.0, 0.2], "n": 20, "sample_counts": [10, 20],
                                         "ratio_for_n": 0.2, "step_ratios": [0.2], "score_every": 2,
                                         "n_eval_steps": 4, "step_methods": ["sft", "vaccine", "panacea"]},
        "02_random_perturbation": {"ratio": 0.2, "n": 20, "stds": [0.01, 0.05]},
        "03_panacea": {"ratios": [0.2], "n": 20, "stds": [0.01], "rhos": [0.3], "rho": 0.3,
                       "ablation_rhos": [0.3], "ablation_lams": [1e-3, 1e-1], "ablation_ratio": 0.2,
                       "baselines": ["sft", "repnoise", "lisa"], "baseline_ratios": [0.2],
                       "axis_tasks": ["topic"], "axis_ns": [10, 20], "axis_ratio": 0.2},
        "04_safety_coefficients": {"ratios": [0.2], "n": 20, "rho": 0.3},
        "05_system_overhead": {"steps": 2, "warmup": 1, "batch_size": 4},
        "06_real_model": {"panacea_home": str(_package_home(tmp)), "n": 20, "ratio": 0.2, "stds": [0.01], "rho": 0.3,
                          "attack_kw": {"epochs": 1, "lr": 1e-4, "batch_size": 10}, "model_kw": {"max_length": 96},
                          "max_new_tokens": 8, "results_dir": str(tmp / "results"), "from_results": False,
                          "second_test": "strongreject", "calibration": {"lam": [1e-3, 1.0], "rho": [0.3]},
                          "grid_ratios": [0.2],
                          "grid_panacea": {"chosen": "calibration", "paper": {"rho": 0.3, "lam": 1e-3}},
                          "loss_probe": ["paper"]},
    }
    return {**common, **per_notebook.get(name, {})}


def _package_home(tmp: Path) -> Path:
    """fetch-data's files in their upstream formats, synthetic (panacea_lab.testing)."""
    from panacea_lab.testing import write_package_data

    write_package_data(tmp / "home" / "data")
    return tmp / "home"


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
    if "loss_probe" in params:  # one probe per seed: 4 models x 3 answer sets
        from panacea_lab.analysis.export_rows import read_rows

        # a setting other than the chosen one is written beside the chosen one's file, never over it
        assert not (tmp_path / "results" / f"answer_loss_p{params['ratio']:g}.csv").exists()
        probe = read_rows(tmp_path / "results" / f"answer_loss_p{params['ratio']:g}_paper.csv")
        assert len(probe) == 12 and probe["nll"].gt(0).all() and set(probe["panacea_setting"]) == {"paper"}


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
    papermill from any folder writes figures inside the repository, never beside it."""
    from panacea_lab.paths import PACKAGE_ROOT

    resolved = (PACKAGE_ROOT / figures_dir).resolve()
    assert resolved.is_relative_to(PACKAGE_ROOT / "figures"), f"{where}: figures_dir = {figures_dir!r} -> {resolved}"


@pytest.mark.slow
@pytest.mark.parametrize("params", ["", "real-rt"])
def test_the_real_model_figures_are_drawn_from_the_committed_results_without_the_model(tmp_path, params):
    """`make figures` needs neither SmolLM2 nor its data: notebook 06 redraws from results/smollm2
    (and, with the real-rt parameter set, from results/smollm2-rt)."""
    from panacea_lab.analysis.calibration import read_calibrations
    from panacea_lab.analysis.export_rows import read_rows

    source = next(p for p in NOTEBOOKS if p.stem == "06_real_model")
    ipynb = tmp_path / "06.ipynb"
    nbformat.write(jupytext.read(source), ipynb)
    home = tmp_path / "empty-home"  # no converted model, no fetched data
    overrides = yaml.safe_load((PARAMS / params / "06_real_model.yaml").read_text()) if params else {}
    papermill.execute_notebook(str(ipynb), str(tmp_path / "06.out.ipynb"), cwd=str(tmp_path), kernel_name="python3",
                               parameters={**overrides, "panacea_home": str(home),
                                           "figures_dir": str(tmp_path / "figures"), "runs": str(tmp_path / "runs")},
                               progress_bar=False, execution_timeout=300)
    results = source.parent.parent / overrides.get("results_dir", "results/smollm2")
    prefix = overrides.get("figure_prefix", "06_real_model")
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
            assert drawn[columns].reset_index(drop=True).equals(committed[summary][columns].reset_index(drop=True))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("result.json")), "it trained"
