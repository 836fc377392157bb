"""Load a causal LM + tokenizer offline, pick device and dtype, attach / load / merge LoRA adapters.

Never reaches a hub: a model is a local directory or a hub id already in the local cache.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer

from panacea_lab.config import (
    EMBEDDED_MODEL,
    EMBEDDED_MODEL_DIR,
    ConfigError,
    ModelConfig,
)
from panacea_lab.data.batching import set_template


WEIGHTS_HINT = "a local model directory in Hugging Face format (config.json + *.safetensors + tokenizer files)"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "spiece.model")


def _download_hint(target: str) -> str:
    return (f"on a machine with internet access run `hf download ORG/NAME --local-dir {target}` (huggingface_hub's "
            "`hf` command) and copy the directory here; nothing is downloaded at run time")


def _looks_local(path: str) -> bool:
    """A filesystem path rather than a hub id ("name" or "org/name")."""
    return Path(path).expanduser().is_absolute() or path.startswith((".", "~")) or path.count("/") > 1


def check_model_dir(path: str, local: Path) -> None:
    """A local model directory holds what `from_pretrained` needs; otherwise say which part is missing."""
    names = {p.name for p in local.iterdir()}
    if "config.json" not in names:
        raise ConfigError(f"path = {path!r}: {local} has no config.json; point it at {WEIGHTS_HINT}")
    if not any(n.endswith(".safetensors") for n in names):
        pickled = sorted(n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt")))
        what = (f"holds only pickled weights ({', '.join(pickled)}), which are never loaded: convert them to "
                "safetensors or download the safetensors files" if pickled else "has no *.safetensors weights")
        raise ConfigError(f"path = {path!r}: {local} {what}; it must be {WEIGHTS_HINT}")
    if not names & set(TOKENIZER_FILES):
        raise ConfigError(f"path = {path!r}: {local} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}); "
                          f"it must be {WEIGHTS_HINT}")


def resolve_model_path(path: str) -> str:
    """Map a model reference to something `from_pretrained` can open offline, or say how to get it."""
    if path == EMBEDDED_MODEL:
        if not (EMBEDDED_MODEL_DIR / "config.json").exists():
            raise ConfigError(f"path = {path!r}: the embedded base model is missing from {EMBEDDED_MODEL_DIR}; "
                              "restore it with `git checkout data/models` or rebuild it with `panacea-lab build-base`")
        return str(EMBEDDED_MODEL_DIR)
    local = Path(path).expanduser()
    if local.is_dir():
        check_model_dir(path, local)
        return str(local)
    if local.exists():
        raise ConfigError(f"path = {path!r}: {local} is a file; point it at {WEIGHTS_HINT}")
    missing = ConfigError(f"path = {path!r}: no such local directory {local}; pass {WEIGHTS_HINT}: "
                          + _download_hint(str(local)))
    if _looks_local(path):
        raise missing
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(path, "config.json")
    except ValueError:  # not a valid hub id either (HFValidationError)
        raise missing from None
    if isinstance(cached, str):
        return path
    raise ConfigError(f"path = {path!r}: no such local directory and not in the Hugging Face cache "
                      f"({os.environ.get('HF_HUB_CACHE', constants.HF_HUB_CACHE)}). On a machine with internet access "
                      f"run `hf download {path}` (into that cache) or `hf download {path} --local-dir DIR` and pass "
                      "DIR; nothing is downloaded at run time")


def _from_pretrained(loader, cfg: ModelConfig, **kwargs):
    """`loader.from_pretrained` offline; a model that cannot be opened is one ConfigError line, not a traceback."""
    where = resolve_model_path(cfg.path)
    try:
        return loader.from_pretrained(where, local_files_only=True, trust_remote_code=cfg.trust_remote_code, **kwargs)
    except (OSError, SafetensorError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        fix = (_download_hint(where) if Path(where).is_dir() else
               f"run `hf download {where}` again on a machine with internet access")
        raise ConfigError(f"path = {cfg.path!r}: {where} could not be loaded ({first}); it must be {WEIGHTS_HINT}, "
                          f"complete and undamaged: {fix}") from err


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
    tok = _from_pretrained(AutoTokenizer, cfg)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    set_template(tok, cfg.template)  # data.prompt_ids reads it (ConfigError when "chat" has no template)
    return tok


def load_base(cfg: ModelConfig, device: torch.device | None = None):
    """The frozen base model on the chosen device, in eval mode (checkpointed when the config asks)."""
    device = device or pick_device()
    model = _from_pretrained(AutoModelForCausalLM, cfg, dtype=pick_dtype(cfg.dtype, device), use_safetensors=True)
    model.requires_grad_(False)
    contiguous_head_input(model)
    model.panacea_loss = cfg.loss  # how training/loss.lm_loss computes this model's loss
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model.to(device).eval()


def contiguous_head_input(model) -> None:
    """Give the output projection a contiguous input. On a frozen weight, torch's matmul runs a
    non-contiguous 3-D input (the prefill's last-position slice, `logits_to_keep=1`) as a batched
    product with the weight copied once per row: for Gemma 3's 262k x 640 head and 64 prompts a 20 GB
    copy and 85 s per batch instead of 0.1 s. The product is the same up to rounding."""
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))


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
    """Load a saved adapter onto `model`; only safetensors files are accepted (never unpickle).

    A missing or damaged adapter is one line naming the file: in a run store, deleting the stage
    directory (the adapter's parent) makes the next run recompute it."""
    adapter_dir = Path(adapter_dir)
    weights = adapter_dir / "adapter_model.safetensors"
    in_store = (adapter_dir.parent / "result.json").is_file()  # a run store's stage directory
    redo = (f"delete {adapter_dir.parent} so that its stage is recomputed" if in_store else
            "save the adapter there again (peft's save_pretrained writes adapter_config.json + "
            "adapter_model.safetensors)")
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir / 'adapter_config.json'} is missing: {redo}")
    if not weights.is_file():
        if (adapter_dir / "adapter_model.bin").exists():
            raise FileNotFoundError(f"{adapter_dir} holds a pickled adapter_model.bin and no "
                                    "adapter_model.safetensors; pickled weights are never loaded: save the adapter "
                                    "with safetensors")
        raise FileNotFoundError(f"{weights} is missing: {redo}")
    try:
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    except SafetensorError as err:
        raise FileNotFoundError(f"{weights} is damaged ({err}): {redo}") from err


def merge_adapter(peft_model):
    """Fold the adapter into the base weights; the result is a plain, frozen model."""
    merged = peft_model.merge_and_unload()
    merged.requires_grad_(False)
    return merged
