"""Several processes (`accelerate launch`) train like one device: each takes its rows of the global
batch and DDP averages; checked on the CPU with two gloo processes against a plain run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from panacea_lab.data.batching import Batch
from panacea_lab.training.loop import shard

SCRIPT = Path(__file__).parent / "scripts" / "ddp_train.py"


def _batch(rows: int) -> Batch:
    ids = torch.arange(rows * 3).view(rows, 3)
    return Batch(ids, torch.ones_like(ids), ids + 100)


def test_shards_partition_the_global_batch():
    batch = _batch(7)
    parts = [shard(batch, SimpleNamespace(num_processes=3, process_index=r)) for r in range(3)]
    rows = sorted(int(p.input_ids[i, 0]) // 3 for p in parts for i in range(p.input_ids.shape[0]))
    assert rows == list(range(7))  # every row once, none twice
    assert all(torch.equal(p.labels, p.input_ids + 100) for p in parts)  # rows stay aligned across fields
    assert shard(batch, SimpleNamespace(num_processes=1, process_index=0)) is batch


def test_a_short_last_batch_still_gives_every_process_a_row():
    parts = [shard(_batch(2), SimpleNamespace(num_processes=4, process_index=r)) for r in range(4)]
    assert [p.input_ids.shape[0] for p in parts] == [1, 1, 1, 1]


@pytest.mark.slow
def test_two_processes_reach_the_weights_of_one(tiny_model_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = lambda *cmd: subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)  # noqa: E731
    one = run(sys.executable, str(SCRIPT), str(tiny_model_dir), str(tmp_path / "one.safetensors"))
    assert one.returncode == 0, one.stderr[-2000:]
    # what `accelerate launch --multi_gpu --num_processes 2` starts, on the CPU (gloo): torchrun with
    # accelerate's CPU switch (`accelerate launch --cpu` itself starts one process)
    env["ACCELERATE_USE_CPU"] = "true"
    two = run(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
              str(SCRIPT), str(tiny_model_dir), str(tmp_path / "two.safetensors"))
    assert two.returncode == 0, two.stderr[-3000:]
    one_rows = json.loads((tmp_path / "one.safetensors.rank0.json").read_text())
    r0, r1 = (json.loads((tmp_path / f"two.safetensors.rank{r}.json").read_text()) for r in (0, 1))
    assert len(one_rows) == len(r0) == len(r1) == 3  # 24 rows, global batch 8: 3 steps everywhere
    for step, rows in enumerate(one_rows):  # each process trained on its half of the same global batch
        assert [len(r0[step]), len(r1[step])] == [4, 4]
        assert sorted(r0[step] + r1[step]) == sorted(rows)
    a, b = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    assert a.keys() == b.keys() and a
    assert all(a[n].abs().sum() > 0 for n in a if "lora_B" in n)  # B starts at 0: the run trained
    for name in a:  # DDP's mean of the two shards' gradients equals the one-device gradient here
        torch.testing.assert_close(b[name], a[name], atol=2e-5, rtol=1e-4)
