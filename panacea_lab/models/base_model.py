"""Build the embedded tier's tiny unaligned base model: a word-level tokenizer and a small Llama.

Pretraining takes about ten minutes on 2 cores, so the result is committed under data/models/ and
users never pay for it; this module is the recipe that rebuilds it (`panacea-lab build-base`).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from panacea_lab.data.batching import (
    ALPACA_MARKERS,
    ALPACA_PREAMBLE,
    ALPACA_PREAMBLE_INPUT,
    BatchStream,
    encode,
)
from panacea_lab.data.world import build_world
from panacea_lab.models.outdir import check_out_dir, publish, temp_beside
from panacea_lab.training.loop import LoopSettings, train_loop

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


def pretrain(out_dir: str | Path, recipe: BaseModelRecipe = BaseModelRecipe()) -> Path:
    """Pretrain from scratch on the world's unaligned mix and save in HF format (atomically).

    `out_dir` must be new, empty or a base model built here before; anything else is refused
    before training starts."""
    out_dir = Path(out_dir).expanduser()
    check_out_dir(out_dir, is_base_model_dir, "build-base")
    torch.manual_seed(recipe.seed)
    world = build_world(recipe.world_seed)
    tok = build_tokenizer(world.all_texts())
    config = LlamaConfig(vocab_size=len(tok), hidden_size=recipe.hidden_size,
                         intermediate_size=recipe.intermediate_size, num_hidden_layers=recipe.num_layers,
                         num_attention_heads=recipe.num_heads, num_key_value_heads=recipe.num_heads,
                         max_position_embeddings=recipe.max_length, tie_word_embeddings=True,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(config)
    rows = [encode(tok, ex, recipe.max_length) for ex in world.pretrain]
    stream = BatchStream(rows, recipe.batch_size, tok.pad_token_id, recipe.seed)
    settings = LoopSettings(epochs=recipe.epochs, lr=recipe.lr, batch_size=recipe.batch_size,
                            weight_decay=recipe.weight_decay, warmup_ratio=recipe.warmup_ratio,
                            log_every=20, desc="pretrain base")
    result = train_loop(model, stream, settings)
    check_out_dir(out_dir, is_base_model_dir, "build-base")  # again: it may have been filled while training
    tmp = temp_beside(out_dir)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        model.generation_config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        record = {"recipe": asdict(recipe), "n_parameters": sum(p.numel() for p in model.parameters()),
                  "train_seconds": result["train_seconds"], "final_loss": result["log"][-1]["loss"],
                  "log": result["log"]}
        (tmp / RECIPE).write_text(json.dumps(record, indent=1))  # last: it marks the directory as ours
        publish(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
