"""What an evaluation record holds: sample answers only when asked (the embedded world), and the
harmful prompts of the split the config names."""
from __future__ import annotations

from panacea_lab.config import EvalConfig
from panacea_lab.evaluation.evaluate import evaluate_model
from panacea_lab.models.loading import load_base, load_tokenizer

EVAL = EvalConfig(n_harmful=4, n_task=4, max_new_tokens=6, tasks=("sentiment",), judge="keyword")


def test_samples_are_kept_only_when_asked(tiny_cfg, world):
    tok, model = load_tokenizer(tiny_cfg), load_base(tiny_cfg)
    plain = evaluate_model(model, tok, world, EVAL)
    assert "samples" not in plain  # real harmful prompts' answers never reach the run store by default
    kept = evaluate_model(model, tok, world, EVAL, keep_samples=True)
    assert kept["samples"] and {s["prompt"] for s in kept["samples"]} <= {e.instruction for e in world.harmful_test}
    assert {k: v for k, v in kept.items() if k not in ("samples", "eval_seconds")} == \
           {k: v for k, v in plain.items() if k != "eval_seconds"}


def test_the_validation_split_scores_other_prompts(tiny_cfg, world):
    import dataclasses

    tok, model = load_tokenizer(tiny_cfg), load_base(tiny_cfg)
    val = evaluate_model(model, tok, world, dataclasses.replace(EVAL, split="validation"), keep_samples=True)
    prompts = {s["prompt"] for s in val["samples"]}
    assert prompts <= {e.instruction for e in world.harmful_val}
    assert not prompts & {e.instruction for e in world.harmful_test}
