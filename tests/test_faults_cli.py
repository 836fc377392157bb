"""Bad input to every `panacea-lab` command: each case exits non-zero with one line on stderr that
names the field, flag or file, leaves every file under the workspace (run store, data home, output
folders) byte for byte as it was, and fails within seconds, before any training starts.

Parameter files for the notebooks are YAML read by papermill (YAML 1.1: `1e-3` is text); the
configs the notebooks build from them convert numeric text or refuse it naming the field.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest
from test_fetch import SOURCES as FAKE_SOURCES
from test_fetch import WHEEL_FILES, make_sdist, make_wheel, pinned, tamper

import panacea_lab.training.pretrain as pretrain
import panacea_lab.pipeline.stages as stages
from panacea_lab.cli import main
from panacea_lab.config import AlignConfig, ConfigError, ModelConfig
from panacea_lab.data import fetch
from panacea_lab.pipeline.context import get_world
from panacea_lab.testing import write_package_data
from panacea_lab.training.store import RunStore

SMALL_ALIGN = {"n_refusal": 16, "n_replay_per_task": 2, "epochs": 1}
LIMIT_S = 10.0


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root`: files by sha256, folders (empty ones too) as such."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


@pytest.fixture(scope="module")
def pins():
    """fetch-data's sources, pinned to the workspace's archives before one of them is tampered with."""
    return {}


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_model_dir, pins) -> Path:
    """The workspace every case runs in: a run store holding a completed tiny alignment, a data home
    with fetched-format files, a model folder with only config.json, a foreign non-empty folder, an
    output folder, and two folders of fetch-data archives, each with one altered after pinning."""
    root = tmp_path_factory.mktemp("faults-cli")
    stages.align(AlignConfig(model=ModelConfig(path=str(tiny_model_dir)), **SMALL_ALIGN), RunStore(root / "runs"))
    write_package_data(root / "home" / "data")
    (root / "only-config").mkdir()
    shutil.copy(tiny_model_dir / "config.json", root / "only-config")
    shutil.copytree(tiny_model_dir, root / "config-typo")  # its config.json says hidden_size "big"
    config = json.loads((root / "config-typo" / "config.json").read_text())
    (root / "config-typo" / "config.json").write_text(json.dumps({**config, "hidden_size": "big"}))
    (root / "foreign").mkdir()
    (root / "foreign" / "notes.txt").write_text("someone else's work")
    (root / "out").mkdir()
    (root / "out" / "rows.json").write_text("{}")
    folder = root / "archives"
    folder.mkdir()
    wheel = make_wheel(folder, "alpha-pkg", "1.0", WHEEL_FILES)
    sdist = make_sdist(folder, "beta", "2.0", {"beta/tasks/t/task.json": b'{"task": "t"}'})
    pins.update(alpha=pinned(FAKE_SOURCES["alpha"], wheel), beta=pinned(FAKE_SOURCES["beta"], sdist))
    shutil.copytree(folder, root / "archives-2")
    tamper(wheel)  # archives: the first source's archive altered; archives-2: the second's
    tamper(root / "archives-2" / sdist.name)
    get_world.cache_clear()  # a packages world is read from the data home: this one's, while these cases run
    yield root
    get_world.cache_clear()


@pytest.fixture(autouse=True)
def no_training(monkeypatch, ws, pins):
    """Any training started by a bad-input case fails the case; the data home is the workspace's."""
    def refuse(*_, **__):
        raise AssertionError("a training loop started: the bad input was not refused up front")

    monkeypatch.setattr(stages, "train_loop", refuse)
    monkeypatch.setattr(pretrain, "train_loop", refuse)
    monkeypatch.setattr("panacea_lab.cli_flags.AlignConfig", lambda **kw: AlignConfig(**{**SMALL_ALIGN, **kw}))
    monkeypatch.setenv("PANACEA_HOME", str(ws / "home"))
    monkeypatch.delenv("PANACEA_CACHE_ONLY", raising=False)
    monkeypatch.setattr(fetch, "SOURCES", pins)


def run_cli(argv: list[str], capsys) -> tuple[int, str, float]:
    """(exit status, stderr, seconds) of the CLI in this process; argparse's exit counts as a status."""
    t0 = time.perf_counter()
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err, time.perf_counter() - t0


ATTACK = ["attack", "--ratios", "0.2", "--seeds", "0", "--n", "20", "--n-eval", "4"]
DEFEND = ["defend", "--ratios", "0.2", "--seeds", "0", "--n", "20", "--n-eval", "4", "--stds", "0.01",
          "--rhos", "0.3"]
COMPARE = ["compare", "--ratios", "0.2", "--seeds", "0", "--n", "20", "--n-eval", "4", "--stds", "0.01",
           "--rhos", "0.3", "--methods", "none"]
EXPORT = ["export", "--n", "20", "--out", "{ws}/out/export"]
WITH_MODEL = {"attack": ATTACK, "defend": DEFEND, "compare": COMPARE, "export": EXPORT}

# (id, argv, pieces the one stderr line must hold); {ws} is the workspace. A command that reads a model gets
# small flags, the tiny model and the workspace's run store first; a flag given here overrides them (last wins).
CASES = [
    ("attack-model-missing", ["attack", "--model", "{ws}/no-such-model"], ["path", "no such local directory"]),
    ("defend-model-only-config", ["defend", "--model", "{ws}/only-config"], ["path", "no *.safetensors"]),
    ("compare-model-missing", ["compare", "--model", "{ws}/no-such-model"], ["path", "no such local directory"]),
    ("attack-p-1.5", ["attack", "--ratios", "0", "1.5"], ["p = 1.5", "[0, 1]"]),
    ("defend-p-negative", ["defend", "--ratios", "-0.1"], ["p = -0.1", "[0, 1]"]),
    ("compare-p-nan", ["compare", "--ratios", "nan"], ["p = nan", "NaN"]),
    ("attack-n-0", ["attack", "--n", "0"], ["n = 0", "> 0"]),
    ("defend-n-negative", ["defend", "--n", "-5"], ["n = -5", "> 0"]),
    ("attack-n-beyond-pool", ["attack", "--n", "100000"], ["n = 100000", "lower n"]),
    ("compare-n-beyond-pool", ["compare", "--n", "100000"], ["n = 100000", "lower n"]),
    ("defend-rho-negative", ["defend", "--rhos", "-1"], ["rho = -1.0"]),
    ("compare-rho-negative", ["compare", "--rhos", "0.3", "-1"], ["rho = -1.0"]),
    ("defend-std-negative", ["defend", "--stds", "-0.1"], ["std = -0.1"]),
    ("compare-std-negative", ["compare", "--stds", "-0.1"], ["std = -0.1"]),
    ("defend-dense-ratio-1.5", ["defend", "--dense-ratio", "1.5"], ["dense_ratio = 1.5", "[0, 1]"]),
    ("compare-dense-ratio-1.5", ["compare", "--dense-ratio", "1.5"], ["dense_ratio = 1.5"]),
    ("defend-lam-negative", ["defend", "--lam", "-1"], ["lam = -1.0"]),
    ("compare-lam-negative", ["compare", "--lam", "-1"], ["lam = -1.0"]),
    ("defend-recompute-every-0", ["defend", "--recompute-every", "0"], ["recompute_every = 0"]),
    ("attack-task-unknown", ["attack", "--task", "poetry"], ["--task", "invalid choice: 'poetry'"]),
    ("attack-preset-unknown", ["attack", "--preset", "huge"], ["--preset", "invalid choice: 'huge'"]),
    ("compare-method-unknown", ["compare", "--methods", "none", "magic"], ["--methods", "invalid choice: 'magic'"]),
    ("defend-setting-unknown", ["defend", "--setting", "paperish"], ["--setting", "invalid choice: 'paperish'"]),
    ("attack-data-unknown", ["attack", "--data", "web"], ["--data", "invalid choice: 'web'"]),
    ("attack-adapter-unknown", ["attack", "--adapter", "both"], ["--adapter", "invalid choice: 'both'"]),
    ("attack-n-text", ["attack", "--n", "abc"], ["--n", "invalid int value: 'abc'"]),
    ("attack-seeds-text", ["attack", "--seeds", "0", "x"], ["--seeds", "invalid int value: 'x'"]),
    ("defend-lam-text", ["defend", "--lam", "x"], ["--lam", "invalid float value: 'x'"]),
    ("compare-ratios-empty", ["compare", "--ratios"], ["--ratios", "expected at least one argument"]),
    ("attack-n-eval-0", ["attack", "--n-eval", "0"], ["n_harmful = 0", "> 0"]),
    ("attack-lr-negative", ["attack", "--lr=-1e-4"], ["lr = -0.0001", "> 0"]),
    ("attack-lr-negative-spaced", ["attack", "--lr", "-1e-4"], ["--lr", "expected one argument"]),  # argparse: a flag
    ("defend-epochs-0", ["defend", "--epochs", "0"], ["epochs = 0.0", "> 0"]),
    ("defend-also-unknown", ["defend", "--also", "smoothing"], ["defense = 'smoothing'", "unknown"]),
    ("compare-also-unknown", ["compare", "--also", "smoothing"], ["defense = 'smoothing'", "unknown"]),
    ("defend-also-training-stage", ["defend", "--also", "lisa"], ["lisa is a fine-tuning defense"]),
    ("compare-also-training-stage", ["compare", "--also", "vaccine"], ["vaccine is a alignment defense"]),
    ("defend-also-std-negative", ["defend", "--also", "noise:std=-1"], ["std = -1.0", ">= 0"]),
    ("defend-also-std-text", ["defend", "--also", "noise:std=abc"], ["std = 'abc'", "must be a number"]),
    ("compare-also-std-text", ["compare", "--also", "noise:std=abc"], ["std = 'abc'", "must be a number"]),
    ("defend-also-key-unknown", ["defend", "--also", "noise:sigma=0.1"], ["sigma", "std"]),
    ("attack-output-missing-folder", ["attack", "--output", "{ws}/nowhere/rows.json"], ["output", "does not exist"]),
    ("defend-output-extension", ["defend", "--output", "{ws}/out/rows.txt"], ["output", ".json or .csv"]),
    ("defend-answer-loss-extension", ["defend", "--answer-loss", "{ws}/out/loss.txt"], ["--answer-loss", ".json or .csv"]),
    ("attack-figure-extension", ["attack", "--figure", "{ws}/out/attack.svg"], ["figure", ".png"]),
    ("attack-oracle-on-packages", ["attack", "--data", "packages"], ["judge = 'oracle'", "keyword or beaver-dam"]),
    ("defend-judge-model-missing", ["defend", "--judge", "beaver-dam", "--judge-model", "{ws}/no-judge"],
     ["path", "no such local directory"]),
    ("attack-runs-is-a-file", ["attack", "--runs", "{ws}/foreign/notes.txt"], ["runs", "notes.txt"]),
    ("build-base-out-foreign", ["build-base", "--out", "{ws}/foreign"], ["build-base --out", "did not write"]),
    ("convert-smollm2-out-foreign", ["convert-smollm2", "--out", "{ws}/foreign"],
     ["convert-smollm2 --out", "did not write"]),
    ("fetch-data-tampered-archive", ["fetch-data", "--from-dir", "{ws}/archives"],
     ["alpha_pkg-1.0-py3-none-any.whl", "is not the pinned", "nothing was extracted"]),
    ("fetch-data-second-archive-tampered", ["fetch-data", "--from-dir", "{ws}/archives-2"],
     ["beta-2.0.tar.gz", "is not the pinned", "nothing was extracted"]),
    ("fetch-data-only-unknown", ["fetch-data", "--only", "wikipedia", "--from-dir", "{ws}/archives"],
     ["wikipedia"]),
    ("fetch-data-from-dir-missing", ["fetch-data", "--from-dir", "{ws}/no-archives", "--only", "beta"],
     ["no sdist", "beta==2.0"]),
    ("export-run-not-stored", ["export"], ["attack run is not in the run store", "run it first"]),
    ("export-out-missing-folder", ["export", "--out", "{ws}/nowhere/adapter"], ["export --out", "does not exist"]),
    ("export-out-foreign", ["export", "--out", "{ws}/foreign"], ["export --out", "did not write"]),
    ("export-model-only-config", ["export", "--model", "{ws}/only-config"], ["path", "no *.safetensors"]),
    ("export-p-1.5", ["export", "--p", "1.5"], ["p = 1.5", "[0, 1]"]),
    ("export-defense-unknown", ["export", "--defense", "armor"], ["defense = 'armor'", "unknown"]),
    ("export-defense-rho-negative", ["export", "--defense", "panacea:rho=-1"], ["rho = -1.0"]),
    ("export-defense-key-unknown", ["export", "--defense", "panacea:radius=1"], ["radius", "rho"]),
    ("export-post-std-text", ["export", "--post", "noise:std=abc"], ["std = 'abc'", "must be a number"]),
    ("export-post-training-stage", ["export", "--post", "lisa"], ["lisa is a fine-tuning defense"]),
    ("export-layers-without-eps", ["export", "--post", "noise:std=0.1", "--layers", "0"], ["--layers", "--post eps"]),
    ("export-scale-negative", ["export", "--scale", "-1"], ["scale = -1.0"]),
    ("export-task-unknown", ["export", "--task", "poetry"], ["--task", "invalid choice: 'poetry'"]),
    ("export-out-required", ["export", "--out"], ["--out", "expected one argument"]),
    ("no-command", [], ["command"]),
    ("attack-lr-inf", ["attack", "--lr", "inf"], ["lr = inf"]),
    ("attack-epochs-inf", ["attack", "--epochs", "inf"], ["epochs = inf"]),
    ("defend-std-inf", ["defend", "--stds", "inf"], ["std = inf"]),
    ("defend-rho-inf", ["defend", "--rhos", "inf"], ["rho = inf"]),
    ("attack-seeds-repeated", ["attack", "--seeds", "0", "0"], ["--seeds repeats [0]"]),
    ("defend-seed-too-large", ["defend", "--seeds", "99999999999"], ["--seeds 99999999999", "[0, 4294967295]"]),
    ("attack-align-seed-overflow", ["attack", "--align-seed", "99999999999999999999"], ["--align-seed", "[0, "]),
    ("defend-output-is-a-folder", ["defend", "--output", "{ws}/out"], ["--output", "is a folder"]),
    ("attack-figure-under-a-file", ["attack", "--figure", "{ws}/foreign/notes.txt/f.png"], ["--figure", "is a file"]),
    ("build-base-out-under-a-file", ["build-base", "--out", "{ws}/foreign/notes.txt/model"], ["--out", "is a file"]),
    ("defend-step-unknown", ["defend", "--step", "three_pass"], ["step = 'three_pass'", "exact, two_pass"]),
    ("defend-two-pass-without-h-const", ["defend", "--step", "two_pass"], ["h_const = False", "set h_const"]),
    ("attack-n-eval-beyond-the-split", ["attack", "--n-eval", "100000"], ["n_harmful = 100000", "--n-eval 200"]),
    ("defend-model-config-type", ["defend", "--model", "{ws}/config-typo"], ["config.json", "hidden_size"]),
]
KNOWN: dict[str, str] = {}  # known defects, kept in the table so a fix shows (strict xfail)
PARAMS = [pytest.param(argv, pieces, id=name, marks=[pytest.mark.xfail(reason=KNOWN[name], strict=True)]
                       if name in KNOWN else []) for name, argv, pieces in CASES]


def expand(argv: list[str], ws: Path, model: Path) -> list[str]:
    if argv and argv[0] in WITH_MODEL:
        argv = [*WITH_MODEL[argv[0]], "--model", str(model), "--runs", str(ws / "runs"), *argv[1:]]
    return [a.replace("{ws}", str(ws)) for a in argv]


@pytest.mark.parametrize("argv, pieces", PARAMS)
def test_bad_input_is_one_line_before_any_write(ws, tiny_model_dir, capsys, monkeypatch, argv, pieces):
    if argv and argv[0] == "fetch-data":  # its own data home: a known defect writes there
        monkeypatch.setenv("PANACEA_HOME", str(ws / "fetch-home"))
    before = snapshot(ws)
    code, err, seconds = run_cli(expand(argv, ws, tiny_model_dir), capsys)
    lines = err.strip().splitlines()
    assert code not in (0, None), err
    assert len(lines) == 1 and lines[0].startswith("panacea-lab"), err
    for piece in pieces:
        assert piece in lines[0], (piece, lines[0])
    assert seconds < LIMIT_S
    assert snapshot(ws) == before


ENVIRONMENT = [("PANACEA_CHECKPOINT_EVERY", "abc", "a whole number of steps"),
               ("PANACEA_HOME", "{ws}/foreign/notes.txt", "is a file"),
               ("PANACEA_RUNS", "", "PANACEA_RUNS is empty"),
               ("PANACEA_CACHE_ONLY", "yes", "use 1")]


@pytest.mark.parametrize("variable, value, piece", ENVIRONMENT, ids=[v for v, _, _ in ENVIRONMENT])
def test_a_bad_environment_variable_is_one_line_naming_it(ws, tiny_model_dir, capsys, monkeypatch,
                                                          variable, value, piece):
    monkeypatch.setenv(variable, value.replace("{ws}", str(ws)))
    before = snapshot(ws)
    code, err, _ = run_cli(expand(list(DEFEND), ws, tiny_model_dir), capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and variable in lines[0] and piece in lines[0], err
    assert snapshot(ws) == before


# ------------------------------------------------------------------------------ notebook parameter files
YAML_NUMBERS = """\
p: 1e-1
lam: 1e-3
rho: 1.0
stds: [5e-3, 0.01]
attack_kw: {epochs: 2, lr: 2e-5, batch_size: 10}
align_kw: {n_refusal: 16, epochs: 1, lr: 5e-4}
"""


def papermill_yaml(text: str) -> dict:
    """The parameters papermill injects from a `-f` file: its reader is PyYAML's SafeLoader without
    dates (papermill.iorw.read_yaml_file), so YAML 1.1 (importing papermill costs seconds)."""
    import yaml

    return yaml.safe_load(text)


def notebook_configs(params: dict, model: str):
    """The configs notebook 06 builds from its parameters (the same package calls)."""
    from panacea_lab import defenses, settings
    from panacea_lab.studies.sweeps import attack_config

    align = AlignConfig(model=ModelConfig(path=model), **params["align_kw"])
    attack = attack_config(align, "sentiment", params["p"], 0, n=20, **params["attack_kw"])
    panacea = settings.get("embedded").defense("panacea", rho=params["rho"], lam=params["lam"])
    noises = [defenses.get("noise").make(std=s) for s in params["stds"]]
    return align, attack, panacea, noises


def test_yaml_exponent_text_becomes_numbers(tiny_model_dir):
    params = papermill_yaml(YAML_NUMBERS)
    assert params["lam"] == "1e-3" and params["attack_kw"]["lr"] == "2e-5"  # YAML 1.1: text, not a float
    align, attack, panacea, noises = notebook_configs(params, str(tiny_model_dir))
    assert (align.lr, attack.lr, attack.p, panacea.lam) == (5e-4, 2e-5, 0.1, 1e-3)
    assert [n.std for n in noises] == [5e-3, 0.01]
    assert all(isinstance(v, float) for v in (align.lr, attack.lr, attack.p, panacea.lam, noises[0].std))
    same = notebook_configs({**params, "lam": 1e-3, "p": 0.1, "attack_kw": {**params["attack_kw"], "lr": 2e-5}},
                            str(tiny_model_dir))
    assert same[1] == attack and same[2] == panacea  # so the run store key is the same as for typed numbers


@pytest.mark.parametrize("line, field, error", [
    ("attack_kw: {epochs: 2, lr: 1e-3x, batch_size: 10}", "lr = '1e-3x'", ConfigError),
    ("attack_kw: {epochs: 2, lr: 1e-3, batch_size: 10.5}", "batch_size = 10.5", ConfigError),
    ("attack_kw: {epochs: [2], lr: 1e-3, batch_size: 10}", "epochs = [2]", ConfigError),
    ("attack_kw: {epochs: yes, lr: 1e-3, batch_size: 10}", "epochs = True", ConfigError),
    ("attack_kw: {epochs: 2, lr: .nan, batch_size: 10}", "lr = nan", ConfigError),
    ("attack_kw: {epochs: 2, lr: 1e-3, batch_size: 10, lora_r: 4}", "no field lora_r", ConfigError),
    ("lam: -1e-3", "lam = -0.001", ConfigError),
    ("p: 15e-1", "p = 1.5", ConfigError),
    ("align_kw: {n_refusal: 1e1}", "n_refusal = '1e1'", ConfigError),  # 1e1 is text to YAML 1.1, and 10.0 to int()
])
def test_a_malformed_yaml_value_is_refused_naming_the_field(tiny_model_dir, line, field, error):
    key = line.split(":", 1)[0]
    text = "\n".join(line if row.startswith(f"{key}:") else row for row in YAML_NUMBERS.splitlines())
    params = papermill_yaml(text)
    with pytest.raises(error) as err:
        notebook_configs(params, str(tiny_model_dir))
    assert "\n" not in str(err.value) and field in str(err.value), str(err.value)


def test_malformed_yaml_syntax_is_refused_by_papermill_with_the_line():
    import yaml

    with pytest.raises(yaml.YAMLError, match="line 2"):
        papermill_yaml("p: 0.1\nattack_kw: {epochs: 2, lr: [1e-3, batch_size: 10}\n")


def test_yaml_ratios_as_text_give_numeric_rows(tiny_model_dir, monkeypatch):
    """The notebooks' sweeps on a YAML ratio list; the stages are stubbed (only the rows matter here)."""
    from panacea_lab.studies import sweeps
    from panacea_lab.config import EvalConfig

    metrics = {"HS": 1.0, "refusal": 2.0, "other": 97.0, "FA": {"sentiment": 50.0}}
    monkeypatch.setattr(sweeps, "attack", lambda cfg, store: {"train": {"train_seconds": 0.0}})
    monkeypatch.setattr(sweeps, "evaluate", lambda *args, **kw: metrics)
    params = papermill_yaml("ratios: [1e-1, 2e-1]\nseeds: [0]\n")
    df = sweeps.attack_sweep(params["ratios"], params["seeds"], include_reference=False, n=20,
                             align_cfg=AlignConfig(model=ModelConfig(path=str(tiny_model_dir)), **SMALL_ALIGN),
                             eval_cfg=EvalConfig(n_harmful=4, n_task=4, tasks=("sentiment",)))
    assert list(df["p"]) == [0.1, 0.2]


DISK_FULL = [
    ("safetensors", lambda: __import__("safetensors").SafetensorError(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')),
    ("os", lambda: OSError(28, "No space left on device", "/runs/attack/ab12/adapter.safetensors")),
    ("permission", lambda: PermissionError(13, "Permission denied", "/runs/attack")),
]


@pytest.mark.parametrize("name, error", DISK_FULL, ids=[n for n, _ in DISK_FULL])
def test_a_full_disk_or_a_permission_error_while_writing_is_one_line_saying_what_to_do(name, error, capsys,
                                                                                       monkeypatch):
    """A write that fails mid-command (safetensors' own error class, or the OS's): one line, no traceback."""
    from panacea_lab import cli

    def failing_write(args):
        raise error()

    monkeypatch.setattr(cli, "cmd_runs", failing_write)
    code, err, _ = run_cli(["runs"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert ("disk is full" in lines[0] and "rerun" in lines[0]) if name != "permission" else \
        ("/runs/attack: permission denied" in lines[0])
