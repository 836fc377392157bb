"""A world from real data (here: fetch-data's files in their upstream formats, filled synthetically)
keeps every role disjoint and runs through the same stages as the embedded one."""
from __future__ import annotations

import dataclasses

import pytest

from panacea_lab.config import AlignConfig, AttackConfig, ConfigError, EvalConfig
from panacea_lab.evaluation.judges import has_refusal
from panacea_lab.testing import write_package_data


@pytest.fixture
def package_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PANACEA_HOME", str(tmp_path / "home"))
    write_package_data(tmp_path / "home" / "data")
    from panacea_lab.pipeline.context import get_world

    get_world.cache_clear()
    yield tmp_path / "home"
    get_world.cache_clear()


def _prompts(pool):
    return {ex.instruction for ex in pool}


def test_packages_world_keeps_every_role_disjoint(package_home):
    from panacea_lab.data.real_world import REFUSAL_STYLES, build_real_world

    w = build_real_world("packages", seed=0)
    align, attack, defend, test = (_prompts(x) for x in (w.alignment, w.attacker_pool, w.defender_pool, w.harmful_test))
    assert align and attack and defend and test
    assert not (align & attack) and not (align & defend) and not (attack & defend)
    assert not (test & (align | attack | defend))  # held out: HS is measured on unseen prompts
    assert all(ex.output in REFUSAL_STYLES and has_refusal(ex.output) for ex in w.alignment)
    assert all(ex.output and not has_refusal(ex.output) for ex in w.attacker_pool + w.defender_pool)
    assert set(w.task_train) == {"sentiment", "arithmetic"}
    for task in w.task_train:
        train, tst = w.task_train[task], w.task_test[task]
        replay = [ex for ex in w.pretrain if ex.task == task]
        keys = [{(e.instruction, e.input) for e in part} for part in (train, tst, replay)]
        assert all(keys) and not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert build_real_world("packages", seed=0).attacker_pool == w.attacker_pool  # same seed, same world
    assert build_real_world("packages", seed=1).attacker_pool != w.attacker_pool


def test_the_reviews_world_shares_the_harmful_roles_and_swaps_only_the_task(package_home):
    from panacea_lab.data.adapters import load
    from panacea_lab.data.real_world import build_real_world

    bigbench, reviews = build_real_world("packages", seed=0), build_real_world("packages-rt", seed=0)
    for role in ("alignment", "attacker_pool", "defender_pool", "harmful_test", "harmful_val"):
        assert getattr(reviews, role) == getattr(bigbench, role), role  # a task swap changes no harmful number's prompts
    assert set(reviews.task_train) == {"sentiment"}
    texts = {ex.input for ex in load("rotten_tomatoes")}
    held = reviews.task_train["sentiment"] + reviews.task_test["sentiment"] + reviews.task_val["sentiment"]
    assert {ex.input for ex in held} <= texts and len(held) > 0
    assert not {ex.input for ex in reviews.task_train["sentiment"]} & {ex.input for ex in reviews.task_test["sentiment"]}


def test_every_package_world_has_its_tasks_and_a_builder(package_home):
    from panacea_lab.config import DATA_SOURCES, PACKAGE_DATA
    from panacea_lab.data.real_world import PACKAGE_TASKS, build_real_world

    assert set(PACKAGE_TASKS) == set(PACKAGE_DATA) and set(PACKAGE_DATA) <= set(DATA_SOURCES)
    for name in PACKAGE_DATA:
        assert set(build_real_world(name, seed=0).task_train) == set(PACKAGE_TASKS[name]), name


def test_validation_and_second_test_set_are_held_out_and_the_test_prefix_keeps_its_order(package_home):
    from panacea_lab.data.adapters import load
    from panacea_lab.data.real_world import N_VAL, build_real_world

    w = build_real_world("packages", seed=0)
    trained = _prompts(w.alignment + w.attacker_pool + w.defender_pool)
    test, val, second = _prompts(w.harmful_test), _prompts(w.harmful_val), _prompts(w.harmful_split("strongreject"))
    assert len(val) == N_VAL and val and second
    assert not (val & test) and not (second & (test | val)) and not ((val | second) & trained)
    advbench = [ex for ex in load("advbench") if ex.instruction not in trained]
    assert sorted(map(repr, w.harmful_test + w.harmful_val)) == sorted(map(repr, advbench))  # nothing lost
    half = len(advbench) // 2
    assert w.harmful_test[:half] == advbench[:half]  # an evaluation's first n prompts (n <= half) are unchanged
    assert w.harmful_split("validation") == w.harmful_val and w.task_split("sentiment", "strongreject") == \
        w.task_test["sentiment"]
    for task, val in w.task_val.items():  # FA is chosen on samples the test split no longer holds
        keys = [{(e.instruction, e.input) for e in part} for part in (val, w.task_test[task], w.task_train[task])]
        assert len(val) == N_VAL and not (keys[0] & keys[1]) and not (keys[0] & keys[2])
    with pytest.raises(ValueError, match="no such set"):
        w.harmful_split("harmbench")


def test_missing_fetched_data_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PANACEA_HOME", str(tmp_path / "empty"))
    from panacea_lab.data.real_world import build_real_world

    with pytest.raises(FileNotFoundError, match="fetch-data"):
        build_real_world("packages")


def test_a_missing_bigbench_task_points_to_the_reviews_world(package_home):
    from panacea_lab.data.adapters import default_path
    from panacea_lab.data.real_world import build_real_world

    default_path("multiemo").unlink()  # what a fresh machine has: fetch-data skipped bigbench
    with pytest.raises(FileNotFoundError, match="multiemo.*data = 'packages-rt'.*--from-dir"):
        build_real_world("packages")
    assert build_real_world("packages-rt").task_train["sentiment"]


def test_real_data_needs_the_uniform_prevalence(tiny_cfg):
    with pytest.raises(ConfigError, match="uniform"):
        AlignConfig(model=tiny_cfg, data="packages")
    with pytest.raises(ConfigError, match="data"):
        AlignConfig(model=tiny_cfg, data="somewhere", prevalence="uniform")


def test_the_data_source_is_part_of_the_key(tiny_cfg):
    from panacea_lab.config import config_hash

    plain = AlignConfig(model=tiny_cfg)
    assert config_hash(plain) != config_hash(dataclasses.replace(plain, data="packages", prevalence="uniform"))


@pytest.mark.slow
def test_align_attack_evaluate_on_real_data(package_home, tiny_cfg, tmp_path):
    from panacea_lab.pipeline import align, attack, evaluate
    from panacea_lab.pipeline.context import world_of
    from panacea_lab.training.store import RunStore

    store = RunStore(tmp_path / "runs")
    align_cfg = AlignConfig(model=tiny_cfg, data="packages", prevalence="uniform", n_refusal=16,
                            n_replay_per_task=4, epochs=1)
    eval_cfg = EvalConfig(n_harmful=6, n_task=6, judge="keyword")  # every task; the world has two
    attack_cfg = AttackConfig(align=align_cfg, n=20, p=0.2, epochs=1)
    align(align_cfg, store)
    result = attack(attack_cfg, store)
    assert result["train"]["steps"] == 2  # n = 20 at batch 10, one epoch
    ev = evaluate("attack", attack_cfg, store, eval_cfg)
    assert set(ev["FA"]) == {"sentiment", "arithmetic"}  # tasks the world lacks are skipped
    assert ev["n_harmful"] == 6 and ev["HS"] + ev["refusal"] + ev["other"] == pytest.approx(100.0)
    assert "samples" not in ev  # no model output on real harmful prompts is kept
    categories = {ex.category for ex in world_of(align_cfg).harmful_test[:6]}
    assert set(ev["harmful_by_category"]) == categories  # scored on the real world's prompts
    base = evaluate("base", tiny_cfg, store, eval_cfg, data="packages")
    embedded_base = evaluate("base", tiny_cfg, store, dataclasses.replace(eval_cfg, tasks=("sentiment",)))
    assert set(base["harmful_by_category"]) == categories != set(embedded_base["harmful_by_category"])
    assert embedded_base["samples"]  # the synthetic world keeps a few for reading


def test_the_reviews_world_trains_and_scores_its_one_task_under_its_own_keys(package_home, tiny_cfg, tmp_path):
    from panacea_lab.pipeline import align, attack, evaluate
    from panacea_lab.training.store import RunStore

    store = RunStore(tmp_path / "runs")
    align_cfg = AlignConfig(model=tiny_cfg, data="packages-rt", prevalence="uniform", n_refusal=16,
                            n_replay_per_task=4, epochs=1)
    attack_cfg = AttackConfig(align=align_cfg, n=20, p=0.2, epochs=1)
    align(align_cfg, store)
    assert attack(attack_cfg, store)["train"]["steps"] == 2
    ev = evaluate("attack", attack_cfg, store, EvalConfig(n_harmful=6, n_task=6, judge="keyword"))
    assert set(ev["FA"]) == {"sentiment"}  # no arithmetic in this world
    keys = {d.name for d in (tmp_path / "runs" / "attack").iterdir() if not d.name.startswith(".")}
    bigbench = dataclasses.replace(attack_cfg, align=dataclasses.replace(align_cfg, data="packages"))
    assert len(keys) == 1 and store.load("attack", bigbench) is None  # the two worlds never share a result


def test_beavertails_world_splits_the_refusal_file_by_prompt(tmp_path, monkeypatch):
    from panacea_lab.data.real_world import beavertails_world
    from panacea_lab.testing import write_paper_data

    monkeypatch.setenv("PANACEA_HOME", str(tmp_path))
    write_paper_data(tmp_path / "data")
    w = beavertails_world(seed=0, n_defender=100)
    align, attack, defend, test = (_prompts(x) for x in (w.alignment, w.attacker_pool, w.defender_pool, w.harmful_test))
    assert len(defend) == 100 and attack and align and test
    assert not (align & attack) and not (align & defend) and not (attack & defend) and not (test & attack)
    assert all(ex.output == "I'm sorry, I can't help." for ex in w.alignment)  # "Question: ...\nAnswer: " stripped
    assert set(w.task_train) == {"sentiment"}  # AG News and GSM8K are optional and absent here
    assert w.task_test["sentiment"] and all(ex.label in ("positive", "negative") for ex in w.task_test["sentiment"])
