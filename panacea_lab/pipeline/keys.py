"""The run store's keys by content: a stage's config plus hashes of the base weights, the data and
the code that computes the stage.

`STAGE_CODE` gives each stage a version and the modules its results depend on. A test compares the
modules' source (parsed, so comments and docstrings do not count) with `code_fingerprints.json`:
when the code changed and the version did not, it fails and says to bump the version (every result
of that stage is then recomputed under a new key) and to refresh the file with
`python -m panacea_lab.pipeline.keys --update`.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
from functools import lru_cache
from pathlib import Path

from panacea_lab.config import PACKAGE_DATA, AlignConfig, AttackConfig, ModelConfig
from panacea_lab.training.store import Keyed, content_sha256

PACKAGE = Path(__file__).resolve().parent.parent
FINGERPRINTS = Path(__file__).with_name("code_fingerprints.json")
_TRAINING = ["training/loop.py", "training/loss.py", "data/batching.py", "data/world.py", "data/lexicon.py",
             "data/real_world.py", "data/adapters", "models/loading.py", "pipeline/context.py", "pipeline/stages.py", "defenses"]
STAGE_CODE: dict[str, tuple[int, list[str]]] = {
    "align": (1, _TRAINING),
    "attack": (1, _TRAINING),
    "eval": (1, ["evaluation", "pipeline/evaluations.py", "defenses", "data/batching.py", "models/loading.py"]),
    "trajectory": (2, [*_TRAINING, "evaluation", "analysis/trajectory.py"]),
}


def _sources(paths: list[str]) -> list[Path]:
    out = []
    for rel in paths:
        path = PACKAGE / rel
        out += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return out


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return tree


def code_fingerprint(stage: str) -> str:
    """Hash of the parsed source of a stage's modules (comments and docstrings excluded)."""
    digest = hashlib.sha256()
    for path in _sources(STAGE_CODE[stage][1]):
        digest.update(path.relative_to(PACKAGE).as_posix().encode())
        digest.update(ast.dump(_without_docstrings(ast.parse(path.read_text()))).encode())
    return digest.hexdigest()[:16]


@lru_cache(maxsize=16)
def model_hash(path: str) -> str:
    """Content hash of a base model's directory (a hub id already in the cache: its snapshot)."""
    from panacea_lab.models.loading import resolve_model_path

    where = Path(resolve_model_path(path))
    if not where.is_dir():
        from huggingface_hub import snapshot_download

        where = Path(snapshot_download(path, local_files_only=True))
    return content_sha256(where)


@lru_cache(maxsize=8)
def data_hash(data: str) -> str:
    """The embedded world is code (its version covers it); real data: the fetched files' content."""
    if data == "embedded":
        return "embedded"
    from panacea_lab.paths import data_dir

    manifest = data_dir() / "manifest.json"
    root = data_dir() / ("paper" if data == "beavertails" else "")
    return content_sha256(manifest if data in PACKAGE_DATA and manifest.exists() else root)


def _model_of(cfg) -> ModelConfig:
    return cfg if isinstance(cfg, ModelConfig) else cfg.model if isinstance(cfg, AlignConfig) else cfg.align.model


def key(stage: str, cfg, model: ModelConfig | None = None, data: str | None = None) -> Keyed:
    """`cfg` keyed by the content it depends on. `model` / `data` name the lineage when `cfg` does
    not carry it (an evaluation job)."""
    model = model or _model_of(cfg)
    if data is None:
        data = (cfg.align.data if isinstance(cfg, AttackConfig) else
                cfg.data if isinstance(cfg, AlignConfig) else "embedded")
    version = STAGE_CODE[stage][0]
    return Keyed(cfg, (("base_weights", model_hash(model.path)), ("data", data_hash(data)), ("code", f"{stage}-v{version}")))


def recorded() -> dict:
    return json.loads(FINGERPRINTS.read_text()) if FINGERPRINTS.exists() else {}


def stale_stages() -> list[str]:
    """Stages whose code changed without a version bump (or whose fingerprint is not recorded)."""
    old = recorded()
    return [s for s, (v, _) in STAGE_CODE.items()
            if old.get(s, {}).get("version") == v and old[s].get("fingerprint") != code_fingerprint(s)
            or s not in old]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="check or refresh the stages' code fingerprints")
    parser.add_argument("--update", action="store_true", help="write the current fingerprints")
    args = parser.parse_args(argv)
    current = {s: {"version": v, "fingerprint": code_fingerprint(s)} for s, (v, _) in STAGE_CODE.items()}
    if args.update:
        FINGERPRINTS.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
    print(json.dumps({"stale": stale_stages(), **current}, indent=1))


if __name__ == "__main__":
    main()
