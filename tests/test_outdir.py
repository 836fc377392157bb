"""Model output directories: replaced only when ours, swapped in by rename, never left missing."""
from __future__ import annotations

import os

import pytest

from panacea_lab.config import ConfigError
from panacea_lab.models.outdir import check_out_dir, publish, temp_beside


def ours(d):
    return (d / "record.json").is_file()


def test_check_accepts_new_empty_and_own_directories_only(tmp_path):
    check_out_dir(tmp_path / "new", ours, "cmd")
    (tmp_path / "empty").mkdir()
    check_out_dir(tmp_path / "empty", ours, "cmd")
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "record.json").write_text("{}")
    check_out_dir(tmp_path / "own", ours, "cmd")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / ".hidden").write_text("")
    with pytest.raises(ConfigError, match="cmd --out .*other: the directory holds files that cmd did not write"):
        check_out_dir(tmp_path / "other", ours, "cmd")
    (tmp_path / "link").symlink_to(tmp_path / "own")
    with pytest.raises(ConfigError, match="a symbolic link.*pass the directory it points to"):
        check_out_dir(tmp_path / "link", ours, "cmd")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        check_out_dir(tmp_path / "file", ours, "cmd")


def test_publish_swaps_in_the_new_directory_and_removes_the_old(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")
    tmp = temp_beside(out)
    (tmp / "new.txt").write_text("new")
    publish(tmp, out)
    assert [p.name for p in out.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_failed_rename_puts_the_old_directory_back(tmp_path, monkeypatch):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")
    tmp = temp_beside(out)
    real = os.replace

    def fail_second(src, dst):
        if str(src) == str(tmp):
            raise OSError("disk full")
        real(src, dst)

    monkeypatch.setattr(os, "replace", fail_second)
    with pytest.raises(OSError, match="disk full"):
        publish(tmp, out)
    assert (out / "old.txt").read_text() == "old"
