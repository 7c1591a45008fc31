"""The local `FileStore`: each workspace's files in a directory of its own on this machine.

Layout under `root` (every directory 0700, every file 0600, set explicitly, whatever the umask):

    <root>/<workspace dir>/tree/...            the workspace's "/" (what users read and write)
    <root>/<workspace dir>/staging/<n>.tmp     files being written, directories being deleted
    <root>/<workspace dir>/uploads/<u>/<i>     block i of streaming upload u

A workspace id is an opaque string: its directory is a readable prefix (the id's letters,
digits, "-" and "_", at most 32) plus a SHA-256 of the whole id, so no id names another
workspace's directory or anything outside `root`. Upload ids are hashed the same way.

Paths: only the normal form of shared/domain/paths.py is accepted (ValueError otherwise), and
every path is walked one segment at a time from a directory file descriptor with
O_NOFOLLOW (`os.open(name, dir_fd=...)`): a symlink (or FIFO, socket, device) someone else put
into a workspace is never followed or opened. Such entries are not the store's own: they are
not listed and read as missing; a directory is never walked through one. The staging and
upload areas sit beside `tree`, so no user path reaches them, whatever its name.

Nothing is visible half-written: `write`, `stage_block` and `commit_upload` write a temporary
file in the workspace's staging area, fsync it and rename it into place (the same file system,
so the rename is atomic); overwrite=False publishes with link(2), which fails if anything holds
the name. A failure before the rename leaves the old file as it was. A recursive delete first
renames the directory into the staging area (it disappears at once), then removes it there;
`move` is renameat2(RENAME_NOREPLACE) where the kernel has it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

from shared.domain.paths import id_segment, store_parts
from shared.ports import DirectoryNotEmpty, FileExists, FileInfo, FileMissing

_DIR_MODE = 0o700
_FILE_MODE = 0o600
_TREE, _STAGING, _UPLOADS = "tree", "staging", "uploads"
_CHUNK = 1 << 20

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO someone planted must not hang (the fstat then refuses it).
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@contextlib.contextmanager
def _fd(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def _made(fd: int | None) -> int:
    """An area opened with create=True, which is never None."""
    assert fd is not None
    return fd


def _ms(st: os.stat_result) -> int:
    return st.st_mtime_ns // 1_000_000


def _lstat(fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None  # absent: the caller decides what that means


def _open_dir(fd: int, name: str, *, create: bool) -> int:
    """The directory `name` in `fd` (made 0700 if `create`). NotADirectoryError when something
    else holds the name (a file, a symlink: O_NOFOLLOW refuses it)."""
    try:
        return os.open(name, _O_DIR, dir_fd=fd)
    except FileNotFoundError:
        if not create:
            raise
    # Made concurrently (or a file is there: the open below says so).
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, _DIR_MODE, dir_fd=fd)
    sub = os.open(name, _O_DIR, dir_fd=fd)
    os.fchmod(sub, _DIR_MODE)
    return sub


def _walk(top: int, parts: list[str], *, create: bool, blocked: type[Exception]) -> int:
    """A new fd of the directory `parts` names below `top`. A missing directory is FileMissing
    (made, if `create`); a file or anything else in the way is `blocked`."""
    fd = os.dup(top)
    try:
        for i, name in enumerate(parts):
            try:
                sub = _open_dir(fd, name, create=create)
            except FileNotFoundError:
                raise FileMissing("/" + "/".join(parts[: i + 1])) from None
            except OSError as e:
                # ENOTDIR: a file or symlink stands there; ELOOP: a symlink (without O_DIRECTORY).
                if e.errno in (errno.ENOTDIR, errno.ELOOP):
                    raise blocked(f"not a directory: /{'/'.join(parts[: i + 1])}") from None
                raise
            os.close(fd)
            fd = sub
        return fd
    except BaseException:
        os.close(fd)
        raise


def _fsync_dir(fd: int) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot fsync a directory
        os.fsync(fd)


_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)
_RENAME_NOREPLACE = 1


def _rename_noreplace(src_fd: int, src: str, dst_fd: int, dst: str) -> None:
    """rename(2) that fails with FileExistsError when `dst` exists, atomically where the kernel
    and file system have RENAME_NOREPLACE; elsewhere a check then a rename (a race remains
    only with a concurrent create of `dst`)."""
    if _renameat2 is not None:
        rc = _renameat2(src_fd, os.fsencode(src), dst_fd, os.fsencode(dst), _RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), dst)
        # EINVAL/ENOSYS/EOPNOTSUPP: no RENAME_NOREPLACE here; the fallback below.
    if _lstat(dst_fd, dst) is not None:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
    os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)


class LocalFileStore:
    """`FileStore` on the local file system; see the module docstring for the layout."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, _DIR_MODE)

    # ------------------------------------------------------------------------ directories

    def _root_fd(self) -> int:
        return os.open(self.root, _O_DIR)

    @contextlib.contextmanager
    def _workspace(self, workspace_id: str, *, create: bool) -> Iterator[int | None]:
        """The workspace directory's fd (None when it does not exist and `create` is off)."""
        with _fd(self._root_fd()) as root:
            try:
                ws = _open_dir(root, id_segment(workspace_id), create=create)
            except FileNotFoundError:
                yield None  # nothing was ever written: an empty workspace
                return
            with _fd(ws):
                yield ws

    @contextlib.contextmanager
    def _area(self, workspace_id: str, area: str, *, create: bool) -> Iterator[int | None]:
        with self._workspace(workspace_id, create=create) as ws:
            if ws is None:
                yield None
                return
            try:
                fd = _open_dir(ws, area, create=create)
            except FileNotFoundError:
                yield None  # an area not made yet is empty
                return
            with _fd(fd):
                yield fd

    @contextlib.contextmanager
    def _parent(self, workspace_id: str, parts: list[str]) -> Iterator[int]:
        """The fd of the existing parent directory of `parts` in the tree (FileMissing if
        there is none, or a file is in the way)."""
        with self._area(workspace_id, _TREE, create=False) as tree:
            if tree is None:
                raise FileMissing("/" + "/".join(parts))
            with _fd(_walk(tree, parts[:-1], create=False, blocked=FileMissing)) as parent:
                yield parent

    # ------------------------------------------------------------------------ temporary files

    @staticmethod
    def _new_temp(staging: int) -> tuple[str, int]:
        name = f"{uuid.uuid4().hex}.tmp"
        fd = os.open(name, _O_NEW, _FILE_MODE, dir_fd=staging)
        os.fchmod(fd, _FILE_MODE)
        return name, fd

    @staticmethod
    def _publish(
        staging: int, temp: str, parent: int, name: str, path: str, *, overwrite: bool
    ) -> None:
        """Move the finished temporary file to `name` in `parent` in one step."""
        try:
            if overwrite:
                target = _lstat(parent, name)
                if target is not None and stat.S_ISDIR(target.st_mode):
                    raise FileExists(f"a directory exists at {path}")
                # rename(2) replaces a file (or a planted symlink itself, never its target).
                os.rename(temp, name, src_dir_fd=staging, dst_dir_fd=parent)
            else:
                # link(2) fails if anything holds the name: no check-then-write race.
                os.link(temp, name, src_dir_fd=staging, dst_dir_fd=parent, follow_symlinks=False)
        except IsADirectoryError:
            raise FileExists(f"a directory exists at {path}") from None
        except FileExistsError:
            raise FileExists(f"{path} exists") from None
        _fsync_dir(parent)

    def _put(
        self,
        workspace_id: str,
        path: str,
        parts: list[str],
        chunks: Iterator[bytes],
        *,
        overwrite: bool,
    ) -> FileInfo:
        """Write the chunks to a temporary file, then (only then) make the parents and publish
        it: a failure on the way leaves the tree as it was."""
        if not parts:
            raise FileExists("/ is a directory")
        with self._area(workspace_id, _STAGING, create=True) as staging:
            assert staging is not None
            temp, st = self._write_temp(staging, chunks)
            try:
                with (
                    self._area(workspace_id, _TREE, create=True) as tree,
                    _fd(_walk(_made(tree), parts[:-1], create=True, blocked=FileMissing)) as parent,
                ):
                    self._publish(staging, temp, parent, parts[-1], path, overwrite=overwrite)
            finally:
                with contextlib.suppress(FileNotFoundError):  # renamed: nothing left to remove
                    os.unlink(temp, dir_fd=staging)
        return FileInfo(path=path, is_dir=False, size=st.st_size, modified_ms=_ms(st))

    def _write_temp(self, staging: int, chunks: Iterator[bytes]) -> tuple[str, os.stat_result]:
        """A fsynced temporary file of the chunks (removed again if anything fails)."""
        name, fd = self._new_temp(staging)
        try:
            with _fd(fd):
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                os.fsync(fd)
                return name, os.fstat(fd)
        except BaseException:
            os.unlink(name, dir_fd=staging)
            raise

    # ------------------------------------------------------------------------ the port

    def write(self, workspace_id: str, path: str, data: bytes, *, overwrite: bool) -> FileInfo:
        return self._put(workspace_id, path, store_parts(path), iter((data,)), overwrite=overwrite)

    def read(self, workspace_id: str, path: str, offset: int = 0, length: int = -1) -> bytes:
        parts = store_parts(path)
        if offset < 0 or length < -1:
            raise ValueError("offset must be >= 0 and length >= -1")
        if not parts:
            raise FileExists("/ is a directory")
        with self._parent(workspace_id, parts) as parent:
            try:
                fd = os.open(parts[-1], _O_READ, dir_fd=parent)
            except FileNotFoundError:
                raise FileMissing(path) from None
            except OSError as e:
                if e.errno == errno.ELOOP:  # a symlink: not ours, never followed
                    raise FileMissing(path) from None
                raise
            with _fd(fd):
                st = os.fstat(fd)
                if stat.S_ISDIR(st.st_mode):
                    raise FileExists(f"{path} is a directory")
                if not stat.S_ISREG(st.st_mode):
                    raise FileMissing(path)  # a FIFO, socket or device: not ours
                end = st.st_size if length == -1 else min(st.st_size, offset + length)
                out = bytearray()
                while offset + len(out) < end:
                    chunk = os.pread(fd, min(_CHUNK, end - offset - len(out)), offset + len(out))
                    if not chunk:
                        break  # truncated meanwhile (only by someone else): what there is
                    out += chunk
                return bytes(out)

    def stat(self, workspace_id: str, path: str) -> FileInfo:
        parts = store_parts(path)
        if not parts:
            return FileInfo(path="/", is_dir=True)
        with self._parent(workspace_id, parts) as parent:
            return self._info(path, _lstat(parent, parts[-1]))

    @staticmethod
    def _info(path: str, st: os.stat_result | None) -> FileInfo:
        if st is None:
            raise FileMissing(path)
        if stat.S_ISDIR(st.st_mode):
            return FileInfo(path=path, is_dir=True, modified_ms=_ms(st))
        if stat.S_ISREG(st.st_mode):
            return FileInfo(path=path, is_dir=False, size=st.st_size, modified_ms=_ms(st))
        raise FileMissing(path)  # a symlink or other special file: not ours

    def list(self, workspace_id: str, path: str) -> list[FileInfo]:
        parts = store_parts(path)
        with self._area(workspace_id, _TREE, create=False) as tree:
            if tree is None:
                if parts:
                    raise FileMissing(path)
                return []  # the root of a workspace with nothing in it
            with _fd(_walk(tree, parts[:-1], create=False, blocked=FileMissing)) as parent:
                if parts:
                    info = self._info(path, _lstat(parent, parts[-1]))
                    if not info.is_dir:
                        return [info]
                    try:
                        directory = _open_dir(parent, parts[-1], create=False)
                    except (FileNotFoundError, NotADirectoryError):
                        raise FileMissing(path) from None  # replaced since the lstat
                else:
                    directory = os.dup(parent)
                with _fd(directory):
                    prefix = path.rstrip("/") + "/"
                    out = []
                    with os.scandir(directory) as entries:
                        for entry in entries:
                            st = entry.stat(follow_symlinks=False)
                            if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
                                out.append(self._info(prefix + entry.name, st))
        return sorted(out, key=lambda i: i.path)

    def mkdirs(self, workspace_id: str, path: str) -> None:
        parts = store_parts(path)
        with self._area(workspace_id, _TREE, create=True) as tree:
            assert tree is not None
            os.close(_walk(tree, parts, create=True, blocked=FileExists))

    def delete(self, workspace_id: str, path: str, *, recursive: bool) -> None:
        parts = store_parts(path)
        if not parts:
            raise ValueError("the root of a workspace cannot be deleted")
        with (
            self._parent(workspace_id, parts) as parent,
            self._area(workspace_id, _STAGING, create=True) as staging,
        ):
            name = parts[-1]
            if not self._info(path, _lstat(parent, name)).is_dir:
                try:
                    os.unlink(name, dir_fd=parent)
                except FileNotFoundError:
                    raise FileMissing(path) from None  # deleted concurrently
                return
            if not recursive:
                try:
                    os.rmdir(name, dir_fd=parent)
                except FileNotFoundError:
                    raise FileMissing(path) from None  # deleted concurrently
                except OSError as e:
                    if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                        raise DirectoryNotEmpty(path) from None
                    raise
                return
            # Out of sight in one rename, then removed where nobody can see it.
            doomed = f"{uuid.uuid4().hex}.del"
            try:
                os.rename(name, doomed, src_dir_fd=parent, dst_dir_fd=staging)
            except FileNotFoundError:
                raise FileMissing(path) from None  # deleted concurrently
            shutil.rmtree(doomed, dir_fd=staging)

    def move(self, workspace_id: str, src: str, dst: str) -> None:
        src_parts, dst_parts = store_parts(src), store_parts(dst)
        if not src_parts:
            raise ValueError("the root of a workspace cannot be moved")
        if not dst_parts:
            raise FileExists("/ exists")
        if dst.startswith(src + "/"):
            raise ValueError(f"cannot move {src} into itself ({dst})")
        with self._area(workspace_id, _TREE, create=False) as tree:
            if tree is None:
                raise FileMissing(src)
            with _fd(_walk(tree, src_parts[:-1], create=False, blocked=FileMissing)) as sp:
                self._info(src, _lstat(sp, src_parts[-1]))  # FileMissing unless ours
                with _fd(_walk(tree, dst_parts[:-1], create=True, blocked=FileMissing)) as dp:
                    try:
                        _rename_noreplace(sp, src_parts[-1], dp, dst_parts[-1])
                    except FileNotFoundError:
                        raise FileMissing(src) from None  # moved or deleted concurrently
                    except OSError as e:
                        if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                            raise FileExists(f"{dst} exists") from None
                        raise
                    _fsync_dir(dp)

    # ------------------------------------------------------------------------ uploads

    def stage_block(self, workspace_id: str, upload_id: str, index: int, data: bytes) -> None:
        if index < 0:
            raise ValueError("a block index is >= 0")
        with (
            self._area(workspace_id, _UPLOADS, create=True) as uploads,
            self._area(workspace_id, _STAGING, create=True) as staging,
        ):
            assert uploads is not None and staging is not None
            with _fd(_open_dir(uploads, id_segment(upload_id, 16), create=True)) as upload:
                temp, _ = self._write_temp(staging, iter((data,)))
                try:
                    os.rename(temp, str(index), src_dir_fd=staging, dst_dir_fd=upload)
                except BaseException:
                    os.unlink(temp, dir_fd=staging)
                    raise

    def commit_upload(
        self, workspace_id: str, upload_id: str, path: str, blocks: int, *, overwrite: bool
    ) -> FileInfo:
        parts = store_parts(path)
        if blocks < 0:
            raise ValueError("blocks must be >= 0")
        upload_name = id_segment(upload_id, 16)
        with self._area(workspace_id, _UPLOADS, create=True) as uploads:
            assert uploads is not None
            try:
                upload = _open_dir(uploads, upload_name, create=blocks == 0)
            except (FileNotFoundError, NotADirectoryError):
                raise FileMissing(f"upload {upload_id!r} has no blocks") from None
            with _fd(upload):
                info = self._put(
                    workspace_id,
                    path,
                    parts,
                    self._blocks(upload, upload_id, blocks),
                    overwrite=overwrite,
                )
            shutil.rmtree(upload_name, dir_fd=uploads)
        return info

    @staticmethod
    def _blocks(upload: int, upload_id: str, blocks: int) -> Iterator[bytes]:
        for index in range(blocks):
            try:
                fd = os.open(str(index), _O_READ, dir_fd=upload)
            except FileNotFoundError:  # never staged (or discarded)
                raise FileMissing(f"block {index} of upload {upload_id!r} is missing") from None
            with _fd(fd), os.fdopen(os.dup(fd), "rb") as f:
                while chunk := f.read(_CHUNK):
                    yield chunk

    def discard_upload(self, workspace_id: str, upload_id: str) -> None:
        with self._area(workspace_id, _UPLOADS, create=False) as uploads:
            if uploads is not None:
                with contextlib.suppress(FileNotFoundError):  # unknown upload: nothing to drop
                    shutil.rmtree(id_segment(upload_id, 16), dir_fd=uploads)

    def delete_workspace(self, workspace_id: str) -> None:
        with _fd(self._root_fd()) as root:
            # Out of sight in one rename (hidden names are never a workspace's), then removed.
            doomed = f".deleting-{uuid.uuid4().hex}"
            with contextlib.suppress(FileNotFoundError):  # nothing was written, or gone already
                os.rename(id_segment(workspace_id), doomed, src_dir_fd=root, dst_dir_fd=root)
            # This removal and any a crash interrupted (a deletion is retried until it ends).
            for name in os.listdir(root):
                if name.startswith(".deleting-"):
                    with contextlib.suppress(FileNotFoundError):  # a concurrent call's
                        shutil.rmtree(name, dir_fd=root)
