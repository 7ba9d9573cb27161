"""Every file minisd writes appears whole or not at all.

A file is written to a temporary name in its own folder, flushed to the disk (fsync), then renamed over its
target. A rename inside one folder is atomic, so a crash, a full disk or a kill mid-write leaves the
previous version intact, at worst next to a stray ``.NAME.*.tmp`` file (``leftovers`` finds them).

    with atomic_open("grid.png") as f:   # a binary file; "grid.png" changes only when the block succeeds
        image.save(f, format="PNG")
    write_bytes("minisd.safetensors", data)
"""

import contextlib
import os
import tempfile
from pathlib import Path

MODE = 0o644  # readable by all, as an ordinary new file (mkstemp's own default is owner-only)


@contextlib.contextmanager
def atomic_open(path):
    """Yield a binary file; on a clean exit its content replaces ``path`` in one step, else nothing changes."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the data is on the disk before the new name points at it
        os.chmod(tmp, MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder):
    """Make the rename itself durable (POSIX; Windows cannot open a folder and needs no such step)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path, data):
    with atomic_open(path) as f:
        f.write(data)
    return Path(path)


def write_text(path, text):
    return write_bytes(path, text.encode())


def leftovers(folder):
    """Temporary files of writes that were killed before their rename."""
    return sorted(Path(folder).glob(".*.tmp"))


def check_writable(folder):
    """Raise OSError now, not after minutes of work, if no file can be created in ``folder``.

    It creates and removes a real temporary file: permission bits alone do not tell (root ignores them,
    read-only mounts and full disks do not show in them).
    """
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".minisd-write-test.", suffix=".tmp")
    os.close(fd)
    os.unlink(tmp)
