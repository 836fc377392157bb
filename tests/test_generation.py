"""Batched greedy generation: equal to one prompt at a time, token for token equal to
`model.generate` while ended rows leave the batch, and FA unchanged by cutting final answers."""
from __future__ import annotations

import pytest
import torch

from panacea_lab.config import ModelConfig
from panacea_lab.evaluation import decoding
from panacea_lab.evaluation.evaluate import generate
from panacea_lab.evaluation.scoring import answer_is_final, decodes_with_spaces, score_task
from panacea_lab.models.loading import load_base, load_tokenizer


@pytest.fixture(scope="module")
def embedded():
    cfg = ModelConfig()
    return load_tokenizer(cfg), load_base(cfg)


def _prompts(world, k=4):
    return (world.harmful_test[:k] + world.task_test["arithmetic"][:k] + world.task_test["sentiment"][:k]
            + world.task_test["instruct"][:k])


def test_batched_equals_one_at_a_time(tiny_cfg, world):
    tok, model = load_tokenizer(tiny_cfg), load_base(tiny_cfg)
    prompts = world.harmful_test[:4] + world.task_test["arithmetic"][:3] + world.task_test["sentiment"][:3]
    lengths = {len(tok(p.instruction + p.input)["input_ids"]) for p in prompts}
    assert len(lengths) > 1  # padding really happens
    batched = generate(model, tok, prompts, max_new_tokens=12, batch_size=10)
    single = [generate(model, tok, [p], max_new_tokens=12, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert all(batched)  # a random model still says something


def _hf_generate(monkeypatch):
    monkeypatch.setattr("panacea_lab.evaluation.evaluate.greedy_rows", decoding.hf_rows)


@pytest.mark.parametrize("adapter", [False, True])
def test_dropping_ended_rows_gives_generates_answers(embedded, world, monkeypatch, adapter):
    """The committed model (answers of many lengths, EOS mid-batch) with and without a LoRA adapter."""
    from panacea_lab.models.loading import attach_lora

    tok, model = embedded
    if adapter:
        model = attach_lora(model, ModelConfig(), seed=0)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.copy_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        model.eval()
    prompts = _prompts(world, 8)
    assert decoding.plain_greedy(model)
    ours = generate(model, tok, prompts, max_new_tokens=40, batch_size=32)
    _hf_generate(monkeypatch)
    reference = generate(model, tok, prompts, max_new_tokens=40, batch_size=32)
    assert ours == reference
    assert len({len(tok(a)["input_ids"]) for a in reference}) > 3  # rows really end at different steps


def test_rows_leave_the_batch_once_ended(embedded, world):
    tok, model = embedded
    rows_per_call = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: rows_per_call.append(kw["input_ids"].shape[0]),
                                           with_kwargs=True)
    try:
        answers = generate(model, tok, world.harmful_test[:6] + world.task_test["sentiment"][:6], 40, 12)
    finally:
        hook.remove()
    longest = max(len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers)
    assert rows_per_call[0] == 12 and min(rows_per_call) < 12  # sentiment rows left early
    assert len(rows_per_call) <= longest + 1  # stopped when the last row ended (EOS), not at 40


def test_a_generation_config_beyond_greedy_uses_generate(embedded, world, monkeypatch):
    import copy

    tok, base = embedded
    model = copy.deepcopy(base)
    model.generation_config.repetition_penalty = 1.5
    assert not decoding.plain_greedy(model)
    prompts = world.harmful_test[:4]
    ours = generate(model, tok, prompts, 20, 4)
    _hf_generate(monkeypatch)
    assert ours == generate(model, tok, prompts, 20, 4)
    assert ours != generate(base, tok, prompts, 20, 4)  # the penalty really changes the answers


@pytest.mark.parametrize("task", ["sentiment", "topic", "instruct"])
def test_cutting_final_answers_keeps_every_score(embedded, world, monkeypatch, task):
    """Perturbed weights make answers ramble; FA row by row is the same with and without the cut,
    through both decoding paths, and some answers are really cut."""
    import copy

    tok, base = embedded
    model = copy.deepcopy(base)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.04)
    spaced = decodes_with_spaces(tok)
    test = world.task_test[task][:48]
    final = [answer_is_final(task, ex.label, spaced) for ex in test]
    whole = generate(model, tok, test, 40, 48)
    cut = generate(model, tok, test, 40, 48, final=final)
    _hf_generate(monkeypatch)
    assert generate(model, tok, test, 40, 48, final=final) == cut
    assert [score_task(task, a, ex.label, spaced) for a, ex in zip(cut, test)] == \
           [score_task(task, a, ex.label, spaced) for a, ex in zip(whole, test)]
    if task == "instruct":
        assert sum(a != b for a, b in zip(cut, whole)) > 5


def test_the_prefill_gives_the_frozen_head_a_contiguous_input(embedded):
    """The prefill's last-position slice reaches the output projection as a contiguous tensor (on a
    frozen weight torch would otherwise copy the weight once per row), with the same logits."""
    tok, model = embedded
    head = model.get_output_embeddings()
    assert not head.weight.requires_grad
    seen = []
    handle = head.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    ids = torch.randint(5, 100, (3, 9))
    try:
        with torch.inference_mode():
            last = model(input_ids=ids, logits_to_keep=1).logits[:, -1]
            full = model(input_ids=ids).logits[:, -1]
    finally:
        handle.remove()
    assert seen == [True, True]
    torch.testing.assert_close(last, full)
