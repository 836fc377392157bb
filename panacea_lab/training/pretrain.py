"""Pretraining the embedded base model from scratch on the world's unaligned mix, through the one loop.

It lives with training (not with the model's definition in `models/base_model.py`) because it runs
the training loop: the models folder stays below training in the package's import order.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from panacea_lab.data.batching import BatchStream, encode
from panacea_lab.data.world import build_world
from panacea_lab.models.base_model import RECIPE, BaseModelRecipe, build_tokenizer, is_base_model_dir
from panacea_lab.models.outdir import check_out_dir, publish, temp_beside
from panacea_lab.training.loop import LoopSettings, train_loop


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
