"""The command line's shared flags and their translation into validated configs.

One place defines each flag (so every subcommand spells and defaults it the same way) and one function
turns the parsed flags into the configs the sweeps take; the commands in `panacea_lab.cli` stay thin.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
import sys

from panacea_lab.config import (
    ATTACK_PRESETS,
    DATA_SOURCES,
    EMBEDDED_MODEL,
    JUDGES,
    SPLITS,
    TASKS,
    AlignConfig,
    AttackConfig,
    ConfigError,
    EvalConfig,
)
from panacea_lab.settings import DEFAULT_SETTING, SETTINGS
from panacea_lab.training.store import DEFAULT_ROOT

ATTACK_DEFAULTS, EVAL_DEFAULTS = AttackConfig(), EvalConfig()


class Parser(argparse.ArgumentParser):
    """A usage error as one line naming the flag, like every other error (argparse prints the usage first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every flag's default; a flag whose default is None, or whose help already names its default,
    says it in its own words (no "(default: None)")."""

    def _get_help_string(self, action):
        if action.default is None or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def subcommand(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)


def common_flags(parser: argparse.ArgumentParser) -> None:
    model, scoring, where = (parser.add_argument_group(title)
                             for title in ("model and data", "scoring", "run store and output"))
    model.add_argument("--model", default=EMBEDDED_MODEL,
                        help="base model: 'embedded', a preset (e.g. smollm2-135m, llama2-7b) or a local HF directory")
    model.add_argument("--data", choices=DATA_SOURCES, default="embedded",
                        help="where every data role comes from: the synthetic world, `fetch-data`'s packages, or "
                             "the paper's BeaverTails files (data/README.md)")
    scoring.add_argument("--judge", choices=JUDGES, default=EVAL_DEFAULTS.judge,
                        help="judge of harmful answers (oracle: embedded world only)")
    scoring.add_argument("--judge-model", default="", help="beaver-dam weights: a local directory or cached hub id "
                                                          "(default: PKU-Alignment/beaver-dam-7b from the local cache)")
    scoring.add_argument("--n-eval", type=int, default=EVAL_DEFAULTS.n_harmful,
                        help="harmful test prompts and task test samples")
    scoring.add_argument("--split", choices=SPLITS, default=EVAL_DEFAULTS.split,
                        help="harmful prompts scored: test (reported), validation (to choose settings on) or "
                             "strongreject (a second test set of the packages data)")
    where.add_argument("--runs", default=str(DEFAULT_ROOT), help="run store directory (env PANACEA_RUNS)")
    model.add_argument("--setting", choices=sorted(SETTINGS), default=DEFAULT_SETTING,
                        help="named defaults of every defense (panacea_lab.settings)")
    where.add_argument("--output", default=None,
                        help="also write every row (with provenance) to this .json or .csv file "
                             "(default: none written)")


def finetune_flags(parser: argparse.ArgumentParser, ratios: list[float], seeds: list[int]) -> None:
    parser = parser.add_argument_group("the user's fine-tuning (the attack)")
    parser.add_argument("--task", choices=TASKS, default=ATTACK_DEFAULTS.task, help="the user's benign task")
    parser.add_argument("--ratios", type=float, nargs="+", default=ratios, help="harmful ratios p")
    parser.add_argument("--seeds", type=int, nargs="+", default=seeds, help="fine-tuning seeds (mean ± std)")
    parser.add_argument("--n", type=int, default=ATTACK_DEFAULTS.n, help="fine-tuning samples")
    parser.add_argument("--preset", choices=sorted(ATTACK_PRESETS), default="default", help="attack strength")
    parser.add_argument("--align-seed", type=int, default=AlignConfig().seed, help="seed of the one shared alignment")
    parser.add_argument("--epochs", type=float, default=None, help="fine-tuning epochs (default: the preset's)")
    parser.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: the preset's)")


def post_finetuning_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per registered defense that declares one (its `flag`: the values it sweeps over its
    `param`), then its `options` (further config fields), then `--also` for any post-fine-tuning
    transform with parameters; all in the help's "defenses" group."""
    parser = parser.add_argument_group("defenses")
    from panacea_lab import cli_registry

    for record in cli_registry.records():
        if not record.flag:
            continue
        default = list(record.sweep) if record.sweep is not None else None
        said = f"default: {' '.join(f'{v:g}' for v in default)}" if default else "default: the setting's"
        parser.add_argument(f"--{record.flag}", type=float, nargs="*", default=default, dest=_dest(record.flag),
                            metavar=record.param.upper(),
                            help=f"{record.label}: {record.param} values, one run each ({said}; nothing: not run)")
        for option in record.options:
            flag = f"--{option.name.replace('_', '-')}"
            if option.kind == "bool":
                parser.add_argument(flag, action="store_true", dest=_dest(option.name, record),
                                    help=f"{record.label}: set {option.name} (default: off)")
            else:
                shown = f"{option.default:g}" if isinstance(option.default, (int, float)) else option.default
                parser.add_argument(flag, type={"int": int, "float": float, "str": str}.get(option.kind, float),
                                    default=None, dest=_dest(option.name, record), metavar=option.name.upper(),
                                    help=f"{record.label}: {option.name} (default: the setting's; {record.config} "
                                         f"{shown})")
    parser.add_argument("--also", nargs="*", default=[], metavar="NAME[:KEY=VALUE,...]",
                        help="further post-fine-tuning transforms of the registry, e.g. noise:std=0.03")


def _dest(name: str, record=None) -> str:
    return (f"{record.name}__" if record else "sweep__") + name.replace("-", "_")


def flagged_methods(args) -> dict:
    """The `defenses` mapping of an experiment, from the registry-built flags: {name: {field: values}}
    for every defense whose flag is not empty (an unset flag with no default: one run at the setting's
    value), then each `--also` transform."""
    from panacea_lab import cli_registry

    out = {}
    for record in cli_registry.records():
        if not record.flag:
            continue
        values = getattr(args, _dest(record.flag))
        if values is not None and not values:
            continue
        params = {} if values is None else {record.param: list(values)}
        for option in record.options:
            value = getattr(args, _dest(option.name, record))
            if value is not None:
                params[option.name] = value
        out[record.name] = params
    return out


def attack_overrides(args) -> dict:
    from panacea_lab.studies.sweeps import override_fields
    from panacea_lab.settings import get

    return {"n": args.n, **get(args.setting).attack, **override_fields(AttackConfig, epochs=args.epochs, lr=args.lr)}


SEED_MAX = 2 ** 32 - 1  # numpy's and torch's seeds must fit 32 bits


def check_paths_and_seeds(args) -> None:
    """What the flags name, checked before any stage runs: seeds distinct and in range, the figure path a
    file that can be written (not a folder, nothing under a file), the run store not an empty name."""
    seeds = list(getattr(args, "seeds", None) or [])
    for flag, values in (("--seeds", seeds), ("--align-seed", [getattr(args, "align_seed", 0)])):
        bad = [v for v in values if not 0 <= v <= SEED_MAX]
        if bad:
            raise ConfigError(f"{flag} {bad[0]}: a seed is an integer in [0, {SEED_MAX}]")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"--seeds repeats {repeated}: each seed is one run, give each once (a repeat would count "
                          "one run twice in the mean and std)")
    if str(getattr(args, "runs", "x")).strip() == "" or os.environ.get("PANACEA_RUNS") == "":
        raise ConfigError("--runs (or PANACEA_RUNS) is empty: name the run store's folder, e.g. runs, or unset "
                          "PANACEA_RUNS for the default")
    figure = getattr(args, "figure", None)  # --output is checked by check_output_path in build_configs
    if figure:
        path = Path(figure).absolute()
        if path.is_dir():
            raise ConfigError(f"--figure {figure}: that is a folder; name a file inside it")
        blocking = next(p for p in path.parents if p.exists())
        if not blocking.is_dir():
            raise ConfigError(f"--figure {figure}: {blocking} is a file, so nothing can be written under it")


def build_configs(args):
    """Configs from the flags; a real model's memory estimate is printed before anything runs."""
    check_paths_and_seeds(args)
    from panacea_lab.models.presets import estimate_memory, format_estimate
    from panacea_lab.studies import recipe

    model = recipe.model_config(args.setting, args.model)  # a real-model preset brings its own LoRA
    align_cfg = AlignConfig(model=model, seed=args.align_seed, data=args.data,
                            **recipe.align_fields(args.setting, args.data))
    eval_cfg = EvalConfig(n_harmful=args.n_eval, n_task=args.n_eval, judge=args.judge, tasks=(args.task,),
                          judge_model=args.judge_model, split=args.split)
    from panacea_lab.tables.export_rows import check_output_path
    from panacea_lab.pipeline.preflight import check_run_store, preflight
    from panacea_lab.training.store import RunStore

    if args.output:
        check_output_path(args.output, "--output")
    check_run_store(RunStore(args.runs, read_only=True if args.command == "export" else None))  # export only reads
    preflight(align_cfg, eval_cfg, align=align_cfg)
    if args.model != EMBEDDED_MODEL:
        from panacea_lab.models.loading import pick_device

        from panacea_lab import defenses

        costliest = max(defenses.REGISTRY.values(), key=lambda r: r.lora_copies)  # the estimate's upper end
        print(format_estimate(estimate_memory(model, batch_size=10, seq_len=model.max_length,
                                              extra_copies=costliest.lora_copies, method=costliest.label,
                                              device="cuda" if pick_device().type == "cuda" else "cpu")))
    return align_cfg, eval_cfg


def parse_spec(spec: str, flag: str) -> tuple[str, dict]:
    """NAME[:KEY=VALUE,...] as (name, parameters as text); a name or key the registry lacks is named."""
    from panacea_lab import defenses

    name, _, rest = spec.partition(":")
    params = dict(kv.split("=", 1) if "=" in kv else (kv, "") for kv in rest.split(",") if kv)
    fields = {f.name for f in dataclasses.fields(defenses.get(name).config)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ConfigError(f"{flag} {spec!r}: {name} has no parameter {unknown[0]!r}; use {', '.join(sorted(fields))}")
    return name, params


def post_transforms(specs: list[str]):
    """Post-fine-tuning transform configs from NAME[:KEY=VALUE,...] (values as numbers where they parse)."""
    from panacea_lab import defenses
    from panacea_lab.config import POST

    out = []
    for spec in specs:
        name, params = parse_spec(spec, "--also")
        if defenses.get(name).stage != POST:
            raise ConfigError(f"--also {spec!r}: {name} is a {defenses.get(name).stage} defense; "
                              f"name a post-fine-tuning one: {', '.join(defenses.names(POST))}")
        out.append(defenses.get(name).make(**params))  # numeric text is converted by the config's type check
    return out


def write_output(df, args) -> None:
    if args.output:
        from panacea_lab.tables.export_rows import write_rows

        print(f"rows: {write_rows(df, args.output, command=' '.join(sys.argv))}")
