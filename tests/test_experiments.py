"""Experiments as data: a bad spec fails in one line naming its field before anything runs; a good one
computes only what the store lacks, writes its results file with the spec inside, and `--check`
recomputes the rows from the store and catches any difference from the committed file."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from panacea_lab.tables.export_rows import read_rows
from panacea_lab.cli import main
from panacea_lab.experiments import runner, spec as spec_mod
from panacea_lab.experiments.spec import all_specs, load_spec

REPO = Path(__file__).resolve().parent.parent
GOOD = {"sweep": "defend", "ratios": [0.1], "seeds": [0], "defenses": {"noise": {"std": [0.04]}, "panacea": {}}}


def _write(tmp_path: Path, raw, name: str = "x") -> Path:
    path = tmp_path / "experiments" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("change, field", [
    ({"defenses": {"rmu": {}}}, "defenses.rmu"),  # an unknown method
    ({"defenses": {"noise": {"sigma": [0.1]}}}, "defenses.noise.sigma"),  # an unknown parameter
    ({"defenses": {"noise": {"std": ["big"]}}}, "defenses.noise"),  # a value of the wrong type
    ({"defenses": {"panacea": {"rho": -1.0}}}, "defenses.panacea"),  # out of the defense's range
    ({"ratios": [0.1, 1.5]}, "ratios[1]"),  # a ratio outside [0, 1]
    ({"seeds": [0, "one"]}, "seeds[1]"),
    ({"seeds": [0, 0]}, "seeds"),
    ({"model": "llama-99b"}, "model"),  # an unknown model
    ({"sweep": "train"}, "sweep"),
    ({"eval": {"split": "dev"}}, "eval.split"),
    ({"eval": {"n_eval": 0}}, "eval.n_eval"),
    ({"ratio": [0.1]}, "ratio"),  # a misspelt field
    ({"attack": {"lr": "fast"}}, "attack.lr"),  # a config field of the wrong type
    ({"attack": {"p": 0.2}}, "attack.p"),  # the grid's own field
    ({"model_options": {"lora_r": 0}}, "model_options.lora_r"),
])
def test_a_bad_spec_fails_in_one_line_naming_the_field_before_anything_runs(tmp_path, capsys, change, field):
    path = _write(tmp_path, {**GOOD, **change})
    runs = tmp_path / "runs"
    assert main(["run", str(path), "--runs", str(runs)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f": {field}:" in err, err
    assert not runs.exists()  # nothing written


def test_a_spec_without_its_grid_is_refused(tmp_path):
    with pytest.raises(Exception, match="seeds: missing"):
        load_spec(_write(tmp_path, {"sweep": "defend", "ratios": [0.1]}))


# what a spec's `about` says when its rows are never committed (a hardware check, a run too large for this repo)
NOT_COMMITTED = "no committed results file"


def test_every_results_file_has_a_spec_and_every_spec_its_file_unless_it_says_it_has_none():
    loaded = [load_spec(p) for p in all_specs()]
    specs = {s.name for s in loaded}
    files = {p.relative_to(REPO / "results").with_suffix("").as_posix() for p in (REPO / "results").rglob("*.csv")}
    assert files <= specs, f"results without a spec: {sorted(files - specs)}"
    lacking = sorted(s.name for s in loaded if not s.output.is_file() and NOT_COMMITTED not in s.about)
    assert not lacking, f"specs without their results file (say {NOT_COMMITTED!r} in `about` if meant): {lacking}"
    said = sorted(s.name for s in loaded if s.output.is_file() and NOT_COMMITTED in s.about)
    assert not said, f"specs whose `about` says {NOT_COMMITTED!r} but whose file is committed: {said}"


@pytest.mark.slow
def test_run_computes_writes_and_checks(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(spec_mod, "EXPERIMENTS", tmp_path / "experiments")
    monkeypatch.setattr(spec_mod, "RESULTS", tmp_path / "results")
    raw = {"sweep": "defend", "model": str(tiny_model_dir), "ratios": [0.2], "seeds": [0], "attack": {"n": 20, "epochs": 1.0},
           "align": {"n_refusal": 16, "n_replay_per_task": 2, "epochs": 1.0},
           "defenses": {"noise": {"std": [0.05]}, "panacea": {"rho": [0.3]}}, "eval": {"n_eval": 4},
           "controls": ["random_direction"]}
    path, runs = _write(tmp_path, raw, "toy/defend"), str(tmp_path / "runs")

    assert main(["run", str(path), "--runs", runs, "--dry-run"]) == 0
    planned = capsys.readouterr().out
    assert "0 in the store" in planned and "attack panacea" in planned
    assert not (tmp_path / "results").exists()  # a dry run writes nothing

    assert main(["run", str(path), "--runs", runs]) == 0
    out = capsys.readouterr().out
    assert "stages computed" in out and "about" in out  # progress: done of total, time left
    written = tmp_path / "results" / "toy" / "defend.csv"
    header = [line for line in written.read_text().splitlines() if line.startswith("# spec:")]
    assert json.loads(header[0][len("# spec: "):])["defenses"] == raw["defenses"]  # the spec inside the file
    rows = read_rows(written)
    assert list(zip(rows["method"], rows["variant"])) == [
        ("none", "w"), ("noise", "w"), ("panacea", "w"), ("panacea", "w+eps"), ("random_direction", "control")]

    assert main(["run", str(path), "--runs", runs, "--dry-run"]) == 0
    assert "0 to compute" in capsys.readouterr().out  # everything is in the store now
    before = written.read_bytes()
    assert main(["run", str(path), "--runs", runs]) == 0  # from a filled store: the same rows, the file untouched
    assert "left as it is" in capsys.readouterr().out and written.read_bytes() == before
    assert main(["run", str(path), "--runs", runs, "--check"]) == 0
    assert "differing: none" in capsys.readouterr().out

    text = written.read_text().splitlines()
    i = next(i for i, line in enumerate(text) if line.startswith("none,") or ",none," in line)
    cells = text[i].split(",")
    hs = rows.columns.get_loc("HS")
    cells[hs] = str(float(cells[hs]) + 1.0)  # one number edited by hand
    text[i] = ",".join(cells)
    written.write_text("\n".join(text) + "\n")
    assert main(["run", str(path), "--runs", runs, "--check"]) == 1
    assert "'HS': 1" in capsys.readouterr().out

    assert main(["run", str(path), "--runs", str(tmp_path / "empty"), "--check", "--strict"]) == 1
    capsys.readouterr()


def test_stage_durations_are_read_from_the_store(tmp_path):
    entry = tmp_path / "attack" / "k1"
    entry.mkdir(parents=True)
    (entry / "result.json").write_text(json.dumps({"stage": "attack", "config": {"defense": {"name": "panacea"}},
                                                   "timings": {"stage_seconds": 12.0}}))
    assert runner.stage_durations(tmp_path) == {"attack panacea": 12.0}


def _notebook_06(setting: str, model_kw: dict, data: str, align_kw: dict, n: int, attack_kw: dict, n_eval: int,
                 max_new_tokens: int, judge: str, model: str = "smollm2-135m", task: str = "sentiment"):
    """What notebook 06's orchestration built from its parameters before the specs replaced it (its code,
    transcribed): (AlignConfig, EvalConfig, attack overrides). `merge_eval` was always on."""
    from panacea_lab.studies import recipe
    from panacea_lab.config import EvalConfig
    from panacea_lab.models.presets import preset_model_config

    align_cfg = recipe.align_config(setting, preset_model_config(model, **model_kw), data=data, prevalence="uniform",
                                    **align_kw)
    eval_cfg = EvalConfig(n_harmful=n_eval, n_task=n_eval, tasks=(task,), judge=judge, max_new_tokens=max_new_tokens,
                          merge=True)
    return align_cfg, eval_cfg, recipe.attack_overrides(setting, n=n, **attack_kw)


# the old parameter sets (notebooks/params/<set>/06_real_model.yaml, now the specs), their values as written
SMOLLM2 = {"model_kw": {"max_length": 128, "loss": "bucketed", "dtype": "bfloat16"},
           "align_kw": {"n_refusal": 90, "n_replay_per_task": 20, "epochs": 2, "lr": 3e-4, "batch_size": 10},
           "n": 200, "attack_kw": {"epochs": 2, "lr": 5e-4, "batch_size": 10}, "n_eval": 100}
OLD_SETS = {
    "smollm2-rt/grid_p0.1_seed0": {**SMOLLM2, "setting": "embedded", "data": "packages-rt", "max_new_tokens": 48,
                                   "judge": "keyword"},
    "gpu-check/defend_p0.1": {**SMOLLM2, "model_kw": {"max_length": 128, "dtype": "bfloat16"},
                              "setting": "paper-recipe", "data": "packages-rt", "max_new_tokens": 128,
                              "judge": "keyword"},
    "gpu/defend_p0.1": {"model": "llama2-7b", "model_kw": {}, "setting": "paper", "data": "beavertails",
                        "align_kw": {"n_refusal": 5000, "n_replay_per_task": 0, "epochs": 20, "lr": 5e-4,
                                     "batch_size": 10},
                        "n": 1000, "attack_kw": {"epochs": 20, "lr": 2e-5, "batch_size": 10}, "n_eval": 500,
                        "max_new_tokens": 128, "judge": "beaver-dam"},
}


@pytest.mark.parametrize("name", sorted(OLD_SETS))
def test_the_real_model_specs_build_the_configs_notebook_06_built(name):
    """A spec that replaced a notebook-06 parameter set names the same runs: equal configs, equal store keys
    (an int where the notebook had a float would change a hash, so the hashes are compared too)."""
    from panacea_lab.studies.sweeps import attack_config
    from panacea_lab.config import config_hash

    spec = load_spec(REPO / "experiments" / f"{name}.yaml")
    new, old = runner.configs(spec), _notebook_06(**OLD_SETS[name])
    for mine, theirs in zip(new, old):
        assert mine == theirs
    assert config_hash(new[0]) == config_hash(old[0]) and config_hash(new[1]) == config_hash(old[1])
    for p in spec.ratios:
        for seed in spec.seeds:
            runs = [attack_config(cfgs[0], spec.task, p, seed, spec.preset, **cfgs[2]) for cfgs in (new, old)]
            assert runs[0] == runs[1] and config_hash(runs[0]) == config_hash(runs[1])
    if not spec.named:  # the trained defense at the setting's own values, as the notebook's `recipe.trained(setting)`
        from panacea_lab.studies import recipe
        from panacea_lab.studies.sweeps import methods_of
        from panacea_lab.experiments.spec import trained_of

        trained = trained_of(spec.defenses)
        (mine,) = methods_of({t: spec.defenses[t] for t in trained}, spec.setting)
        assert config_hash(mine) == config_hash(recipe.trained(OLD_SETS[name]["setting"]))


def test_the_reviews_grid_spec_pins_what_notebook_06_trained():
    """The grid's configs field by field (the real-rt-grid parameter set, written out), and each named
    Panacea setting as the notebook's grid built it (`chosen`: the validation split's choice)."""
    from panacea_lab import defenses
    from panacea_lab.studies import calibration, recipe
    from panacea_lab.studies.sweeps import attack_config, methods_of
    from panacea_lab.config import config_hash
    from panacea_lab.experiments.kinds import named_knobs
    from panacea_lab.models.presets import preset_model_config

    spec = load_spec(REPO / "experiments" / "smollm2-rt" / "grid_p0.1_seed0.yaml")
    align, ev, overrides = runner.configs(spec)
    assert align.model == preset_model_config("smollm2-135m", max_length=128, loss="bucketed", dtype="bfloat16")
    assert (align.data, align.n_refusal, align.n_replay_per_task, align.epochs, align.lr, align.batch_size,
            align.prevalence) == ("packages-rt", 90, 20, 2.0, 3e-4, 10, "uniform")
    assert overrides == {"n": 200, "epochs": 2, "lr": 5e-4, "batch_size": 10}
    assert (ev.n_harmful, ev.n_task, ev.max_new_tokens, ev.judge, ev.merge) == (100, 100, 48, "keyword", True)
    assert spec.eval["second_test"] == "strongreject" and spec.setting == "embedded"

    trained = defenses.trained_with_half()[0]
    picked = calibration.choose(calibration.read_calibrations(REPO / "results" / "smollm2-rt", 0.1), "sentiment")
    old = {"chosen": (float(picked["value"]), float(picked["lam"]), bool(picked["h_const"])),
           "lam1e-2": (1.0, 0.01, None), "paper": (1.0, 1e-3, None)}  # the old grid_panacea, knobs (rho, lam, h_const)
    assert list(spec.named) == list(old)
    for name, (rho, lam, h_const) in old.items():
        theirs = recipe.trained("embedded", rho, lam, h_const)
        (mine,) = methods_of({trained: {**(spec.defenses[trained] or {}), **named_knobs(spec, name)}}, spec.setting)
        assert mine == theirs and config_hash(mine) == config_hash(theirs), name
        runs = [attack_config(align, spec.task, 0.1, 0, spec.preset, defense=d, **overrides) for d in (mine, theirs)]
        assert config_hash(runs[0]) == config_hash(runs[1]), name


@pytest.mark.slow
def test_a_trajectory_spec_scores_each_method_along_its_steps(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(spec_mod, "EXPERIMENTS", tmp_path / "experiments")
    monkeypatch.setattr(spec_mod, "RESULTS", tmp_path / "results")
    raw = {"sweep": "trajectory", "model": str(tiny_model_dir), "ratios": [0.2], "seeds": [0], "every": 2,
           "baselines": ["none", "panacea"], "attack": {"n": 20, "epochs": 1.0}, "eval": {"n_eval": 4},
           "align": {"n_refusal": 16, "n_replay_per_task": 2, "epochs": 1.0}}
    path, runs = _write(tmp_path, raw, "toy/steps"), str(tmp_path / "runs")
    assert main(["run", str(path), "--runs", runs]) == 0
    rows = read_rows(tmp_path / "results" / "toy" / "steps.csv")
    for method, run in (("none", "SFT p=0.2"), ("panacea", "Panacea w + eps p=0.2")):
        steps = rows.loc[rows["method"].eq(method) & rows["run"].eq(run), "step"].tolist()
        assert steps == [0, 2]  # step 0 is the aligned model, then every 2 steps (20 rows at batch 10: 2 steps)
    assert main(["run", str(path), "--runs", runs, "--check"]) == 0
    assert "differing: none" in capsys.readouterr().out
    bad = _write(tmp_path, {**raw, "every": 0}, "toy/bad")
    assert main(["run", str(bad), "--runs", runs]) == 2 and ": every:" in capsys.readouterr().err


@pytest.mark.slow
def test_a_layer_ablation_spec_restricts_eps_to_its_largest_layers_and_their_complement(
        tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(spec_mod, "EXPERIMENTS", tmp_path / "experiments")
    monkeypatch.setattr(spec_mod, "RESULTS", tmp_path / "results")
    raw = {"sweep": "layer_ablation", "model": str(tiny_model_dir), "ratios": [0.2], "seeds": [0],
           "attack": {"n": 20, "epochs": 1.0}, "eval": {"n_eval": 4}, "defenses": {"panacea": {"rho": 0.3}},
           "align": {"n_refusal": 16, "n_replay_per_task": 2, "epochs": 1.0},
           "ablation": {"kinds": ["top_k", "all_but_top_k"], "top_k": [1]}}
    path, runs = _write(tmp_path, raw, "toy/ablation"), str(tmp_path / "runs")
    assert main(["run", str(path), "--runs", runs]) == 0
    rows = read_rows(tmp_path / "results" / "toy" / "ablation.csv")
    eps = rows[rows["variant"].eq("w+eps")].set_index("param")["share"]
    assert eps["all"] == pytest.approx(1.0)
    assert eps["top_k"] + eps["all_but_top_k"] == pytest.approx(1.0)  # the two parts split ||eps||^2
    assert eps["top_k"] >= 0.5  # the tiny model has two layers: the larger one holds at least half
    controls = rows[rows["variant"].eq("control")].set_index("param")["norm"]
    assert controls["top_k"] == pytest.approx(rows[rows["variant"].eq("w+eps")].set_index("param")["norm"]["top_k"])
    assert main(["run", str(path), "--runs", runs, "--check"]) == 0
    assert "differing: none" in capsys.readouterr().out
    bad = _write(tmp_path, {**raw, "ablation": {"kinds": ["top_three"]}}, "toy/bad")
    assert main(["run", str(bad), "--runs", runs]) == 2 and ": ablation.kinds[0]:" in capsys.readouterr().err
    wrong = _write(tmp_path, {**raw, "sweep": "defend"}, "toy/wrong")
    assert main(["run", str(wrong), "--runs", runs]) == 2 and ": ablation:" in capsys.readouterr().err


def test_the_training_log_kind_counts_the_steps_where_the_clamped_term_acted():
    from panacea_lab.studies.training_logs import clamp_activity

    log = [{"step": i, "h_eps": h} for i, h in enumerate([4.0, 5.0, 6.0, 7.0])] + [{"step": 4, "loss": 1.0}]
    out = clamp_activity(log, clamp=5.0)
    assert out["steps"] == 4 and out["lambda_active"] == 50.0  # h == clamp still passes the gradient
    assert out["median_h_eps"] == 5.5 and out["last20_h_eps"] == 5.5
    with pytest.raises(ValueError, match="no h_eps"):
        clamp_activity([{"step": 0, "loss": 1.0}], clamp=5.0)
