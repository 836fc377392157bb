"""Template, response-only labels, poison mixing, batching."""
from __future__ import annotations

import hashlib
import json

import pytest

from panacea_lab.models.base_model import build_tokenizer
from panacea_lab.data.batching import (
    IGNORE_INDEX,
    BatchStream,
    encode,
    format_prompt,
    mix_user_data,
    prompt_ids,
)


@pytest.fixture(scope="module")
def tok(world):
    return build_tokenizer(world.all_texts())


def test_alpaca_template_with_and_without_input(world):
    with_input = format_prompt(world.task_train["sentiment"][0])
    assert with_input.startswith("Below is an instruction that describes a task, paired with an input")
    assert "### Input:\n" in with_input and with_input.endswith("### Response:\n")
    plain = format_prompt(world.attacker_pool[0])
    assert "### Input:" not in plain and plain.endswith("### Response:\n")


def test_alpaca_ids_are_unchanged_for_the_embedded_model(tok, world):
    """Stored results are keyed by config, not by token ids: the default template must keep producing
    the ids it produced before the chat template existed (fingerprint taken before that change)."""
    from panacea_lab.config import ModelConfig
    from panacea_lab.models.loading import load_tokenizer

    embedded = load_tokenizer(ModelConfig())
    assert embedded.panacea_template == "alpaca" and not hasattr(tok, "panacea_template")
    examples = world.harmful_test[:50] + [e for t in sorted(world.task_train) for e in world.task_train[t][:50]]
    for t in (embedded, tok):  # the template recorded by load_tokenizer, and no template recorded at all
        rows = [[prompt_ids(t, e), encode(t, e, 96)] for e in examples]
        assert rows[0][0][:12] == [660, 661, 134, 639, 618, 390, 167, 587, 9, 131, 418, 9]
        digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
        assert digest == "f1de5236b083c8c79401f39e182e7dc41af087f3c99f6f98f8c2bd36be356088"


def test_loss_sees_only_the_response(tok, world):
    ex = world.task_train["topic"][0]
    row = encode(tok, ex, 200)
    n_prompt = sum(1 for x in row["labels"] if x == IGNORE_INDEX)
    response = [t for t in row["labels"] if t != IGNORE_INDEX]
    assert tok.decode(response, skip_special_tokens=True).strip() == ex.output
    assert response[-1] == tok.eos_token_id
    assert row["input_ids"][n_prompt:] == response


@pytest.mark.parametrize("p,n", [(0.0, 100), (0.01, 1000), (0.05, 1000), (0.1, 333), (0.2, 1000), (1.0, 50)])
def test_mix_has_exactly_round_p_n_harmful(world, p, n):
    data = mix_user_data(world.task_train["sentiment"], world.attacker_pool, n, p, seed=1)
    assert len(data) == n
    assert sum(e.task == "harmful" for e in data) == round(p * n)


def test_mix_is_shuffled_and_seeded(world):
    a = mix_user_data(world.task_train["sentiment"], world.attacker_pool, 200, 0.5, seed=1)
    assert a == mix_user_data(world.task_train["sentiment"], world.attacker_pool, 200, 0.5, seed=1)
    assert a != mix_user_data(world.task_train["sentiment"], world.attacker_pool, 200, 0.5, seed=2)
    assert any(e.task == "harmful" for e in a[:50]) and any(e.task == "harmful" for e in a[150:])


def test_mix_refuses_more_harmful_than_the_pool_holds(world):
    with pytest.raises(ValueError, match="attacker's pool"):
        mix_user_data(world.task_train["sentiment"], world.attacker_pool[:5], 100, 0.1, seed=0)


def test_empty_dataset_is_refused(tok):
    with pytest.raises(ValueError, match="empty dataset"):
        BatchStream([], 4, tok.pad_token_id, 0)


def test_batches_cover_each_row_once_per_epoch(tok, world):
    rows = [encode(tok, e, 96) for e in world.task_train["instruct"][:23]]
    stream = BatchStream(rows, 5, tok.pad_token_id, seed=0)
    batches = list(stream.epoch())
    assert len(batches) == stream.steps_per_epoch() == 5
    assert sum(b.input_ids.shape[0] for b in batches) == 23
    assert int(sum(b.attention_mask.sum() for b in batches)) == sum(len(r["input_ids"]) for r in rows)
