"""Atomic writes: all or nothing under the final name."""

from __future__ import annotations

import pytest

from asymfuse.edge.errors import ConfigError
from asymfuse.edge.fileio import atomic_path, atomic_write, atomic_write_text


def test_success_replaces_the_target_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_failure_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def boom(fh):
        fh.write(b"half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError, match="crash"):
        atomic_write(target, boom)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    with pytest.raises(ValueError), atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"x")
        raise ValueError
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not writable"):
        atomic_write_text(tmp_path / "nope" / "a.txt", "x")
