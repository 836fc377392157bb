"""Batched greedy evaluation vs one prompt at a time on the same prompts (the paper's scripts go one
by one). Prints both times, their ratio, and whether the answers are identical.

    .venv/bin/python benchmarks/bench_generation.py [--n 64] [--batch-size 64]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from panacea_lab.config import ModelConfig
from panacea_lab.evaluation.evaluate import generate
from panacea_lab.models.loading import load_base, load_tokenizer
from panacea_lab.data.world import build_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=64, help="prompts (harmful test + task test, mixed)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    args = parser.parse_args()
    cfg = ModelConfig()
    tok, model = load_tokenizer(cfg), load_base(cfg)
    world = build_world(0)
    prompts = (world.harmful_test + world.task_test["arithmetic"] + world.task_test["sentiment"])[:: 3][: args.n]
    with torch.no_grad():
        t0 = time.perf_counter()
        batched = generate(model, tok, prompts, args.max_new_tokens, args.batch_size)
        t_batched = time.perf_counter() - t0
        t0 = time.perf_counter()
        single = [generate(model, tok, [p], args.max_new_tokens, 1)[0] for p in prompts]
        t_single = time.perf_counter() - t0
    same = sum(a == b for a, b in zip(batched, single))
    print(json.dumps({"prompts": len(prompts), "batch_size": args.batch_size, "batched_s": round(t_batched, 2),
                      "one_at_a_time_s": round(t_single, 2), "speedup": round(t_single / t_batched, 2),
                      "identical_answers": f"{same}/{len(prompts)}", "threads": torch.get_num_threads()}, indent=1))


if __name__ == "__main__":
    main()
