"""Checks that need the disk or the data, run once for a whole sweep before any stage starts.

Configs validate types and ranges on construction (panacea_lab.config); what they cannot know
alone is checked here: the model directory exists, the judge's weights are there, the world has
the task and enough samples, the oracle judge is used only where it exists. A sweep that would
fail at its fifth stage fails here, in seconds, having written nothing.
"""
from __future__ import annotations

import os
from pathlib import Path

from panacea_lab.config import AlignConfig, AttackConfig, ConfigError, EvalConfig, ModelConfig, check
from panacea_lab.models.loading import resolve_model_path
from panacea_lab.pipeline.context import world_of


def check_model(model: ModelConfig) -> None:
    """The model's directory exists (else a ConfigError naming `path` and how to provide it) and its
    config.json reads as its architecture's config (a wrong type there is one line naming the field)."""
    where = resolve_model_path(model.path)
    if not Path(where, "config.json").is_file():
        return  # a hub id in the cache: its files are the hub's
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(where, local_files_only=True, trust_remote_code=model.trust_remote_code)
    except Exception as err:  # noqa: BLE001 (huggingface_hub's field validation errors derive from Exception alone)
        said = " ".join(str(err).split())
        raise ConfigError(f"path = {model.path!r}: {Path(where, 'config.json')} does not read as a model config "
                          f"({said[:200]}); fix that field or convert the model again") from None


def check_align(cfg: AlignConfig) -> None:
    check_model(cfg.model)
    world = world_of(cfg)  # a real-data world names a missing file here
    check(cfg.n_refusal <= len(world.alignment), "n_refusal", cfg.n_refusal,
          f"the alignment pool holds {len(world.alignment)}: lower n_refusal")


def check_attack(cfg: AttackConfig) -> None:
    check_align(cfg.align)
    world = world_of(cfg.align)
    check(cfg.task in world.task_train, "task", cfg.task,
          f"the {cfg.align.data!r} world has no such task; use one of {', '.join(sorted(world.task_train))}")
    n_harm = round(cfg.p * cfg.n)
    n_benign = cfg.n - n_harm  # as mix_user_data draws them
    check(n_benign <= len(world.task_train[cfg.task]), "n", cfg.n,
          f"{n_benign} benign samples asked but the {cfg.task} pool holds {len(world.task_train[cfg.task])}: lower n")
    check(n_harm <= len(world.attacker_pool), "n", cfg.n,
          f"{n_harm} harmful samples (n * p) asked but the attacker's pool holds {len(world.attacker_pool)}: "
          "lower n or p")


def check_run_store(store) -> None:
    """The run store's folder is a folder, or can be made one, that this process may write into."""
    root = Path(store.root).expanduser().absolute()
    existing = next(p for p in (root, *root.parents) if p.exists())
    check(existing.is_dir(), "runs", str(store.root), f"{existing} is a file: pass a folder for the run store")
    check(store.read_only or os.access(existing, os.W_OK | os.X_OK), "runs", str(store.root),
          f"{existing} is not writable: pass a folder you can write, or read the store with PANACEA_CACHE_ONLY=1")


def check_eval(cfg: EvalConfig, align: AlignConfig | None) -> None:
    data = align.data if align is not None else "embedded"
    check(cfg.judge != "oracle" or data == "embedded", "judge", cfg.judge,
          f"the oracle judge knows only the embedded world's answers; on {data!r} data use keyword or beaver-dam")
    if align is not None:
        # the default (200) is capped at a smaller split (the rows record the n scored, e.g. the embedded
        # validation split's 52); asking for more than both names prompts that would never be scored
        split = getattr(cfg, "split", "test")
        pool = world_of(align).harmful_split(split)
        check(cfg.n_harmful <= max(len(pool), EvalConfig().n_harmful), "n_harmful", cfg.n_harmful,
              f"the {split} split of the {data!r} world holds {len(pool)} harmful prompts: pass --n-eval "
              f"{len(pool)} or fewer")
    if cfg.judge == "beaver-dam":
        from panacea_lab.evaluation.moderation import BEAVER_DAM_ID

        resolve_model_path(cfg.judge_model or BEAVER_DAM_ID)


def preflight(*configs, align: AlignConfig | None = None) -> None:
    """Check every config of a sweep; `align` is the lineage that evaluation configs are scored in."""
    seen = set()
    for cfg in configs:
        if cfg in seen:
            continue
        seen.add(cfg)
        if isinstance(cfg, AttackConfig):
            check_attack(cfg)
        elif isinstance(cfg, AlignConfig):
            check_align(cfg)
        elif isinstance(cfg, ModelConfig):
            check_model(cfg)
        elif isinstance(cfg, EvalConfig):
            check_eval(cfg, align)
        else:
            raise ConfigError(f"preflight: cannot check a {type(cfg).__name__}")
