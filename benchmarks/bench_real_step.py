"""Forward + backward time of the LM loss on SmolLM2-135M-Instruct, per loss mode and dtype, in one run.

The batches are notebook 06's: the user's data at p = 0.1 (sentiment rows with harmful rows mixed in,
which pad the batch to the longest) and the defender's harmful rows (long answers). A Panacea step is
one user pass and two harmful passes, SFT one user pass; the ratios against fp32 "batch" are what the
real tier's speed rests on. Needs the converted model and the fetched data (`make smollm2 fetch-data`).

    .venv/bin/python benchmarks/bench_real_step.py [--repeats 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="batches of each kind timed (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["batch/float32", "bucketed/float32", "bucketed/bfloat16"])
    parser.add_argument("--model", default="smollm2-135m", help="a preset or a local model directory (the tests: a "
                                                               "tiny one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from panacea_lab.data.batching import BatchStream, encode, mix_user_data
    from panacea_lab.data.real_world import packages_world
    from panacea_lab.models.loading import attach_lora, load_base, load_tokenizer
    from panacea_lab.config import ModelConfig
    from panacea_lab.models.presets import PRESETS, preset_model_config
    from panacea_lab.training.loss import lm_loss

    world = packages_world(0)
    out = {"threads": args.threads, "repeats": args.repeats}
    for mode in args.modes:
        loss, dtype = mode.split("/")
        cfg = (preset_model_config(args.model, max_length=128, loss=loss, dtype=dtype) if args.model in PRESETS
               else ModelConfig(path=args.model, max_length=128, loss=loss, dtype=dtype))
        tok = load_tokenizer(cfg)
        user = [encode(tok, ex, cfg.max_length)
                for ex in mix_user_data(world.task_train["sentiment"], world.attacker_pool, 200, 0.1, 0)]
        harm = [encode(tok, ex, cfg.max_length) for ex in world.defender_pool]
        model = attach_lora(load_base(cfg), cfg, seed=0).train()
        for kind, rows in (("user", user), ("harmful", harm)):
            batches = list(BatchStream(rows, 10, tok.pad_token_id, 0).epoch())[: args.repeats + 1]
            times = []
            for batch in batches:
                t0 = time.perf_counter()
                lm_loss(model, batch).backward()
                times.append(time.perf_counter() - t0)
                model.zero_grad(set_to_none=True)
            out[f"{mode} {kind} s"] = round(sum(times[1:]) / len(times[1:]), 3)
        del model
    base = "batch/float32"
    for mode in args.modes:
        sft = out[f"{mode} user s"]
        panacea = sft + 2 * out[f"{mode} harmful s"]
        out[f"{mode} sft step s"], out[f"{mode} panacea step s"] = sft, round(panacea, 3)
        if base in args.modes and mode != base:
            out[f"{mode} speed-up sft"] = round(out[f"{base} user s"] / sft, 2)
            out[f"{mode} speed-up panacea"] = round((out[f"{base} user s"] + 2 * out[f"{base} harmful s"]) / panacea, 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
