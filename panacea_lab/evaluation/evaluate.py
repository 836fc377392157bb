"""Batched greedy generation and the two metrics: harmful score (with refusal / other) and FA per task."""
from __future__ import annotations

import re
import time
from collections import Counter

import torch
from tqdm.auto import tqdm

from panacea_lab.data import lexicon as L
from panacea_lab.data.batching import prompt_ids
from panacea_lab.evaluation.judges import LABELS, label_all, make_judge, normalize
from panacea_lab.data.world import Example, World


@torch.no_grad()
def generate(model, tokenizer, examples: list[Example], max_new_tokens: int, batch_size: int,
             desc: str = "generate") -> list[str]:
    """Greedy answers, batched with left padding and the KV cache; order of `examples` is kept.

    Prompts are sorted by length so each batch pads little, then answers are put back in order.
    """
    encoded = [prompt_ids(tokenizer, ex) for ex in examples]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    answers: list[str] = [""] * len(encoded)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, mininterval=2.0):
        idx = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad,
                             eos_token_id=tokenizer.eos_token_id, use_cache=True)
        for row, i in enumerate(idx):
            answers[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True).strip()
    return answers


# ------------------------------------------------------------------------------- task scorers
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def extract_number(answer: str) -> str | None:
    """GSM8K rule of the paper: the number after "The final answer is:", else the last number.

    Thousands separators go first ("1,200" -> "1200"), as GSM8K's scorer does; a comma followed by a
    space (the embedded tokenizer's "1 , 2" -> "1, 2") is a list, not a separator."""
    text = _THOUSANDS.sub("", normalize(answer))
    tail = text.split("the final answer is:")
    found = _NUMBER.findall(tail[-1] if len(tail) > 1 else text)
    if not found:
        return None
    return found[0] if len(tail) > 1 else found[-1]


def score_task(task: str, answer: str, label: str) -> bool:
    """Paper parsing rules: sentiment and topic look for the label word; arithmetic for the number."""
    text = normalize(answer)
    if task == "sentiment":
        other = "negative" if label == "positive" else "positive"
        return label in text and other not in text
    if task == "topic":
        found = [t for t in L.TOPICS if t.lower() in text]
        return found == [label]
    if task == "arithmetic":
        number = extract_number(answer)
        return number is not None and float(number) == float(label)
    return text == normalize(label)  # instruct: exact answer


# ------------------------------------------------------------------------------- full evaluation
def harmful_metrics(labels: list[str]) -> dict[str, float]:
    counts = Counter(labels)
    n = max(1, len(labels))
    return {"HS": 100.0 * counts["harmful"] / n, "refusal": 100.0 * counts["refusal"] / n,
            "other": 100.0 * counts["other"] / n}


def evaluate_model(model, tokenizer, world: World, cfg) -> dict:
    """HS / refusal / other on held-out harmful prompts and FA on each task's test split."""
    t0 = time.perf_counter()
    judge = make_judge(cfg.judge, cfg.judge_model)
    harmful = world.harmful_test[: cfg.n_harmful]
    answers = generate(model, tokenizer, harmful, cfg.max_new_tokens, cfg.batch_size, desc="eval harmful")
    labels = label_all(judge, [ex.instruction for ex in harmful], answers)
    result = {"judge": judge.name, **harmful_metrics(labels), "n_harmful": len(harmful),
              "harmful_by_category": _by_category(harmful, labels),
              "samples": [{"prompt": ex.instruction, "answer": a, "label": lab}  # synthetic world only
                          for ex, a, lab in list(zip(harmful, answers, labels))[:: max(1, len(harmful) // 8)]]}
    fa = {}
    for task in cfg.tasks:
        if task not in world.task_test:  # a real-data world may lack a task (e.g. no AlpacaEval judge)
            continue
        test = world.task_test[task][: cfg.n_task]
        outs = generate(model, tokenizer, test, cfg.max_new_tokens, cfg.batch_size, desc=f"eval {task}")
        fa[task] = 100.0 * sum(score_task(task, o, ex.label) for ex, o in zip(test, outs)) / max(1, len(test))
    result["FA"] = fa
    result["eval_seconds"] = time.perf_counter() - t0
    return result


def _by_category(examples: list[Example], labels: list[str]) -> dict[str, dict[str, float]]:
    out: dict[str, list[str]] = {}
    for ex, lab in zip(examples, labels):
        out.setdefault(ex.category, []).append(lab)
    return {c: harmful_metrics(v) for c, v in sorted(out.items())}


__all__ = ["generate", "evaluate_model", "score_task", "extract_number", "harmful_metrics", "LABELS"]
