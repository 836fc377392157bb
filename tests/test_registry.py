"""How a defense plugs in: one config class and one record, registered from this file alone, runs
through the CLI's sweep and a notebook-style call; and the package's imports form no cycle."""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from panacea_lab import defenses, pipeline
from panacea_lab.studies.sweeps import defense_sweep
from panacea_lab.cli import main
from panacea_lab.config import POST, AlignConfig, AttackConfig, ConfigError, DefenseConfig, EvalConfig, from_dict, to_dict
from panacea_lab.defenses.registry import REGISTRY, Defense

PACKAGE = Path(__file__).resolve().parent.parent / "panacea_lab"
EVAL = EvalConfig(n_harmful=4, n_task=4, max_new_tokens=8, tasks=("sentiment",))


@dataclass(frozen=True)
class ShrinkConfig(DefenseConfig):
    """Scale every LoRA tensor by `factor` after fine-tuning (a toy post-fine-tuning defense)."""

    name = "shrink"
    stage = POST

    factor: float = 0.5


def _shrink(model, cfg, ctx):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in ctx.lora_names:
                p.mul_(cfg.factor)
    return model


@pytest.fixture
def shrink(monkeypatch):
    record = Defense(name="shrink", stage=POST, config=ShrinkConfig, label="shrink", param="factor", transform=_shrink,
                     color="#123456", marker="X", sweep=(0.5,), flag="factors")
    monkeypatch.setitem(REGISTRY, "shrink", record)
    return record


def _align(tiny_cfg):
    return AlignConfig(model=tiny_cfg, n_refusal=16, n_replay_per_task=2, epochs=1)


def test_a_toy_defense_runs_through_a_notebook_style_call(shrink, tiny_cfg, store):
    attack = AttackConfig(align=_align(tiny_cfg), n=20, p=0.2, epochs=1)
    pipeline.attack(attack, store)
    halved = pipeline.evaluate("attack", attack, store, EVAL, ShrinkConfig(factor=0.5))
    zeroed = pipeline.evaluate("attack", attack, store, EVAL, ShrinkConfig(factor=0.0))
    aligned_base = pipeline.evaluate("attack", attack, store, EVAL, ShrinkConfig(factor=1.0))
    plain = pipeline.evaluate("attack", attack, store, EVAL)
    assert len({halved["key"], zeroed["key"], plain["key"]}) == 3
    assert halved["config"]["post"] == {"name": "shrink", "factor": 0.5}
    assert {k: aligned_base[k] for k in ("HS", "FA")} == {k: plain[k] for k in ("HS", "FA")}  # factor 1 is identity

    df = defense_sweep([0.2], [0], {"shrink": {}}, align_cfg=_align(tiny_cfg), eval_cfg=EVAL, store=store,
                       n=20, epochs=1)  # named without values: its record's sweep values
    row = df[df["method"] == "shrink"]
    assert (row["param"].item(), row["value"].item(), row["HS"].item()) == ("factor", 0.5, halved["HS"])
    assert list(df["method"]) == ["none", "shrink"]

    from matplotlib.colors import to_hex

    from panacea_lab.plotting import plots
    from panacea_lab.studies.sweeps import summarize

    table = summarize(df)  # a table: one line per method, labelled from the record
    assert "shrink factor=0.5 p=0.2" in table.index and table.loc["shrink factor=0.5 p=0.2", "seeds"] == 1
    bars = plots.method_bars(df.rename(columns={"label": "model"}), metrics="HS").axes[0]  # a figure
    colors = {t.get_text(): to_hex(b.get_facecolor()) for t, b in zip(bars.get_xticklabels(), bars.patches)}
    assert colors == {"no defense": "#000000", "shrink factor=0.5": "#123456"}  # its record's colour


def test_a_toy_defense_runs_through_the_cli(shrink, tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("panacea_lab.cli_flags.AlignConfig",
                        lambda **kw: AlignConfig(n_refusal=16, n_replay_per_task=2, epochs=1, **kw))
    out_file = tmp_path / "rows.json"
    code = main(["defend", "--model", str(tiny_model_dir), "--runs", str(tmp_path / "runs"), "--ratios", "0.2",
                 "--n", "20", "--n-eval", "4", "--stds", "--rhos", "--factors", "--also", "shrink:factor=0.25",
                 "--output", str(out_file)])  # its own flag (`--factors`, from the record), emptied
    assert code == 0, capsys.readouterr().err
    assert "shrink factor=0.25 p=0.2" in capsys.readouterr().out
    rows = json.loads(out_file.read_text())["rows"]
    assert [(r["method"], r["variant"], r["value"]) for r in rows] == [
        ("none", "w", None), ("none", "fresh", None), ("antidote", "w", 0.1), ("shrink", "w", 0.25)]


def test_registry_records_are_consistent():
    for name, record in defenses.REGISTRY.items():
        assert record.config.name == name and record.stage == record.config.stage
        assert not record.param or record.param in record.config.__dataclass_fields__
    with pytest.raises(ConfigError, match="unknown"):
        defenses.get("rmu")
    with pytest.raises(ConfigError, match="must define `transform`"):
        Defense(name="shrink", stage=POST, config=ShrinkConfig, label="x")


def test_a_stored_config_reads_back_with_its_defense(tiny_cfg):
    from panacea_lab.defenses.panacea import PanaceaConfig

    cfg = AttackConfig(align=_align(tiny_cfg), defense=PanaceaConfig(rho=2.0, lam=0.1))
    data = json.loads(json.dumps(to_dict(cfg)))
    assert data["defense"]["name"] == "panacea"
    assert from_dict(AttackConfig, data) == cfg


def _imports(path: Path, module: str) -> set[str]:
    """Every panacea_lab module this file imports (at any depth of the file, lazy imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("panacea_lab")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("panacea_lab"):
            for a in node.names:  # `from panacea_lab.x import y`: y may be a module itself
                sub = f"{node.module}.{a.name}"
                out.add(sub if _module_path(sub) is not None else node.module)
    return out - {module}


def _module_path(name: str) -> Path | None:
    rel = Path(*name.split(".")[1:])
    for candidate in (PACKAGE / rel.with_suffix(".py"), PACKAGE / rel / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def test_the_package_imports_form_no_cycle():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        modules[name] = path
    graph = {m: {d for d in _imports(p, m) if d in modules} for m, p in modules.items()}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert "panacea_lab.config" in graph and not graph["panacea_lab.config"] - {"panacea_lab.paths"}
