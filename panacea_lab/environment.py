"""The project's environment variables, checked in one place before any work starts.

Why: a variable is read deep inside a stage (PANACEA_CHECKPOINT_EVERY when the pipeline module loads,
PANACEA_HOME when the first data file is opened), where a bad value surfaces as a bare
"invalid literal" or as a missing data file. Checked first, each bad value is one line naming the
variable and what to set.
"""
from __future__ import annotations

import os
from pathlib import Path

from panacea_lab.config import ConfigError


def checkpoint_every(environ=None) -> int:
    """PANACEA_CHECKPOINT_EVERY: steps between a training stage's checkpoints (default 50; 0: none)."""
    value = (os.environ if environ is None else environ).get("PANACEA_CHECKPOINT_EVERY", "50")
    if not value.strip().isdigit():
        raise ConfigError(f"PANACEA_CHECKPOINT_EVERY = {value!r}: a whole number of steps >= 0 (0: no "
                          "checkpoints); unset it for the default 50")
    return int(value)


def check_environment(environ=None) -> None:
    """Raise ConfigError naming the first variable whose value cannot work."""
    env = os.environ if environ is None else environ
    checkpoint_every(env)
    if env.get("PANACEA_RUNS") == "":
        raise ConfigError("PANACEA_RUNS is empty: name the run store's folder, e.g. runs, or unset it for the default")
    home = env.get("PANACEA_HOME")
    if home is not None:
        path = Path(home).expanduser()
        if home.strip() == "":
            raise ConfigError("PANACEA_HOME is empty: name a folder for fetched data and models, or unset it for "
                              "the default ~/.cache/panacea-lab")
        blocking = next((p for p in (path, *path.parents) if p.exists()), None)
        if blocking is not None and not blocking.is_dir():
            raise ConfigError(f"PANACEA_HOME = {home!r}: {blocking} is a file; point it at a folder (it holds "
                              "data/ and models/)")
    cache_only = env.get("PANACEA_CACHE_ONLY")
    if cache_only not in (None, "", "0", "1"):
        raise ConfigError(f"PANACEA_CACHE_ONLY = {cache_only!r}: use 1 (read the run store only) or 0")
