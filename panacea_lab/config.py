"""Validated configs, one dataclass per stage. Bad input fails here, before anything is written.

Each stage's config nests its parent's (an attack carries the alignment it starts from), so the
hash of a config names the whole lineage of a result in the run store.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from panacea_lab.data.world import TASKS

if TYPE_CHECKING:  # the defenses import this module; their configs are resolved at run time
    from panacea_lab.defenses.booster import BoosterConfig
    from panacea_lab.defenses.repnoise import RepNoiseConfig
    from panacea_lab.defenses.vaccine import VaccineConfig

EMBEDDED_MODEL = "embedded"
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_MODEL_DIR = PACKAGE_ROOT / "data" / "models" / "tiny-llama-world"
JUDGES = ("oracle", "keyword", "beaver-dam")
ADAPTER_MODES = ("continue", "fresh")
BASELINES = ("sft", "vaccine", "repnoise", "booster", "lisa")  # the paper's comparison (panacea_lab.analysis.baselines)
PREVALENCES = ("uniform", "beavertails")
TEMPLATES = ("alpaca", "chat")
# embedded: the synthetic world; packages: `panacea-lab fetch-data`; beavertails: the paper's files (data/README.md)
DATA_SOURCES = ("embedded", "packages", "beavertails")


class ConfigError(ValueError):
    """A config field holds a value we refuse; the message names the field and what to change."""


def check(ok: bool, field_name: str, value, must: str) -> None:
    if not ok:
        raise ConfigError(f"{field_name} = {value!r}: {must}")


def coerce_numbers(obj) -> None:
    """Store ints given for float fields as floats, so `epochs=8` and `epochs=8.0` hash alike."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.type in ("float", float) and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(obj, f.name, float(value))


def new_field(default=None, **kw):
    """A field added after results were stored: left out of `to_dict` (and so of the config hash)
    while it holds its default, so every result stored before it existed keeps its key."""
    return field(default=default, metadata={"omit_default": True}, **kw)


def _positive(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        check(value > 0, name, value, "must be > 0")


@dataclass(frozen=True)
class ModelConfig:
    """Which base model, and the LoRA adapter trained on it in every stage."""

    path: str = EMBEDDED_MODEL  # "embedded", a local HF directory, or a hub id already in the cache
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    lora_dropout: float = 0.0
    dtype: str = "auto"  # auto: bf16 on CUDA, fp32 elsewhere
    max_length: int = 96
    trust_remote_code: bool = False  # off unless a user asks for it
    # added with the real-model presets (panacea_lab.models.presets); at their defaults old results keep their keys
    template: str = new_field("alpaca")  # "alpaca" (the paper's, every model) or "chat" (the tokenizer's own)
    gradient_checkpointing: bool = new_field(False)  # trade compute for memory on large models

    def __post_init__(self):
        coerce_numbers(self)
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        _positive(self, "lora_r", "lora_alpha", "max_length")
        check(0 <= self.lora_dropout < 1, "lora_dropout", self.lora_dropout, "must be in [0, 1)")
        check(bool(self.lora_targets), "lora_targets", self.lora_targets, "name at least one module, e.g. q_proj")
        check(self.dtype in ("auto", "float32", "bfloat16", "float16"), "dtype", self.dtype,
              "use auto, float32, bfloat16 or float16")
        check(self.template in TEMPLATES, "template", self.template, f"use one of {TEMPLATES}")
        from panacea_lab.models.loading import (
            resolve_model_path,  # late import: models imports this module
        )

        resolve_model_path(self.path)  # raises ConfigError naming `path` when it is missing


@dataclass(frozen=True)
class AlignConfig:
    """Alignment stage: LoRA SFT on harmful prompt -> refusal, with a benign replay."""

    model: ModelConfig = field(default_factory=ModelConfig)
    world_seed: int = 0
    n_refusal: int = 476  # the whole alignment pool, drawn by category prevalence
    n_replay_per_task: int = 120  # benign samples per task, so the model does not over-refuse
    prevalence: str = "beavertails"  # refusals per category: skewed like BeaverTails, or uniform
    epochs: float = 8.0
    lr: float = 1e-3
    batch_size: int = 16
    seed: int = 0
    # where every data role comes from: "embedded" (synthetic), or real data (panacea_lab.data.real_world)
    data: str = new_field("embedded")
    # alignment-stage defenses (at most one; none = plain SFT): their configs, added after results existed
    vaccine: VaccineConfig | None = new_field(None)
    repnoise: RepNoiseConfig | None = new_field(None)
    booster: BoosterConfig | None = new_field(None)

    def __post_init__(self):
        coerce_numbers(self)
        _positive(self, "n_refusal", "epochs", "lr", "batch_size")
        check(self.n_replay_per_task >= 0, "n_replay_per_task", self.n_replay_per_task, "must be >= 0")
        check(self.prevalence in PREVALENCES, "prevalence", self.prevalence, f"use one of {PREVALENCES}")
        check(self.data in DATA_SOURCES, "data", self.data, f"use one of {DATA_SOURCES}")
        check(self.data == "embedded" or self.prevalence == "uniform", "prevalence", self.prevalence,
              "the BeaverTails-like skew is the embedded world's; real data bring their own mix: use 'uniform'")
        from panacea_lab.defenses import (
            ALIGNMENT_DEFENSES,  # late import: the defenses import this module
        )

        for name, cls in ALIGNMENT_DEFENSES.items():
            value = getattr(self, name)
            if isinstance(value, dict):  # from to_dict / JSON
                object.__setattr__(self, name, value := cls(**value))
            check(value is None or isinstance(value, cls), name, value, f"pass a {cls.__name__} or None")
        chosen = [n for n in ALIGNMENT_DEFENSES if getattr(self, n) is not None]
        check(len(chosen) <= 1, "vaccine/repnoise/booster", chosen, "set at most one alignment-stage defense")

    @property
    def defense(self) -> str:
        """The alignment method's name: sft, or the one defense set."""
        from panacea_lab.defenses import ALIGNMENT_DEFENSES

        return next((n for n in ALIGNMENT_DEFENSES if getattr(self, n) is not None), "sft")


@dataclass(frozen=True)
class AttackConfig:
    """The user's fine-tuning on n samples of a benign task, a fraction p of them harmful."""

    align: AlignConfig = field(default_factory=AlignConfig)
    task: str = "sentiment"
    n: int = 1000
    p: float = 0.1
    epochs: float = 3.0
    lr: float = 5e-5
    batch_size: int = 10
    adapter: str = "continue"  # continue the alignment adapter (paper) or a fresh one on the merged model
    seed: int = 0

    def __post_init__(self):
        coerce_numbers(self)
        check(self.task in TASKS, "task", self.task, f"use one of {', '.join(TASKS)}")
        check(0.0 <= self.p <= 1.0, "p", self.p, "the harmful ratio must be in [0, 1]")
        _positive(self, "n", "epochs", "lr", "batch_size")
        check(self.adapter in ADAPTER_MODES, "adapter", self.adapter, f"use one of {ADAPTER_MODES}")


@dataclass(frozen=True)
class EvalConfig:
    """How a model is scored: HS / refusal / other on held-out harmful prompts, FA per task."""

    n_harmful: int = 200
    n_task: int = 200
    tasks: tuple[str, ...] = TASKS
    judge: str = "oracle"
    max_new_tokens: int = 40
    batch_size: int = 64
    judge_model: str = new_field("")  # beaver-dam: a local directory or cached hub id ("" = PKU-Alignment/beaver-dam-7b)

    def __post_init__(self):
        coerce_numbers(self)
        object.__setattr__(self, "tasks", tuple(self.tasks))
        _positive(self, "n_harmful", "n_task", "max_new_tokens", "batch_size")
        check(self.judge in JUDGES, "judge", self.judge, f"use one of {JUDGES}")
        if self.judge == "beaver-dam":  # fail now, not after hours of training, when the weights are absent
            from panacea_lab.models.loading import resolve_model_path
            from panacea_lab.evaluation.moderation import BEAVER_DAM_ID

            resolve_model_path(self.judge_model or BEAVER_DAM_ID)
        for t in self.tasks:
            check(t in TASKS, "tasks", self.tasks, f"each task must be one of {', '.join(TASKS)}")


def to_dict(cfg):
    """Like dataclasses.asdict, but new fields at their default are omitted (see `new_field`)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        out = {}
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if f.metadata.get("omit_default") and value == f.default:
                continue
            out[f.name] = to_dict(value)
        return out
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(to_dict(v) for v in cfg)
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def config_hash(cfg) -> str:
    """Stable short hash of a config (and so of its whole lineage)."""
    blob = json.dumps(to_dict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def from_dict(cls, data: dict):
    """Rebuild a (nested) config dataclass from `to_dict` output, validating every level."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, factory = data[f.name], f.default_factory
        if isinstance(value, dict) and isinstance(factory, type) and dataclasses.is_dataclass(factory):
            value = from_dict(factory, value)
        kwargs[f.name] = value
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field(s) {sorted(unknown)}: remove or rename them")
    return cls(**kwargs)


# The user's fine-tuning strengths. "default" is where HS rises gradually with p on the embedded
# world; "strong" is a harder attack, so a defense that merely slows learning cannot pass for one
# that removes harm. Calibrated on the committed base model (README "Calibration").
ATTACK_PRESETS = {
    "default": {"lr": 5e-5, "epochs": 3.0, "batch_size": 10},
    "strong": {"lr": 2e-4, "epochs": 3.0, "batch_size": 10},
}
