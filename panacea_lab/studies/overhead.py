"""System overhead of each training-stage method: seconds per step and peak memory, same batches.

Every method trains the same model (base + LoRA) on the same user batches; only the step rule
changes. Peak memory is the allocator's peak on CUDA; on a CPU there is no allocator counter, so
each method runs in a fresh child process and reports its peak resident set (ru_maxrss) above the
resident set it had once the model was loaded. Run it as a module to profile one method:

    python -m panacea_lab.studies.overhead --method panacea --steps 20
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from panacea_lab import defenses, settings
from panacea_lab.defenses.registry import UNDEFENDED
from panacea_lab.config import ALIGNMENT, FINETUNING, ModelConfig
from panacea_lab.data.batching import BatchStream, encode
from panacea_lab.data.world import build_world
from panacea_lab.models.loading import attach_lora, load_base, load_tokenizer, pick_device
from panacea_lab.training.loop import LoopSettings, StepRule, train_loop
from panacea_lab.training.store import RunStore


@dataclass
class _Streams:
    """A `TrainContext` over fixed streams, so every method is timed on the same batches."""

    harmful_stream: BatchStream
    alignment_stream: BatchStream
    seed: int = 0

    def harmful(self, batch_size: int) -> BatchStream:
        return self.harmful_stream

    def alignment(self, batch_size: int) -> BatchStream:
        return self.alignment_stream

    def refusals(self, batch_size: int) -> BatchStream:
        return self.alignment_stream  # the profile's alignment stream holds refusals only


def methods() -> list[str]:
    """The undefended model's plain SFT step, every training-stage defense of the registry, and the
    named variants of `settings.PROFILE_VARIANTS` (e.g. amortized Panacea)."""
    return [UNDEFENDED, *defenses.names(ALIGNMENT), *defenses.names(FINETUNING), *settings.PROFILE_VARIANTS]


def make_rule(method: str, ctx: _Streams, setting: str = settings.DEFAULT_SETTING) -> StepRule:
    """The step rule `method` trains with, under the named setting (harmful batches sized like the user's)."""
    if method == UNDEFENDED:
        return StepRule()
    name, extra = settings.PROFILE_VARIANTS.get(method, (method, {}))
    cfg = settings.get(setting).defense(name, **extra)
    return defenses.get(name).rule(cfg, ctx)


def _rss_mib() -> float:
    """Current resident set in MiB (Linux /proc; falls back to the peak where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return _peak_rss_mib()


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def profile(method: str, model: str = "embedded", steps: int = 20, batch_size: int = 10, task: str = "sentiment",
            warmup: int = 3) -> dict:
    """Train `steps` steps of `method` in this process. Seconds per step: the median of the steps after
    the `warmup` first (robust to a step slowed by another process on a shared machine), and their mean.
    `model`: the embedded model, a preset (its LoRA) or a local model directory."""
    if method not in methods():
        raise ValueError(f"method = {method!r}: use one of {methods()}")
    if steps < 1 or warmup < 1:
        raise ValueError(f"steps = {steps}, warmup = {warmup}: both must be >= 1")
    from panacea_lab.models.presets import PRESETS, preset_model_config

    cfg = preset_model_config(model) if model in PRESETS else ModelConfig(path=model)
    tok, world = load_tokenizer(cfg), build_world(0)
    user = [encode(tok, e, cfg.max_length) for e in world.task_train[task][: (steps + warmup) * batch_size]]
    harm = [encode(tok, e, cfg.max_length) for e in world.defender_pool]
    refusals = [encode(tok, e, cfg.max_length) for e in world.alignment]
    net = attach_lora(load_base(cfg), cfg, seed=0)
    device = pick_device()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    baseline = _rss_mib()
    rule = make_rule(method, _Streams(BatchStream(harm, batch_size, tok.pad_token_id, 1),
                                      BatchStream(refusals, batch_size, tok.pad_token_id, 2)))
    settings = LoopSettings(epochs=1, lr=1e-4, batch_size=batch_size, desc=f"profile {method}")
    times: list[float] = []
    result = train_loop(net, BatchStream(user, batch_size, tok.pad_token_id, 0), settings, rule,
                        on_step=lambda m, k: times.append(time.perf_counter()))
    per_step = [b - a for a, b in zip(times[warmup - 1:], times[warmup:])]  # the last `steps` steps
    out = {"method": method, "steps": len(per_step), "batch_size": batch_size, "device": device.type,
           "threads": torch.get_num_threads(), "seconds_per_step": statistics.median(per_step),
           "mean_seconds_per_step": statistics.fmean(per_step),
           "train_seconds": result["train_seconds"]}
    if device.type == "cuda":
        out["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["memory"] = "CUDA allocator peak"
    else:
        out["peak_mib"] = max(0.0, _peak_rss_mib() - baseline)
        out["memory"] = "RSS above the loaded model"
    return out


def profile_in_subprocess(method: str, **kw) -> dict:
    """`profile` in a fresh interpreter, so one method's peak memory cannot hide another's."""
    args = [sys.executable, "-m", "panacea_lab.studies.overhead", "--method", method]
    for key, value in kw.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"profiling {method!r} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class OverheadJob:
    """One profile, keyed in the run store like a config (the device is part of the key)."""

    method: str
    model: str = "embedded"
    steps: int = 20
    batch_size: int = 10
    task: str = "sentiment"
    warmup: int = 3
    device: str = "auto"

    def __post_init__(self):
        if self.device == "auto":
            object.__setattr__(self, "device", pick_device().type)


def profile_cached(job: OverheadJob, store: RunStore) -> dict:
    """A profile measured once per machine kind and served from the run store afterwards."""
    kw = {k: v for k, v in asdict(job).items() if k not in ("method", "device")}
    return store.cached("overhead", job, lambda: (profile_in_subprocess(job.method, **kw), None))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", required=True, choices=methods())
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--warmup", type=int, default=3)
    a = parser.parse_args(argv)
    print(json.dumps(profile(a.method, a.model, a.steps, a.batch_size, a.task, a.warmup)))


if __name__ == "__main__":
    main()
