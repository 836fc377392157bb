"""`panacea-lab` command line: thin wrappers over the package's sweeps (no logic lives here)."""
from __future__ import annotations

import argparse
import sys
import time
import warnings

from panacea_lab.config import (
    ATTACK_PRESETS,
    BASELINES,
    EMBEDDED_MODEL,
    JUDGES,
    AlignConfig,
    ConfigError,
    EvalConfig,
    ModelConfig,
)
from panacea_lab.world import TASKS


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=EMBEDDED_MODEL, help="base model: 'embedded' or a local HF directory")
    parser.add_argument("--judge", choices=JUDGES, default="oracle", help="judge of harmful answers")
    parser.add_argument("--n-eval", type=int, default=200, help="harmful test prompts and task test samples")
    parser.add_argument("--runs", default=None, help="run store directory (default: ./runs)")


def _finetune_args(parser: argparse.ArgumentParser, ratios: list[float]) -> None:
    parser.add_argument("--task", choices=TASKS, default="sentiment", help="the user's benign task")
    parser.add_argument("--ratios", type=float, nargs="+", default=ratios, help="harmful ratios p")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds (mean ± std)")
    parser.add_argument("--n", type=int, default=1000, help="fine-tuning samples")
    parser.add_argument("--preset", choices=sorted(ATTACK_PRESETS), default="default", help="attack strength")
    parser.add_argument("--align-seed", type=int, default=0, help="seed of the one shared alignment")


def cmd_build_base(args) -> None:
    from panacea_lab.base_model import pretrain

    t0 = time.perf_counter()
    out = pretrain(args.out)
    print(f"base model written to {out} in {time.perf_counter() - t0:.0f} s")


def cmd_attack(args) -> None:
    from panacea_lab.experiments import attack_sweep, summarize
    from panacea_lab.store import RunStore

    align_cfg, eval_cfg = _configs(args)
    t0 = time.perf_counter()
    df = attack_sweep(args.ratios, args.seeds, task=args.task, preset=args.preset, align_cfg=align_cfg,
                      eval_cfg=eval_cfg, store=RunStore(args.runs), n=args.n, adapter=args.adapter)
    print(summarize(df).to_string())
    print(f"\n{len(args.seeds)} seed(s), preset {args.preset!r}, n = {args.n}; {time.perf_counter() - t0:.0f} s "
          "(cached stages are reused)")
    if args.figure:
        from panacea_lab import plots

        fig = plots.metric_vs_ratio(df, metrics=("HS", "other", f"FA_{args.task}"))
        print(f"figure: {plots.save_figure(fig, args.figure, df)} (+ .csv)")


def _defense_rows(args, align_cfg, eval_cfg):
    from panacea_lab.experiments import defense_sweep
    from panacea_lab.store import RunStore

    panacea_kw = {"h_const": args.h_const, "recompute_every": args.recompute_every}
    df = defense_sweep(args.ratios, args.seeds, task=args.task, preset=args.preset, stds=args.stds, rhos=args.rhos,
                       lam=args.lam, panacea_kw=panacea_kw, antidote_ratio=args.dense_ratio, align_cfg=align_cfg,
                       eval_cfg=eval_cfg, store=RunStore(args.runs), n=args.n)
    return df, panacea_kw


def _configs(args):
    align_cfg = AlignConfig(model=ModelConfig(path=args.model), seed=args.align_seed)
    return align_cfg, EvalConfig(n_harmful=args.n_eval, n_task=args.n_eval, judge=args.judge, tasks=(args.task,))


def cmd_compare(args) -> None:
    import pandas as pd

    from panacea_lab.baselines import baseline_sweep
    from panacea_lab.experiments import summarize
    from panacea_lab.store import RunStore

    align_cfg, eval_cfg = _configs(args)
    t0 = time.perf_counter()
    ours = baseline_sweep(args.ratios, args.seeds, methods=args.methods, task=args.task, preset=args.preset,
                          align_cfg=align_cfg, eval_cfg=eval_cfg, store=RunStore(args.runs), n=args.n)
    post, _ = _defense_rows(args, align_cfg, eval_cfg)
    post = post[~post["model"].str.startswith("same-norm") & (post["model"] != "no defense")]
    print(summarize(pd.concat([ours, post], ignore_index=True)).to_string())
    print(f"\n{len(args.seeds)} seed(s), preset {args.preset!r}, Panacea lambda {args.lam:g}; "
          f"{time.perf_counter() - t0:.0f} s (cached stages are reused)")


def cmd_defend(args) -> None:
    from panacea_lab.defenses.panacea import PanaceaConfig
    from panacea_lab.experiments import (
        attack_config,
        eps_coefficients,
        summarize,
    )
    from panacea_lab.pipeline import PanaceaRun
    from panacea_lab.store import RunStore

    align_cfg, eval_cfg = _configs(args)
    t0 = time.perf_counter()
    df, panacea_kw = _defense_rows(args, align_cfg, eval_cfg)
    print(summarize(df).to_string())
    print(f"\n{len(args.seeds)} seed(s), preset {args.preset!r}; {time.perf_counter() - t0:.0f} s")
    if not args.rhos:
        return
    run = PanaceaRun(attack_config(align_cfg, args.task, args.ratios[-1], args.seeds[0], args.preset, n=args.n),
                     PanaceaConfig(rho=args.rhos[len(args.rhos) // 2], lam=args.lam, **panacea_kw))
    table = eps_coefficients(run, RunStore(args.runs)).pivot(index="layer", columns="module", values="eps_share")
    print(f"\nsafety coefficients (share of ||eps||^2) at p = {args.ratios[-1]:g}, rho = {run.panacea.rho:g}:")
    print(table.round(3).to_string())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="panacea-lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build-base", help="pretrain the embedded tiny base model (about 15 min on 2 cores)")
    p.add_argument("--out", default="data/models/tiny-llama-world", help="output directory")
    p.set_defaults(func=cmd_build_base)

    p = sub.add_parser("attack", help="align once, then fine-tune on the user's poisoned data at each ratio")
    _common(p)
    _finetune_args(p, ratios=[0.0, 0.01, 0.05, 0.1, 0.2])
    p.add_argument("--adapter", choices=("continue", "fresh"), default="continue",
                   help="continue the alignment adapter (paper) or train a fresh one on the merged model")
    p.add_argument("--figure", default=None, help="also save HS / other / FA against p as this PNG (+ CSV)")
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("defend", help="compare post-fine-tuning defenses on the same fine-tuned models")
    _common(p)
    _finetune_args(p, ratios=[0.05, 0.1, 0.2])
    _post_finetuning_args(p, stds=[0.01, 0.02, 0.04, 0.08], rhos=[0.5, 1.0, 2.0])
    p.set_defaults(func=cmd_defend)

    p = sub.add_parser("compare", help="the paper's baselines (Vaccine, RepNoise, Booster, Lisa) beside Panacea, "
                                       "noise and Antidote on the same user data")
    _common(p)
    _finetune_args(p, ratios=[0.1])
    _post_finetuning_args(p, stds=[0.04], rhos=[1.0])
    p.add_argument("--methods", nargs="+", default=list(BASELINES), choices=BASELINES,
                   help="alignment- and fine-tuning-stage baselines to train")
    p.set_defaults(func=cmd_compare)
    return parser


def _post_finetuning_args(parser: argparse.ArgumentParser, stds: list[float], rhos: list[float]) -> None:
    parser.add_argument("--stds", type=float, nargs="*", default=stds, help="noise std sweep")
    parser.add_argument("--rhos", type=float, nargs="*", default=rhos, help="Panacea perturbation radii")
    parser.add_argument("--lam", type=float, default=1e-3, help="Panacea lambda (paper 1e-3; embedded world 0.1)")
    parser.add_argument("--h-const", action="store_true", help="treat h(w) as a constant in Panacea's objective")
    parser.add_argument("--recompute-every", type=int, default=1,
                        help="amortized Panacea: recompute eps every k steps")
    parser.add_argument("--dense-ratio", type=float, default=0.1, help="Antidote: share of each row pruned")


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as err:  # bad input: one line, no traceback
        print(f"panacea-lab: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
