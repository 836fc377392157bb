"""The package's folders follow the pipeline, and each imports only those above it (docs/ARCHITECTURE.md):
a data loader that imported the training loop, or a table that imported a sweep, would tie a lower
layer to an upper one and let a change at the top re-key or break what sits under it."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "panacea_lab"

# top to bottom; a layer may import any layer before it in this list (and itself)
LAYERS = [
    {"paths", "config", "hashing", "files"},
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
    {"notebook_setup", "testing", "cli_flags", "cli_export", "cli"},
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
