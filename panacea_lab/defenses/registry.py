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

from panacea_lab.config import ADAPTER_MODES, ALIGNMENT, FINETUNING, POST, STAGES, ConfigError, DefenseConfig
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

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ConfigError(f"defense {self.name!r}: stage = {self.stage!r}, use one of {STAGES}")
        if self.config.name != self.name or self.config.stage != self.stage:
            raise ConfigError(f"defense {self.name!r}: its config class {self.config.__name__} names "
                              f"{self.config.name!r} / {self.config.stage!r}; make them agree")
        if self.finetune_adapter not in ADAPTER_MODES:
            raise ConfigError(f"defense {self.name!r}: finetune_adapter = {self.finetune_adapter!r}, "
                              f"use one of {ADAPTER_MODES}")
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


__all__ = ["ALIGNMENT", "FINETUNING", "POST", "Defense", "DefenseConfig", "PostContext", "TrainContext",
           "REGISTRY", "register", "get", "of", "names"]
