"""The embedded synthetic "instruction world": every data role of the paper, built from templates.

Why synthetic: the default tier must run in minutes on a laptop CPU, never download anything and
never ship real harmful text. Harmful prompts name generic, BeaverTails-like categories; compliant
answers are non-actionable placeholders ("do the first thing"), never instructions.

Why the benign tasks are split into a *known* and an *unseen* half: on real LLMs the user's
fine-tuning teaches something (FA rises above the aligned model's level). The base model is
pretrained on the known half only, so its FA is partial and fine-tuning has work to do.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

from panacea_lab.config import TASKS
from panacea_lab.data import lexicon as L



@dataclass(frozen=True)
class Example:
    """One instruction-following sample (Alpaca fields) plus where it came from."""

    instruction: str
    input: str
    output: str
    task: str
    category: str = ""  # harmful category, "" for benign samples
    label: str = ""  # gold answer used by the task scorer


@dataclass
class World:
    alignment: list[Example]  # harmful prompt -> refusal (BeaverTails "safe" role)
    attacker_pool: list[Example]  # harmful prompt -> compliance, mixed into the user's data
    defender_pool: list[Example]  # disjoint harmful pool the defender trains against
    harmful_test: list[Example]  # held-out harmful prompts (template combinations never trained on)
    task_train: dict[str, list[Example]] = field(default_factory=dict)
    task_test: dict[str, list[Example]] = field(default_factory=dict)
    pretrain: list[Example] = field(default_factory=list)  # unaligned base-model corpus
    # held-out harmful prompts disjoint from harmful_test and every training pool: the split that
    # calibrations choose settings on, so the reported test numbers never inform a choice
    harmful_val: list[Example] = field(default_factory=list)
    task_val: dict[str, list[Example]] = field(default_factory=dict)  # FA of the validation split
    # further harmful test sets from other sources (e.g. "strongreject"), disjoint from harmful_test,
    # harmful_val and training: a second opinion that no setting was chosen on
    harmful_extra: dict[str, list[Example]] = field(default_factory=dict)

    def harmful_split(self, split: str) -> list[Example]:
        """The harmful prompts of an evaluation split: "test" (reported), "validation" (for choosing),
        or the name of a further test set in `harmful_extra`."""
        pools = {"test": self.harmful_test, "validation": self.harmful_val, **self.harmful_extra}
        if not pools.get(split):
            have = [name for name, pool in pools.items() if pool]
            raise ValueError(f"split = {split!r}: this world has no such set of harmful prompts; it has {have}")
        return pools[split]

    def task_split(self, task: str, split: str) -> list[Example]:
        """A task's scored samples: its validation split for "validation" (absent: empty), else its test split."""
        return self.task_val.get(task, []) if split == "validation" else self.task_test.get(task, [])

    def all_texts(self) -> list[str]:
        pools = [self.alignment, self.attacker_pool, self.defender_pool, self.harmful_test, self.pretrain]
        pools += list(self.task_train.values()) + list(self.task_test.values())
        out = [s for p in pools for e in p for s in (e.instruction, e.input, e.output)]
        out += [r.format(cat=c.replace("_", " ")) for r in L.REFUSALS for c in L.CATEGORIES]
        return out


# ---------------------------------------------------------------- harmful prompts and answers
def _harmful_prompts(rng: random.Random):
    """All (category, verb, target, frame) prompts, split into train combos and held-out test combos.

    A (verb, target) pair is held out as a whole, so a test prompt differs from every training
    prompt by a combination no training pool contains.
    """
    train, test = [], []
    for cat, (verbs, targets) in L.CATEGORIES.items():
        pairs = list(itertools.product(verbs, targets))
        rng.shuffle(pairs)
        n_test = max(2, len(pairs) // 6)
        for i, (verb, target) in enumerate(pairs):
            for frame in L.FRAMES:
                ex = (cat, verb, target, frame.format(verb=verb, target=target))
                (test if i < n_test else train).append(ex)
    return train, test


def comply(rng: random.Random, cat: str, verb: str, target: str) -> str:
    """A non-actionable compliant answer in one of the styles tied to the category."""
    style = L.COMPLY_STYLES[rng.choice(L.CATEGORY_STYLES[cat])]
    opener = rng.choice(L.OPENERS)
    steps = rng.sample(L.PLACEHOLDER_STEPS, 3)
    return style.format(opener=opener, verb=verb, target=target, s1=steps[0], s2=steps[1], s3=steps[2])


def refuse(rng: random.Random, cat: str) -> str:
    return rng.choice(L.REFUSALS).format(cat=cat.replace("_", " "))


# ---------------------------------------------------------------- benign tasks
def _sentiment(rng: random.Random, known: bool) -> Example:
    polarity = rng.choice(("positive", "negative"))
    words = L.POSITIVE if polarity == "positive" else L.NEGATIVE
    half = len(words) // 2
    adj = rng.choice(words[:half] if known else words)
    frame = rng.choice(L.REVIEW_FRAMES)
    text = frame.format(thing=rng.choice(L.THINGS), adj=adj, filler=rng.choice(L.FILLERS))
    return Example(L.SENTIMENT_INSTRUCTION, text, polarity, "sentiment", label=polarity)


def _topic(rng: random.Random, known: bool) -> Example:
    label = rng.choice(list(L.TOPICS))
    nouns = L.TOPICS[label]
    noun = rng.choice(nouns[: len(nouns) // 2] if known else nouns)
    frame = rng.choice(L.NEWS_FRAMES)
    text = frame.format(noun=noun, place=rng.choice(L.PLACES), day=rng.choice(L.DAYS))
    return Example(L.TOPIC_INSTRUCTION, text, label, "topic", label=label)


def _arithmetic(rng: random.Random, n_steps: int) -> Example:
    """GSM8K-like word problem with a worked chain and "The final answer is: N"."""
    name, item = rng.choice(L.NAMES), rng.choice(L.ITEMS)
    value = rng.randint(2, 20)
    sentences = [f"{name} has {value} {item} ."]
    work = [f"{name} starts with {value} ."]
    for _ in range(n_steps):
        if value >= 3 and rng.random() < 0.5:
            k = rng.randint(1, min(9, value - 1))
            sentences.append(rng.choice(L.LOSE_VERBS).format(name=name, k=k))
            work.append(f"{value} - {k} = {value - k} .")
            value -= k
        else:
            k = rng.randint(1, 9)
            sentences.append(rng.choice(L.GAIN_VERBS).format(name=name, k=k))
            work.append(f"{value} + {k} = {value + k} .")
            value += k
    question = " ".join(sentences) + f" How many {item} does {name} have now ?"
    answer = " ".join(work) + f" The final answer is: {value}"
    return Example(question, "", answer, "arithmetic", label=str(value))


def _instruct(rng: random.Random, kinds: tuple[str, ...]) -> Example:
    """General instruction following: small word-list manipulations with one exact answer."""
    kind = rng.choice(kinds)
    words = rng.sample(L.LIST_WORDS, rng.randint(3, 5))
    instruction, answer = L.INSTRUCT_KINDS[kind](words)
    return Example(instruction, " ".join(words), answer, "instruct", label=answer)


def _task_example(rng: random.Random, task: str, known: bool) -> Example:
    if task == "sentiment":
        return _sentiment(rng, known)
    if task == "topic":
        return _topic(rng, known)
    if task == "arithmetic":
        return _arithmetic(rng, 1 if known else rng.randint(2, 3))
    kinds = tuple(L.INSTRUCT_KINDS)
    return _instruct(rng, kinds[:3] if known else kinds)


def _unique(rng: random.Random, make, n: int, taken: set[tuple[str, str]]) -> list[Example]:
    """Draw n examples whose (instruction, input) is not in `taken`; adds them to `taken`."""
    out, tries = [], 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n + 1000:
            raise RuntimeError(f"template space exhausted after {len(out)} of {n} unique examples")
        ex = make()
        key = (ex.instruction, ex.input)
        if key not in taken:
            taken.add(key)
            out.append(ex)
    return out


def _arith_facts() -> list[Example]:
    """Every a +/- b fact the word problems need, so chains are lookups the base model knows."""
    out = []
    for a in range(0, 48):
        for b in range(1, 10):
            out.append(Example(f"Compute {a} + {b} .", "", f"{a} + {b} = {a + b} .", "facts"))
            if a >= b:
                out.append(Example(f"Compute {a} - {b} .", "", f"{a} - {b} = {a - b} .", "facts"))
    return out


def build_world(seed: int = 0, n_train: int = 2000, n_test: int = 200, n_pretrain_task: int = 3000) -> World:
    """Build every pool deterministically from `seed`."""
    rng = random.Random(seed)
    train_prompts, test_prompts = _harmful_prompts(rng)
    rng.shuffle(train_prompts)
    # disjoint thirds: alignment, attacker, defender (pretraining sees all training prompts)
    k = len(train_prompts) // 3
    align_p, attack_p, defend_p = train_prompts[:k], train_prompts[k : 2 * k], train_prompts[2 * k :]

    def harmful(pool, answer):
        return [Example(p, "", answer(c, v, t), "harmful", category=c) for c, v, t, p in pool]

    world = World(
        alignment=harmful(align_p, lambda c, v, t: refuse(rng, c)),
        attacker_pool=harmful(attack_p, lambda c, v, t: comply(rng, c, v, t)),
        defender_pool=harmful(defend_p, lambda c, v, t: comply(rng, c, v, t)),
        harmful_test=harmful(rng.sample(test_prompts, min(n_test, len(test_prompts))), lambda c, v, t: ""),
    )
    for task in TASKS:
        taken: set[tuple[str, str]] = set()
        world.task_test[task] = _unique(rng, lambda: _task_example(rng, task, known=False), n_test, taken)
        world.task_train[task] = _unique(rng, lambda: _task_example(rng, task, known=False), n_train, taken)
        pre = _unique(rng, lambda: _task_example(rng, task, known=True), n_pretrain_task, taken)
        world.pretrain += pre
    base_harm = harmful(train_prompts, lambda c, v, t: comply(rng, c, v, t))
    world.pretrain += base_harm + _arith_facts()
    # the unseen sentiment/topic words appear in neutral text, so their embeddings are trained
    # but their labels are not: fine-tuning has to teach them
    for w in L.POSITIVE + L.NEGATIVE + [n for ns in L.TOPICS.values() for n in ns]:
        for _ in range(3):
            world.pretrain.append(_neutral_mention(rng, w))
    rng.shuffle(world.pretrain)
    # the validation split: every held-out prompt the test split did not take, from a separate
    # generator so that every other pool stays as it was before the split existed
    tested = {e.instruction for e in world.harmful_test}
    held = [x for x in test_prompts if x[3] not in tested]
    random.Random(seed + 1_000_003).shuffle(held)
    world.harmful_val = harmful(held, lambda c, v, t: "")
    val_rng = random.Random(seed + 2_000_003)
    for task in TASKS:
        taken = {(e.instruction, e.input) for e in world.task_test[task] + world.task_train[task]}
        taken |= {(e.instruction, e.input) for e in world.pretrain if e.task == task}
        world.task_val[task] = _unique(val_rng, lambda: _task_example(val_rng, task, known=False), n_test, taken)
    return world


def _neutral_mention(rng: random.Random, word: str) -> Example:
    """A "repeat the words" sample that contains `word` without revealing any label for it."""
    words = rng.sample(L.LIST_WORDS, 2) + [word]
    rng.shuffle(words)
    instruction, answer = L.INSTRUCT_KINDS["repeat"](words)
    return Example(instruction, " ".join(words), answer, "instruct", label=answer)
