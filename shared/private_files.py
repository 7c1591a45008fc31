"""Owner-only directories and files: what the control plane keeps on disk (the data dir, its
stores, queues, node records, node directories, logs and tokens) is for its own user only.

One place for the modes; callers say what they make: `private_dir` for a directory,
`private_file` for a file another library opens (SQLite), `open(path, mode, opener=private)` for
a file written here, `PRIVATE_UMASK` for the processes the control plane starts (what a node
writes under the data dir).
"""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
PRIVATE_UMASK = 0o077


def private_dir(path: Path) -> Path:
    """`path` as a directory only its owner can enter: made when missing, with every missing
    parent (each 0700 too); an existing one narrowed to 0700. Existing parents are left alone."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=DIR_MODE, exist_ok=True)
        os.chmod(d, DIR_MODE)
    os.chmod(path, DIR_MODE)
    return path


def private(path: str | os.PathLike[str], flags: int) -> int:
    """An `opener` for open(): the file is made 0600, and an existing one narrowed to 0600."""
    fd = os.open(path, flags, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return fd


def private_file(path: Path) -> Path:
    """`path` as an owner-only file (made empty when missing), for a library that opens it
    itself: SQLite gives a database's -wal and -shm files the database file's mode."""
    os.close(private(path, os.O_WRONLY | os.O_CREAT))
    return Path(path)


def write_private(path: Path, text: str) -> None:
    """Write `text` to an owner-only file (replacing its content)."""
    with open(path, "w", encoding="utf-8", opener=private) as f:
        f.write(text)
