"""Step time and peak memory of each training-stage method relative to plain SFT, in one run.

Same model (the committed base + a LoRA adapter), same user batches; only the step rule changes.
Panacea does three forward/backward passes per step, so about 3x is expected; its passes 2 and 3
run on harmful batches, which are longer than sentiment ones. Each method runs in a fresh process
(`panacea_lab.studies.overhead`), one after another, so peaks do not mix and runs do not compete for cores.

    .venv/bin/python benchmarks/bench_step_time.py [--steps 30] [--batch-size 10]
"""
from __future__ import annotations

import argparse
import json

from panacea_lab.studies.overhead import methods, profile_in_subprocess
from panacea_lab.defenses.registry import UNDEFENDED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--methods", nargs="+", default=methods(), choices=methods(),
                        help=f"methods profiled ({UNDEFENDED}, the baseline, always; default: all)")
    args = parser.parse_args()
    chosen = [UNDEFENDED, *(m for m in args.methods if m != UNDEFENDED)]
    rows = {m: profile_in_subprocess(m, steps=args.steps, batch_size=args.batch_size, model=args.model,
                                     warmup=args.warmup) for m in chosen}
    sft = rows[UNDEFENDED]  # the plain SFT step
    print(json.dumps({"steps": args.steps, "batch_size": args.batch_size, "threads": sft["threads"],
                      "device": sft["device"], "memory": sft["memory"],
                      **{f"{m}_s_per_step": round(r["seconds_per_step"], 4) for m, r in rows.items()},
                      **{f"{m}_over_sft": round(r["seconds_per_step"] / sft["seconds_per_step"], 2)
                         for m, r in rows.items() if m != UNDEFENDED},
                      **{f"{m}_peak_mib": round(r["peak_mib"], 1) for m, r in rows.items()}}, indent=1))


if __name__ == "__main__":
    main()
