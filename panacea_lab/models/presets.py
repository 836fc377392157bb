"""Real-model presets (the paper's four base models, SmolLM2-135M and Gemma 3 270M) and a memory estimate per run.

A preset only fills a `ModelConfig`; the weights are never downloaded here (a hub id must already be
in the local cache, see `models.resolve_model_path`). Architecture numbers are stored so the memory
estimate works before a model is on disk; `test_presets` checks them against the published counts.

LoRA settings of the paper's models are those of the official code: w-yibo/Panacea `train.py`
(commit 409ffa6; identical in git-disl/Booster `train.py`, which it derives from):
`LoraConfig(r=32, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj"], lora_dropout=0)`,
`training_args.model_max_length = 256`, weights cast to bf16. SmolLM2 is not in the paper: it keeps
this project's LoRA defaults (`ModelConfig`), with the paper's 256 tokens to fit its chat template.
Gemma 3 270M is not in the paper either: a base model, it takes the paper's LoRA and Alpaca template.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path

import torch

from panacea_lab.config import ConfigError, ModelConfig, check

PAPER_SOURCE = "w-yibo/Panacea train.py@409ffa6 (r=32, lora_alpha=4, q/k/v, dropout 0, max length 256, bf16)"
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
DEVICES = ("cuda", "cpu")
GIB = 2 ** 30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ADAPTER_BYTES = 4  # peft keeps LoRA weights in fp32 even on a bf16 base (autocast_adapter_dtype)
CUDA_CONTEXT = GIB // 2  # CUDA context + kernels, roughly; allocator fragmentation is not counted
MEMORY_TERMS = ("weights", "lora", "grads", "adam", "extra_copies", "activations", "logits", "cuda_context")


@dataclass(frozen=True)
class Preset:
    """One base model: where to find it, its architecture numbers, and how it is trained."""

    name: str
    hub_id: str  # looked up in the local Hugging Face cache only
    architecture: str  # transformers config class
    n_params: float  # published parameter count (approximate)
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    head_dim: int | None = None  # only where it is not hidden // heads (Gemma2)
    tied: bool = False  # input and output embeddings share one matrix
    template: str = "alpaca"  # the paper uses the Alpaca template for every model
    lora_r: int = 32
    lora_alpha: int = 4
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    max_length: int = 256
    dtype: str = "auto"  # bf16 on CUDA, fp32 elsewhere
    gradient_checkpointing: bool = True  # 7-9B models: activations, not weights, decide whether a batch fits
    resolver: str | None = None  # "module:function" returning the local path, resolved only when asked
    source: str = PAPER_SOURCE  # where the LoRA / length settings come from

    def hf_config(self):
        """The architecture's config (no weights): enough to count parameters on the meta device."""
        import transformers

        extra = {"head_dim": self.head_dim} if self.head_dim else {}
        return getattr(transformers, self.architecture)(
            vocab_size=self.vocab, hidden_size=self.hidden, intermediate_size=self.intermediate,
            num_hidden_layers=self.layers, num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
            tie_word_embeddings=self.tied, **extra)

    def default_path(self) -> str:
        """The hub id, or what the preset's resolver returns (imported only now: it may not exist yet)."""
        if self.resolver is None:
            return self.hub_id
        module, func = self.resolver.split(":")
        try:
            resolve = getattr(importlib.import_module(module), func)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"path = None: preset {self.name!r} finds its model with {self.resolver}, which is "
                              f"unavailable ({err}); pass path= a local model directory") from err
        return str(resolve())

    def model_config(self, path: str | None = None, **overrides) -> ModelConfig:
        """A validated ModelConfig from this preset; `overrides` replace any of its fields."""
        unknown = set(overrides) - set(_DEFAULTS)
        if unknown:
            raise ConfigError(f"{sorted(unknown)}: not ModelConfig fields; override any of {sorted(_DEFAULTS)}")
        fields = {k: getattr(self, k) for k in ("template", "lora_r", "lora_alpha", "lora_targets", "max_length",
                                                "dtype", "gradient_checkpointing")}
        return ModelConfig(path=path or self.default_path(), **{**fields, **overrides})


_ALL_PROJECTIONS = {k: _DEFAULTS[k] for k in ("lora_r", "lora_alpha", "lora_targets")}
PRESETS = {p.name: p for p in (
    Preset("llama2-7b", "meta-llama/Llama-2-7b-hf", "LlamaConfig", 6.74e9, layers=32, hidden=4096,
           intermediate=11008, heads=32, kv_heads=32, vocab=32000),
    Preset("gemma2-9b", "google/gemma-2-9b", "Gemma2Config", 9.24e9, layers=42, hidden=3584,
           intermediate=14336, heads=16, kv_heads=8, vocab=256000, head_dim=256, tied=True),
    Preset("mistral-7b", "mistralai/Mistral-7B-v0.1", "MistralConfig", 7.24e9, layers=32, hidden=4096,
           intermediate=14336, heads=32, kv_heads=8, vocab=32000),
    Preset("qwen2-7b", "Qwen/Qwen2-7B", "Qwen2Config", 7.62e9, layers=28, hidden=3584,
           intermediate=18944, heads=28, kv_heads=4, vocab=152064),
    Preset("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", "LlamaConfig", 134.5e6, layers=30, hidden=576,
           intermediate=1536, heads=9, kv_heads=3, vocab=49152, tied=True, template="chat", dtype="float32",
           gradient_checkpointing=False, resolver="panacea_lab.models.smollm2:resolve_smollm2",
           source="not in the paper: this project's LoRA defaults (ModelConfig); the paper's max length 256",
           **_ALL_PROJECTIONS),
    Preset("gemma3-270m", "google/gemma-3-270m", "Gemma3TextConfig", 268.1e6, layers=18, hidden=640,
           intermediate=2048, heads=4, kv_heads=1, vocab=262144, head_dim=256, tied=True, dtype="float32",
           gradient_checkpointing=False, resolver="panacea_lab.models.gemma3:resolve_gemma3",
           source="not in the paper: the paper's LoRA and max length (" + PAPER_SOURCE.split(" (")[1]
                  .replace(", bf16)", ")") + "; fp32, a base model, so the Alpaca template"),
)}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"preset = {name!r}: use one of {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_model_config(name: str, path: str | None = None, **overrides) -> ModelConfig:
    """The ModelConfig of preset `name`; `path` (default: the hub id or the preset's resolver) and any
    ModelConfig field can be overridden, e.g. `preset_model_config("llama2-7b", lora_r=8)`."""
    return get_preset(name).model_config(path, **overrides)


# ----------------------------------------------------------------------------- memory estimate
def _spec(model) -> tuple[str, object, str, int, tuple[str, ...], bool]:
    """(label, HF config, dtype, LoRA r, LoRA targets, checkpointing) of a preset (or its name) or a ModelConfig."""
    if isinstance(model, str):
        model = get_preset(model)
    if isinstance(model, Preset):
        return (model.name, model.hf_config(), model.dtype, model.lora_r, model.lora_targets,
                model.gradient_checkpointing)
    if isinstance(model, ModelConfig):
        from transformers import AutoConfig

        from panacea_lab.models.loading import resolve_model_path

        hf = AutoConfig.from_pretrained(resolve_model_path(model.path), local_files_only=True,
                                        trust_remote_code=model.trust_remote_code)
        return (Path(model.path).name, hf, model.dtype, model.lora_r, model.lora_targets,
                model.gradient_checkpointing)
    raise ConfigError(f"model = {model!r}: pass a ModelConfig, a Preset or a preset name ({', '.join(PRESETS)})")


def count_parameters(hf_config, lora_r: int, lora_targets: tuple[str, ...]) -> tuple[int, int]:
    """(all parameters, LoRA parameters) of the architecture, counted exactly on the meta device."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(hf_config)
    lora = sum(lora_r * (m.in_features + m.out_features) for n, m in net.named_modules()
               if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in lora_targets)
    return sum(p.numel() for p in net.parameters()), lora


def estimate_memory(model, batch_size: int, seq_len: int, extra_copies: int = 0, device: str = "cuda",
                    method: str = "SFT") -> dict:
    """Rough peak memory (bytes) of one LoRA training step, to print before a run.

    Assumptions (each a key of the result):
    - weights: every base parameter in the run's dtype ("auto" = bf16 on CUDA, fp32 on CPU); frozen.
    - lora, grads, adam: LoRA parameters r * (in + out) per targeted linear layer, kept in fp32 by peft,
      plus their gradients and AdamW's two moments: 16 bytes per LoRA parameter.
    - extra_copies: further fp32 copies of the LoRA parameters a defense's step keeps (its registry
      record's `lora_copies`: Panacea's 5 are eps, the saved w of the shifted pass and the gradient
      copies G_f, G_h, G_h'); a multi-pass step runs its passes one after the other and each backward
      frees its graph, so activations do not add up (harmful batch <= batch). `method` labels the line.
    - activations: per layer and token about 10 * hidden + 4 * intermediate values in the dtype (norm
      inputs/outputs, q/k/v before and after rotary, attention output, MLP gate/up/act/product), with a
      fused attention kernel that keeps no seq x seq matrix. With gradient checkpointing only each
      layer's input (hidden values) is kept, plus one layer recomputed at a time.
    - logits: batch * seq * vocab in the dtype, plus the fp32 copy the loss makes and its gradient.
    - cuda_context: about 0.5 GiB on CUDA, 0 on CPU. Fragmentation and the generation KV cache are not counted.
    Linear in batch size for activations and logits; weights do not depend on it.
    """
    check(isinstance(batch_size, int) and batch_size > 0, "batch_size", batch_size, "must be an int > 0")
    check(isinstance(seq_len, int) and seq_len > 0, "seq_len", seq_len, "must be an int > 0")
    check(isinstance(extra_copies, int) and extra_copies >= 0, "extra_copies", extra_copies, "must be an int >= 0")
    check(device in DEVICES, "device", device, f"use one of {DEVICES}")
    label, hf, dtype, lora_r, targets, checkpointing = _spec(model)
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else "float32"
    n_params, n_lora = count_parameters(hf, lora_r, targets)
    width, tokens = DTYPE_BYTES[dtype], batch_size * seq_len
    one_layer = tokens * (10 * hf.hidden_size + 4 * hf.intermediate_size) * width
    kept = (hf.num_hidden_layers * tokens * hf.hidden_size * width + one_layer if checkpointing
            else hf.num_hidden_layers * one_layer)
    out = {"model": label, "method": method, "device": device, "dtype": dtype, "batch_size": batch_size,
           "seq_len": seq_len, "gradient_checkpointing": checkpointing, "n_params": n_params, "lora_params": n_lora,
           "weights": n_params * width, "lora": n_lora * ADAPTER_BYTES, "grads": n_lora * ADAPTER_BYTES,
           "adam": 2 * n_lora * ADAPTER_BYTES,
           "extra_copies": extra_copies * n_lora * ADAPTER_BYTES,
           "activations": kept, "logits": tokens * hf.vocab_size * (width + 8),
           "cuda_context": CUDA_CONTEXT if device == "cuda" else 0}
    out["total"] = sum(out[k] for k in MEMORY_TERMS)
    return out


def format_estimate(est: dict) -> str:
    """One line for the log, in GiB: the total first, then its terms."""
    gib = {k: est[k] / GIB for k in MEMORY_TERMS}
    terms = [f"weights {gib['weights']:.2f}", f"LoRA+grads+Adam {gib['lora'] + gib['grads'] + gib['adam']:.2f}"]
    if est["extra_copies"]:
        terms.append(f"{est['method']} copies {gib['extra_copies']:.2f}")
    terms += [f"activations {gib['activations']:.2f}", f"logits {gib['logits']:.2f}"]
    if est["cuda_context"]:
        terms.append(f"CUDA context {gib['cuda_context']:.2f}")
    ckpt = ", checkpointed" if est["gradient_checkpointing"] else ""
    return (f"memory estimate {est['model']} ({est['method']}, {est['dtype']} on {est['device']}, batch "
            f"{est['batch_size']} x {est['seq_len']} tokens{ckpt}): ~{est['total'] / GIB:.1f} GiB = "
            + ", ".join(terms))
