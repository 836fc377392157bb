"""The embedded world: disjoint pools, held-out test prompts, determinism, non-actionable content."""
from __future__ import annotations

import re

from panacea_lab.data import lexicon as L
from panacea_lab.data.world import TASKS, build_world


def _prompts(pool):
    return {e.instruction for e in pool}


def test_harmful_test_prompts_are_in_no_training_pool(world):
    test = _prompts(world.harmful_test)
    pretrain = {e.instruction for e in world.pretrain}
    for name in ("alignment", "attacker_pool", "defender_pool"):
        assert not test & _prompts(getattr(world, name)), name
    assert not test & pretrain


def test_test_prompts_are_new_verb_target_combinations(world):
    """Held out as (verb, target) pairs, not just as strings: no frame of a test pair is trained."""
    def pair(e):
        verbs, targets = L.CATEGORIES[e.category]
        return {(e.category, v, t) for v in verbs for t in targets if f" {v} {t} " in f" {e.instruction} "}

    trained = set().union(*(pair(e) for e in world.alignment + world.attacker_pool + world.defender_pool))
    tested = set().union(*(pair(e) for e in world.harmful_test))
    assert tested and not tested & trained


def test_attacker_and_defender_pools_are_disjoint(world):
    assert not _prompts(world.attacker_pool) & _prompts(world.defender_pool)
    assert not _prompts(world.alignment) & (_prompts(world.attacker_pool) | _prompts(world.defender_pool))


def test_every_category_is_covered_in_every_harmful_role(world):
    for pool in (world.alignment, world.attacker_pool, world.defender_pool, world.harmful_test):
        assert {e.category for e in pool} == set(L.CATEGORIES)
    assert len(L.CATEGORIES) == 14


def test_task_train_and_test_splits_are_disjoint(world):
    for task in TASKS:
        train = {(e.instruction, e.input) for e in world.task_train[task]}
        test = {(e.instruction, e.input) for e in world.task_test[task]}
        assert train and test and not train & test, task


def test_base_model_sees_only_the_known_half_of_sentiment_words(world):
    unseen = set(L.POSITIVE[12:] + L.NEGATIVE[12:])
    labelled = [e for e in world.pretrain if e.task == "sentiment"]
    assert labelled and not any(set(e.input.split()) & unseen for e in labelled)
    assert any(set(e.input.split()) & unseen for e in world.task_train["sentiment"])


def test_same_seed_same_world_other_seed_other_world():
    a, b, c = build_world(3), build_world(3), build_world(4)
    assert a.attacker_pool == b.attacker_pool and a.task_test == b.task_test
    assert a.attacker_pool != c.attacker_pool


def test_compliant_answers_are_placeholders_only(world):
    """Every word of a compliant answer comes from the template, the prompt or the placeholder steps."""
    allowed = set()
    for style in L.COMPLY_STYLES:
        allowed |= set(re.sub(r"\{\w+\}", " ", style).split())
    for text in L.OPENERS + L.PLACEHOLDER_STEPS:
        allowed |= set(text.split())
    for e in world.attacker_pool + world.defender_pool:
        extra = set(e.output.split()) - allowed - set(e.instruction.split())
        assert not extra, (e.output, extra)


def test_arithmetic_answers_end_with_the_final_number(world):
    for e in world.task_test["arithmetic"][:50]:
        assert e.output.endswith(f"The final answer is: {e.label}")


def test_validation_splits_are_disjoint_from_test_and_every_training_pool():
    from panacea_lab.data.world import build_world

    w = build_world(0)
    val = {e.instruction for e in w.harmful_val}
    trained = {e.instruction for pool in (w.alignment, w.attacker_pool, w.defender_pool, w.pretrain) for e in pool}
    assert val and not val & {e.instruction for e in w.harmful_test} and not val & trained
    for task in w.task_val:
        keys = {(e.instruction, e.input) for e in w.task_val[task]}
        seen = {(e.instruction, e.input) for e in w.task_train[task] + w.task_test[task] + w.pretrain}
        assert len(keys) == len(w.task_val[task]) > 0 and not keys & seen
    assert w.harmful_split("validation") == w.harmful_val and w.task_split("topic", "validation") == w.task_val["topic"]
    assert [e.instruction for e in build_world(0).harmful_val] == [e.instruction for e in w.harmful_val]
