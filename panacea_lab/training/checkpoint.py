"""Mid-stage checkpoints: one directory per saved step, written whole or not at all.

Layout: `<checkpoint_dir>/step-<n>/` holds `tensors.safetensors` and `state.json`. Each is written
into a hidden temporary directory beside it, flushed, then renamed into place: a process killed at
any moment leaves either the previous checkpoint or the new one, never a half-written one. Loading
never unpickles anything: tensors come from safetensors, everything else from JSON. `state.json`
records the sha256 of the tensor file: a checkpoint whose bytes changed after it was written (a
truncated or flipped file) is moved aside as `damaged-step-<n>` with a one-line note, never resumed
from, and the next older one (or the start) is used instead.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from panacea_lab.hashing import file_sha256

FORMAT = 1
TENSORS, STATE = "tensors.safetensors", "state.json"
PREFIX, TMP_PREFIX, DAMAGED = "step-", ".tmp-", "damaged-"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(directory: Path, step: int, tensors: dict[str, torch.Tensor], state: dict) -> Path:
    """Write checkpoint `step` atomically, then drop older ones. Returns its directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{PREFIX}{step:08d}"
    tmp = directory / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / TENSORS))
    digest = file_sha256(tmp / TENSORS)
    (tmp / STATE).write_text(json.dumps({"format": FORMAT, "step": step, "tensors_sha256": digest, **state}))
    for f in (tmp / TENSORS, tmp / STATE, tmp):
        _fsync(f)
    if final.exists():  # the same step saved again: move the old copy aside (a temporary name)
        os.rename(final, directory / f"{TMP_PREFIX}old-{final.name}-{os.getpid()}")
    os.rename(tmp, final)
    _fsync(directory)
    for old in [*directory.glob(f"{PREFIX}*"), *directory.glob(f"{TMP_PREFIX}old-*-{os.getpid()}")]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_latest(directory: Path | None) -> tuple[dict[str, torch.Tensor], dict] | None:
    """(tensors, state) of the newest readable checkpoint in `directory`, or None when there is none.

    Leftover temporary directories (a save cut short) are removed; an unreadable checkpoint is
    skipped with a warning and the next older one is tried."""
    if directory is None or not Path(directory).is_dir():
        return None
    for tmp in Path(directory).glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for d in sorted(Path(directory).glob(f"{PREFIX}*"), reverse=True):
        try:
            state = json.loads((d / STATE).read_text())
            if state.get("format") != FORMAT:
                raise ValueError(f"format {state.get('format')!r}, expected {FORMAT}")
            recorded = state.get("tensors_sha256")
            if recorded is not None and file_sha256(d / TENSORS) != recorded:
                raise ValueError("its tensors do not match their recorded sha256 (truncated or modified)")
            return load_file(str(d / TENSORS)), state
        except Exception as err:  # noqa: BLE001  (JSON, OS and safetensors' own errors: never resume from it)
            aside = d.with_name(f"{DAMAGED}{d.name}")
            shutil.rmtree(aside, ignore_errors=True)
            os.rename(d, aside)
            warnings.warn(f"skipping unreadable checkpoint {d} (moved to {aside.name}): "
                          f"{str(err).splitlines()[0] if str(err) else type(err).__name__}")
    return None


def remove(directory: Path | None) -> None:
    """Delete a stage's checkpoints (once its result is stored)."""
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


# ------------------------------------------------------------------ optimizer state
def optimizer_state(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """A torch optimizer's state_dict split into tensors (per parameter index) and JSON."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, idx, key = name.split("/", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, entry in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ------------------------------------------------------------------ random number generators
def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """torch (CPU, and every CUDA device once CUDA is in use), Python's `random` and NumPy's global
    generators. A process that never initialised CUDA has drawn nothing from it (and a forked one may not)."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_initialized():
        tensors.update({f"rng/cuda/{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return tensors, {"python": [version, list(internal), gauss],
                     "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def load_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng/cuda/")),
                                       key=lambda k: int(k.rsplit("/", 1)[1]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
