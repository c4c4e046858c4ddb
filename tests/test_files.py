"""Crash-safe writes (hedgerow.files): never torn, private, nothing half-done on failure."""

from __future__ import annotations

import pathlib
import stat

import pytest

from hedgerow import files


def test_write_atomic_all_writes_every_file_privately_and_leaves_no_temp(
    tmp_path: pathlib.Path,
) -> None:
    (tmp_path / "a.json").write_text("old")
    files.write_atomic_all({tmp_path / "a.json": b"A", tmp_path / "b.json": b"B"})
    assert (tmp_path / "a.json").read_bytes() == b"A"
    assert (tmp_path / "b.json").read_bytes() == b"B"
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]


def test_a_failure_before_the_renames_changes_nothing(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a.json").write_text("old")
    with pytest.raises(FileNotFoundError):
        files.write_atomic_all({tmp_path / "a.json": b"new",
                                tmp_path / "missing" / "b.json": b"B"})
    assert (tmp_path / "a.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
