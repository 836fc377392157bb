"""Batched greedy generation and the two metrics: harmful score (with refusal / other) and FA per task."""
from __future__ import annotations

import time
from collections import Counter

import torch
from tqdm.auto import tqdm

from panacea_lab.data.batching import prompt_ids
from panacea_lab.data.world import Example, World
from panacea_lab.evaluation.decoding import Final, greedy_rows, hf_rows, plain_greedy
from panacea_lab.evaluation.judges import LABELS, KeywordJudge, OracleJudge, label_all
from panacea_lab.evaluation.moderation import BEAVER_DAM_ID, BeaverDamJudge
from panacea_lab.evaluation.scoring import answer_is_final, decodes_with_spaces, extract_number, score_task


def make_judge(name: str, model_path: str = ""):
    """A judge by name; `model_path` locates a model judge's weights (beaver-dam: its default hub id)."""
    if name == "beaver-dam":
        return BeaverDamJudge.load(model_path or BEAVER_DAM_ID)
    judges = {"oracle": OracleJudge, "keyword": KeywordJudge}
    if name not in judges:
        raise ValueError(f"judge = {name!r}: use one of {sorted(judges) + ['beaver-dam']}")
    return judges[name]()


def generate(model, tokenizer, examples: list[Example], max_new_tokens: int, batch_size: int,
             desc: str = "generate", final: list[Final | None] | None = None) -> list[str]:
    """Greedy answers, batched with left padding and the KV cache; order of `examples` is kept.

    Prompts are sorted by length so each batch pads little, then answers are put back in order.
    On the CPU a row leaves its batch when it ends (`decoding.greedy_rows`); elsewhere, or when the
    model's generation config asks for more than plain greedy decoding, `model.generate` runs the
    batch until every row has ended. `final[i]`, when given, says when example i's partial answer
    already has its final score: that row ends there, its answer cut, its score the same.
    """
    encoded = [prompt_ids(tokenizer, ex) for ex in examples]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    answers: list[str] = [""] * len(encoded)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    # On the CPU the tests hold the answers token for token to generate's; a GPU may pick other
    # kernels for other batch sizes (a near-tie could flip), and gains little from smaller batches.
    rows_of = greedy_rows if device.type == "cpu" and plain_greedy(model) else hf_rows

    def decode(ids) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, mininterval=2.0):
        idx = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]):] = 1
        finals = None if final is None else [final[i] for i in idx]
        out = rows_of(model, ids.to(device), mask.to(device), max_new_tokens, tokenizer.eos_token_id, pad,
                      finals, decode)
        for row, i in enumerate(idx):
            answers[i] = decode(out[row]).strip()
    return answers


# ------------------------------------------------------------------------------- full evaluation
def harmful_metrics(labels: list[str]) -> dict[str, float]:
    counts = Counter(labels)
    n = max(1, len(labels))
    return {"HS": 100.0 * counts["harmful"] / n, "refusal": 100.0 * counts["refusal"] / n,
            "other": 100.0 * counts["other"] / n}


def evaluate_model(model, tokenizer, world: World, cfg, keep_samples: bool = False) -> dict:
    """HS / refusal / other on held-out harmful prompts (`cfg.split`: test, or validation for
    choosing settings) and FA on each task's test split.

    `keep_samples` adds a few (prompt, answer, label) triples of the harmful evaluation to the
    result, which the run store writes to disk: pass True only for the embedded world, whose
    prompts and answers are synthetic placeholders. A real-data world's harmful answers are kept
    out of the record unless the caller asks for them."""
    t0 = time.perf_counter()
    judge = make_judge(cfg.judge, cfg.judge_model)
    harmful = world.harmful_split(getattr(cfg, "split", "test"))[: cfg.n_harmful]
    # a row whose label is decided (a refusal, for the keyword and oracle judges) ends there; kept
    # samples are shown to readers, so their answers are generated in full
    final = None if keep_samples or not hasattr(judge, "final") else [judge.final] * len(harmful)
    answers = generate(model, tokenizer, harmful, cfg.max_new_tokens, cfg.batch_size, desc="eval harmful",
                       final=final)
    labels = label_all(judge, [ex.instruction for ex in harmful], answers)
    result = {"judge": judge.name, **harmful_metrics(labels), "n_harmful": len(harmful),
              "harmful_by_category": _by_category(harmful, labels)}
    if keep_samples:
        every = max(1, len(harmful) // 8)
        result["samples"] = [{"prompt": ex.instruction, "answer": a, "label": lab}
                             for ex, a, lab in list(zip(harmful, answers, labels))[::every]]
    spaced = decodes_with_spaces(tokenizer)
    fa = {}
    for task in cfg.tasks:
        split = world.task_split(task, getattr(cfg, "split", "test"))
        if not split:  # a real-data world may lack a task (e.g. no AlpacaEval judge) or a validation split
            continue
        test = split[: cfg.n_task]
        final = [answer_is_final(task, ex.label, spaced) for ex in test]
        outs = generate(model, tokenizer, test, cfg.max_new_tokens, cfg.batch_size, desc=f"eval {task}", final=final)
        fa[task] = 100.0 * sum(score_task(task, o, ex.label, spaced) for ex, o in zip(test, outs)) / max(1, len(test))
    result["FA"] = fa
    result["eval_seconds"] = time.perf_counter() - t0
    return result


def _by_category(examples: list[Example], labels: list[str]) -> dict[str, dict[str, float]]:
    out: dict[str, list[str]] = {}
    for ex, lab in zip(examples, labels):
        out.setdefault(ex.category, []).append(lab)
    return {c: harmful_metrics(v) for c, v in sorted(out.items())}


__all__ = ["generate", "evaluate_model", "score_task", "extract_number", "harmful_metrics", "LABELS"]
