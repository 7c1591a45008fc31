"""The file service's time rules with the real store and file store and a clock the test moves:
upload handles expire after 10 idle minutes, and the sweep drops abandoned uploads with their
staged blocks. Also the pure request rules of shared/domain/files.py."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.adapters.local_files import LocalFileStore
from shared.adapters.sqlite_store import SqliteStore
from shared.domain import files as dom
from shared.domain import paths
from shared.errors import (
    InvalidParameterValue,
    MaxBlockSizeExceeded,
    MaxReadSizeExceeded,
    ResourceDoesNotExist,
)
from shared.services.auth import Principal
from shared.services.files import HANDLE_KIND, FilesService
from tests.support import FakeClock

P = Principal("ws-1", "me@example.com", "tok")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[FilesService, FakeClock, SqliteStore, Path]]:
    clock = FakeClock()
    store = SqliteStore(tmp_path / "store.db", clock=clock.now_ms)
    try:
        yield FilesService(LocalFileStore(tmp_path / "files"), store, clock), clock, store, tmp_path
    finally:
        store.close()


def block(data: bytes) -> str:
    return base64.b64encode(data).decode()


def staged_uploads(root: Path) -> list[Path]:
    return [p for p in (root / "files").glob("*/uploads/*")]


def test_a_handle_lives_while_it_is_used_and_expires_after_ten_idle_minutes(env) -> None:
    s, clock, _, _ = env
    h = s.dbfs_create(P, {"path": "/x.bin"})["handle"]
    for i in range(3):  # each call renews the idle timeout
        clock.ms += (dom.HANDLE_IDLE_S - 1) * 1000
        s.dbfs_add_block(P, {"handle": h, "data": block(bytes([i]))})
    clock.ms += dom.HANDLE_IDLE_S * 1000
    with pytest.raises(ResourceDoesNotExist):
        s.dbfs_add_block(P, {"handle": h, "data": block(b"late")})
    with pytest.raises(ResourceDoesNotExist):
        s.dbfs_close(P, {"handle": h})
    with pytest.raises(ResourceDoesNotExist):
        s.dbfs_get_status(P, "/x.bin")


def test_the_sweep_drops_abandoned_uploads_and_their_blocks(env) -> None:
    s, clock, store, root = env
    abandoned = s.dbfs_create(P, {"path": "/a.bin"})["handle"]
    s.dbfs_add_block(P, {"handle": abandoned, "data": block(b"a" * 1000)})
    clock.ms += 5 * 60 * 1000
    busy = s.dbfs_create(P, {"path": "/b.bin"})["handle"]
    s.dbfs_add_block(P, {"handle": busy, "data": block(b"b")})
    assert len(staged_uploads(root)) == 2

    assert s.sweep_handles() == 0  # nothing idle for 10 minutes yet
    clock.ms += (dom.HANDLE_IDLE_S - 60) * 1000
    assert s.sweep_handles() == 1
    assert store.get(HANDLE_KIND, P.workspace_id, str(abandoned)) is None
    assert len(staged_uploads(root)) == 1
    s.dbfs_close(P, {"handle": busy})  # the live one is untouched
    assert s.dbfs_read(P, "/b.bin", 0, 10)["data"] == block(b"b")
    assert staged_uploads(root) == []
    with pytest.raises(ResourceDoesNotExist):
        s.dbfs_get_status(P, "/a.bin")


def test_request_rules() -> None:
    assert dom.b64(None, "data", 4, MaxBlockSizeExceeded) == b""
    assert dom.b64(block(b"1234"), "data", 4, MaxBlockSizeExceeded) == b"1234"
    for bad in (block(b"12345"), block(b"x" * 100)):
        with pytest.raises(MaxBlockSizeExceeded):
            dom.b64(bad, "data", 4, MaxBlockSizeExceeded)
    for bad in ("a", "!!!!", 5, "é==="):
        with pytest.raises(InvalidParameterValue):
            dom.b64(bad, "data", 4, MaxBlockSizeExceeded)
    assert dom.read_range(None, None) == (0, dom.DEFAULT_READ_BYTES)
    assert dom.read_range("7", str(dom.MB)) == (7, dom.MB)
    with pytest.raises(MaxReadSizeExceeded):
        dom.read_range(0, dom.MB + 1)
    for offset, length in ((-1, 1), (0, -1), ("x", 1), (True, 1)):
        with pytest.raises(InvalidParameterValue):
            dom.read_range(offset, length)
    assert [dom.flag(v, "f") for v in (None, "", True, "True", "false", False)] == [
        False,
        False,
        True,
        True,
        False,
        False,
    ]
    with pytest.raises(InvalidParameterValue):
        dom.flag("yes", "f")
    assert dom.import_format(None) == "SOURCE" and dom.import_format("AUTO") == "AUTO"
    for bad in ("HTML", "DBC", "JUPYTER", "source", 1):
        with pytest.raises(InvalidParameterValue):
            dom.import_format(bad)
    with pytest.raises(InvalidParameterValue):
        dom.language("COBOL")
    for bad in (0, -1, 2**63, "x", True, None):
        with pytest.raises(InvalidParameterValue):
            dom.handle_id(bad)
    assert dom.handle_id("42") == 42
    assert dom.file_type("/a/b.py") == "py" and dom.file_type("/a/.bashrc") == ""
    assert dom.object_id("/a") == dom.object_id("/a") != dom.object_id("/b")
    assert paths.parent("/a/b") == "/a" and paths.parent("/a") == "/" == paths.parent("/")
    assert paths.standard_folders("me") == {"/", "/Users", "/Shared", "/Users/me"}
    assert paths.standard_folders("a/b") == {"/", "/Users", "/Shared"}


def test_a_workspace_deletion_a_crash_interrupted_is_finished_by_the_next(tmp_path: Path) -> None:
    """The local file store hides a workspace's files in one rename, then removes them: a crash
    in between leaves the hidden directory, which the next deletion (a retried pass) removes."""
    from shared.domain.paths import id_segment

    files = LocalFileStore(tmp_path / "files")
    files.write("a", "/dbfs/x.bin", b"x", overwrite=False)
    root = tmp_path / "files"
    (root / id_segment("a")).rename(root / ".deleting-interrupted")
    files.delete_workspace("a")
    assert sorted(p.name for p in root.iterdir()) == []
