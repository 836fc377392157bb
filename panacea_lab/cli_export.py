"""`panacea-lab export`: one stored run's w + eps (or any post-fine-tuning transform, or part of eps) as a
PEFT adapter or a merged model directory. It names its run with the sweeps' flags, singular (one ratio, one
seed), so a run exported is the run a sweep stored. Its defaults (the defense and its post-fine-tuning half)
are the registry's first trained defense with a post half: Panacea and eps."""
from __future__ import annotations

import argparse
import dataclasses

from panacea_lab import cli_registry
from panacea_lab.cli_flags import (
    ATTACK_DEFAULTS,
    attack_overrides,
    build_configs,
    common_flags,
    parse_spec,
    post_transforms,
    subcommand,
)
from panacea_lab.config import (
    ATTACK_PRESETS,
    DATA_SOURCES,
    EMBEDDED_MODEL,
    TASKS,
    AlignConfig,
    AttackConfig,
    UNDEFENDED,
    ConfigError,
)
from panacea_lab.settings import DEFAULT_SETTING, SETTINGS
from panacea_lab.training.store import DEFAULT_ROOT

_RESTRICTION = {"layers": "--layers", "modules": "--modules", "layer_scales": "--layer-scales", "scale": "--scale"}


def _export_run(args, align_cfg: AlignConfig) -> AttackConfig:
    """The stored run the flags name, built as the sweeps build it (the setting fills the defense's values)."""
    from panacea_lab.studies.sweeps import attack_config
    from panacea_lab.settings import get

    defense = None
    if args.defense.partition(":")[0] != UNDEFENDED:
        name, params = parse_spec(args.defense, "--defense")
        defense = get(args.setting).defense(name, **params)
    return attack_config(align_cfg, args.task, args.ratio, args.seed, args.preset, defense=defense,
                         adapter=args.adapter, **attack_overrides(args))


def _export_post(args):
    """The transform applied before export (None: w alone), with the eps restriction flags folded in."""
    post = None if args.post == UNDEFENDED else post_transforms([args.post])[0]
    given = {f: getattr(args, f) for f in _RESTRICTION if getattr(args, f) is not None}
    if not given:
        return post
    fields = {f.name for f in dataclasses.fields(post)} if post is not None else set()
    if not set(given) <= fields:
        flag = _RESTRICTION[sorted(set(given) - fields)[0]]
        from panacea_lab.studies.layer_ablation import part_control

        half = cli_registry.default_half()[1]
        raise ConfigError(f"{flag}: --post {args.post} takes no such restriction; restrict eps with --post {half} "
                          f"(or its control, {part_control(half)})")
    return dataclasses.replace(post, **{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})


def _scoring_defaults(args) -> argparse.Namespace:
    """`args` completed with the sweeps' scoring flags at their defaults (judge: keyword, valid on any data),
    so that `build_configs` builds an export's run exactly as the sweeps built it; an export scores nothing."""
    scratch = argparse.ArgumentParser()
    common_flags(scratch)
    return argparse.Namespace(**{**vars(scratch.parse_args([])), "judge": "keyword", **vars(args)})


def _stored_run(args) -> tuple[str, AlignConfig | AttackConfig]:
    """The run `--run KEY` names, rebuilt from its stored config; refused when the code or data that keys
    it today gives another key (the stored run would not be the run this config computes)."""
    from panacea_lab.config import config_hash, from_dict
    from panacea_lab.pipeline.keys import key
    from panacea_lab.pipeline.listing import find_run

    stage, record = find_run(args.runs, args.run)
    cfg = from_dict(AttackConfig if stage == "attack" else AlignConfig, record["config"])
    today = config_hash(key(stage, cfg))
    if today != record.get("key"):
        raise ConfigError(f"--run {args.run}: this {stage} run was stored by other code or data (its config's key "
                          f"today is {today}); recompute it, then export the new key")
    return stage, cfg


def cmd_export(args) -> None:
    from pathlib import Path

    from panacea_lab.pipeline.export import check_out, export_run
    from panacea_lab.training.store import RunStore

    check_out(Path(args.out).expanduser().absolute())  # before any model is read
    post = _export_post(args)  # a bad restriction (e.g. a factor < 0) fails here
    if args.run:
        stage, cfg = _stored_run(args)
    else:
        align_cfg, _ = build_configs(_scoring_defaults(args))
        stage, cfg = "attack", _export_run(args, align_cfg)
    out = export_run(stage, cfg, RunStore(args.runs, read_only=True), args.out, post, merged=args.merged)
    print(f"{'merged model' if args.merged else 'PEFT adapter'} written to {out} (README.md: config and provenance)")




def add_export(sub) -> None:
    defense, half = cli_registry.default_half()
    p = subcommand(sub, "export", "write a stored run's w + eps (or any post-fine-tuning transform, or part of eps) "
                                  "as a PEFT adapter directory, or with --merged as a merged model directory "
                                  "(safetensors), with a README.md card of its config and provenance")
    p.add_argument("--out", required=True, help="a new (or empty) directory inside an existing folder")
    p.add_argument("--run", default=None, metavar="KEY",
                   help="the stored run to export, by its key or a unique prefix (`panacea-lab runs` lists them); "
                        "the run flags below are then ignored (default: the run the flags name)")
    p.add_argument("--model", default=EMBEDDED_MODEL, help="the run's base model, as given to `defend`")
    p.add_argument("--data", choices=DATA_SOURCES, default="embedded", help="the run's data, as given to `defend`")
    p.add_argument("--runs", default=str(DEFAULT_ROOT), help="run store directory (env PANACEA_RUNS)")
    p.add_argument("--setting", choices=sorted(SETTINGS), default=DEFAULT_SETTING,
                   help="named defaults that fill the defense's values")
    p.add_argument("--task", choices=TASKS, default=ATTACK_DEFAULTS.task, help="the user's benign task")
    p.add_argument("--ratio", "--p", dest="ratio", type=float, default=ATTACK_DEFAULTS.p,
                   help="the run's harmful ratio (one of a sweep's --ratios; --p is the same flag)")
    p.add_argument("--seed", type=int, default=ATTACK_DEFAULTS.seed, help="the run's fine-tuning seed")
    p.add_argument("--n", type=int, default=ATTACK_DEFAULTS.n, help="fine-tuning samples")
    p.add_argument("--preset", choices=sorted(ATTACK_PRESETS), default="default", help="attack strength")
    p.add_argument("--align-seed", type=int, default=AlignConfig().seed, help="seed of the shared alignment")
    p.add_argument("--epochs", type=float, default=None, help="fine-tuning epochs (default: the preset's)")
    p.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: the preset's)")
    p.add_argument("--adapter", choices=("continue", "fresh"), default=ATTACK_DEFAULTS.adapter,
                   help="how the run's fine-tuning started (fresh: exported --merged only)")
    p.add_argument("--defense", default=defense, metavar="NAME[:KEY=VALUE,...]",
                   help=f"the run's fine-tuning-stage defense, e.g. {defense}:rho=1,lam=0.1 (the setting fills the "
                        f"rest), or {UNDEFENDED}")
    p.add_argument("--post", default=half, metavar="NAME[:KEY=VALUE,...]",
                   help=f"post-fine-tuning transform applied first: {half} ({cli_registry.label(half)}), any other of "
                        f"the registry (antidote: --merged only), or {UNDEFENDED} for w alone")
    p.add_argument("--layers", type=int, nargs="+", default=None,
                   help="eps on these decoder layers only (default: every layer)")
    p.add_argument("--modules", nargs="+", default=None,
                   help="eps on these modules only, e.g. q_proj v_proj (default: every module)")
    p.add_argument("--layer-scales", type=float, nargs="+", default=None,
                   help="one factor per decoder layer for eps (0 off, 1 as learnt; default: 1 each)")
    p.add_argument("--scale", type=float, default=None, help="factor on the whole eps (default: 1)")
    p.add_argument("--merged", action="store_true", help="write a merged model instead of an adapter")
    p.set_defaults(func=cmd_export)
