"""The one record that says what a defense is and how it plugs in.

A defense module defines its validated config (a `DefenseConfig` subclass naming the defense and
its stage) and one `Defense` record; `panacea_lab.defenses` lists the records. The pipeline, the
CLI, the sweeps, the overhead profiler and the notebooks read this registry and nothing else, so
adding a defense is one module plus one `register` call.

How a defense acts depends on its stage:
- alignment / fine-tuning: `rule(cfg, ctx)` returns the `StepRule` the one training loop runs;
  `ctx` gives the defender's data streams (`TrainContext`). `artifacts(rule)` names tensors to
  store beside the adapter (Panacea's eps).
- post-fine-tuning: `transform(model, cfg, ctx)` returns the transformed model (in place or a new
  one); `ctx` gives harmful batches and the run's stored artifacts (`PostContext`).

`finetune_adapter` says how the user's fine-tuning that a defense is evaluated with starts in its
official scripts: "continue" the aligned adapter (the Panacea scripts' --alternating single_lora),
or merge it and train a "fresh" LoRA; each module cites its script.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from torch import Tensor

from panacea_lab.config import ADAPTER_MODES, ALIGNMENT, FINETUNING, POST, STAGES, UNDEFENDED, ConfigError, DefenseConfig
from panacea_lab.data.batching import Batch, BatchStream
from panacea_lab.training.loop import StepRule


class TrainContext(Protocol):
    """What a training-stage defense may draw on besides the loop's own batches."""

    seed: int

    def harmful(self, batch_size: int) -> BatchStream:
        """Batches of the defender's harmful pool (disjoint from the attacker's)."""

    def alignment(self, batch_size: int) -> BatchStream:
        """Batches of the alignment stage's data (refusals plus its benign replay)."""

    def refusals(self, batch_size: int) -> BatchStream:
        """Batches of the alignment refusals alone (harmful prompt -> refusal), without the replay."""


class PostContext(Protocol):
    """What a post-fine-tuning transform may draw on: the finished run and the defender's data."""

    seed: int
    lora_names: list[str]

    def harmful_batches(self, n: int) -> list[Batch]:
        """The first n batches of the defender's harmful pool."""

    def artifact(self, name: str) -> dict[str, Tensor]:
        """A tensor file the run stored beside its adapter (e.g. "eps"); FileNotFoundError if absent."""


@dataclass(frozen=True)
class Defense:
    """One defense (or control): its name, stage, config class and how it acts."""

    name: str
    stage: str
    config: type[DefenseConfig]
    label: str  # for tables and legends
    rule: Callable[[DefenseConfig, TrainContext], StepRule] | None = None
    transform: Callable[..., object] | None = None  # (model, cfg, PostContext) -> model
    artifacts: Callable[[StepRule], dict[str, dict[str, Tensor]]] | None = None
    control: bool = False  # a control for another method, not a defense of the paper family
    param: str = ""  # the config field a sweep varies, shown in result rows (e.g. "rho", "std")
    notes: dict = field(default_factory=dict)
    # how the user's fine-tuning that this defense is evaluated with starts, as in the official scripts:
    # "continue" the alignment adapter, or merge it and train a "fresh" LoRA (AttackConfig.adapter)
    finetune_adapter: str = "continue"
    # how figures draw it: one colour and marker in every figure (colour-blind-safe hues)
    color: str = "#8C8C8C"
    marker: str = "o"
    # the values a sweep takes for `param` when an experiment names the defense without values (None:
    # the named setting's value)
    sweep: tuple | None = None
    # the command line: `--<flag>` takes the values swept over `param` (nothing after it: the defense is
    # not run); `options` are further config fields exposed as flags of their own (`--lam`)
    flag: str = ""
    options: tuple[str, ...] = ()
    # a fine-tuning-stage defense whose verdict is a transform of its own finished run (Panacea: "eps",
    # adding the learnt perturbation): its rows are the trained w and w + that transform, and `controls`
    # run beside each of its runs with `control_norm(result)` (the norm of what it adds)
    post_half: str = ""
    controls: tuple[str, ...] = ()
    control_norm: Callable[[dict], float] | None = None
    # for a control: applied to the defended run ("defended") or to the undefended one ("undefended")
    control_on: str = "defended"
    # further fp32 copies of the LoRA parameters its training step keeps (memory estimates)
    lora_copies: int = 0
    # styles of a trained defense's rows by variant where they differ from `color` / `marker` (its w)
    variant_styles: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ConfigError(f"defense {self.name!r}: stage = {self.stage!r}, use one of {STAGES}")
        if self.config.name != self.name or self.config.stage != self.stage:
            raise ConfigError(f"defense {self.name!r}: its config class {self.config.__name__} names "
                              f"{self.config.name!r} / {self.config.stage!r}; make them agree")
        if self.finetune_adapter not in ADAPTER_MODES:
            raise ConfigError(f"defense {self.name!r}: finetune_adapter = {self.finetune_adapter!r}, "
                              f"use one of {ADAPTER_MODES}")
        if self.control_on not in ("defended", "undefended"):
            raise ConfigError(f"defense {self.name!r}: control_on = {self.control_on!r}, use defended or undefended")
        if self.controls and self.control_norm is None:
            raise ConfigError(f"defense {self.name!r}: controls need control_norm (the norm they match)")
        needs = "transform" if self.stage == POST else "rule"
        if getattr(self, needs) is None:
            raise ConfigError(f"defense {self.name!r} ({self.stage}) must define `{needs}`")

    def make(self, **params) -> DefenseConfig:
        """The defense's validated config from keyword parameters (an unknown one is named)."""
        known = set(self.config.__dataclass_fields__)
        unknown = sorted(set(params) - known)
        if unknown:
            raise ConfigError(f"{self.name}: no parameter {', '.join(unknown)}; use {', '.join(sorted(known))}")
        return self.config(**params)


REGISTRY: dict[str, Defense] = {}

# The reference models, drawn beside every defense: the undefended one (`UNDEFENDED`, "none", one
# identifier in every row, file and table) and `base` / `aligned`, the models before the user's
# fine-tuning. Their labels and looks are fixed here beside the defenses'.
REFERENCES = {UNDEFENDED: ("no defense", "#000000", "o"), "base": ("base", "#999933", "v"),
              "aligned": ("aligned", "#117733", "^")}
# other labels of the undefended model: the attack sweep's rows ("fine-tuned") and the plain step
# rule that trains it (the loop's SFT rule, profiled as such)
UNDEFENDED_LABELS = ("fine-tuned", "sft", "sft (no defense)")


def register(defense: Defense, replace: bool = False) -> Defense:
    """Add a defense to the registry (tests and notebooks may add their own)."""
    if defense.name in REGISTRY and not replace and REGISTRY[defense.name] is not defense:
        raise ConfigError(f"defense {defense.name!r} is registered already: pick another name")
    REGISTRY[defense.name] = defense
    return defense


def get(name: str) -> Defense:
    if name not in REGISTRY:
        raise ConfigError(f"defense = {name!r}: unknown; use one of {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def of(cfg: DefenseConfig) -> Defense:
    """The record of a defense config."""
    return get(cfg.name)


def names(stage: str | None = None, controls: bool = True) -> list[str]:
    """Registered names, in registration order, optionally of one stage and without controls."""
    return [n for n, d in REGISTRY.items() if (stage is None or d.stage == stage) and (controls or not d.control)]


def label(name: str) -> str:
    """The display label of a method or a reference model (a registry name, `none`, `base`, `aligned`)."""
    return REFERENCES[name][0] if name in REFERENCES else get(name).label


__all__ = ["ALIGNMENT", "UNDEFENDED", "REFERENCES", "label", "FINETUNING", "POST", "Defense", "DefenseConfig", "PostContext", "TrainContext",
           "REGISTRY", "register", "get", "of", "names"]


def trained_with_half() -> list[str]:
    """Trained defenses whose verdict is a post-fine-tuning half applied to their own run (Panacea: w +
    eps), in registration order: analyses of "the defense's w + half" (calibration, the answer-loss
    probe, export) default to the first, and the grid tables group their rows by setting."""
    return [n for n, d in REGISTRY.items() if d.stage != POST and d.post_half]


# Labels as committed result files and the README's tables print them, where a record's label has been
# shortened since: those files must read back, and the tables regenerate, unchanged.
PRINTED_LABELS = {"random_direction": "same-norm random direction"}


def printed_label(name: str) -> str:
    """A method's label as committed result files print it: its record's, unless renamed since."""
    return PRINTED_LABELS.get(name, label(name))
