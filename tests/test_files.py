"""pipeline.files: the atomic writers every output goes through."""

from pathlib import Path

import pytest

from pipeline.files import replace_folder, write_text_atomically


def _folder(path: Path, **files: str) -> Path:
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_write_text_atomically_replaces_and_leaves_no_scratch(tmp_path):
    path = tmp_path / "sub" / "scores.json"
    write_text_atomically(path, "old")
    write_text_atomically(path, "new")
    assert path.read_text() == "new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["scores.json"]


def test_replace_folder_moves_staging_into_an_empty_place(tmp_path):
    staging = _folder(tmp_path / ".staging", a="1")
    replace_folder(staging, tmp_path / "task")
    assert (tmp_path / "task" / "a").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["task"]


def test_replace_folder_replaces_the_old_folder_whole(tmp_path):
    _folder(tmp_path / "task", a="old", stale="gone")
    staging = _folder(tmp_path / ".staging", a="new")
    replace_folder(staging, tmp_path / "task")
    assert sorted(p.name for p in (tmp_path / "task").iterdir()) == ["a"]
    assert (tmp_path / "task" / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["task"]  # the old folder is not left beside it


def test_replace_folder_puts_the_old_folder_back_when_the_rename_fails(tmp_path):
    _folder(tmp_path / "task", a="old")
    with pytest.raises(OSError):
        replace_folder(tmp_path / ".missing-staging", tmp_path / "task")
    assert (tmp_path / "task" / "a").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["task"]
