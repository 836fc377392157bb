"""FA scorers: the paper's rules for each benign task, and when a partial answer's score is final.

The rules are those of the authors' evaluation scripts (w-yibo/Panacea agnews/pred_eval.py and
gsm8k/pred_eval.py; its sst2/ folder is git-disl/Booster's, whose agnews/ and gsm8k/ scorers are the
same as Panacea's). Every script takes as prediction the decoded text after the prompt's
"### Response:" up to the next "### Response:", stripped (pred_eval.py:85 of Panacea's agnews/ and
gsm8k/, Booster sst2/pred_eval.py:140); `prediction` does the same on the generated part.

Word-level decoding. The embedded world's tokenizer decodes with a space between every token
("Sci / Tech", "is : 7", "1 , 2"), which would make the official exact matches fail on answers that
are right. When `spaced` is set (evaluation sets it from `decodes_with_spaces(tokenizer)`), the
spacing is undone first (`judges.despace`: no space before punctuation, none around "/" or "'"),
then the official rule applies unchanged; "1 , 2" becomes "1, 2", which the GSM8K rule (commas
dropped) reads as the two numbers 1 and 2, as it would read a real model's "1, 2". A real model's
tokenizer decodes exactly, so `spaced` is False and the rules are the official ones, character for
character.
"""
from __future__ import annotations

import re

from panacea_lab.evaluation.judges import despace, normalize

RESPONSE_MARKER = "### Response:"
ANSWER_PROMPT = "The final answer is: "  # gsm8k/pred_eval.py:27 (trailing space included)
# SST-2: label 1 -> "positive" / "Positive", 0 -> "negative" / "Negative" (Booster sst2/pred_eval.py:154-159).
# AG News: label id -> (label1, label2) (Panacea agnews/pred_eval.py:99-110); note "sci", not "sci/tech".
ACCEPTED = {
    "sentiment": {"positive": ("positive", "Positive"), "negative": ("negative", "Negative")},
    "topic": {"World": ("World", "world"), "Sports": ("Sports", "sports"), "Business": ("Business", "business"),
              "Sci/Tech": ("Sci/Tech", "sci")},
}
_NUMBER = re.compile(r"-?\d+\.?\d*")  # gsm8k/pred_eval.py:101 and :107


def prediction(answer: str, spaced: bool = False) -> str:
    """The official prediction: the answer up to a repeated "### Response:", stripped."""
    text = despace(answer) if spaced else answer
    return text.split(RESPONSE_MARKER)[0].strip()


def accepted_answers(task: str, label: str) -> tuple[str, ...]:
    """The exact predictions the official sentiment / topic scorers count as correct for `label`."""
    try:
        return ACCEPTED[task][label]
    except KeyError:
        raise ValueError(f"{task} label {label!r}: use one of {sorted(ACCEPTED.get(task, {}))}") from None


def extract_answer_number(text: str) -> float:
    """GSM8K's extract_answer_number (Panacea gsm8k/pred_eval.py:98-121), rule for rule.

    Every comma is dropped (thousands separators and list commas alike). With no number anywhere
    the value is inf. Otherwise, when "The final answer is: " occurs, the first number between its
    FIRST occurrence and the next one; when that stretch holds no number (e.g. "The final answer
    is: seven"), the last number of the whole text, as when the marker is absent. The marker is
    case-sensitive and ends in a space, so "the final answer is: 7" or "...is:7" fall back to the
    last number.
    """
    text = text.replace(",", "")
    numbers = _NUMBER.findall(text)
    if not numbers:
        return float("inf")
    segments = text.split(ANSWER_PROMPT)
    if len(segments) > 1:
        after = _NUMBER.findall(segments[1])
        if after:
            return float(after[0])
    return float(numbers[-1])


def extract_number(answer: str, spaced: bool = False) -> float:
    """The number the GSM8K scorer reads from a model's answer (inf when there is none)."""
    return extract_answer_number(prediction(answer, spaced))


def score_task(task: str, answer: str, label: str, spaced: bool = False) -> bool:
    """Whether `answer` is correct under the paper's rule for `task`.

    sentiment / topic: the prediction equals one of the two accepted strings exactly (Booster
    sst2/pred_eval.py:161, Panacea agnews/pred_eval.py:112): "positive ." or "POSITIVE" are wrong.
    arithmetic: the numbers read by extract_answer_number from answer and gold are equal (Panacea
    gsm8k/pred_eval.py:124-129; the gold is read by the same function, so "1,200" and "1200" match).
    instruct: the embedded world's own task (the paper judges AlpacaEval with a model): the
    normalised answer equals the normalised reference.
    """
    if task in ACCEPTED:
        return prediction(answer, spaced) in accepted_answers(task, label)
    if task == "arithmetic":
        return extract_number(answer, spaced) == extract_answer_number(label)
    if task == "instruct":
        return normalize(answer) == normalize(label)
    raise ValueError(f"task = {task!r}: use one of {sorted(ACCEPTED) + ['arithmetic', 'instruct']}")


# ------------------------------------------------------------------------------ early stopping
_VISIBLE_MARKER = "".join(RESPONSE_MARKER.split())


def _visible(text: str) -> str:
    return "".join(text.split())


def answer_is_final(task: str, label: str, spaced: bool = False):
    """A test `partial_answer -> bool`: True once no continuation can change the answer's score;
    None when the task has none (arithmetic: the fallback reads the last number of the whole text).

    Exact-match tasks, in one direction. Decoding appends: a later token changes only whitespace
    (word-level joins, clean-up of spaces before punctuation, `despace`) and an unfinished last
    character (a partial UTF-8 sequence decodes as U+FFFD); this holds for word-level, byte-level
    BPE, SentencePiece and WordPiece decoders. So the visible (non-space) characters of the partial
    answer, less its last character and any ending that could still grow into "### Response:", are
    a prefix of every continuation's. Once they are no prefix of any accepted answer's visible
    characters, every continuation is wrong (the scorers only strip, despace or lower-case), and so
    is the cut answer itself. A complete "### Response:" fixes the prediction, right or wrong.
    """
    if task in ACCEPTED:
        targets, fold = [_visible(a) for a in accepted_answers(task, label)], str
    elif task == "instruct":
        targets, fold = [_visible(normalize(label))], str.lower
    else:
        return None

    def final(answer: str) -> bool:
        text = despace(answer) if spaced or task == "instruct" else answer
        if task in ACCEPTED and RESPONSE_MARKER in text:
            return True
        seen = _visible(fold(text.rstrip("\ufffd")[:-1]))
        if task in ACCEPTED:
            for k in range(len(_VISIBLE_MARKER) - 1, 0, -1):
                if seen.endswith(_VISIBLE_MARKER[:k]):
                    seen = seen[:-k]
                    break
        return not any(t.startswith(seen) for t in targets)

    return final


def decodes_with_spaces(tokenizer) -> bool:
    """True for a tokenizer that decodes "is: 7" as "is : 7" (the embedded world's word level)."""
    probe = "is: 7"
    decoded = tokenizer.decode(tokenizer(probe, add_special_tokens=False)["input_ids"], skip_special_tokens=True)
    return decoded != probe and _visible(decoded) == _visible(probe)
