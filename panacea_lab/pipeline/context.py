"""What every stage reads: the world and tokenizer (built once per process), the data of each role,
and the streams of defender data that a defense draws on (`TrainContext`, `PostContext`)."""
from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from safetensors.torch import load_file

from panacea_lab.config import TASKS, AlignConfig, AttackConfig, ModelConfig
from panacea_lab.data.batching import Batch, BatchStream, encode
from panacea_lab.data.lexicon import PREVALENCE
from panacea_lab.data.world import Example, World, build_world
from panacea_lab.models.loading import load_tokenizer
from panacea_lab.pipeline.keys import key
from panacea_lab.training.store import RunStore


@lru_cache(maxsize=4)
def get_world(seed: int, data: str = "embedded") -> World:
    """The embedded world, or one assembled from real data (`panacea_lab.data.real_world`)."""
    if data == "embedded":
        return build_world(seed)
    from panacea_lab.data.real_world import build_real_world

    return build_real_world(data, seed)


def world_of(cfg: AlignConfig) -> World:
    return get_world(cfg.world_seed, cfg.data)


@lru_cache(maxsize=4)
def get_tokenizer(model_cfg: ModelConfig):
    return load_tokenizer(model_cfg)


def alignment_data(cfg: AlignConfig, world: World) -> list[Example]:
    """Refusals on the alignment pool plus a replay of the base model's own benign data."""
    if cfg.n_refusal > len(world.alignment):
        raise ValueError(f"n_refusal = {cfg.n_refusal} but the alignment pool holds {len(world.alignment)}: "
                         "lower n_refusal")
    rng = random.Random(cfg.seed)
    if cfg.prevalence == "uniform":
        data = rng.sample(world.alignment, cfg.n_refusal)
    else:  # skewed: drawn with replacement by category prevalence (a duplicate is one more epoch of it)
        data = rng.choices(world.alignment, weights=[PREVALENCE[e.category] for e in world.alignment],
                           k=cfg.n_refusal)
    benign = [e for e in world.pretrain if e.task not in ("harmful", "facts")]
    data += rng.sample(benign, min(len(benign), cfg.n_replay_per_task * len(TASKS)))  # tasks mixed
    rng.shuffle(data)
    return data


def stream(cfg: AlignConfig, examples: list[Example], batch_size: int, seed: int) -> BatchStream:
    tok = get_tokenizer(cfg.model)
    rows = [encode(tok, ex, cfg.model.max_length) for ex in examples]
    return BatchStream(rows, batch_size, tok.pad_token_id, seed)


def harmful_stream(cfg: AlignConfig, batch_size: int, seed: int) -> BatchStream:
    """Batches of the defender's harmful pool (disjoint from the attacker's)."""
    return stream(cfg, world_of(cfg).defender_pool, batch_size, seed)


@dataclass
class RunContext:
    """`TrainContext` of a stage: the defender's streams, seeded from the stage's seed.

    Offsets keep the streams apart from the user's batches (seed) and from each other: harmful
    batches use seed + 1, alignment batches seed + 2."""

    align: AlignConfig
    seed: int

    def harmful(self, batch_size: int) -> BatchStream:
        return harmful_stream(self.align, batch_size, self.seed + 1)

    def alignment(self, batch_size: int) -> BatchStream:
        return stream(self.align, alignment_data(self.align, world_of(self.align)), batch_size, self.seed + 2)

    def refusals(self, batch_size: int) -> BatchStream:
        """The alignment data's refusals only (no benign replay), seed + 3."""
        data = [e for e in alignment_data(self.align, world_of(self.align)) if e.task == "harmful"]
        return stream(self.align, data, batch_size, self.seed + 3)


@dataclass
class EvalContext:
    """`PostContext` of one finished run: its stored artifacts and the defender's harmful batches."""

    align: AlignConfig
    store: RunStore
    stage: str
    cfg: object
    seed: int
    lora_names: list[str]

    def harmful_batches(self, n: int) -> list[Batch]:
        batches = harmful_stream(self.align, 16, self.seed).epoch()
        return [b for _, b in zip(range(n), batches)]

    def artifact(self, name: str):
        if self.stage == "base":
            raise FileNotFoundError(f"the base model has no stored {name!r}: pick a fine-tuned run")
        path = self.store.artifact(self.stage, key(self.stage, self.cfg), f"{name}.safetensors")
        return load_file(str(path))


def align_of(stage: str, cfg) -> AlignConfig | None:
    """The alignment a stage's config descends from (None for the base model)."""
    if isinstance(cfg, AlignConfig):
        return cfg
    if isinstance(cfg, AttackConfig):
        return cfg.align
    return None
