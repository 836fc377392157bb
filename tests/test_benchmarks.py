"""Every script under benchmarks/ runs with smoke settings and prints the fields its docs quote, so a
rename in the package breaks the build instead of the benchmark. No speed is asserted: speeds are
what the benchmarks measure, on the machine that runs them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from panacea_lab.paths import PACKAGE_ROOT
from panacea_lab.testing import write_package_data

BENCH = PACKAGE_ROOT / "benchmarks"
pytestmark = pytest.mark.slow


def _run(script: str, *args: str, env: dict | None = None) -> dict:
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, cwd=PACKAGE_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{"):])


def test_every_benchmark_has_a_smoke_test():
    scripts = sorted(p.name for p in BENCH.glob("bench_*.py"))
    tested = {"bench_step_time.py", "bench_generation.py", "bench_explorer.py", "bench_real_step.py"}
    assert set(scripts) == tested, f"give these a smoke test here: {sorted(set(scripts) - tested)}"


def test_step_time_benchmark_reports_each_method_against_sft(tmp_path):
    written = tmp_path / "step_time.json"
    out = _run("bench_step_time.py", "--steps", "2", "--warmup", "1", "--batch-size", "2", "--methods", "panacea",
               "panacea_two_pass", "--output", str(written))
    for m in ("panacea", "panacea_two_pass"):
        assert {f"{m}_s_per_step", f"{m}_over_sft", f"{m}_mean_over_sft", f"{m}_peak_mib"} <= set(out)
        assert out[f"{m}_over_sft"] > 0
    assert out["device"] and out["statistic"] == "median" and json.loads(written.read_text()) == out


def test_generation_benchmark_compares_batched_and_single_answers():
    out = _run("bench_generation.py", "--n", "3", "--batch-size", "3", "--max-new-tokens", "3")
    assert out["prompts"] == 3 and out["identical_answers"] == "3/3"  # batching must not change an answer


def test_explorer_benchmark_scores_and_leaves_w_unchanged(tmp_path):
    out = _run("bench_explorer.py", "--quick", "--repeats", "1", "--n", "4", "--threads", "1",
               "--runs", str(tmp_path / "runs"))
    assert out["w_unchanged"] is True and out["prompts"] == 8 and out["median_wall_s"] >= 0


def test_real_step_benchmark_times_each_loss_mode(tiny_model_dir, tmp_path):
    write_package_data(tmp_path / "home" / "data")
    out = _run("bench_real_step.py", "--model", str(tiny_model_dir), "--repeats", "1", "--threads", "1",
               "--modes", "batch/float32", "bucketed/float32", env={"PANACEA_HOME": str(tmp_path / "home")})
    assert {"batch/float32 panacea step s", "bucketed/float32 speed-up sft"} <= set(out)
