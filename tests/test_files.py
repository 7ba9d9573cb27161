"""minisd.files: a write is whole or absent, never half, and leaves nothing behind when it fails."""

import os

import pytest

from minisd import files


def test_write_replaces_the_file_readable_by_all(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    files.write_text(path, "new")
    assert path.read_text() == "new"
    assert path.stat().st_mode & 0o777 == files.MODE
    assert files.leftovers(tmp_path) == []


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "grid.png"
    path.write_bytes(b"old picture")
    with pytest.raises(RuntimeError, match="disk full"), files.atomic_open(path) as f:
        f.write(b"half a pic")
        assert len(files.leftovers(tmp_path)) == 1, "the new bytes go to a temporary file in the same folder"
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"old picture"
    assert files.leftovers(tmp_path) == []


def test_leftovers_are_the_temporaries_of_killed_writes(tmp_path):
    (tmp_path / ".ckpt.pt.abc123.tmp").write_bytes(b"")
    (tmp_path / "ckpt.pt").write_bytes(b"")
    assert [p.name for p in files.leftovers(tmp_path)] == [".ckpt.pt.abc123.tmp"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_writable_reports_a_read_only_folder(tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(PermissionError):
            files.check_writable(tmp_path)
    finally:
        tmp_path.chmod(0o755)


def test_check_writable_leaves_nothing(tmp_path):
    files.check_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []
