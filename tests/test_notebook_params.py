"""Notebook parameters are checked before papermill runs a notebook: a misspelt name, which papermill
only warns about (and then runs the full default sweep), and a value unlike its default fail in one
line; every committed parameter file passes."""
from __future__ import annotations

from pathlib import Path

import pytest

from panacea_lab.notebook_params import check, declared, main

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SOURCE = NOTEBOOKS / "03_panacea.py"


def test_the_declared_parameters_are_the_parameters_cell_literals():
    names = declared(SOURCE)
    assert names["ratios"] == [0.1, 0.2] and names["seeds"] == [0] and names["rho"] is None
    assert "plots" not in names  # an import in a later cell is no parameter


@pytest.mark.parametrize("params, message", [
    ({"ratio": 0.1}, "no parameter 'ratio' (did you mean 'ratios'?)"),
    ({"ratios": "abc"}, "ratios = 'abc' does not fit"),
    ({"seeds": [0.5]}, "a list of ints"),
    ({"n": "many"}, "n = 'many' does not fit"),
])
def test_a_wrong_parameter_fails_naming_it(params, message):
    from panacea_lab.config import ConfigError

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        check(SOURCE, params)


def test_values_like_the_defaults_pass():
    check(SOURCE, {"ratios": [0.05], "seeds": [0, 1, 2], "rho": 0.5, "ablation_ratio": 1, "model": "x"})


@pytest.mark.parametrize("param_file", sorted(NOTEBOOKS.glob("params/*/*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_committed_parameter_file_passes(param_file):
    assert main([str(NOTEBOOKS / f"{param_file.stem}.py"), str(param_file)]) == 0


def test_the_command_fails_in_one_line(capsys):
    assert main([str(SOURCE), "-p", "ratio", "0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("panacea-lab: 03_panacea.py: no parameter 'ratio'")


@pytest.mark.parametrize("params, message", [({"ratios": [0.1]}, "no parameter 'ratios'"),
                                             ({"seeds": [0.5]}, "seeds = [0.5] does not fit")])
def test_papermill_alone_ends_with_the_one_line(params, message, tmp_path):
    """Started by hand (no make target to check first), the notebook's first cell refuses the parameter:
    the error's traceback is that one line, and no later cell ran."""
    import jupytext
    import nbformat
    import papermill

    source = Path(__file__).resolve().parent.parent / "notebooks" / "02_random_perturbation.py"
    ipynb = tmp_path / "nb.ipynb"
    nbformat.write(jupytext.read(source), ipynb)
    with pytest.raises(papermill.PapermillExecutionError) as err:
        papermill.execute_notebook(str(ipynb), str(tmp_path / "out.ipynb"), parameters=params, cwd=str(tmp_path),
                                   kernel_name="python3", progress_bar=False, execution_timeout=120)
    assert err.value.ename == "NotebookParameterError" and message in err.value.evalue
    assert [line for line in err.value.traceback if line.strip()] == [f"panacea-lab: {err.value.evalue}"]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "figures").exists()


def test_run_all_twice_in_one_kernel_checks_only_the_declared_parameters_the_second_time(monkeypatch):
    """A second "Run All" finds the first run's results in the namespace (a DataFrame, a loop's float):
    not parameters, so not refused; a declared parameter of the wrong type still is."""
    from panacea_lab import notebook_params
    from panacea_lab.notebook_params import NotebookParameterError, check_in_kernel

    monkeypatch.setattr(notebook_params, "_CHECKED", set())
    name = "02_random_perturbation.py"
    params = declared(NOTEBOOKS / name)
    with pytest.raises(NotebookParameterError, match="no parameter 'p'"):
        check_in_kernel({**params, "p": 0.2}, name)  # a first run: an undeclared value is a misspelt parameter
    check_in_kernel(dict(params), name)
    check_in_kernel({**params, "p": 0.2, "table": [{"HS": 1.0}]}, name)  # the first run's leftovers
    with pytest.raises(NotebookParameterError, match="seeds = \\[0.5\\]"):
        check_in_kernel({**params, "seeds": [0.5]}, name)
