"""A tiny random Llama with the world's tokenizer: what the tests and the UI test train in seconds."""
from __future__ import annotations

from pathlib import Path


def save_tiny_llama(out: str | Path) -> Path:
    """A 2-layer, 32-wide Llama saved in HF format (small enough for exact, fast checks)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from panacea_lab.base_model import build_tokenizer
    from panacea_lab.world import build_world

    tok = build_tokenizer(build_world(0).all_texts())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return Path(out)
