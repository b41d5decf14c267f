"""seedtool.shared.fileio: atomic writes that never leave a partial file or a temporary one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from seedtool.shared.fileio import WriteError, atomic_write, replace_file


def test_atomic_write_gives_the_mode_and_replaces_whole(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_bytes(b"old contents, longer than the new")
    atomic_write(target, b"new", mode=0o640)
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o640
    atomic_write(target, b"again")  # 0600 by default
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]


def test_atomic_write_failures_are_write_errors_and_touch_nothing(tmp_path: Path) -> None:
    with pytest.raises(WriteError, match="check the directory exists and is writable"):
        atomic_write(tmp_path / "missing/secret", b"x")
    (tmp_path / "dir").mkdir()
    with pytest.raises(WriteError, match="nothing was written"):
        atomic_write(tmp_path / "dir", b"x")  # a rename onto a directory fails
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]
    assert list((tmp_path / "dir").iterdir()) == []


def test_replace_file_raises_the_os_error_itself(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        replace_file(tmp_path / "missing/file", b"x")
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError):
        replace_file(tmp_path / "dir", b"x", durable=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]


def test_replace_file_replaces_a_symlink_never_its_target(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_bytes(b"keep")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    replace_file(tmp_path / "link", b"new", 0o644)
    assert not (tmp_path / "link").is_symlink() and (tmp_path / "link").read_bytes() == b"new"
    assert (tmp_path / "elsewhere").read_bytes() == b"keep"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_replace_file_gives_the_owner(tmp_path: Path) -> None:
    replace_file(tmp_path / "owned", b"x", 0o644, owner=(1234, 5678))
    st = (tmp_path / "owned").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1234, 5678, 0o644)
