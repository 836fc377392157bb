"""Time one live scoring of notebook 04's explorer: w + a restricted eps on the fixed 50 + 50 subset.

The explorer keeps the run's model in memory and scores without the run store; the aim is at most
3 s per scoring on 2 CPU cores. Prints the median (and range) of wall-clock and CPU seconds over
--repeats scorings, each under another per-layer scaling, with the load average (other processes
on a shared machine inflate wall time, not CPU time), and checks that w is bit for bit unchanged
after them all.

    .venv/bin/python benchmarks/bench_explorer.py [--threads 2] [--repeats 10] [--quick]

By default the run is notebook 04's (the embedded world, the embedded setting's Panacea, n = 1000,
p = 0.1), trained first when the run store lacks it (a few minutes). --quick uses a smoke-sized
run instead (about a minute to train): the scoring cost is that of the same model and subset.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from panacea_lab import settings
from panacea_lab.explorer.live_eps import LiveEps, explorer_eval
from panacea_lab.studies.sweeps import attack_config
from panacea_lab.config import AlignConfig, ModelConfig
from panacea_lab.training.store import RunStore

QUICK_ALIGN = {"n_refusal": 16, "n_replay_per_task": 2, "epochs": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the target: 2 cores)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--n", type=int, default=50, help="harmful prompts and task samples per scoring")
    parser.add_argument("--p", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--setting", default="embedded")
    parser.add_argument("--runs", default=None, help="run store (default: $PANACEA_RUNS or runs/)")
    parser.add_argument("--quick", action="store_true", help="a smoke-sized run (n = 20, one-epoch alignment)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    align = AlignConfig(model=ModelConfig(path="embedded"), **(QUICK_ALIGN if args.quick else {}))
    run = attack_config(align, "sentiment", args.p, args.seed, "default", n=20 if args.quick else 1000,
                        defense=settings.get(args.setting).defense("panacea"))
    live = LiveEps(run, RunStore(args.runs), explorer_eval(run.task, args.n))
    w = {n: p.detach().clone() for n, p in live.model.named_parameters() if "lora_" in n}
    live.score(live.post())  # warm-up: first-call allocations are not what a person waits for
    walls, cpus, scores = [], [], []
    for i in range(args.repeats):
        scales = [1.0 + 0.2 * ((i + layer) % 3) for layer in live.layers]  # another setting each time
        post = live.post(scales, live.modules[: 1 + i % len(live.modules)])
        cpu0, wall0 = time.process_time(), time.perf_counter()
        scores.append(live.score(post)["HS"])
        walls.append(time.perf_counter() - wall0)
        cpus.append(time.process_time() - cpu0)
    unchanged = all(torch.equal(p, w[n]) for n, p in live.model.named_parameters() if "lora_" in n)
    print(json.dumps({
        "run": "quick" if args.quick else "notebook 04 default", "prompts": 2 * args.n, "threads": args.threads,
        "repeats": args.repeats, "median_wall_s": round(statistics.median(walls), 2),
        "wall_range_s": [round(min(walls), 2), round(max(walls), 2)],
        "median_cpu_s": round(statistics.median(cpus), 2), "cpu_per_thread_s": round(statistics.median(cpus) /
                                                                                     args.threads, 2),
        "load_average_1min": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count(),
        "HS_seen": sorted(set(scores)), "w_unchanged": unchanged,
    }, indent=1))


if __name__ == "__main__":
    main()
