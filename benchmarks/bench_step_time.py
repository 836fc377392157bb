"""Step time and peak memory of each training-stage method relative to plain SFT, in one run.

Same model (the committed base, a preset such as smollm2-135m, or a local directory; with its LoRA),
same user batches; only the step rule changes. Panacea's exact step does three forward/backward
passes, so about 3x is expected (passes 2 and 3 run on harmful batches, which are longer than
sentiment ones); its two-pass step (`panacea_two_pass`) two, and `panacea_k4` the exact step every
4th step. Seconds per step are medians over `--steps` steps after `--warmup` untimed ones;
`*_mean_over_sft` compares means, which count an amortized rule's costly steps. Each method runs in a
fresh process (`panacea_lab.studies.overhead`), one after another, so peaks do not mix and runs do
not compete for cores.

    .venv/bin/python benchmarks/bench_step_time.py [--steps 30] [--batch-size 10] [--model smollm2-135m]
        [--methods panacea panacea_two_pass panacea_k4] [--output benchmarks/results/step_time_embedded.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

from panacea_lab.defenses.registry import UNDEFENDED
from panacea_lab.files import write_text_atomic
from panacea_lab.studies.overhead import methods, profile_in_subprocess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--methods", nargs="+", default=methods(), choices=methods(),
                        help=f"methods profiled ({UNDEFENDED}, the baseline, always; default: all)")
    parser.add_argument("--output", help="also write the JSON to this file")
    args = parser.parse_args()
    chosen = [UNDEFENDED, *(m for m in args.methods if m != UNDEFENDED)]
    rows = {m: profile_in_subprocess(m, steps=args.steps, batch_size=args.batch_size, model=args.model,
                                     warmup=args.warmup) for m in chosen}
    sft = rows[UNDEFENDED]  # the plain SFT step
    text = json.dumps({"model": args.model, "steps": args.steps, "warmup": args.warmup, "statistic": "median",
                      "batch_size": args.batch_size, "threads": sft["threads"], "device": sft["device"],
                      "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                      "memory": sft["memory"],
                      **{f"{m}_s_per_step": round(r["seconds_per_step"], 4) for m, r in rows.items()},
                      **{f"{m}_over_sft": round(r["seconds_per_step"] / sft["seconds_per_step"], 2)
                         for m, r in rows.items() if m != UNDEFENDED},
                      # the mean counts an amortized rule's costly steps, which the median skips
                      **{f"{m}_mean_over_sft": round(r["mean_seconds_per_step"] / sft["mean_seconds_per_step"], 2)
                         for m, r in rows.items() if m != UNDEFENDED},
                      **{f"{m}_peak_mib": round(r["peak_mib"], 1) for m, r in rows.items()}}, indent=1)
    print(text)
    if args.output:
        write_text_atomic(Path(args.output), text + "\n")


if __name__ == "__main__":
    main()
