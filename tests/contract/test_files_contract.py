"""The `FileStore` contract: every adapter of `shared.ports.FileStore` passes this suite.

Add an adapter by adding one entry to `_BACKENDS`: a function that builds a store on fresh,
empty backing storage for the test. Each test starts from an empty store; the workspace ids are
arbitrary strings (an id is never a path component). The tests at the end check what only the
local adapter can be asked (file modes, symlinks someone else put into its directories).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.ports import DirectoryNotEmpty, FileExists, FileInfo, FileMissing, FileStore

WS = "ws-1"
OTHER = "ws/../2"  # not a path: an opaque id like any other
MB = 1 << 20


def _local(tmp_path: Path, _: dict[str, Any]) -> FileStore:
    from shared.adapters.local_files import LocalFileStore

    return LocalFileStore(tmp_path / "files")


_BACKENDS: dict[str, Callable[[Path, dict[str, Any]], FileStore]] = {
    "local": _local,
}


@pytest.fixture(params=sorted(_BACKENDS))
def files(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FileStore]:
    store = _BACKENDS[request.param](tmp_path, {"request": request})
    yield store
    for ws in (WS, OTHER):
        store.delete_workspace(ws)


def _paths(infos: list[FileInfo]) -> list[str]:
    return [i.path for i in infos]


def _now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------------------------
# Whole files.


def test_write_then_read(files: FileStore) -> None:
    before = _now_ms()
    info = files.write(WS, "/dbfs/a/b.py", b"print('hi')\n", overwrite=False)
    assert (info.path, info.is_dir, info.size) == ("/dbfs/a/b.py", False, 12)
    # Second-resolution clocks (some servers) round down: allow for it.
    assert before - 2000 <= info.modified_ms <= _now_ms() + 2000
    assert files.read(WS, "/dbfs/a/b.py") == b"print('hi')\n"
    assert files.stat(WS, "/dbfs/a/b.py") == info


def test_empty_and_binary_files(files: FileStore) -> None:
    data = bytes(range(256)) * 3
    files.write(WS, "/dbfs/bin", data, overwrite=False)
    files.write(WS, "/dbfs/empty", b"", overwrite=False)
    assert files.read(WS, "/dbfs/bin") == data
    assert files.read(WS, "/dbfs/empty") == b""
    assert files.stat(WS, "/dbfs/empty").size == 0


def test_read_offset_and_length(files: FileStore) -> None:
    files.write(WS, "/dbfs/f", b"0123456789", overwrite=False)
    assert files.read(WS, "/dbfs/f", offset=3) == b"3456789"
    assert files.read(WS, "/dbfs/f", offset=3, length=4) == b"3456"
    assert files.read(WS, "/dbfs/f", offset=8, length=10) == b"89"
    assert files.read(WS, "/dbfs/f", offset=0, length=0) == b""
    assert files.read(WS, "/dbfs/f", offset=10) == b""
    assert files.read(WS, "/dbfs/f", offset=1000, length=5) == b""
    with pytest.raises(ValueError):
        files.read(WS, "/dbfs/f", offset=-1)


def test_read_missing_or_a_directory(files: FileStore) -> None:
    with pytest.raises(FileMissing):
        files.read(WS, "/dbfs/nope")
    files.write(WS, "/dbfs/d/f", b"x", overwrite=False)
    with pytest.raises(FileExists):
        files.read(WS, "/dbfs/d")
    with pytest.raises(FileExists):
        files.read(WS, "/")
    with pytest.raises(FileMissing):
        files.read(WS, "/dbfs/d/f/under-a-file")


def test_overwrite(files: FileStore) -> None:
    files.write(WS, "/dbfs/f", b"first version", overwrite=False)
    with pytest.raises(FileExists):
        files.write(WS, "/dbfs/f", b"second", overwrite=False)
    assert files.read(WS, "/dbfs/f") == b"first version"
    info = files.write(WS, "/dbfs/f", b"second", overwrite=True)
    assert info.size == 6
    assert files.read(WS, "/dbfs/f") == b"second"
    assert files.write(WS, "/dbfs/new", b"n", overwrite=True).size == 1


def test_write_where_a_directory_is(files: FileStore) -> None:
    files.mkdirs(WS, "/dbfs/d")
    files.write(WS, "/dbfs/implicit/f", b"x", overwrite=False)
    for path in ("/dbfs/d", "/dbfs/implicit", "/"):
        for overwrite in (False, True):
            with pytest.raises(FileExists):
                files.write(WS, path, b"x", overwrite=overwrite)
    assert files.stat(WS, "/dbfs/d").is_dir
    assert files.read(WS, "/dbfs/implicit/f") == b"x"


def test_write_under_a_file(files: FileStore) -> None:
    files.write(WS, "/dbfs/f", b"x", overwrite=False)
    with pytest.raises(FileMissing):
        files.write(WS, "/dbfs/f/g", b"y", overwrite=False)
    with pytest.raises(FileMissing):
        files.write(WS, "/dbfs/f/g/h", b"y", overwrite=True)
    assert files.read(WS, "/dbfs/f") == b"x"


# --------------------------------------------------------------------------------------------
# Directories.


def test_root_exists_and_lists(files: FileStore) -> None:
    root = files.stat(WS, "/")
    assert (root.path, root.is_dir, root.size) == ("/", True, 0)
    assert files.list(WS, "/") == []
    files.write(WS, "/workspace/x.py", b"1", overwrite=False)
    files.write(WS, "/dbfs/y", b"2", overwrite=False)
    listed = files.list(WS, "/")
    assert _paths(listed) == ["/dbfs", "/workspace"]
    assert all(i.is_dir for i in listed)


def test_implicit_parents(files: FileStore) -> None:
    files.write(WS, "/dbfs/a/b/c.txt", b"abc", overwrite=False)
    for path in ("/dbfs", "/dbfs/a", "/dbfs/a/b"):
        info = files.stat(WS, path)
        assert (info.path, info.is_dir, info.size) == (path, True, 0)
    assert files.list(WS, "/dbfs/a") == [files.stat(WS, "/dbfs/a/b")]
    # The directories stay when their last file goes.
    files.delete(WS, "/dbfs/a/b/c.txt", recursive=False)
    assert files.stat(WS, "/dbfs/a/b").is_dir
    assert files.list(WS, "/dbfs/a/b") == []


def test_list_is_sorted_and_one_level(files: FileStore) -> None:
    for name in ("b.txt", "a.txt", "c/deep.txt", "B", "a-dir/x", "z"):
        files.write(WS, f"/dbfs/d/{name}", name.encode(), overwrite=False)
    files.mkdirs(WS, "/dbfs/d/empty")
    listed = files.list(WS, "/dbfs/d")
    assert _paths(listed) == sorted(_paths(listed))
    assert _paths(listed) == [
        "/dbfs/d/B",
        "/dbfs/d/a-dir",
        "/dbfs/d/a.txt",
        "/dbfs/d/b.txt",
        "/dbfs/d/c",
        "/dbfs/d/empty",
        "/dbfs/d/z",
    ]
    kinds = {i.path.rsplit("/", 1)[1]: (i.is_dir, i.size) for i in listed}
    assert kinds == {
        "B": (False, 1),
        "a-dir": (True, 0),
        "a.txt": (False, 5),
        "b.txt": (False, 5),
        "c": (True, 0),
        "empty": (True, 0),
        "z": (False, 1),
    }


def test_list_a_file_or_missing(files: FileStore) -> None:
    info = files.write(WS, "/dbfs/f", b"12345", overwrite=False)
    assert files.list(WS, "/dbfs/f") == [files.stat(WS, "/dbfs/f")]
    assert files.list(WS, "/dbfs/f")[0].size == info.size
    with pytest.raises(FileMissing):
        files.list(WS, "/dbfs/nope")
    with pytest.raises(FileMissing):
        files.list(WS, "/dbfs/f/under")


def test_mkdirs(files: FileStore) -> None:
    files.mkdirs(WS, "/dbfs/x/y/z")
    for path in ("/dbfs", "/dbfs/x", "/dbfs/x/y", "/dbfs/x/y/z"):
        assert files.stat(WS, path).is_dir
    assert files.list(WS, "/dbfs/x/y/z") == []
    files.mkdirs(WS, "/dbfs/x/y/z")  # idempotent
    files.mkdirs(WS, "/dbfs/x")
    files.mkdirs(WS, "/")
    files.write(WS, "/dbfs/x/y/z/f", b"kept", overwrite=False)
    files.mkdirs(WS, "/dbfs/x/y/z")
    assert files.read(WS, "/dbfs/x/y/z/f") == b"kept"


def test_mkdirs_through_a_file(files: FileStore) -> None:
    files.write(WS, "/dbfs/f", b"x", overwrite=False)
    with pytest.raises(FileExists):
        files.mkdirs(WS, "/dbfs/f")
    with pytest.raises(FileExists):
        files.mkdirs(WS, "/dbfs/f/sub/dir")
    assert files.read(WS, "/dbfs/f") == b"x"
    with pytest.raises(FileMissing):
        files.stat(WS, "/dbfs/f/sub")


def test_stat_missing(files: FileStore) -> None:
    with pytest.raises(FileMissing):
        files.stat(WS, "/dbfs")
    files.write(WS, "/dbfs/f", b"x", overwrite=False)
    with pytest.raises(FileMissing):
        files.stat(WS, "/dbfs/g")
    with pytest.raises(FileMissing):
        files.stat(WS, "/dbfs/f/g")
    # A name that only shares a prefix with an existing one is another name.
    files.write(WS, "/dbfs/abc/x", b"x", overwrite=False)
    with pytest.raises(FileMissing):
        files.stat(WS, "/dbfs/ab")


# --------------------------------------------------------------------------------------------
# Delete.


def test_delete_file(files: FileStore) -> None:
    files.write(WS, "/dbfs/d/f", b"x", overwrite=False)
    files.write(WS, "/dbfs/d/g", b"y", overwrite=False)
    files.delete(WS, "/dbfs/d/f", recursive=False)
    with pytest.raises(FileMissing):
        files.stat(WS, "/dbfs/d/f")
    assert _paths(files.list(WS, "/dbfs/d")) == ["/dbfs/d/g"]
    files.delete(WS, "/dbfs/d/g", recursive=True)  # recursive on a file: the file
    assert files.list(WS, "/dbfs/d") == []


def test_delete_directory(files: FileStore) -> None:
    files.mkdirs(WS, "/dbfs/empty")
    files.delete(WS, "/dbfs/empty", recursive=False)
    with pytest.raises(FileMissing):
        files.stat(WS, "/dbfs/empty")

    files.write(WS, "/dbfs/d/a/b/c", b"c", overwrite=False)
    files.write(WS, "/dbfs/d/top", b"t", overwrite=False)
    files.mkdirs(WS, "/dbfs/d/e/f")
    files.write(WS, "/dbfs/dd", b"sibling", overwrite=False)
    with pytest.raises(DirectoryNotEmpty):
        files.delete(WS, "/dbfs/d", recursive=False)
    assert files.read(WS, "/dbfs/d/a/b/c") == b"c"
    assert _paths(files.list(WS, "/dbfs/d")) == ["/dbfs/d/a", "/dbfs/d/e", "/dbfs/d/top"]

    files.delete(WS, "/dbfs/d", recursive=True)
    for path in ("/dbfs/d", "/dbfs/d/a", "/dbfs/d/a/b/c", "/dbfs/d/e/f"):
        with pytest.raises(FileMissing):
            files.stat(WS, path)
    assert _paths(files.list(WS, "/dbfs")) == ["/dbfs/dd"]
    assert files.read(WS, "/dbfs/dd") == b"sibling"


def test_delete_missing(files: FileStore) -> None:
    with pytest.raises(FileMissing):
        files.delete(WS, "/dbfs/nope", recursive=False)
    files.write(WS, "/dbfs/f", b"x", overwrite=False)
    for recursive in (False, True):
        with pytest.raises(FileMissing):
            files.delete(WS, "/dbfs/f/under", recursive=recursive)
        with pytest.raises(FileMissing):
            files.delete(WS, "/dbfs/g", recursive=recursive)


def test_the_root_cannot_be_deleted(files: FileStore) -> None:
    files.write(WS, "/dbfs/f", b"x", overwrite=False)
    with pytest.raises(ValueError):
        files.delete(WS, "/", recursive=True)
    assert files.read(WS, "/dbfs/f") == b"x"


# --------------------------------------------------------------------------------------------
# Move.


def test_move_file(files: FileStore) -> None:
    files.write(WS, "/dbfs/a", b"content", overwrite=False)
    files.move(WS, "/dbfs/a", "/dbfs/new/parent/b")
    assert files.read(WS, "/dbfs/new/parent/b") == b"content"
    with pytest.raises(FileMissing):
        files.stat(WS, "/dbfs/a")
    files.move(WS, "/dbfs/new/parent/b", "/workspace/b")
    assert files.read(WS, "/workspace/b") == b"content"


def test_move_directory(files: FileStore) -> None:
    files.write(WS, "/dbfs/d/x", b"x", overwrite=False)
    files.write(WS, "/dbfs/d/sub/y", b"y", overwrite=False)
    files.mkdirs(WS, "/dbfs/d/empty")
    files.write(WS, "/dbfs/d2/keep", b"k", overwrite=False)  # shares a prefix with /dbfs/d
    files.move(WS, "/dbfs/d", "/dbfs/moved/d")
    assert files.read(WS, "/dbfs/moved/d/x") == b"x"
    assert files.read(WS, "/dbfs/moved/d/sub/y") == b"y"
    assert files.stat(WS, "/dbfs/moved/d/empty").is_dir
    assert _paths(files.list(WS, "/dbfs/moved/d")) == [
        "/dbfs/moved/d/empty",
        "/dbfs/moved/d/sub",
        "/dbfs/moved/d/x",
    ]
    for path in ("/dbfs/d", "/dbfs/d/x", "/dbfs/d/sub"):
        with pytest.raises(FileMissing):
            files.stat(WS, path)
    assert files.read(WS, "/dbfs/d2/keep") == b"k"


def test_move_onto_an_existing_path(files: FileStore) -> None:
    files.write(WS, "/dbfs/a", b"a", overwrite=False)
    files.write(WS, "/dbfs/b", b"b", overwrite=False)
    files.mkdirs(WS, "/dbfs/emptydir")
    files.write(WS, "/dbfs/d/x", b"x", overwrite=False)
    for src, dst in [
        ("/dbfs/a", "/dbfs/b"),
        ("/dbfs/a", "/dbfs/emptydir"),
        ("/dbfs/a", "/dbfs/a"),
        ("/dbfs/d", "/dbfs/emptydir"),
        ("/dbfs/d", "/dbfs/b"),
        ("/dbfs/d", "/"),
    ]:
        with pytest.raises(FileExists):
            files.move(WS, src, dst)
    assert files.read(WS, "/dbfs/a") == b"a"
    assert files.read(WS, "/dbfs/b") == b"b"
    assert files.read(WS, "/dbfs/d/x") == b"x"
    assert files.list(WS, "/dbfs/emptydir") == []


def test_move_missing_or_into_itself(files: FileStore) -> None:
    with pytest.raises(FileMissing):
        files.move(WS, "/dbfs/nope", "/dbfs/b")
    files.write(WS, "/dbfs/d/x", b"x", overwrite=False)
    files.write(WS, "/dbfs/f", b"f", overwrite=False)
    with pytest.raises(ValueError):
        files.move(WS, "/dbfs/d", "/dbfs/d/inside")
    with pytest.raises(FileMissing):
        files.move(WS, "/dbfs/d/x", "/dbfs/f/under")
    with pytest.raises(ValueError):
        files.move(WS, "/", "/dbfs/root")
    assert files.read(WS, "/dbfs/d/x") == b"x"


# --------------------------------------------------------------------------------------------
# Streaming uploads.


def _blocks(total: int, size: int) -> list[bytes]:
    data = os.urandom(total)
    return [data[i : i + size] for i in range(0, total, size)]


def test_staged_upload(files: FileStore) -> None:
    blocks = _blocks(5 * MB, MB - 7)  # six blocks, the last one short
    # Staged out of order, one of them twice (the second one counts).
    order = [*range(len(blocks))][::-1]
    files.stage_block(WS, "up-1", 2, b"replaced below")
    for i in order:
        files.stage_block(WS, "up-1", i, blocks[i])
    with pytest.raises(FileMissing):
        files.stat(WS, "/dbfs/big.bin")  # nothing visible before the commit
    info = files.commit_upload(WS, "up-1", "/dbfs/big.bin", len(blocks), overwrite=False)
    assert (info.path, info.is_dir, info.size) == ("/dbfs/big.bin", False, 5 * MB)
    assert files.read(WS, "/dbfs/big.bin") == b"".join(blocks)
    assert files.read(WS, "/dbfs/big.bin", offset=MB, length=10) == b"".join(blocks)[MB : MB + 10]
    # The blocks are gone: the same upload id cannot be committed again.
    with pytest.raises(FileMissing):
        files.commit_upload(WS, "up-1", "/dbfs/again.bin", len(blocks), overwrite=False)
    assert _paths(files.list(WS, "/dbfs")) == ["/dbfs/big.bin"]


def test_upload_of_no_blocks_is_an_empty_file(files: FileStore) -> None:
    info = files.commit_upload(WS, "never-staged", "/dbfs/empty", 0, overwrite=False)
    assert info.size == 0
    assert files.read(WS, "/dbfs/empty") == b""


def test_commit_with_a_missing_block(files: FileStore) -> None:
    files.stage_block(WS, "up", 0, b"zero")
    files.stage_block(WS, "up", 2, b"two")
    with pytest.raises(FileMissing):
        files.commit_upload(WS, "up", "/dbfs/new/f", 3, overwrite=False)
    with pytest.raises(FileMissing):
        files.stat(WS, "/dbfs/new/f")
    with pytest.raises(FileMissing):
        files.stat(WS, "/dbfs/new")
    assert files.list(WS, "/") == []
    # The staged blocks are still there: stage the missing one and commit.
    files.stage_block(WS, "up", 1, b"one")
    files.commit_upload(WS, "up", "/dbfs/new/f", 3, overwrite=False)
    assert files.read(WS, "/dbfs/new/f") == b"zeroonetwo"


def test_commit_onto_existing_paths(files: FileStore) -> None:
    files.write(WS, "/dbfs/f", b"old", overwrite=False)
    files.mkdirs(WS, "/dbfs/d")
    files.stage_block(WS, "up", 0, b"new")
    with pytest.raises(FileExists):
        files.commit_upload(WS, "up", "/dbfs/f", 1, overwrite=False)
    with pytest.raises(FileExists):
        files.commit_upload(WS, "up", "/dbfs/d", 1, overwrite=True)
    with pytest.raises(FileMissing):
        files.commit_upload(WS, "up", "/dbfs/f/under", 1, overwrite=True)
    assert files.read(WS, "/dbfs/f") == b"old"
    files.commit_upload(WS, "up", "/dbfs/f", 1, overwrite=True)
    assert files.read(WS, "/dbfs/f") == b"new"


def test_discard_upload(files: FileStore) -> None:
    files.stage_block(WS, "up", 0, b"zero")
    files.stage_block(WS, "other", 0, b"other")
    files.discard_upload(WS, "up")
    files.discard_upload(WS, "up")  # again: fine
    files.discard_upload(WS, "unknown")
    with pytest.raises(FileMissing):
        files.commit_upload(WS, "up", "/dbfs/f", 1, overwrite=False)
    assert files.list(WS, "/") == []
    files.commit_upload(WS, "other", "/dbfs/o", 1, overwrite=False)
    assert files.read(WS, "/dbfs/o") == b"other"


def test_uploads_are_per_workspace(files: FileStore) -> None:
    files.stage_block(WS, "up", 0, b"mine")
    with pytest.raises(FileMissing):
        files.commit_upload(OTHER, "up", "/dbfs/f", 1, overwrite=False)
    with pytest.raises(FileMissing):
        files.stat(OTHER, "/dbfs/f")
    files.commit_upload(WS, "up", "/dbfs/f", 1, overwrite=False)
    assert files.read(WS, "/dbfs/f") == b"mine"


def test_staged_blocks_are_never_listed(files: FileStore) -> None:
    files.write(WS, "/dbfs/f", b"x", overwrite=False)
    files.stage_block(WS, "up", 0, b"staged")
    assert _paths(files.list(WS, "/")) == ["/dbfs"]
    assert _paths(files.list(WS, "/dbfs")) == ["/dbfs/f"]


# --------------------------------------------------------------------------------------------
# Workspaces and paths.


def test_workspaces_are_isolated(files: FileStore) -> None:
    files.write(WS, "/dbfs/same", b"in ws-1", overwrite=False)
    files.write(OTHER, "/dbfs/same", b"in the other", overwrite=False)
    files.write(OTHER, "/dbfs/only-other", b"o", overwrite=False)
    assert files.read(WS, "/dbfs/same") == b"in ws-1"
    assert files.read(OTHER, "/dbfs/same") == b"in the other"
    assert _paths(files.list(WS, "/dbfs")) == ["/dbfs/same"]
    files.stage_block(WS, "up", 0, b"staged")

    files.delete_workspace(WS)
    assert files.list(WS, "/") == []
    with pytest.raises(FileMissing):
        files.read(WS, "/dbfs/same")
    with pytest.raises(FileMissing):
        files.commit_upload(WS, "up", "/dbfs/f", 1, overwrite=False)
    assert files.read(OTHER, "/dbfs/same") == b"in the other"
    assert _paths(files.list(OTHER, "/dbfs")) == ["/dbfs/only-other", "/dbfs/same"]
    files.delete_workspace(WS)  # again: fine
    # A deleted workspace can be written again, from empty.
    files.write(WS, "/dbfs/same", b"again", overwrite=False)
    assert files.read(WS, "/dbfs/same") == b"again"


def test_workspace_ids_that_look_like_paths(files: FileStore) -> None:
    odd = ["..", ".", "a/b", "/", "ws-1/..", "ws 1", "ümlaut", "x" * 300]
    for i, ws in enumerate(odd):
        files.write(ws, "/dbfs/f", str(i).encode(), overwrite=False)
    for i, ws in enumerate(odd):
        assert files.read(ws, "/dbfs/f") == str(i).encode()
        assert _paths(files.list(ws, "/")) == ["/dbfs"]
    with pytest.raises(FileMissing):
        files.stat(WS, "/dbfs/f")
    for ws in odd:
        files.delete_workspace(ws)


NOT_NORMAL = [
    "",
    "dbfs/a",
    "/dbfs/a/",
    "//dbfs/a",
    "/dbfs//a",
    "/dbfs/./a",
    "/dbfs/../a",
    "/..",
    "/dbfs/a\x00b",
    "/dbfs/a\\b",
    "/dbfs/a\nb",
    "dbfs:/a",
]


@pytest.mark.parametrize("path", NOT_NORMAL)
def test_paths_not_in_normal_form_are_refused(files: FileStore, path: str) -> None:
    files.write(WS, "/dbfs/a", b"x", overwrite=False)
    calls: list[Callable[[], object]] = [
        lambda: files.write(WS, path, b"x", overwrite=True),
        lambda: files.read(WS, path),
        lambda: files.stat(WS, path),
        lambda: files.list(WS, path),
        lambda: files.mkdirs(WS, path),
        lambda: files.delete(WS, path, recursive=True),
        lambda: files.move(WS, path, "/dbfs/b"),
        lambda: files.move(WS, "/dbfs/a", path),
        lambda: files.commit_upload(WS, "up", path, 0, overwrite=True),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()
    assert files.read(WS, "/dbfs/a") == b"x"
    assert _paths(files.list(WS, "/")) == ["/dbfs"]


# --------------------------------------------------------------------------------------------
# The local adapter only: modes, symlinks, failed writes.


@pytest.fixture
def local(tmp_path: Path) -> Any:
    from shared.adapters.local_files import LocalFileStore

    return LocalFileStore(tmp_path / "files")


def _tree(root: Path) -> list[tuple[str, int]]:
    """Every entry below root with its permission bits."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            out.append((str(p.relative_to(root)), stat.S_IMODE(p.lstat().st_mode)))
    return out


def test_local_modes_ignore_the_umask(local: Any, tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        local.write(WS, "/dbfs/a/b", b"x", overwrite=False)
        local.mkdirs(WS, "/workspace/u/v")
        local.stage_block(WS, "up", 0, b"y")
        local.commit_upload(WS, "up", "/dbfs/c", 1, overwrite=False)
        local.stage_block(WS, "pending", 0, b"z")
        local.move(WS, "/dbfs/a", "/dbfs/moved/a")
    finally:
        os.umask(old)
    root = tmp_path / "files"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    entries = _tree(root)
    assert len(entries) > 8
    for rel, mode in entries:
        expected = 0o700 if (root / rel).is_dir() else 0o600
        assert mode == expected, rel


def _workspace_dir(root: Path) -> Path:
    (ws,) = [p for p in root.iterdir() if not p.name.startswith(".")]
    return ws


def test_local_workspace_directory_names_are_safe(local: Any, tmp_path: Path) -> None:
    local.write("../../escape", "/dbfs/f", b"x", overwrite=False)
    local.write("a/b", "/dbfs/f", b"x", overwrite=False)
    root = tmp_path / "files"
    names = sorted(p.name for p in root.iterdir())
    assert len(names) == 2
    for name in names:
        assert "/" not in name and not name.startswith(".")
    assert not (tmp_path / "escape").exists()


def test_local_symlinks_are_never_followed(local: Any, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    local.write(WS, "/dbfs/real/f", b"real", overwrite=False)
    tree = _workspace_dir(tmp_path / "files") / "tree"
    # Someone with access to the directory plants links to a directory and a file outside.
    (tree / "dbfs" / "linkdir").symlink_to(outside)
    (tree / "dbfs" / "linkfile").symlink_to(outside / "secret")
    (tree / "dbfs" / "real" / "up").symlink_to("../..", target_is_directory=True)

    for path in ("/dbfs/linkfile", "/dbfs/linkdir/secret", "/dbfs/real/up/real/f"):
        with pytest.raises(FileMissing):
            local.read(WS, path)
        with pytest.raises(FileMissing):
            local.stat(WS, path)
    with pytest.raises(FileMissing):
        local.stat(WS, "/dbfs/linkdir")
    with pytest.raises(FileMissing):
        local.list(WS, "/dbfs/linkdir")
    # Links are not listed.
    assert _paths(local.list(WS, "/dbfs")) == ["/dbfs/real"]
    assert _paths(local.list(WS, "/dbfs/real")) == ["/dbfs/real/f"]
    # Nothing is written, made, moved or deleted through them.
    with pytest.raises(FileMissing):
        local.write(WS, "/dbfs/linkdir/new", b"x", overwrite=True)
    with pytest.raises(FileExists):
        local.mkdirs(WS, "/dbfs/linkdir/sub")
    with pytest.raises(FileMissing):
        local.delete(WS, "/dbfs/linkdir/secret", recursive=True)
    with pytest.raises(FileMissing):
        local.delete(WS, "/dbfs/linkdir", recursive=True)
    with pytest.raises(FileMissing):
        local.move(WS, "/dbfs/linkdir/secret", "/dbfs/stolen")
    with pytest.raises(FileMissing):
        local.move(WS, "/dbfs/real/f", "/dbfs/linkdir/f")
    local.stage_block(WS, "up", 0, b"u")
    with pytest.raises(FileMissing):
        local.commit_upload(WS, "up", "/dbfs/linkdir/f", 1, overwrite=True)
    # Writing over a link replaces the link itself, never its target.
    local.write(WS, "/dbfs/linkfile", b"replaced", overwrite=True)
    assert local.read(WS, "/dbfs/linkfile") == b"replaced"
    assert not (tree / "dbfs" / "linkfile").is_symlink()
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (outside / "secret").read_bytes() == b"secret"
    # A recursive delete of a directory holding a link removes the link, not its target.
    local.delete(WS, "/dbfs/real", recursive=True)
    assert (outside / "secret").read_bytes() == b"secret"
    local.delete_workspace(WS)
    assert (outside / "secret").read_bytes() == b"secret"


def test_local_symlinked_workspace_directory_is_not_followed(local: Any, tmp_path: Path) -> None:
    local.write(WS, "/dbfs/f", b"x", overwrite=False)
    ws_dir = _workspace_dir(tmp_path / "files")
    outside = tmp_path / "outside"
    (outside / "tree" / "dbfs").mkdir(parents=True)
    (outside / "tree" / "dbfs" / "f").write_bytes(b"outside")
    ws_dir.rename(tmp_path / "moved-away")
    ws_dir.symlink_to(outside, target_is_directory=True)
    with pytest.raises(OSError):
        local.read(WS, "/dbfs/f")
    with pytest.raises(OSError):
        local.write(WS, "/dbfs/g", b"x", overwrite=False)
    assert sorted(p.name for p in (outside / "tree" / "dbfs").iterdir()) == ["f"]


def test_local_failed_write_leaves_nothing_visible(local: Any, tmp_path: Path) -> None:
    local.write(WS, "/dbfs/f", b"old", overwrite=False)

    def chunks() -> Iterator[bytes]:
        yield b"partial new content"
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        local._put(WS, "/dbfs/f", ["dbfs", "f"], chunks(), overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        local._put(WS, "/dbfs/new/g", ["dbfs", "new", "g"], chunks(), overwrite=True)
    assert local.read(WS, "/dbfs/f") == b"old"
    assert _paths(local.list(WS, "/dbfs")) == ["/dbfs/f"]
    staging = _workspace_dir(tmp_path / "files") / "staging"
    assert list(staging.iterdir()) == []


def test_local_delete_workspace_removes_everything(local: Any, tmp_path: Path) -> None:
    local.write(WS, "/dbfs/a/b", b"x", overwrite=False)
    local.stage_block(WS, "up", 0, b"y")
    local.write(OTHER, "/dbfs/a/b", b"x", overwrite=False)
    local.delete_workspace(WS)
    assert len(list((tmp_path / "files").iterdir())) == 1
    local.delete_workspace(OTHER)
    assert list((tmp_path / "files").iterdir()) == []
