"""Where fetched data and converted models live: a user cache, never the repository.

`PANACEA_HOME` (default ~/.cache/panacea-lab) holds `data/<source>/...` (what `panacea-lab fetch-data`
extracts, with a manifest of package, version, licence and file hashes) and `models/<name>/` (plain
safetensors Hugging Face directories, e.g. the converted SmolLM2-135M-Instruct).
"""
from __future__ import annotations

import os
from pathlib import Path


PACKAGE_ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_MODEL_DIR = PACKAGE_ROOT / "data" / "models" / "tiny-llama-world"


def home() -> Path:
    return Path(os.environ.get("PANACEA_HOME", "~/.cache/panacea-lab")).expanduser()


def data_dir() -> Path:
    return home() / "data"


def models_dir() -> Path:
    return home() / "models"
