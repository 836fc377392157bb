"""The run store's keys by content: a stage's config plus hashes of the base weights, the data and
the code that computes the stage. No number is bumped by hand: the content is the key.

- the stage's loop: `STAGE_CODE` names the modules every run of a stage runs (of `defenses/`, only
  the generic plumbing: the package and its registry); the key holds a hash of their parsed source
  (comments and docstrings do not count), so any change to that code recomputes the stage's runs;
- each defense the config names, anywhere in its lineage (an attack's alignment defense, the
  post-fine-tuning transform of an evaluation): the parsed source of the module that defines its
  config class plus the `panacea_lab.defenses` modules it imports, transitively, in the input
  "defense_code"; editing one defense recomputes only the runs that use it. An undefended run has no
  such input;
- the data: the embedded world's source, or every file a package-data world reads (the fetched files
  themselves, not their manifest) plus the code that turns them into examples.
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import sys
from functools import lru_cache
from pathlib import Path

from panacea_lab.config import AlignConfig, AttackConfig, DefenseConfig, ModelConfig
from panacea_lab.hashing import dir_sha256
from panacea_lab.training.store import Keyed, content_sha256

PACKAGE = Path(__file__).resolve().parent.parent
_TRAINING = ["training/loop.py", "training/loss.py", "data/batching.py", "data/world.py", "data/lexicon.py",
             "data/real_world.py", "data/adapters", "models/loading.py", "pipeline/context.py", "pipeline/stages.py"]
# What of defenses/ every run imports: the registry the stages look a defense up in (each defense's own
# code is keyed per run, by `defense_code`); the trajectory also calls perturb.py's `applied` itself.
_PLUMBING = ["defenses/__init__.py", "defenses/registry.py"]
STAGE_CODE: dict[str, list[str]] = {
    "align": [*_TRAINING, *_PLUMBING],
    "attack": [*_TRAINING, *_PLUMBING],
    "eval": ["evaluation", "pipeline/evaluations.py", *_PLUMBING, "data/batching.py", "models/loading.py"],
    "trajectory": [*_TRAINING, *_PLUMBING, "evaluation", "studies/trajectory.py", "defenses/perturb.py"],
}
_WORLD_CODE = {"embedded": ["data/world.py", "data/lexicon.py"], "files": ["data/real_world.py", "data/adapters"]}
DEFENSES = "panacea_lab.defenses"
_GENERIC = {DEFENSES, f"{DEFENSES}.registry"}  # keyed with the stage's loop, not with each defense


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


def _read_source(path: Path) -> str:
    return path.read_text()


@lru_cache(maxsize=None)
def source_fingerprint(paths: tuple[str, ...]) -> str:
    """Hash of the parsed source of modules (files or folders under the package; comments and
    docstrings excluded, so only a change that can alter a result counts). Read once per process: a
    process runs the code it imported, so a file edited while it runs must not change its keys."""
    digest = hashlib.sha256()
    for path in _sources(list(paths)):
        digest.update(path.relative_to(PACKAGE).as_posix().encode())
        digest.update(_parsed(_read_source(path))[0].encode())
    return digest.hexdigest()[:16]


def code_fingerprint(stage: str) -> str:
    """Hash of the code every run of `stage` runs."""
    return source_fingerprint(tuple(STAGE_CODE[stage]))


@lru_cache(maxsize=256)
def _parsed(text: str) -> tuple[str, tuple[tuple[int, str, tuple[str, ...]], ...]]:
    """(hash of the docstring-free AST, every import as (level, module, names)) of one source text."""
    tree = ast.parse(text)
    imports = tuple((0, "", tuple(a.name for a in n.names)) if isinstance(n, ast.Import)
                    else (n.level, n.module or "", tuple(a.name for a in n.names))
                    for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)))
    # unparsed, not ast.dump: the dump's fields change between Python versions, the code's text does not
    return hashlib.sha256(ast.unparse(_without_docstrings(tree)).encode()).hexdigest(), imports


def _module_file(name: str) -> Path | None:
    """The source file of a module (None: not a module, or one without a .py file, e.g. a notebook's)."""
    file = getattr(sys.modules.get(name), "__file__", None)
    if file is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        file = spec.origin if spec is not None and spec.has_location else None
    return Path(file) if file and file.endswith(".py") else None


def _defense_imports(name: str, path: Path, imports) -> set[str]:
    """The non-generic `panacea_lab.defenses` modules among a module's imports (any depth, lazy ones too)."""
    out = set()
    for level, module, names in imports:
        if level:
            package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            try:
                module = importlib.util.resolve_name("." * level + module, package)
            except (ImportError, ValueError):
                continue
        candidates = names if level == 0 and module == "" else [module]  # `import a.b` / `from a import b`
        if module == DEFENSES:
            candidates = [f"{DEFENSES}.{n}" for n in names]
        out |= {c for c in candidates if c.startswith(DEFENSES + ".") and c not in _GENERIC and _module_file(c)}
    return out


def clear_fingerprints() -> None:
    """Forget the code hashes read so far (tests that edit code between two keys)."""
    source_fingerprint.cache_clear()
    defense_fingerprint.cache_clear()


@lru_cache(maxsize=None)
def defense_fingerprint(cls: type) -> str:
    """Hash of the code of a defense: the module defining its config class and, transitively, the
    `panacea_lab.defenses` modules that module imports (registry and package excluded: generic).
    A module without a source file (defined interactively) counts by its name alone."""
    todo, codes = [cls.__module__], {}
    while todo:
        name = todo.pop()
        if name in codes:
            continue
        path = _module_file(name)
        codes[name] = "no source"
        if path is not None:
            codes[name], imports = _parsed(_read_source(path))
            todo += sorted(_defense_imports(name, path, imports))
    digest = hashlib.sha256()
    for name in sorted(codes):
        digest.update(f"{name}\0{codes[name]}\0".encode())
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


def data_hash(data: str) -> str:
    """The embedded world: its source. Real data: every file the world reads (the fetched files, not
    their manifest, so an edited file changes the key) and the code that reads them."""
    if data == "embedded":
        return "embedded:" + source_fingerprint(tuple(_WORLD_CODE["embedded"]))
    from panacea_lab.paths import data_dir

    root = data_dir() / "paper" if data == "beavertails" else data_dir()
    if not root.is_dir():
        raise FileNotFoundError(f"no {data} data in {root}: run `panacea-lab fetch-data` (or set PANACEA_HOME)")
    def read_by_the_world(name: str) -> bool:  # not the manifest, nor a fetch's staging and temp files
        return name != "manifest.json" and (data == "beavertails" or not name.startswith("paper/")) \
            and not any(part.startswith(".") for part in name.split("/"))

    return f"{dir_sha256(root, read_by_the_world)}:{source_fingerprint(tuple(_WORLD_CODE['files']))}"


def _model_of(cfg) -> ModelConfig:
    return cfg if isinstance(cfg, ModelConfig) else cfg.model if isinstance(cfg, AlignConfig) else cfg.align.model


def _as_defense(value: dict) -> type | None:
    """The config class of a defense written by `to_dict` ({"name": ..., its fields}), else None
    (an evaluation job holds its target's lineage in that form)."""
    cls = DefenseConfig._classes.get(value.get("name")) if isinstance(value.get("name"), str) else None
    fields = {f.name for f in dataclasses.fields(cls)} if cls is not None else set()
    return cls if cls is not None and set(value) - {"name"} <= fields else None


def defenses_named(cfg) -> dict[str, type]:
    """Name -> config class of every defense anywhere in a config tree (dataclass fields, tuples,
    lists and dicts, recursively)."""
    out, todo = {}, [cfg]
    while todo:
        node = todo.pop()
        if isinstance(node, DefenseConfig):
            out[node.name] = type(node)
        if dataclasses.is_dataclass(node) and not isinstance(node, type):
            todo += [getattr(node, f.name) for f in dataclasses.fields(node)]
        elif isinstance(node, (list, tuple)):
            todo += list(node)
        elif isinstance(node, dict):
            cls = _as_defense(node)
            if cls is not None:
                out[cls.name] = cls
            todo += list(node.values())
    return out


def key(stage: str, cfg, model: ModelConfig | None = None, data: str | None = None) -> Keyed:
    """`cfg` keyed by the content it depends on. `model` / `data` name the lineage when `cfg` does
    not carry it (an evaluation job). The code of each defense it names joins the key; an
    undefended config's key has no such input."""
    model = model or _model_of(cfg)
    if data is None:
        data = (cfg.align.data if isinstance(cfg, AttackConfig) else
                cfg.data if isinstance(cfg, AlignConfig) else "embedded")
    inputs = (("base_weights", model_hash(model.path)), ("data", data_hash(data)),
              ("code", f"{stage}:{code_fingerprint(stage)}"))
    named = defenses_named(cfg)
    if named:
        inputs += (("defense_code", ",".join(f"{n}:{defense_fingerprint(c)}" for n, c in sorted(named.items()))),)
    return Keyed(cfg, inputs)
