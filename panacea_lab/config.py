"""Validated configs, one dataclass per stage, and the hashing that names results in the run store.

A leaf: nothing here imports a model, a defense or a judge, so a stored result's config can be read
back on any machine. Checks that need the disk (does the model directory exist, are the judge
weights there) live in `panacea_lab.pipeline.preflight`, run before any stage.

Each stage's config nests its parent's (an attack carries the alignment it starts from), so the
hash of a config names the whole lineage of a result. Every field is checked against its declared
type: numeric text ("1e-3") is converted, anything else of the wrong type is refused naming the field.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from panacea_lab.paths import EMBEDDED_MODEL_DIR, PACKAGE_ROOT  # noqa: F401  (re-exported)

EMBEDDED_MODEL = "embedded"
TIMING_COLUMNS = ("train_seconds",)  # wall times: kept in the run store, never in a committed results or figure file
UNDEFENDED = "none"  # the one identifier of the undefended model in every row, file and table
TASKS = ("sentiment", "topic", "arithmetic", "instruct")
JUDGES = ("oracle", "keyword", "beaver-dam")
ADAPTER_MODES = ("continue", "fresh")
PREVALENCES = ("uniform", "beavertails")
TEMPLATES = ("alpaca", "chat")
# embedded: the synthetic world; packages (BIG-bench tasks), packages-rt (Rotten Tomatoes reviews):
# `panacea-lab fetch-data`; beavertails: the paper's files (data/README.md)
PACKAGE_DATA = ("packages", "packages-rt")  # the worlds made of `fetch-data` files (data/real_world.py)
DATA_SOURCES = ("embedded", *PACKAGE_DATA, "beavertails")
# the three places a defense can act (docs/ARCHITECTURE.md)
ALIGNMENT, FINETUNING, POST = "alignment", "fine-tuning", "post-fine-tuning"
STAGES = (ALIGNMENT, FINETUNING, POST)
LOSSES = ("batch", "bucketed")  # ModelConfig.loss: training/loss.py
SPLITS = ("test", "validation", "strongreject")  # strongreject: the packages data only


class ConfigError(ValueError):
    """A config field holds a value we refuse; the message names the field and what to change."""


def check(ok: bool, field_name: str, value, must: str) -> None:
    if not ok:
        raise ConfigError(f"{field_name} = {value!r}: {must}")


def new_field(default=None, **kw):
    """A field added after results were stored: left out of `to_dict` (and so of the config hash)
    while it holds its default, so every result stored before it existed keeps its key."""
    return field(default=default, metadata={"omit_default": True}, **kw)


# ------------------------------------------------------------------------------------ typing
def _number(name: str, value, kind: type):
    """int / float fields: numbers of the right kind, or numeric text (YAML may give "1e-3")."""
    if isinstance(value, bool):
        raise ConfigError(f"{name} = {value!r}: must be a number, not true/false")
    if isinstance(value, str):
        try:
            value = float(value.strip()) if kind is float else int(value.strip())
        except ValueError:
            raise ConfigError(f"{name} = {value!r}: must be {'a number' if kind is float else 'an integer'}") from None
    if kind is int:
        check(isinstance(value, int), name, value, "must be an integer")
        return value
    check(isinstance(value, (int, float)), name, value, "must be a number")
    value = float(value)
    check(math.isfinite(value), name, value, "must be a finite number, not NaN or infinity")
    return value


def _coerce(name: str, value, tp):
    """`value` as the declared type `tp`, or a ConfigError naming the field."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0]) if len(inner) == 1 else value
    if tp is Any:
        return value
    if tp in (int, float):
        return _number(name, value, tp)
    if tp is bool:
        check(isinstance(value, bool), name, value, "must be true or false")
        return value
    if tp is str:
        check(isinstance(value, str), name, value, "must be text")
        return value
    if origin is tuple:
        check(isinstance(value, (list, tuple)) and not isinstance(value, str), name, value, "must be a list")
        item = args[0] if args else Any
        return tuple(_coerce(f"{name}[{i}]", v, item) for i, v in enumerate(value))
    if isinstance(tp, type) and issubclass(tp, DefenseConfig):
        if isinstance(value, dict):
            return defense_from_dict(value)
        check(isinstance(value, DefenseConfig), name, value, "pass a defense config (or None)")
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return from_dict(tp, value)
        check(isinstance(value, tp), name, value, f"pass a {tp.__name__}")
        return value
    return value


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def validate_types(obj) -> None:
    """Check (and convert, for numeric text and lists) every field against its declared type."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        coerced = _coerce(f.name, value, hints.get(f.name, Any))
        if coerced is not value:
            object.__setattr__(obj, f.name, coerced)


class Validated:
    """Mixin for frozen config dataclasses: types first, then the class's own `check_values`."""

    def __post_init__(self):
        validate_types(self)
        self.check_values()

    def check_values(self) -> None:
        """Range and consistency checks of the subclass (types are already right here)."""


def positive(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        check(value > 0, name, value, "must be > 0")


# ------------------------------------------------------------------------------------ defenses
class DefenseConfig(Validated):
    """Base of every defense's config (a frozen dataclass in the defense's own module).

    The class names the defense and the stage it acts in; `panacea_lab.defenses` holds the record
    that says how it acts. Subclasses register themselves here so a stored config reads back.
    """

    name: ClassVar[str] = ""
    stage: ClassVar[str] = ""
    _classes: ClassVar[dict[str, type]] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.__dict__.get("name"):
            check(cls.stage in STAGES, f"{cls.__name__}.stage", cls.stage, f"use one of {STAGES}")
            DefenseConfig._classes[cls.name] = cls


def defense_from_dict(data: dict) -> DefenseConfig:
    """The defense config that `to_dict` wrote ({"name": ..., fields...})."""
    data = dict(data)
    name = data.pop("name", None)
    cls = DefenseConfig._classes.get(name)
    if cls is None:  # the project's own register when `panacea_lab.defenses` is imported
        raise ConfigError(f"defense name = {name!r}: unknown; use one of {sorted(DefenseConfig._classes)} "
                          "(import the module that defines it first, e.g. panacea_lab.defenses)")
    return from_dict(cls, data)


# ------------------------------------------------------------------------------------ stages
@dataclass(frozen=True)
class ModelConfig(Validated):
    """Which base model, and the LoRA adapter trained on it in every stage."""

    path: str = EMBEDDED_MODEL  # "embedded", a preset's local directory, or a hub id already in the cache
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    lora_dropout: float = 0.0
    dtype: str = "auto"  # auto: bf16 on CUDA, fp32 elsewhere
    max_length: int = 96
    trust_remote_code: bool = False  # off unless a user asks for it
    template: str = "alpaca"  # "alpaca" (the paper's, every model) or "chat" (the tokenizer's own)
    gradient_checkpointing: bool = False  # trade compute for memory on large models
    # "bucketed": the same loss over length-grouped micro-batches with logits at label positions only
    # (training/loss.py): faster where padding and a large vocabulary dominate, equal up to rounding
    loss: str = "batch"

    def check_values(self):
        positive(self, "lora_r", "lora_alpha", "max_length")
        check(self.loss in LOSSES, "loss", self.loss, "use batch (the model's own) or bucketed")
        check(0 <= self.lora_dropout < 1, "lora_dropout", self.lora_dropout, "must be in [0, 1)")
        check(bool(self.lora_targets), "lora_targets", self.lora_targets, "name at least one module, e.g. q_proj")
        check(self.dtype in ("auto", "float32", "bfloat16", "float16"), "dtype", self.dtype,
              "use auto, float32, bfloat16 or float16")
        check(self.template in TEMPLATES, "template", self.template, f"use one of {TEMPLATES}")
        check(bool(self.path.strip()), "path", self.path, "name a model: 'embedded', a preset or a local directory")


@dataclass(frozen=True)
class AlignConfig(Validated):
    """Alignment stage: LoRA SFT on harmful prompt -> refusal (with a benign replay), optionally
    under one alignment-stage defense (Vaccine, RepNoise, Booster)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    world_seed: int = 0
    n_refusal: int = 476  # the whole alignment pool, drawn by category prevalence
    n_replay_per_task: int = 120  # benign samples per task, so the model does not over-refuse
    prevalence: str = "beavertails"  # refusals per category: skewed like BeaverTails, or uniform
    epochs: float = 8.0
    lr: float = 1e-3
    batch_size: int = 16
    seed: int = 0
    data: str = "embedded"  # where every data role comes from (panacea_lab.data.real_world for real data)
    defense: DefenseConfig | None = None
    schedule: str = "linear"  # learning-rate schedule (training/loop.py); the paper's scripts: "constant"
    weight_decay: float = 0.0  # the paper's scripts: 0.1

    def check_values(self):
        positive(self, "n_refusal", "epochs", "lr", "batch_size")
        check(self.n_replay_per_task >= 0, "n_replay_per_task", self.n_replay_per_task, "must be >= 0")
        check(self.prevalence in PREVALENCES, "prevalence", self.prevalence, f"use one of {PREVALENCES}")
        check(self.data in DATA_SOURCES, "data", self.data, f"use one of {DATA_SOURCES}")
        check(self.data == "embedded" or self.prevalence == "uniform", "prevalence", self.prevalence,
              "the BeaverTails-like skew is the embedded world's; real data bring their own mix: use 'uniform'")
        _stage_of(self.defense, ALIGNMENT)
        _check_optimiser(self)

    @property
    def method(self) -> str:
        """The alignment method's name: the defense's, or UNDEFENDED for plain SFT."""
        return self.defense.name if self.defense is not None else UNDEFENDED


@dataclass(frozen=True)
class AttackConfig(Validated):
    """The user's fine-tuning on n samples of a benign task, a fraction p of them harmful, optionally
    under one fine-tuning-stage defense (Panacea, Lisa): one run type for every method."""

    align: AlignConfig = field(default_factory=AlignConfig)
    task: str = "sentiment"
    n: int = 1000
    p: float = 0.1
    epochs: float = 3.0
    lr: float = 5e-5
    batch_size: int = 10
    adapter: str = "continue"  # continue the alignment adapter (paper) or a fresh one on the merged model
    seed: int = 0
    defense: DefenseConfig | None = None
    schedule: str = "linear"  # learning-rate schedule (training/loop.py); the paper's scripts: "constant"
    weight_decay: float = 0.0  # the paper's scripts: 0.1

    def check_values(self):
        _check_optimiser(self)
        check(self.task in TASKS, "task", self.task, f"use one of {', '.join(TASKS)}")
        check(0.0 <= self.p <= 1.0, "p", self.p, "the harmful ratio must be in [0, 1]")
        positive(self, "n", "epochs", "lr", "batch_size")
        check(self.adapter in ADAPTER_MODES, "adapter", self.adapter, f"use one of {ADAPTER_MODES}")
        _stage_of(self.defense, FINETUNING)

    @property
    def method(self) -> str:
        return self.defense.name if self.defense is not None else UNDEFENDED


@dataclass(frozen=True)
class EvalConfig(Validated):
    """How a model is scored: HS / refusal / other on held-out harmful prompts, FA per task."""

    n_harmful: int = 200
    n_task: int = 200
    tasks: tuple[str, ...] = TASKS
    judge: str = "oracle"
    max_new_tokens: int = 40
    batch_size: int = 64
    judge_model: str = ""  # beaver-dam: a local directory or cached hub id ("" = PKU-Alignment/beaver-dam-7b)
    split: str = "test"  # harmful prompts scored: "test" (reported), "validation" (for calibration only),
    #   or StrongREJECT's prompts, a second test set of the packages data ("strongreject")
    # fold the LoRA adapter into the base weights before generating (after any post-fine-tuning
    # transform): a third of the matmuls, the same model up to rounding; off by default
    merge: bool = False

    def check_values(self):
        positive(self, "n_harmful", "n_task", "max_new_tokens", "batch_size")
        check(self.split in SPLITS, "split", self.split, f"use one of {SPLITS}")
        check(self.judge in JUDGES, "judge", self.judge, f"use one of {JUDGES}")
        for t in self.tasks:
            check(t in TASKS, "tasks", self.tasks, f"each task must be one of {', '.join(TASKS)}")


SCHEDULES = ("linear", "constant", "constant_with_warmup")


def _check_optimiser(cfg) -> None:
    check(cfg.schedule in SCHEDULES, "schedule", cfg.schedule, f"use one of {', '.join(SCHEDULES)}")
    check(cfg.weight_decay >= 0, "weight_decay", cfg.weight_decay, "must be >= 0")


def _stage_of(defense, stage: str) -> None:
    if defense is not None:
        check(defense.stage == stage, "defense", defense.name,
              f"a {defense.stage} defense cannot act in the {stage} stage; pass a {stage} defense or None")


# ------------------------------------------------------------------------------------ hashing
def to_dict(cfg):
    """Like dataclasses.asdict, with the defense's name kept and new fields at their default omitted."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        out = {"name": cfg.name} if isinstance(cfg, DefenseConfig) else {}
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
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a mapping of fields, got {data!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field(s) {sorted(unknown)}: remove or rename them "
                          f"(fields: {', '.join(sorted(names))})")
    return cls(**data)  # nested dicts are turned into their dataclasses by the type check


# The user's fine-tuning strengths. "default" is where HS rises gradually with p on the embedded
# world; "strong" is a harder attack, so a defense that merely slows learning cannot pass for one
# that removes harm. Calibrated on the committed base model (README "Calibration").
ATTACK_PRESETS = {
    "default": {"lr": 5e-5, "epochs": 3.0, "batch_size": 10},
    "strong": {"lr": 2e-4, "epochs": 3.0, "batch_size": 10},
}
