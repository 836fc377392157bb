"""Load a causal LM + tokenizer offline, pick device and dtype, attach / load / merge LoRA adapters.

Never reaches a hub: a model is a local directory or a hub id already in the local cache.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from panacea_lab.config import (
    EMBEDDED_MODEL,
    EMBEDDED_MODEL_DIR,
    ConfigError,
    ModelConfig,
)
from panacea_lab.data.batching import set_template


def resolve_model_path(path: str) -> str:
    """Map a model reference to something `from_pretrained` can open offline, or say how to get it."""
    if path == EMBEDDED_MODEL:
        if not (EMBEDDED_MODEL_DIR / "config.json").exists():
            raise ConfigError(f"path = {path!r}: the embedded base model is missing from {EMBEDDED_MODEL_DIR}; "
                              "restore it with `git checkout data/models` or rebuild it with `panacea-lab build-base`")
        return str(EMBEDDED_MODEL_DIR)
    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ConfigError(f"path = {path!r}: directory has no config.json; point it at a Hugging Face "
                              "model directory (config.json + *.safetensors + tokenizer files)")
        return str(local)
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(path, "config.json") if path.count("/") <= 1 else None
    if isinstance(cached, str):
        return path
    raise ConfigError(f"path = {path!r}: no such local directory and not in the Hugging Face cache "
                      f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}). Download it on a machine with "
                      "internet access (`huggingface-cli download ID`) or pass a local model directory; "
                      "nothing is downloaded at run time")


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)


def load_tokenizer(cfg: ModelConfig):
    tok = AutoTokenizer.from_pretrained(resolve_model_path(cfg.path), local_files_only=True,
                                        trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    set_template(tok, cfg.template)  # data.prompt_ids reads it (ConfigError when "chat" has no template)
    return tok


def load_base(cfg: ModelConfig, device: torch.device | None = None):
    """The frozen base model on the chosen device, in eval mode (checkpointed when the config asks)."""
    device = device or pick_device()
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(cfg.path), local_files_only=True,
                                                 dtype=pick_dtype(cfg.dtype, device),
                                                 trust_remote_code=cfg.trust_remote_code, use_safetensors=True)
    model.requires_grad_(False)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model.to(device).eval()


def enable_gradient_checkpointing(model) -> None:
    """Recompute each layer's activations in the backward pass instead of keeping them (memory for time).

    Set here, at load, because every trainable model (fresh, continued or merged adapter) starts from
    `load_base`; it acts only in train mode with gradients on, so evaluation and generation are
    unaffected. Non-reentrant: the variant that supports several backward passes per step (Panacea)
    and inputs that need no gradient. The input embeddings' output is made to require grad, as peft
    needs when the base is frozen, so gradients reach the LoRA weights inside checkpointed layers."""
    if not model.supports_gradient_checkpointing:
        raise ConfigError(f"gradient_checkpointing = True: {type(model).__name__} does not support it; set it to False")
    # renamed activation_checkpointing_enable in later transformers 5.x releases
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})
    if not getattr(model, "_require_grads_hooks", None):  # transformers registers it itself for input_ids models
        model.enable_input_require_grads()


def lora_config(cfg: ModelConfig) -> LoraConfig:
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.lora_targets),
                      lora_dropout=cfg.lora_dropout, bias="none", task_type="CAUSAL_LM")


def attach_lora(model, cfg: ModelConfig, seed: int):
    """A fresh, trainable LoRA adapter (initialised from `seed`: B = 0, so the model is unchanged)."""
    torch.manual_seed(seed)
    return get_peft_model(model, lora_config(cfg))


def load_adapter(model, adapter_dir: str | Path, trainable: bool):
    """Load a saved adapter onto `model`; only safetensors files are accepted (never unpickle)."""
    if not (Path(adapter_dir) / "adapter_model.safetensors").exists():
        raise FileNotFoundError(f"{adapter_dir} holds no adapter_model.safetensors; refusing to load pickled weights")
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)


def merge_adapter(peft_model):
    """Fold the adapter into the base weights; the result is a plain, frozen model."""
    merged = peft_model.merge_and_unload()
    merged.requires_grad_(False)
    return merged
