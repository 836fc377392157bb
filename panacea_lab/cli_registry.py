"""What the command line needs to know of the defense registry, without importing it.

Why: the registry's modules import torch, transformers and peft (about 5 s on 2 cores), and `--help`
or a misspelt flag should answer at once. The parser is built from `cli_registry.json`, a copy of the
registry's command-line facts (each defense's flag, parameter, options and label) written by
`python -m panacea_lab.cli_registry --update`; a test fails when the copy and the registry differ.
The heavy modules are imported only once the arguments are read and a command runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

MANIFEST = Path(__file__).with_name("cli_registry.json")


def from_registry() -> dict:
    """The command-line facts of the live registry (imports every defense)."""
    from panacea_lab import defenses

    records = []
    for name in defenses.names():
        record = defenses.get(name)
        fields = {f.name: f for f in dataclasses.fields(record.config)}
        records.append({
            "name": name, "stage": record.stage, "label": record.label, "flag": record.flag,
            "param": record.param, "sweep": list(record.sweep) if record.sweep is not None else None,
            "config": record.config.__name__, "post_half": record.post_half,
            "options": [{"name": o, "kind": getattr(fields[o].type, "__name__", str(fields[o].type)), "default": fields[o].default}
                        for o in record.options]})
    return {"defenses": records}


@lru_cache(maxsize=1)
def manifest() -> dict:
    return json.loads(MANIFEST.read_text())


def facts() -> dict:
    """The live registry's facts once it is imported anyway (a defense registered in this process, e.g.
    a plug-in, then gets its flags too); the copy otherwise."""
    return from_registry() if "panacea_lab.defenses" in sys.modules else manifest()


def records() -> list[SimpleNamespace]:
    """One record per registered defense, in registration order, with the attributes the flags read."""
    return [SimpleNamespace(**{**r, "options": [SimpleNamespace(**o) for o in r["options"]]})
            for r in facts()["defenses"]]


def label(name: str) -> str:
    return next(r["label"] for r in facts()["defenses"] if r["name"] == name)


def default_half() -> tuple[str, str]:
    """(defense, post-fine-tuning half) exported when the flags name none: the registry's first trained
    defense whose verdict is w + its half."""
    from panacea_lab.config import POST

    first = next(r for r in facts()["defenses"] if r["stage"] != POST and r["post_half"])  # as trained_with_half
    return first["name"], first["post_half"]


def baseline_methods() -> list[str]:
    """`studies.baselines.baseline_methods`, read from the copy: the undefended model, then every
    alignment-stage and fine-tuning-stage defense without a post-fine-tuning half."""
    from panacea_lab.config import ALIGNMENT, FINETUNING, UNDEFENDED

    recs = facts()["defenses"]
    return [UNDEFENDED, *(r["name"] for stage in (ALIGNMENT, FINETUNING) for r in recs
                          if r["stage"] == stage and not r["post_half"])]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="check or rewrite the command line's copy of the registry")
    parser.add_argument("--update", action="store_true", help=f"rewrite {MANIFEST.name} from the registry")
    args = parser.parse_args(argv)
    text = json.dumps(from_registry(), indent=1) + "\n"
    if args.update:
        MANIFEST.write_text(text)
    elif MANIFEST.read_text() != text:
        raise SystemExit(f"{MANIFEST.name} differs from the registry: run `python -m panacea_lab.cli_registry --update`")


if __name__ == "__main__":
    main()
