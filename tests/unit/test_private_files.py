"""Owner-only directories and files (shared/private_files.py), and the data dir the local control
plane builds with them: every directory 0700, every file 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.ports import OutMessage
from shared.private_files import private, private_dir, private_file, write_private
from shared.settings import Settings
from shared.wiring import bootstrap_local, build


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """A umask that would make everything world-readable (and writable)."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_private_dir_makes_every_missing_dir_0700_and_leaves_existing_parents(
    tmp_path: Path, loose_umask: None
) -> None:
    tmp_path.chmod(0o755)
    leaf = private_dir(tmp_path / "a" / "b" / "c")
    assert leaf == tmp_path / "a" / "b" / "c"
    for d in (tmp_path / "a", tmp_path / "a" / "b", leaf):
        assert mode(d) == 0o700, d
    assert mode(tmp_path) == 0o755  # not made here: left as it is
    # An existing directory is narrowed.
    wide = tmp_path / "wide"
    wide.mkdir(mode=0o777)
    private_dir(wide)
    assert mode(wide) == 0o700


def test_private_files_are_0600_new_or_existing(tmp_path: Path, loose_umask: None) -> None:
    write_private(tmp_path / "token", "secret\n")
    assert mode(tmp_path / "token") == 0o600
    assert (tmp_path / "token").read_text() == "secret\n"
    existing = tmp_path / "log"
    existing.write_text("old\n")
    existing.chmod(0o666)
    with open(existing, "a", opener=private) as f:
        f.write("new\n")
    assert mode(existing) == 0o600 and existing.read_text() == "old\nnew\n"
    db = private_file(tmp_path / "x.sqlite")
    assert db.read_bytes() == b"" and mode(db) == 0o600
    db.write_bytes(b"kept")
    private_file(db)
    assert db.read_bytes() == b"kept"  # never truncated


def _tree(root: Path) -> Iterator[Path]:
    yield root
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            yield Path(dirpath) / name


def test_the_local_data_dir_and_everything_in_it_is_owner_only(
    tmp_path: Path, loose_umask: None
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o777)  # an existing, wide open data dir is narrowed too
    settings = Settings(data_dir=data, provisioner="records", store="sqlite", bus="embedded")
    c = build(settings)
    bootstrap_local(c)
    # Use the store and the bus so that SQLite makes its -wal and -shm files.
    c.auth.issue_token("local", user="u@local", comment="probe")
    c.bus.send(settings.lifecycle_queue, [OutMessage(body=b"{}", message_id="m1")])
    names = {p.name for p in data.iterdir()}
    assert {"store.db", "bus.db", "records.db", "token", "operator-token"} <= names
    assert any(n.endswith("-wal") for n in names), names
    for p in _tree(data):
        want = 0o700 if p.is_dir() else 0o600
        assert mode(p) == want, f"{p.relative_to(tmp_path)}: {oct(mode(p))}"
