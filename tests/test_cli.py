"""The CLI end to end on the tiny model: tables with every row, and defended runs beside the attack."""
from __future__ import annotations

import pytest

import panacea_lab.studies.sweeps as experiments
from panacea_lab.tables.export_rows import read_rows
from panacea_lab.cli import main
from panacea_lab.config import AlignConfig, EvalConfig


@pytest.fixture
def small_presets(monkeypatch):
    """Tiny alignment defaults so the CLI's own code path runs in seconds."""
    monkeypatch.setattr("panacea_lab.cli_flags.AlignConfig",
                        lambda **kw: AlignConfig(n_refusal=16, n_replay_per_task=2, epochs=1, **kw))


@pytest.mark.slow
def test_attack_prints_every_ratio(tiny_model_dir, tmp_path, capsys, small_presets):
    figure = tmp_path / "fig" / "attack.png"
    code = main(["attack", "--model", str(tiny_model_dir), "--runs", str(tmp_path), "--ratios", "0", "0.2",
                 "--seeds", "0", "--n", "20", "--n-eval", "4", "--figure", str(figure)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert figure.read_bytes().startswith(b"\x89PNG") and figure.with_suffix(".csv").exists()
    for row in ("base", "aligned", "fine-tuned p=0 ", "fine-tuned p=0.2"):
        assert row in out
    assert "FA_sentiment" in out and "HS" in out


@pytest.mark.slow
def test_defend_sweep_has_every_method(tiny_cfg, store):
    df = experiments.defense_sweep([0.2], [0], {"noise": {"std": [0.01]}, "antidote": {}, "panacea": {"rho": [0.3]}},
                                   store=store,
                                   align_cfg=AlignConfig(model=tiny_cfg, n_refusal=16, n_replay_per_task=2, epochs=1),
                                   eval_cfg=EvalConfig(n_harmful=4, n_task=4, max_new_tokens=8, tasks=("sentiment",)),
                                   n=20, epochs=1)
    assert list(zip(df["method"], df["variant"])) == [
        ("none", "w"), ("none", "fresh"), ("noise", "w"), ("antidote", "w"), ("panacea", "w"), ("panacea", "w+eps"),
        ("random_direction", "control"), ("harmful_ascent", "control")]
    assert list(df["param"].iloc[2:4]) == ["std", "dense_ratio"] and list(df["value"].iloc[2:4]) == [0.01, 0.1]
    assert (df["param"].iloc[4:] == "rho").all() and (df["value"].iloc[4:] == 0.3).all()
    fresh, plain = (df[(df["method"] == "none") & (df["variant"] == v)] for v in ("fresh", "w"))
    assert len(fresh) == len(plain) == 1  # Antidote's own starting run (merged alignment, fresh LoRA) is shown
    eps_row = df[(df["method"] == "panacea") & (df["variant"] == "w+eps")]
    assert eps_row["norm"].item() == pytest.approx(0.3, rel=1e-4)
    table = experiments.summarize(df)
    assert table.shape[0] == 8 and (table["seeds"] == 1).all()


@pytest.mark.slow
def test_defend_cli_prints_table_and_coefficients(tiny_model_dir, tmp_path, capsys, small_presets):
    code = main(["defend", "--model", str(tiny_model_dir), "--runs", str(tmp_path), "--ratios", "0.2",
                 "--seeds", "0", "--n", "20", "--n-eval", "4", "--stds", "0.01", "--rhos", "0.3",
                 "--answer-loss", str(tmp_path / "loss.csv")])
    out = capsys.readouterr().out
    assert code == 0
    assert "Panacea rho=0.3 (w + eps) p=0.2" in out and "same-norm random" in out and "Antidote" in out
    assert "safety coefficients" in out and "q_proj" in out
    probe = read_rows(tmp_path / "loss.csv")  # the probe of the sweep's one Panacea run
    assert len(probe) == 12 and set(probe["rho"]) == {0.3} and set(probe["p"]) == {0.2}
    assert "answer loss against the attacked model" in out


def test_eps_coefficients_sum_to_one_and_differ_from_noise(tiny_cfg, store):
    from panacea_lab.config import AttackConfig
    from panacea_lab.defenses.panacea import PanaceaConfig

    align = AlignConfig(model=tiny_cfg, n_refusal=16, n_replay_per_task=2, epochs=1)
    run = AttackConfig(align=align, n=20, p=0.2, epochs=1, defense=PanaceaConfig(rho=0.5))
    table = experiments.eps_coefficients(run, store)
    assert table["eps_share"].sum() == pytest.approx(1.0) and table["noise_share"].sum() == pytest.approx(1.0)
    assert set(table["layer"]) == {0, 1}
    assert (table["eps_share"] - table["noise_share"]).abs().max() > 1e-3


@pytest.mark.slow
def test_compare_cli_prints_every_method_once(tiny_model_dir, tmp_path, capsys, small_presets, monkeypatch):
    from panacea_lab import settings

    tiny = settings.Setting("tiny", "test", defenses={"vaccine": {"rho": 1.0}, "panacea": {"lam": 0.1},
                                                      "lisa": {"align_steps": 1, "finetune_steps": 1,
                                                               "align_batch_size": 4}})
    monkeypatch.setitem(settings.SETTINGS, "tiny", tiny)
    code = main(["compare", "--model", str(tiny_model_dir), "--runs", str(tmp_path), "--ratios", "0.2", "--seeds",
                 "0", "--n", "20", "--n-eval", "4", "--stds", "0.01", "--rhos", "0.3", "--methods", "none", "vaccine",
                 "lisa", "--setting", "tiny"])
    out = capsys.readouterr().out
    assert code == 0
    for row in ("SFT (no defense) p=0.2", "Vaccine p=0.2", "Lisa p=0.2", "noise std=0.01 p=0.2", "Antidote",
                "Panacea rho=0.3 (w + eps) p=0.2"):
        assert out.count(row) == 1, row
    assert "same-norm" not in out and "no defense p=" not in out  # the SFT row is the undefended model


def test_attack_on_fetched_data_with_flags(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """--data packages builds the real-data world (here: synthetic files in fetch-data's formats),
    --epochs / --lr reach the stored attack config, and a memory estimate is printed first."""
    import json

    from panacea_lab.pipeline.context import get_world
    from panacea_lab.data.real_world import ALIGN_DEFAULTS
    from panacea_lab.testing import write_package_data

    monkeypatch.setenv("PANACEA_HOME", str(tmp_path / "home"))
    write_package_data(tmp_path / "home" / "data")
    monkeypatch.setitem(ALIGN_DEFAULTS, "packages", {"n_refusal": 16, "n_replay_per_task": 2, "epochs": 1.0,
                                                     "prevalence": "uniform"})
    get_world.cache_clear()
    code = main(["attack", "--model", str(tiny_model_dir), "--data", "packages", "--judge", "keyword",
                 "--runs", str(tmp_path / "runs"), "--ratios", "0.2", "--seeds", "0", "--n", "20", "--n-eval", "4",
                 "--epochs", "1", "--lr", "1e-4"])
    get_world.cache_clear()
    out = capsys.readouterr().out
    assert code == 0
    assert out.index("memory estimate") < out.index("fine-tuned p=0.2")
    assert "FA_arithmetic" in out and "FA_topic" not in out  # the fetched world's two tasks
    (attack_dir,) = [d for d in (tmp_path / "runs" / "attack").iterdir() if not d.name.startswith(".")]
    stored = json.loads((attack_dir / "result.json").read_text())["config"]
    assert (stored["epochs"], stored["lr"], stored["align"]["data"]) == (1.0, 1e-4, "packages")


def test_every_flag_help_names_its_default_once():
    """`--help` of every command says each flag's default, in argparse's words or the flag's own, and never twice."""
    import argparse
    import re

    from panacea_lab.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    problems = []
    for name, parser in sub.choices.items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS or action.dest == "help":
                continue
            text = formatter._expand_help(action)
            count = len(re.findall(r"default:", text))
            if action.required or isinstance(action, argparse._StoreTrueAction):
                continue  # nothing to default to, or a switch: off unless given
            if count != 1 or "(default: None)" in text:
                problems.append(f"{name} {action.option_strings[0]}: {text!r}")
    assert not problems, "\n".join(problems)
