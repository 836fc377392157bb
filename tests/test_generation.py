"""Batched, left-padded greedy generation equals one-prompt-at-a-time generation."""
from __future__ import annotations

from panacea_lab.evaluation.evaluate import generate
from panacea_lab.models.loading import load_base, load_tokenizer


def test_batched_equals_one_at_a_time(tiny_cfg, world):
    tok, model = load_tokenizer(tiny_cfg), load_base(tiny_cfg)
    prompts = world.harmful_test[:4] + world.task_test["arithmetic"][:3] + world.task_test["sentiment"][:3]
    lengths = {len(tok(p.instruction + p.input)["input_ids"]) for p in prompts}
    assert len(lengths) > 1  # padding really happens
    batched = generate(model, tok, prompts, max_new_tokens=12, batch_size=10)
    single = [generate(model, tok, [p], max_new_tokens=12, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert all(batched)  # a random model still says something
