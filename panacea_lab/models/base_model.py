"""Build the embedded tier's tiny unaligned base model: a word-level tokenizer and a small Llama.

Pretraining takes about ten minutes on 2 cores, so the result is committed under data/models/ and
users never pay for it; this module is its recipe and tokenizer, and `training/pretrain.py` rebuilds it
(`panacea-lab build-base`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from panacea_lab.data.batching import ALPACA_MARKERS, ALPACA_PREAMBLE, ALPACA_PREAMBLE_INPUT

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
DEFAULT_BASE = "tiny-llama-world"
RECIPE = "recipe.json"


@dataclass(frozen=True)
class BaseModelRecipe:
    """Everything that determines the committed base model (recorded beside its weights)."""

    world_seed: int = 0
    seed: int = 0
    hidden_size: int = 256
    intermediate_size: int = 512
    num_layers: int = 6
    num_heads: int = 8
    max_length: int = 96
    epochs: float = 5.0
    lr: float = 2e-3
    batch_size: int = 64
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01


def build_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the world's vocabulary; the Alpaca template pieces are single tokens.

    Whole words keep sequences short (fast on a CPU); the template stays the exact Alpaca text.
    """
    splitter = pre_tokenizers.Whitespace()
    words = sorted({w for t in texts for w, _ in splitter.pre_tokenize_str(t)} | {str(i) for i in range(100)})
    vocab = {tok: i for i, tok in enumerate(SPECIALS + words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = splitter
    core.add_tokens([AddedToken(t, normalized=False) for t in (ALPACA_PREAMBLE_INPUT, ALPACA_PREAMBLE, *ALPACA_MARKERS)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                  bos_token="<s>", eos_token="</s>")
    tok.padding_side = "left"
    return tok


def is_base_model_dir(path: Path) -> bool:
    """A directory this module wrote: its recipe.json is a record with a `recipe` mapping."""
    try:
        record = json.loads((path / RECIPE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and isinstance(record.get("recipe"), dict)
