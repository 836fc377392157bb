"""`panacea-lab attack` under faults: killed with SIGKILL mid-alignment and mid-attack, two runs of
one command into one store at once, a read-only store missing a stage, damaged store entries.

Every run is the CLI's own `main` on the tiny model with small alignment settings (DRIVER). The
killed and concurrent runs are child processes forked from this one (torch is imported already, so
a start costs milliseconds, not the ~10 s of a fresh interpreter); the read-only run is a fresh
`python -c DRIVER` process, so its stderr is exactly what a user sees. Results are compared with
one uninterrupted, never checkpointed run: every stored record (metrics, training log, sha256 of
every artifact, the adapter's included) must be identical, timings and provenance aside.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import panacea_lab.pipeline.stages as stages
from panacea_lab.cli import main

pytestmark = pytest.mark.slow  # processes killed and resumed: the full suite's, not the edit loop's

# fork: children start in milliseconds; a process that uses CUDA cannot be forked, so spawn there
CHILDREN = multiprocessing.get_context("spawn" if torch.cuda.is_available() else "fork")

# 24 alignment rows (16 refusals + 2 per task), batch 16: 20 steps at 10 epochs; the attack: 20 rows,
# batch 10, 10 epochs = 20 steps. PANACEA_CHECKPOINT_EVERY (read at import) is set again here so a
# forked child sees it; FAULT_PAUSE_IN_SAVE holds each checkpoint save a moment before its tensors are
# written (so a kill lands mid-stage, often mid-save, and two runs' saves overlap).
DRIVER_ALIGN = {"n_refusal": 16, "n_replay_per_task": 2, "epochs": 10}
DRIVER = """
import os, sys, time
import panacea_lab.cli as cli
import panacea_lab.cli_flags as cli_flags
import panacea_lab.pipeline.stages as stages
from panacea_lab.config import AlignConfig
from panacea_lab.training import checkpoint
cli_flags.AlignConfig = lambda **kw: AlignConfig(**SMALL_ALIGN, **kw)
stages.CHECKPOINT_EVERY = int(os.environ.get("PANACEA_CHECKPOINT_EVERY", "50"))
pause = float(os.environ.get("FAULT_PAUSE_IN_SAVE", "0"))
if pause:
    write = checkpoint.save_file
    def slow_write(*args, **kw):
        time.sleep(pause)
        return write(*args, **kw)
    checkpoint.save_file = slow_write
sys.exit(cli.main(sys.argv[1:]))
""".replace("SMALL_ALIGN", repr(DRIVER_ALIGN))
TIMING = {"provenance", "timings", "eval_seconds", "record_sha256"}  # the checksum covers the provenance too
TRAIN_TIMING = {"train_seconds", "seconds_per_step", "checkpoint"}


def attack_argv(model: Path, runs: Path, output: Path | None = None) -> list[str]:
    argv = ["attack", "--model", str(model), "--runs", str(runs), "--ratios", "0.2", "--seeds", "0", "--n", "20",
            "--n-eval", "4", "--epochs", "10"]
    return argv + (["--output", str(output)] if output else [])


def _child(argv: list[str], env: dict[str, str]) -> None:
    os.environ.update(env)
    sys.argv = ["panacea-lab", *argv]
    exec(DRIVER, {"__name__": "__main__"})


def start(argv: list[str], **env: str):
    proc = CHILDREN.Process(target=_child, args=(argv, {"PANACEA_CHECKPOINT_EVERY": "2", **env}))
    proc.start()
    return proc


def kill_when(proc, runs: Path, pattern: str, timeout: float = 120.0) -> None:
    """SIGKILL `proc` as soon as a path matching `pattern` appears under `runs`."""
    deadline = time.monotonic() + timeout
    while not list(runs.glob(pattern)):
        assert proc.is_alive(), f"the run ended (exit {proc.exitcode}) before {pattern} appeared"
        assert time.monotonic() < deadline, f"no {pattern} after {timeout} s"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert proc.exitcode == -signal.SIGKILL


def published(runs: Path, stage: str) -> list[Path]:
    return [p for p in (runs / stage).glob("*") if not p.name.startswith(".")]


def comparable(record: dict) -> dict:
    """A stored record without what differs between identical runs (timings, provenance)."""
    out = {k: v for k, v in record.items() if k not in TIMING}
    if "train" in out:
        out["train"] = {k: v for k, v in out["train"].items() if k not in TRAIN_TIMING}
    return out


def store_records(runs: Path) -> dict[str, dict]:
    """Every published entry of a run store, by stage/key."""
    return {f"{p.parent.parent.name}/{p.parent.name}": comparable(json.loads(p.read_text()))
            for p in runs.glob("*/*/result.json") if not {p.parent.name[0], p.parent.parent.name[0]} & {"."}}


def rows(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "train_seconds"} for row in json.loads(path.read_text())["rows"]]


def snapshot(root: Path) -> dict[str, str]:
    import hashlib

    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir) -> Path:
    """One uninterrupted run, never checkpointed: its run store and rows beside it."""
    from panacea_lab.config import AlignConfig

    root = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("panacea_lab.cli_flags.AlignConfig", lambda **kw: AlignConfig(**DRIVER_ALIGN, **kw))
        mp.setattr(stages, "CHECKPOINT_EVERY", 0)
        assert main(attack_argv(tiny_model_dir, root / "runs", root / "rows.json")) == 0
    assert {p.parent.name for p in (root / "runs").glob("*/*/result.json")} and not list(root.rglob(".ckpt-*"))
    return root


def test_killed_mid_alignment_and_mid_attack_resumes_to_the_same_result(reference, tiny_model_dir, tmp_path):
    runs = tmp_path / "runs"
    argv = attack_argv(tiny_model_dir, runs)
    kill_when(start(argv, FAULT_PAUSE_IN_SAVE="0.1"), runs, "align/.ckpt-*/step-*")
    assert not published(runs, "align") and not (runs / "attack").exists()
    kill_when(start(argv, FAULT_PAUSE_IN_SAVE="0.1"), runs, "attack/.ckpt-*/step-*")
    assert published(runs, "align") and not list((runs / "align").glob(".ckpt-*")) and not published(runs, "attack")
    final = start(argv + ["--output", str(tmp_path / "rows.json")])
    final.join()
    assert final.exitcode == 0
    for stage in ("align", "attack"):
        (entry,) = published(runs, stage)
        resumed = json.loads((entry / "result.json").read_text())["train"]["checkpoint"]["resumed_from"]
        assert resumed and resumed % 2 == 0 and 0 < resumed < 20, (stage, resumed)  # resumed mid-stage
    assert not list(runs.glob("*/.ckpt-*")) and not [p for p in runs.glob("*/.*-*") if not p.name.startswith(".lock-")]  # no checkpoint or temp dir left
    assert store_records(runs) == store_records(reference / "runs")
    assert rows(tmp_path / "rows.json") == rows(reference / "rows.json")


def concurrent_runs(tiny_model_dir, tmp_path, *envs: dict[str, str]) -> Path:
    """Two runs of one command (one per `envs`) into one store at once; both must succeed with the same rows."""
    runs = tmp_path / "runs"
    procs = [start(attack_argv(tiny_model_dir, runs, tmp_path / f"rows-{i}.json"), **env) for i, env in enumerate(envs)]
    for proc in procs:
        proc.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    first, second = (json.loads((tmp_path / f"rows-{i}.json").read_text())["rows"] for i in range(2))
    assert first == second  # train time too: both report the one stored record
    assert not list(runs.glob("*/.ckpt-*")) and not [p for p in runs.glob("*/.*-*") if not p.name.startswith(".lock-")]
    return runs


def test_two_concurrent_runs_into_one_store_agree(reference, tiny_model_dir, tmp_path):
    runs = concurrent_runs(tiny_model_dir, tmp_path, *[{"PANACEA_CHECKPOINT_EVERY": "0"}] * 2)
    assert rows(tmp_path / "rows-0.json") == rows(reference / "rows.json")
    assert store_records(runs) == store_records(reference / "runs")


def test_two_concurrent_checkpointed_runs_agree(tiny_model_dir, tmp_path):
    """The second run's saves are slow, so the first publishes (and removes the shared checkpoints) while
    the second is most likely inside a save."""
    concurrent_runs(tiny_model_dir, tmp_path, {}, {"FAULT_PAUSE_IN_SAVE": "0.2"})


def test_read_only_store_missing_a_stage_names_it_and_writes_nothing(reference, tiny_model_dir, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(reference / "runs", runs)
    (attack_entry,) = published(runs, "attack")
    shutil.rmtree(attack_entry)
    before = snapshot(tmp_path)
    env = {**os.environ, "PANACEA_CACHE_ONLY": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", DRIVER, *attack_argv(tiny_model_dir, runs)], env=env,
                          capture_output=True, text=True, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    for piece in (f"stage 'attack' ({attack_entry.name})", str(runs), "read-only", "compute it first"):
        assert piece in lines[0], (piece, lines[0])
    assert snapshot(tmp_path) == before


def test_read_only_empty_store_names_the_first_stage(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PANACEA_CACHE_ONLY", "1")
    assert main(attack_argv(tiny_model_dir, tmp_path / "runs")) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "stage 'eval'" in lines[0] and "read-only" in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_damaged_entries_are_moved_aside_and_recomputed(reference, tiny_model_dir, tmp_path, capsys, monkeypatch):
    from panacea_lab.config import AlignConfig

    runs = tmp_path / "runs"
    shutil.copytree(reference / "runs", runs)
    (align_entry,) = published(runs, "align")
    (attack_entry,) = published(runs, "attack")
    (align_entry / "adapter" / "adapter_model.safetensors").unlink()
    result = attack_entry / "result.json"
    result.write_bytes(result.read_bytes()[: result.stat().st_size // 2])
    monkeypatch.setattr("panacea_lab.cli_flags.AlignConfig", lambda **kw: AlignConfig(**DRIVER_ALIGN, **kw))
    assert main(attack_argv(tiny_model_dir, runs, tmp_path / "rows.json")) == 0
    err = capsys.readouterr().err
    assert f"artifact {align_entry / 'adapter' / 'adapter_model.safetensors'} is missing" in err
    assert f"{result} is not valid JSON" in err
    aside = sorted(p.name for p in (runs / ".damaged").iterdir())
    assert [n.split("-")[:2] for n in aside] == [["align", align_entry.name], ["attack", attack_entry.name]]
    assert store_records(runs) == store_records(reference / "runs")
    assert rows(tmp_path / "rows.json") == rows(reference / "rows.json")
