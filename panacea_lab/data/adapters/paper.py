"""The paper's harmful data (BeaverTails) and where the paper's local files are looked for.

Why local files only: BeaverTails is CC BY-NC and the RepNoise refusal file is hosted outside any
package registry, so panacea-lab never downloads them; a user places them (or has them in a
Hugging Face hub cache) and these readers parse them. Nothing here touches the network: the hub
cache is only read, with `huggingface_hub.try_to_load_from_cache`.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from panacea_lab.data.adapters._io import PAPER_HINT, columns, dedupe, nonempty, read_records, reader, require
from panacea_lab.paths import data_dir
from panacea_lab.data.world import Example


def beavertails_category(category) -> str:
    """The first flagged key of BeaverTails' dict of 14 booleans (RepNoise's rule); "" if none."""
    if isinstance(category, str):
        return category
    if isinstance(category, dict):
        return next((str(k) for k, v in category.items() if v), "")
    return ""


def _unsafe(row: dict) -> bool:
    return not bool(row.get("is_safe", False))


# ------------------------------------------------------------------------- RepNoise's refusal file
class BeaverTailsSets(NamedTuple):
    alignment: list[Example]  # harmful prompt -> refusal (the alignment stage's data)
    harmful: list[Example]  # harmful prompt -> harmful response (attacker's and defender's pools)


def strip_question(refusal: str, prompt: str) -> str:
    """The refusal without its "Question: {prompt}\\nAnswer: " prefix, which the file stores.

    RepNoise's `_clean_refusal` removes that exact prefix; Booster splits on "\\nAnswer: ". We do
    the former and fall back to the latter when the stored question differs from `prompt`.
    """
    start = f"Question: {prompt}\nAnswer: "
    if refusal.startswith(start):
        return refusal[len(start):].strip()
    head, sep, tail = refusal.partition("\nAnswer: ")
    return tail.strip() if sep and head.startswith("Question: ") else refusal.strip()


@reader(PAPER_HINT)
def read_beavertails_refusals(path: str | Path) -> BeaverTailsSets:
    """`beavertails_with_refusals_train.json` (RepNoise; used by Booster/Vaccine/Panacea) -> two sets.

    A JSON array of BeaverTails rows (prompt, response, category, is_safe) with a `refusal` field
    "Question: <prompt>\\nAnswer: <refusal>". Rows marked is_safe are skipped (RepNoise does the
    same): their prompt needs no refusal and their response is not harmful. Same order as the file,
    so "the first 5000" means what it means in the authors' code.
    """
    p = require(path, PAPER_HINT)
    rows = [r for r in read_records(p) if _unsafe(r) and str(r.get("prompt", "")).strip()]
    columns(rows, ("prompt", "response", "refusal"), p)
    nonempty(rows, p, "unsafe rows")

    def sample(r, output):
        return Example(r["prompt"].strip(), "", output, "harmful", category=beavertails_category(r.get("category")))

    alignment = [sample(r, strip_question(str(r["refusal"] or ""), r["prompt"].strip())) for r in rows]
    harmful = [sample(r, str(r["response"] or "").strip()) for r in rows]
    alignment, harmful = [e for e in alignment if e.output], [e for e in harmful if e.output]
    return BeaverTailsSets(nonempty(alignment, p, "refusals"), nonempty(harmful, p, "harmful responses"))


def split_pools(harmful: list[Example], n_defender: int, seed: int = 0,
                n_attacker: int | None = None) -> tuple[list[Example], list[Example]]:
    """(attacker's pool, defender's pool), disjoint by prompt, drawn by a seeded shuffle of prompts.

    Why by prompt: the defender's harmful set must not contain the attacker's samples (Panacea's
    h is computed on a defender-held set), and BeaverTails repeats prompts with other responses.
    The defender takes whole prompt groups until it has `n_defender` samples; the attacker gets
    the remaining groups (only their first `n_attacker` samples when given).
    """
    groups: dict[str, list[Example]] = {}
    for ex in harmful:
        groups.setdefault(ex.instruction, []).append(ex)
    prompts = list(groups)
    random.Random(seed).shuffle(prompts)
    attacker, defender = [], []
    for prompt in prompts:
        (defender if len(defender) < n_defender else attacker).extend(groups[prompt])
    if len(defender) < n_defender or (n_attacker is not None and len(attacker) < n_attacker):
        raise ValueError(f"{len(harmful)} harmful samples ({len(groups)} prompts) cannot give "
                         f"{n_defender} defender + {n_attacker} attacker samples disjoint by prompt")
    return attacker[:n_attacker], defender[:n_defender]


# ------------------------------------------------------------------------- BeaverTails 30k_test
@reader(PAPER_HINT)
def read_beavertails_test(path: str | Path) -> list[Example]:
    """BeaverTails `30k_test` (round0/30k/test.jsonl.gz, or a .json/.jsonl/.parquet export) -> prompts.

    Fields prompt, response, category (dict of 14 booleans), is_safe. We keep is_safe == False,
    one sample per prompt (the first), output = its harmful response, category = first flagged.
    """
    p = require(path, PAPER_HINT)
    rows = read_records(p)
    columns(rows, ("prompt", "is_safe"), p)
    out = [Example(r["prompt"].strip(), "", str(r.get("response") or "").strip(), "harmful",
                   category=beavertails_category(r.get("category")))
           for r in rows if _unsafe(r) and r["prompt"].strip()]
    return nonempty(dedupe(out, key=lambda e: e.instruction), p, "unsafe prompts")


# ------------------------------------------------------------------------- where local files are
@dataclass(frozen=True)
class PaperFile:
    local: tuple[str, ...]  # candidates relative to paper_dir(), first = where to place it
    hub: tuple[tuple[str, str], ...]  # (dataset repo id, file name) in the Hugging Face hub cache
    origin: str  # where a user gets it


_EXPORTS = (".parquet", ".jsonl", ".jsonl.gz", ".json")


def _exports(stem: str, *extra: str) -> tuple[str, ...]:
    return tuple(stem + ext for ext in _EXPORTS) + extra


_BT_REFUSALS = ("https://huggingface.co/datasets/anonymous4486/repnoise_beavertail "
                "(file beavertails_with_refusals_train.json)")
PAPER_FILES: dict[tuple[str, str], PaperFile] = {
    ("beavertails_refusals", "train"): PaperFile(
        ("beavertails_with_refusals_train.json",),
        (("anonymous4486/repnoise_beavertail", "beavertails_with_refusals_train.json"),
         ("anonymous4486/booster_dataset", "beavertails_with_refusals_train.json")), _BT_REFUSALS),
    ("beavertails", "30k_test"): PaperFile(
        _exports("beavertails/30k_test"), (("PKU-Alignment/BeaverTails", "round0/30k/test.jsonl.gz"),),
        "https://huggingface.co/datasets/PKU-Alignment/BeaverTails (round0/30k/test.jsonl.gz)"),
    ("alpaca_eval", "eval"): PaperFile(
        ("alpaca_eval/alpaca_eval.json",), (("tatsu-lab/alpaca_eval", "alpaca_eval.json"),),
        "https://huggingface.co/datasets/tatsu-lab/alpaca_eval (alpaca_eval.json)"),
}
for _split, _glue in (("train", "SST-2/train.tsv"), ("validation", "SST-2/dev.tsv")):
    PAPER_FILES[("sst2", _split)] = PaperFile(
        _exports(f"sst2/{_split}", _glue), (("stanfordnlp/sst2", f"data/{_split}-00000-of-00001.parquet"),),
        "https://huggingface.co/datasets/stanfordnlp/sst2 or GLUE's SST-2.zip")
for _split in ("train", "test"):
    PAPER_FILES[("ag_news", _split)] = PaperFile(
        _exports(f"ag_news/{_split}", f"ag_news/{_split}.csv"),
        (("fancyzhx/ag_news", f"data/{_split}-00000-of-00001.parquet"),),
        "https://huggingface.co/datasets/fancyzhx/ag_news or the original ag_news_csv")
    PAPER_FILES[("gsm8k", _split)] = PaperFile(
        _exports(f"gsm8k/{_split}"), (("openai/gsm8k", f"main/{_split}-00000-of-00001.parquet"),),
        "https://huggingface.co/datasets/openai/gsm8k or github.com/openai/grade-school-math")


def paper_dir() -> Path:
    """Where a user places the paper's files: $PANACEA_HOME/data/paper (never the repository)."""
    return data_dir() / "paper"


def _hub_cached(repo_id: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache  # reads the cache only, never the network

    found = try_to_load_from_cache(repo_id, filename, repo_type="dataset")
    return Path(found) if isinstance(found, str) and Path(found).exists() else None


def find_paper_file(name: str, split: str) -> Path:
    """The local copy of one of the paper's files: under paper_dir(), else in the hub cache."""
    if (name, split) not in PAPER_FILES:
        raise KeyError(f"unknown paper file {name}/{split}; known: {sorted(PAPER_FILES)}")
    spec = PAPER_FILES[(name, split)]
    for rel in spec.local:
        if (paper_dir() / rel).exists():
            return paper_dir() / rel
    for repo_id, filename in spec.hub:
        if (hit := _hub_cached(repo_id, filename)) is not None:
            return hit
    raise FileNotFoundError(
        f"{name} ({split}) not found: get it from {spec.origin} and place it at {paper_dir() / spec.local[0]} "
        f"(or any of {', '.join(spec.local)} there), or have it in the Hugging Face hub cache "
        f"({', '.join(f'{r}:{f}' for r, f in spec.hub)}); panacea-lab never downloads it. See data/README.md.")
