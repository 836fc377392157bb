"""The package's folders follow the pipeline, and each imports only those above it (docs/ARCHITECTURE.md):
a data loader that imported the training loop, or a table that imported a sweep, would tie a lower
layer to an upper one and let a change at the top re-key or break what sits under it."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "panacea_lab"

# top to bottom; a layer may import any layer before it in this list (and itself)
LAYERS = [
    {"paths", "config", "hashing", "files", "environment"},
    {"data"},
    {"models"},
    {"training"},
    {"defenses"},
    {"evaluation"},
    {"settings"},
    {"pipeline"},
    {"tables"},
    {"studies"},
    {"plotting"},
    {"explorer"},
    {"experiments"},
    {"report"},
    {"notebook_setup", "notebook_params", "testing", "cli_registry", "cli_flags", "cli_export", "cli"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _unit(path: Path) -> str:
    """The layer a module belongs to: its folder under panacea_lab/, or its own name at the top."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("panacea_lab"):
            if node.module == "panacea_lab":
                out |= {a.name for a in node.names}
            else:
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("panacea_lab.")}
    return out


def test_every_module_belongs_to_a_layer():
    units = {_unit(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert units <= set(RANK), f"place these in LAYERS (and docs/ARCHITECTURE.md): {sorted(units - set(RANK))}"


def test_each_layer_imports_only_the_layers_above_it():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = _unit(path)
        if unit == "__init__":
            continue
        for other in _imported(path) - {unit}:
            if RANK.get(other, -1) > RANK[unit]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {other}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def _named_methods(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string constant, docstrings aside, that is a registered method's name or
    quotes one (a query such as "method == 'noise'")."""
    from panacea_lab import defenses

    tree = ast.parse(source)
    docs = {id(node.body[0].value) for node in ast.walk(tree) if isinstance(getattr(node, "body", None), list)
            and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
            and (node.value in defenses.REGISTRY or any(f"'{n}'" in node.value for n in defenses.REGISTRY))]


def test_no_code_outside_the_defenses_and_the_settings_names_a_method():
    """A method is defined in its defense module and its registry record; everything else reads the
    record, so adding or renaming a defense edits no sweep, table, figure or notebook code. Notebook
    parameter cells are data (the notebook's spec) and may name methods."""
    import jupytext

    found = [f"{p.relative_to(PACKAGE)}:{line} {name!r}" for p in sorted(PACKAGE.rglob("*.py"))
             if _unit(p) not in {"defenses", "settings"} for line, name in _named_methods(p.read_text())]
    for nb in sorted((PACKAGE.parent / "notebooks").glob("[0-9][0-9]_*.py")):
        for i, cell in enumerate(jupytext.read(nb).cells):
            if cell.cell_type == "code" and "parameters" not in cell.metadata.get("tags", []):
                found += [f"{nb.name} cell {i}:{line} {name!r}" for line, name in _named_methods(cell.source)]
    assert not found, "method names in code (read the registry instead):\n" + "\n".join(found)
