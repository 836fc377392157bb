"""A notebook's parameters checked before papermill runs it: a parameter the notebook does not declare
(a misspelt `ratio` for `ratios`, which papermill would only warn about and then run the full default
sweep) or a value of another type than its default's fails in one line naming the parameter.

    python -m panacea_lab.notebook_params notebooks/03_panacea.py [PARAMS.yaml ...] [-p NAME VALUE ...]

`make reproduce` / `make figures` run it on every notebook and parameter file before executing it, and
each notebook's first cell after its parameters calls `check_in_kernel`, so a run started by hand
(papermill alone) ends with the same one line. The declared parameters are the literal assignments
of the notebook's `parameters` cell."""
from __future__ import annotations

import argparse
import ast
import sys
import types
from pathlib import Path

import yaml

from panacea_lab.config import ConfigError
from panacea_lab.paths import PACKAGE_ROOT


def declared(source: str | Path) -> dict[str, object]:
    """{name: default} of the assignments in the jupytext source's cell tagged `parameters`."""
    text = Path(source).read_text()
    marker = next((i for i, line in enumerate(text.splitlines()) if line.startswith("# %%") and "parameters" in line),
                  None)
    if marker is None:
        raise ConfigError(f"{source}: no cell tagged parameters")
    lines = text.splitlines()[marker + 1:]
    end = next((i for i, line in enumerate(lines) if line.startswith("# %%")), len(lines))
    out = {}
    for node in ast.parse("\n".join(lines[:end])).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                out[node.targets[0].id] = None  # not a literal: any value
    return out


def _kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number" if isinstance(value, float) else "int"
    return type(value).__name__


def _fits(value, default) -> bool:
    """Whether `value` may replace `default`: the same kind (an int where a float is expected is fine),
    a list's elements like the default list's first one, anything where the default is None."""
    if default is None:
        return True
    want, got = _kind(default), _kind(value)
    if want == "number":
        return got in ("number", "int")
    if want != got:
        return False
    if want == "list" and default and value:
        return all(_fits(v, default[0]) for v in value)
    return True


def check(source: str | Path, params: dict) -> None:
    """A ConfigError naming the first parameter `source` does not declare or whose value does not fit."""
    names = declared(source)
    for name, value in params.items():
        if name not in names:
            close = [n for n in names if n.rstrip("s") == name.rstrip("s") or n.startswith(name) or name.startswith(n)]
            hint = f" (did you mean {close[0]!r}?)" if close else f"; it declares {', '.join(sorted(names))}"
            raise ConfigError(f"{Path(source).name}: no parameter {name!r}{hint}")
        default = names[name]
        if not _fits(value, default):
            like = (f"a list of {_kind(default[0]).replace('number', 'float')}s like its default {default!r}"
                    if isinstance(value, list) and isinstance(default, list)
                    else f"a {_kind(default).replace('number', 'float')} like its default {default!r}")
            raise ConfigError(f"{Path(source).name}: {name} = {value!r} does not fit: give {like}")


class NotebookParameterError(ConfigError):
    """Shown by IPython as its one line, without a traceback (`_render_traceback_`)."""

    def _render_traceback_(self) -> list[str]:
        return [f"panacea-lab: {str(self).splitlines()[0]}"]


_CHECKED: set[str] = set()  # notebooks whose first run in this kernel was checked


def check_in_kernel(namespace: dict, notebook: str) -> None:
    """In a notebook's first cell after its parameters (and papermill's injected ones): every value the
    namespace holds so far (the parameters: modules, callables, IPython's own and `_` names aside)
    checked against `notebooks/<notebook>`'s declared parameters. Run again in the same kernel ("Run
    All" twice), the namespace also holds the first run's results: then only the declared parameters'
    values are checked. Without the notebook's source (an installed package alone) nothing is checked."""
    source = PACKAGE_ROOT / "notebooks" / notebook
    if not source.is_file():
        return
    given = {k: v for k, v in namespace.items() if not k.startswith("_") and k not in ("In", "Out")
             and not callable(v) and not isinstance(v, types.ModuleType)}
    if notebook in _CHECKED:
        names = declared(source)
        given = {k: v for k, v in given.items() if k in names}
    try:
        check(source, given)
    except ConfigError as err:
        raise NotebookParameterError(str(err)) from None
    _CHECKED.add(notebook)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebook", help="the jupytext source (notebooks/NN_*.py)")
    parser.add_argument("files", nargs="*", help="parameter files (YAML), as papermill's -f")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a parameter, as papermill's -p (the value read as YAML)")
    args = parser.parse_args(argv)
    try:
        params = {}
        for path in args.files:
            params.update(yaml.safe_load(Path(path).read_text()) or {})
        params.update({name: yaml.safe_load(value) for name, value in args.p})
        check(args.notebook, params)
    except (ConfigError, OSError, yaml.YAMLError) as err:
        print(f"panacea-lab: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
