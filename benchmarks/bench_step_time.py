"""Step time of Panacea (and amortized Panacea) relative to plain SFT, measured in one run.

Same model (the committed base + a LoRA adapter), same batch sizes, same data; only the step rule
changes. Panacea does three forward/backward passes per step, so about 3x is expected.

    .venv/bin/python benchmarks/bench_step_time.py [--steps 30] [--batch-size 10]
"""
from __future__ import annotations

import argparse
import json

import torch

from panacea_lab.config import ModelConfig
from panacea_lab.data import BatchStream, encode
from panacea_lab.defenses.panacea import PanaceaConfig, PanaceaRule
from panacea_lab.models import attach_lora, load_base, load_tokenizer
from panacea_lab.train import LoopSettings, train_loop
from panacea_lab.world import build_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--amortize", type=int, default=4, help="k of the amortized variant")
    args = parser.parse_args()
    cfg = ModelConfig()
    tok, world = load_tokenizer(cfg), build_world(0)
    user = [encode(tok, e, cfg.max_length) for e in world.task_train["sentiment"][: args.steps * args.batch_size]]
    harm = [encode(tok, e, cfg.max_length) for e in world.defender_pool]
    settings = LoopSettings(epochs=1, lr=1e-4, batch_size=args.batch_size, desc="bench")

    def run(rule):
        model = attach_lora(load_base(cfg), cfg, seed=0)
        stream = BatchStream(user, args.batch_size, tok.pad_token_id, 0)
        return train_loop(model, stream, settings, rule)["seconds_per_step"]

    def panacea(k):
        return PanaceaRule(PanaceaConfig(harmful_batch_size=args.batch_size, recompute_every=k),
                           BatchStream(harm, args.batch_size, tok.pad_token_id, 1))

    run(None)  # warm-up: first-touch allocations and thread pools
    sft, full, amortized = run(None), run(panacea(1)), run(panacea(args.amortize))
    print(json.dumps({"steps": args.steps, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
                      "sft_s_per_step": round(sft, 4), "panacea_s_per_step": round(full, 4),
                      f"amortized_k{args.amortize}_s_per_step": round(amortized, 4),
                      "panacea_over_sft": round(full / sft, 2),
                      f"amortized_k{args.amortize}_over_sft": round(amortized / sft, 2)}, indent=1))


if __name__ == "__main__":
    main()
