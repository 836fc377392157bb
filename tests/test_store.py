"""Run store: atomic stage directories, provenance in every result, reuse of completed stages."""
from __future__ import annotations

import json

import pytest

from panacea_lab.config import EvalConfig
from panacea_lab.training.store import LAYOUT, LAYOUT_VERSION, RunStore, layout_of, write_json_atomic


def test_result_carries_config_seed_versions_git_and_timings(store):
    cfg = EvalConfig(n_harmful=3)
    rec = store.cached("demo", cfg, lambda: ({"value": 1}, None))
    on_disk = json.loads((store.path("demo", cfg) / "result.json").read_text())
    assert on_disk == json.loads(json.dumps(rec, default=str))
    assert on_disk["config"]["n_harmful"] == 3 and "seed" in on_disk
    assert {"torch", "transformers", "peft", "python"} <= set(on_disk["provenance"]["versions"])
    assert on_disk["provenance"]["git"]
    assert on_disk["timings"]["stage_seconds"] >= 0


def test_completed_stage_is_reused(store):
    cfg, calls = EvalConfig(n_harmful=4), []
    store.cached("demo", cfg, lambda: (calls.append(1) or {"v": 2}, None))
    again = store.cached("demo", cfg, lambda: (calls.append(1) or {"v": 3}, None))
    assert calls == [1] and again["v"] == 2


def test_killed_stage_leaves_nothing_and_reruns(store):
    cfg = EvalConfig(n_harmful=5)

    def crash_after_artifacts():
        def writer(d):
            (d / "adapter.bin").write_text("partial")
            raise KeyboardInterrupt  # killed mid-write
        return {"v": 1}, writer

    with pytest.raises(KeyboardInterrupt):
        store.cached("demo", cfg, crash_after_artifacts)
    assert store.load("demo", cfg) is None
    assert not any(store.path("demo", cfg).parent.iterdir())  # no temp dir, no partial stage
    assert store.cached("demo", cfg, lambda: ({"v": 7}, None))["v"] == 7


def test_write_json_atomic_replaces_whole_file(tmp_path):
    target = tmp_path / "x.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"b": 2})
    assert json.loads(target.read_text()) == {"b": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_store_root_is_configurable(tmp_path):
    assert RunStore(tmp_path).path("align", EvalConfig()).is_relative_to(tmp_path)


def test_read_only_store_serves_cache_and_refuses_to_compute(tmp_path, monkeypatch):
    cfg = EvalConfig(n_harmful=6)
    RunStore(tmp_path).cached("demo", cfg, lambda: ({"v": 1}, None))
    ro = RunStore(tmp_path, read_only=True)
    assert ro.cached("demo", cfg, lambda: ({"v": 2}, None))["v"] == 1
    with pytest.raises(FileNotFoundError, match="read-only"):
        ro.cached("demo", EvalConfig(n_harmful=7), lambda: ({"v": 3}, None))
    monkeypatch.setenv("PANACEA_CACHE_ONLY", "1")
    assert RunStore(tmp_path).read_only


def test_a_store_of_an_earlier_layout_says_once_what_it_recomputes(tmp_path, capsys):
    RunStore(tmp_path).cached("demo", EvalConfig(n_harmful=3), lambda: ({"v": 1}, None))
    assert layout_of(tmp_path) == LAYOUT_VERSION and capsys.readouterr().err == ""  # a new store: nothing to say
    (tmp_path / LAYOUT).unlink()  # as written before the layout was recorded
    ro = RunStore(tmp_path, read_only=True)
    assert ro.cached("demo", EvalConfig(n_harmful=3), lambda: ({"v": 2}, None))["v"] == 1
    assert not (tmp_path / LAYOUT).exists() and capsys.readouterr().err == ""  # reading writes nothing
    store = RunStore(tmp_path)
    store.cached("demo", EvalConfig(n_harmful=4), lambda: ({"v": 3}, None))
    store.cached("demo", EvalConfig(n_harmful=5), lambda: ({"v": 4}, None))
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path) in lines[0] and "earlier layout" in lines[0], lines
    assert "keyed by content" in lines[0]
    assert layout_of(tmp_path) == LAYOUT_VERSION
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAYOUT, "demo"]  # written atomically: no temp file
    (tmp_path / LAYOUT).write_text("1")  # an older marker, opened again by this process
    RunStore(tmp_path).cached("demo", EvalConfig(n_harmful=6), lambda: ({"v": 5}, None))
    assert capsys.readouterr().err == "" and layout_of(tmp_path) == LAYOUT_VERSION  # said once per process
