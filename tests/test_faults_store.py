"""Run store under damage: unreadable results, altered artifacts, two writers, content hashes."""
from __future__ import annotations

import json

import pytest

from panacea_lab.config import EvalConfig
from panacea_lab import hashing
from panacea_lab.training.store import RunStore, StoreDamage, content_sha256, dir_sha256, file_sha256


def with_artifacts(value, files=None):
    """A compute function whose writer saves `files` ({relative name: bytes}) into the stage dir."""
    files = files if files is not None else {"adapter/adapter_model.safetensors": b"weights" * 100,
                                             "eps.safetensors": b"eps" * 50}

    def compute():
        def write(d):
            for name, data in files.items():
                (d / name).parent.mkdir(parents=True, exist_ok=True)
                (d / name).write_bytes(data)
        return {"v": value}, write
    return compute


def damaged_dirs(store: RunStore) -> list[str]:
    folder = store.root / ".damaged"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("content", ["", '{"stage": "demo", "v": ', "[1, 2]"])
def test_unreadable_result_is_moved_aside_and_recomputed(store, capsys, content):
    cfg = EvalConfig(n_harmful=3)
    store.cached("demo", cfg, lambda: ({"v": 1}, None))
    entry = store.path("demo", cfg)
    (entry / "result.json").write_text(content)
    assert store.load("demo", cfg) is None
    err = capsys.readouterr().err
    assert str(entry / "result.json") in err and ".damaged" in err and len(err.strip().splitlines()) == 1
    [aside] = damaged_dirs(store)
    assert aside.startswith(f"demo-{entry.name}-")
    assert (store.root / ".damaged" / aside / "result.json").read_text() == content  # kept for inspection
    assert store.cached("demo", cfg, lambda: ({"v": 2}, None))["v"] == 2


def test_read_only_store_names_the_damaged_directory_to_delete(tmp_path):
    cfg = EvalConfig(n_harmful=3)
    RunStore(tmp_path).cached("demo", cfg, lambda: ({"v": 1}, None))
    entry = RunStore(tmp_path).path("demo", cfg)
    (entry / "result.json").write_text('{"v": 1')
    ro = RunStore(tmp_path, read_only=True)
    with pytest.raises(StoreDamage, match=rf"result.json is not valid JSON.*delete {entry}") as err:
        ro.cached("demo", cfg, lambda: ({"v": 2}, None))
    assert "\n" not in str(err.value) and isinstance(err.value, FileNotFoundError)
    assert entry.exists()  # a read-only store moves nothing


def test_artifacts_are_hashed_in_the_result(store):
    cfg = EvalConfig(n_harmful=4)
    rec = store.cached("demo", cfg, with_artifacts(1))
    entry = store.path("demo", cfg)
    assert set(rec["artifacts"]) == {"adapter/adapter_model.safetensors", "eps.safetensors"}
    for name, sha in rec["artifacts"].items():
        assert sha == hashing.hashlib.sha256((entry / name).read_bytes()).hexdigest()


@pytest.mark.parametrize("damage", ["delete", "truncate", "edit"])
def test_altered_artifact_is_detected_and_the_stage_recomputed(store, capsys, damage):
    cfg = EvalConfig(n_harmful=4)
    store.cached("demo", cfg, with_artifacts(1))
    target = store.path("demo", cfg) / "adapter" / "adapter_model.safetensors"
    if damage == "delete":
        target.unlink()
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:10])
    else:
        target.write_bytes(b"x" * len(target.read_bytes()))  # same size, other bytes
    again = store.cached("demo", cfg, with_artifacts(2))
    assert again["v"] == 2 and target.read_bytes() == b"weights" * 100
    assert str(target) in capsys.readouterr().err
    assert len(damaged_dirs(store)) == 1


def test_artifact_returns_checked_paths_of_files_and_folders(store):
    cfg = EvalConfig(n_harmful=5)
    store.cached("demo", cfg, with_artifacts(1))
    entry = store.path("demo", cfg)
    assert store.artifact("demo", cfg, "eps.safetensors") == entry / "eps.safetensors"
    assert store.artifact("demo", cfg, "adapter") == entry / "adapter"
    assert store.artifact("demo", cfg, "adapter/adapter_model.safetensors").is_file()
    with pytest.raises(FileNotFoundError, match=r"no artifact 'missing.bin'; it holds adapter, eps.safetensors"):
        store.artifact("demo", cfg, "missing.bin")
    with pytest.raises(FileNotFoundError, match="'other'.*not completed.*run that stage first"):
        store.artifact("other", cfg, "adapter")


def test_artifact_of_a_damaged_entry_in_a_read_only_store_names_the_file(tmp_path):
    cfg = EvalConfig(n_harmful=5)
    RunStore(tmp_path).cached("demo", cfg, with_artifacts(1))
    eps = RunStore(tmp_path).path("demo", cfg) / "eps.safetensors"
    eps.write_bytes(eps.read_bytes()[:-1])
    with pytest.raises(StoreDamage, match=rf"artifact {eps} does not match its recorded sha256.*delete") as err:
        RunStore(tmp_path, read_only=True).artifact("demo", cfg, "eps.safetensors")
    assert "\n" not in str(err.value)


def test_an_edited_metric_is_detected_and_the_stage_recomputed(store, capsys):
    cfg = EvalConfig(n_harmful=7)
    store.cached("demo", cfg, lambda: ({"HS": 0.0, "refusal": 100.0}, None))
    entry = store.path("demo", cfg)
    record = json.loads((entry / "result.json").read_text())
    (entry / "result.json").write_text(json.dumps({**record, "HS": 42.0}))  # served as is before the checksum
    assert store.load("demo", cfg) is None
    assert "checksum" in capsys.readouterr().err and len(damaged_dirs(store)) == 1
    assert store.cached("demo", cfg, lambda: ({"HS": 0.0, "refusal": 100.0}, None))["HS"] == 0.0


def test_entry_without_recorded_hashes_still_loads(store):
    """Results written before artifact hashes were recorded: served, artifacts checked for existence."""
    cfg = EvalConfig(n_harmful=6)
    store.cached("demo", cfg, with_artifacts(1))
    entry = store.path("demo", cfg)
    record = json.loads((entry / "result.json").read_text())
    del record["artifacts"], record["record_sha256"]  # an entry written before either was recorded
    (entry / "result.json").write_text(json.dumps(record))
    assert store.load("demo", cfg)["v"] == 1
    assert store.artifact("demo", cfg, "adapter") == entry / "adapter"
    with pytest.raises(FileNotFoundError, match="no artifact 'gone'"):
        store.artifact("demo", cfg, "gone")


def test_a_writer_that_loses_the_race_returns_the_winners_result(store):
    """The other writer publishes between this one's start and its rename: no crash, theirs is kept."""
    cfg = EvalConfig(n_harmful=7)

    def slow_writer(d):
        store.save("demo", cfg, {"v": "winner"}, lambda w: (w / "a.txt").write_text("theirs"))
        (d / "a.txt").write_text("mine")

    rec = store.save("demo", cfg, {"v": "loser"}, slow_writer)
    assert rec["v"] == "winner" and (store.path("demo", cfg) / "a.txt").read_text() == "theirs"
    assert [p.name for p in store.path("demo", cfg).parent.iterdir()] == [store.path("demo", cfg).name]


def test_a_damaged_winner_is_replaced_by_the_loser(store, capsys):
    cfg = EvalConfig(n_harmful=7)

    def writer(d):
        store.path("demo", cfg).mkdir(parents=True)
        (store.path("demo", cfg) / "result.json").write_text("")  # a half-written stage from elsewhere
        (d / "a.txt").write_text("mine")

    assert store.save("demo", cfg, {"v": "mine"}, writer)["v"] == "mine"
    assert len(damaged_dirs(store)) == 1


def test_provenance_records_the_inputs_the_caller_names(store, tmp_path):
    cfg = EvalConfig(n_harmful=8)
    inputs = {"base_weights": "a" * 64, "data_manifest": "b" * 64}
    rec = store.cached("demo", cfg, lambda: ({"v": 1}, None), inputs=inputs)
    assert rec["provenance"]["inputs"] == inputs
    assert "inputs" not in store.cached("demo", EvalConfig(n_harmful=9), lambda: ({"v": 1}, None))["provenance"]


def test_dir_hash_depends_on_names_and_contents_not_location(tmp_path):
    def make(root, files):
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        return root

    files = {"config.json": b"{}", "sub/model.safetensors": b"w" * 3000}
    a, b = make(tmp_path / "a", files), make(tmp_path / "b", files)
    assert dir_sha256(a) == dir_sha256(b)
    (b / "sub" / "model.safetensors").rename(b / "sub" / "other.safetensors")
    assert dir_sha256(a) != dir_sha256(b)
    c = make(tmp_path / "c", {**files, "config.json": b"{ }"})
    assert dir_sha256(a) != dir_sha256(c)
    d = make(tmp_path / "d", {**files, "extra.txt": b""})
    assert dir_sha256(a) != dir_sha256(d)
    with pytest.raises(NotADirectoryError):
        dir_sha256(tmp_path / "none")
    assert content_sha256(a) == dir_sha256(a) and content_sha256(a / "config.json") == file_sha256(a / "config.json")


def test_file_hash_is_memoised_until_the_file_changes(tmp_path, monkeypatch):
    path = tmp_path / "w.bin"
    path.write_bytes(b"0123456789" * 300_000)  # 3 MB: several 1 MiB chunks
    first = file_sha256(path)
    assert first == hashing.hashlib.sha256(path.read_bytes()).hexdigest()
    real, reads = hashing.stream_sha256, []
    monkeypatch.setattr(hashing, "stream_sha256", lambda fh, out=None: reads.append(1) or real(fh, out))
    assert file_sha256(path) == first and reads == []  # unchanged: served from the memo
    with open(path, "r+b") as fh:
        fh.truncate(1000)
    assert file_sha256(path) == hashing.hashlib.sha256(b"0123456789" * 100).hexdigest() and reads == [1]
