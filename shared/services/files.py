"""Each workspace's files: the DBFS API 2.0, the Workspace API's file operations, and the file
a job task runs (`read_task_file`), over the FileStore port.

Paths go through shared/domain/paths.py (normalised, confined to the caller's workspace);
sizes, formats and answer shapes are shared/domain/files.py's. Streaming uploads
(create/add-block/close) keep each handle as a Store document ("dbfs_handle", partition = the
workspace), so any function instance can serve the next call; the blocks are staged in the
FileStore and published by `commit_upload` as one file, so nothing half-written is visible.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import secrets
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from shared.domain import files as dom
from shared.domain import paths
from shared.domain import quotas as quota
from shared.errors import (
    DirectoryNotEmpty,
    FileAlreadyExists,
    InvalidParameterValue,
    InvalidState,
    IoError,
    MaxBlockSizeExceeded,
    MaxNotebookSizeExceeded,
    QuotaExceeded,
    ResourceDoesNotExist,
    TooLarge,
)
from shared.ports import (
    AlreadyExists,
    Clock,
    FileExists,
    FileInfo,
    FileMissing,
    FileStore,
    NotFound,
    PreconditionFailed,
    Record,
    Store,
)
from shared.ports import DirectoryNotEmpty as StoreDirectoryNotEmpty
from shared.services.auth import Principal
from shared.services.documents import ATTEMPTS, retry_on_conflict

if TYPE_CHECKING:
    from shared.services.quotas import QuotaService

log = logging.getLogger("sparkplane.files")

HANDLE_KIND = "dbfs_handle"
# Tries of one compare-and-swap on a handle document before the caller gets ABORTED.
DBFS: paths.Root = "dbfs"
WORKSPACE: paths.Root = "workspace"


def _shown(root: paths.Root, user: str) -> str:
    return f"dbfs:{user}" if root == DBFS else user


class FilesService:
    def __init__(
        self, files: FileStore, store: Store, clock: Clock, *, quotas: QuotaService | None = None
    ) -> None:
        self.files = files
        self.store = store
        self.clock = clock
        self.quotas = quotas

    @contextlib.contextmanager
    def _room(self, p: Principal, store_path: str | None, adding: int) -> Iterator[None]:
        """Hold the workspace's file-bytes quota while `adding` bytes are written at
        `store_path` (the file they replace does not count)."""
        if self.quotas is None:
            yield
            return
        with self.quotas.admit(p.workspace_id, "files") as q:
            used = self.quotas.file_bytes(p.workspace_id)
            try:
                old = self.files.stat(p.workspace_id, store_path) if store_path else None
            except FileMissing:  # a new file: nothing is replaced
                old = None
            if old is not None and not old.is_dir:
                used -= old.size
            quota.check_file_bytes(q, used, adding)
            yield

    # ------------------------------------------------------------------ shared by both APIs

    @staticmethod
    def _path(root: paths.Root, raw: Any, what: str = "path") -> tuple[str, str]:
        """(user-visible normal form, file-store path) of a request's path."""
        user = paths.dbfs(raw, what) if root == DBFS else paths.workspace(raw, what)
        return user, paths.store_path(root, user)

    @staticmethod
    def _implicit(p: Principal, root: paths.Root) -> frozenset[str]:
        """Folders that exist before anything is written: DBFS's root, the workspace's
        standard folders."""
        return frozenset({"/"}) if root == DBFS else paths.standard_folders(p.user)

    def _missing(self, root: paths.Root, user: str) -> ResourceDoesNotExist:
        if root == DBFS:
            shown = _shown(root, user)
            return ResourceDoesNotExist(f"No file or directory exists on path {shown}.")
        return ResourceDoesNotExist(f"Path ({user}) doesn't exist.")

    def _stat(self, p: Principal, root: paths.Root, user: str) -> FileInfo:
        sp = paths.store_path(root, user)
        try:
            return self.files.stat(p.workspace_id, sp)
        except FileMissing:
            if user in self._implicit(p, root):
                return FileInfo(sp, True)
            raise self._missing(root, user) from None

    def _entries(self, p: Principal, root: paths.Root, user: str) -> list[tuple[str, FileInfo]]:
        """A directory's entries as (user path, info), or a file as itself."""
        info = self._stat(p, root, user)
        if not info.is_dir:
            return [(user, info)]
        try:
            found = self.files.list(p.workspace_id, paths.store_path(root, user))
        except FileMissing:  # an implicit folder nothing was written to yet
            found = []
        out = {paths.user_path(root, f.path): f for f in found}
        for folder in self._implicit(p, root):
            if folder != "/" and paths.parent(folder) == user and folder not in out:
                out[folder] = FileInfo(paths.store_path(root, folder), True)
        return sorted(out.items())

    def _mkdirs(self, p: Principal, root: paths.Root, user: str) -> None:
        try:
            self.files.mkdirs(p.workspace_id, paths.store_path(root, user))
        except FileExists:  # a file at the path or at one of its parents
            raise FileAlreadyExists(
                f"A file exists at {_shown(root, user)} or at one of its parent paths."
            ) from None

    def _exists_error(self, root: paths.Root, user: str) -> FileAlreadyExists:
        return FileAlreadyExists(
            f"A file or directory already exists at the input path {_shown(root, user)}."
        )

    def _write(
        self, p: Principal, root: paths.Root, user: str, data: bytes, overwrite: bool
    ) -> None:
        if user in self._implicit(p, root):  # the root, a standard folder: never a file
            raise self._exists_error(root, user)
        sp = paths.store_path(root, user)
        try:
            with self._room(p, sp, len(data)):
                self.files.write(p.workspace_id, sp, data, overwrite=overwrite)
        except FileExists:  # a file without overwrite, or a directory at the path
            raise self._exists_error(root, user) from None
        except FileMissing:  # a file stands where one of its parent directories should be
            raise FileAlreadyExists(
                f"A parent of {_shown(root, user)} is a file, not a directory."
            ) from None

    # ------------------------------------------------------------------ DBFS API

    def dbfs_put(self, p: Principal, body: Mapping[str, Any]) -> dict[str, Any]:
        """`put` with base64 `contents` inline (at most 1 MB)."""
        user, _ = self._path(DBFS, body.get("path"))
        data = dom.b64(body.get("contents"), "contents", dom.MAX_BLOCK_BYTES, MaxBlockSizeExceeded)
        self._write(p, DBFS, user, data, dom.flag(body.get("overwrite"), "overwrite"))
        return {}

    def dbfs_put_form(self, p: Principal, fields: Mapping[str, Any], data: bytes) -> dict[str, Any]:
        """`put` as multipart/form-data: the file is a form part (the legacy CLI's `fs cp`)."""
        user, _ = self._path(DBFS, fields.get("path"))
        if len(data) > dom.MAX_FORM_PUT_BYTES:
            raise TooLarge(f"The file is larger than {dom.MAX_FORM_PUT_BYTES} bytes.")
        self._write(p, DBFS, user, data, dom.flag(fields.get("overwrite"), "overwrite"))
        return {}

    def dbfs_get_status(self, p: Principal, path: Any) -> dict[str, Any]:
        user, _ = self._path(DBFS, path)
        return dom.dbfs_file_info(user, self._stat(p, DBFS, user))

    def dbfs_list(self, p: Principal, path: Any) -> dict[str, Any]:
        user, _ = self._path(DBFS, path)
        return {"files": [dom.dbfs_file_info(u, i) for u, i in self._entries(p, DBFS, user)]}

    def dbfs_mkdirs(self, p: Principal, body: Mapping[str, Any]) -> dict[str, Any]:
        user, _ = self._path(DBFS, body.get("path"))
        self._mkdirs(p, DBFS, user)
        return {}

    def dbfs_delete(self, p: Principal, body: Mapping[str, Any]) -> dict[str, Any]:
        user, sp = self._path(DBFS, body.get("path"))
        recursive = dom.flag(body.get("recursive"), "recursive")
        if user == "/":
            raise InvalidParameterValue("The DBFS root cannot be deleted.")
        try:
            self.files.delete(p.workspace_id, sp, recursive=recursive)
        except FileMissing:
            pass  # Databricks answers a delete of a missing path with success
        except StoreDirectoryNotEmpty:
            raise IoError(
                f"Directory {_shown(DBFS, user)} is not empty: delete it with recursive=true."
            ) from None
        return {}

    def dbfs_move(self, p: Principal, body: Mapping[str, Any]) -> dict[str, Any]:
        src, src_sp = self._path(DBFS, body.get("source_path"), "source_path")
        dst, dst_sp = self._path(DBFS, body.get("destination_path"), "destination_path")
        if "/" in (src, dst):
            raise InvalidParameterValue("The DBFS root cannot be moved or replaced.")
        if dst == src or dst.startswith(src + "/"):
            raise InvalidParameterValue(f"Cannot move {src} into itself ({dst}).")
        self._stat(p, DBFS, src)  # RESOURCE_DOES_NOT_EXIST before anything else
        try:
            self.files.move(p.workspace_id, src_sp, dst_sp)
        except FileExists:  # the destination exists
            raise self._exists_error(DBFS, dst) from None
        except FileMissing:  # the source went meanwhile, or a parent of dst is a file
            self._stat(p, DBFS, src)
            raise FileAlreadyExists(
                f"A parent of {_shown(DBFS, dst)} is a file, not a directory."
            ) from None
        return {}

    def dbfs_read(self, p: Principal, path: Any, offset: Any, length: Any) -> dict[str, Any]:
        user, sp = self._path(DBFS, path)
        off, n = dom.read_range(offset, length)
        if n == 0:
            info = self._stat(p, DBFS, user)
            if info.is_dir:
                raise self._read_dir(user)
            return {"bytes_read": 0, "data": ""}
        try:
            data = self.files.read(p.workspace_id, sp, off, n)
        except FileMissing:
            raise self._missing(DBFS, user) from None
        except FileExists:  # the path is a directory
            raise self._read_dir(user) from None
        return {"bytes_read": len(data), "data": base64.b64encode(data).decode("ascii")}

    @staticmethod
    def _read_dir(user: str) -> InvalidParameterValue:
        return InvalidParameterValue(f"Cannot read {_shown(DBFS, user)}: it is a directory.")

    # ------------------------------------------------------------------ DBFS streaming upload

    def dbfs_create(self, p: Principal, body: Mapping[str, Any]) -> dict[str, Any]:
        user, sp = self._path(DBFS, body.get("path"))
        overwrite = dom.flag(body.get("overwrite"), "overwrite")
        try:
            info: FileInfo | None = self.files.stat(p.workspace_id, sp)
        except FileMissing:
            info = None
        if user == "/" or (info is not None and (info.is_dir or not overwrite)):
            raise self._exists_error(DBFS, user)
        now = self.clock.now_ms()
        doc = {
            "workspace_id": p.workspace_id,
            "path": user,
            "overwrite": overwrite,
            "blocks": 0,
            "upload_id": secrets.token_hex(16),
            "state": "open",
            "created_ms": now,
            "expires_ms": dom.handle_expiry(now),
        }
        for _ in range(ATTEMPTS):  # a fresh random handle each time
            handle = dom.new_handle()
            with contextlib.suppress(AlreadyExists):  # the one-in-2^62 collision: draw again
                self.store.create(
                    HANDLE_KIND,
                    p.workspace_id,
                    str(handle),
                    {**doc, "handle": handle},
                    ttl_s=dom.HANDLE_DOC_TTL_S,
                )
                return {"handle": handle}
        raise PreconditionFailed("could not draw a free upload handle")

    def _handle(self, p: Principal, raw: Any) -> Record:
        handle = dom.handle_id(raw)
        rec = self.store.get(HANDLE_KIND, p.workspace_id, str(handle))
        if rec is None or not dom.handle_live(rec.body, self.clock.now_ms()):
            raise ResourceDoesNotExist(f"The handle {handle} does not exist (or has expired).")
        return rec

    def _claim(self, p: Principal, raw: Any, **change: Any) -> tuple[Record, Record]:
        """Compare-and-swap the handle document: (before, after). Concurrent calls on one
        handle each get their own before; one that keeps losing gets ABORTED."""

        def step() -> tuple[Record, Record]:  # another call on this handle wrote first
            rec = self._handle(p, raw)
            body = {**rec.body, "expires_ms": dom.handle_expiry(self.clock.now_ms())}
            body.update({k: (v(rec.body) if callable(v) else v) for k, v in change.items()})
            return rec, self.store.replace(HANDLE_KIND, rec.pk, rec.id, body, etag=rec.etag)

        try:
            return retry_on_conflict(step, "the upload handle")
        except NotFound:  # closed (or swept) meanwhile
            raise ResourceDoesNotExist(
                f"The handle {raw} does not exist (or has expired)."
            ) from None

    def dbfs_add_block(self, p: Principal, body: Mapping[str, Any]) -> dict[str, Any]:
        data = dom.b64(body.get("data"), "data", dom.MAX_BLOCK_BYTES, MaxBlockSizeExceeded)
        # Claim the next block index first, then stage the block under it: two concurrent
        # add-blocks never share an index, so neither block overwrites the other.
        if self.quotas is not None:
            h = self._handle(p, body.get("handle")).body
            replaced = paths.store_path(DBFS, str(h["path"])) if h["overwrite"] else None
            with self._room(p, replaced, int(h.get("bytes", 0)) + len(data)):
                pass  # a block is only staged: the close that publishes it holds the quota
        before, _ = self._claim(
            p,
            body.get("handle"),
            blocks=lambda b: int(b["blocks"]) + 1,
            bytes=lambda b: int(b.get("bytes", 0)) + len(data),
        )
        index = int(before.body["blocks"])
        self.files.stage_block(p.workspace_id, before.body["upload_id"], index, data)
        return {}

    def dbfs_close(self, p: Principal, body: Mapping[str, Any]) -> dict[str, Any]:
        # "closing" first: an add-block that comes later finds no open handle.
        _, rec = self._claim(p, body.get("handle"), state="closing")
        b = rec.body
        user = str(b["path"])
        sp = paths.store_path(DBFS, user)
        try:
            with self._room(p, sp, int(b.get("bytes", 0))):
                self.files.commit_upload(
                    p.workspace_id,
                    b["upload_id"],
                    sp,
                    int(b["blocks"]),
                    overwrite=bool(b["overwrite"]),
                )
        except QuotaExceeded:  # nothing was published: the upload is over
            self._drop_handle(p, rec)
            raise
        except FileExists:  # created meanwhile without overwrite, or a directory there
            self._drop_handle(p, rec)
            raise self._exists_error(DBFS, user) from None
        except FileMissing:  # a parent is a file, or a block whose add-block failed
            self._drop_handle(p, rec)
            if self._parent_is_file(p, user):
                raise FileAlreadyExists(
                    f"A parent of {_shown(DBFS, user)} is a file, not a directory."
                ) from None
            raise InvalidState(
                f"A block of the upload to {_shown(DBFS, user)} is missing (an add-block "
                "failed): nothing was written; upload the file again."
            ) from None
        self._drop_handle(p, rec)
        return {}

    def _parent_is_file(self, p: Principal, user: str) -> bool:
        folder = paths.parent(user)
        while folder != "/":
            try:
                info = self.files.stat(p.workspace_id, paths.store_path(DBFS, folder))
            except FileMissing:
                folder = paths.parent(folder)
                continue
            return not info.is_dir
        return False

    def _drop_handle(self, p: Principal, rec: Record) -> None:
        with contextlib.suppress(NotFound):  # already gone: dropped by a sweep
            self.store.delete(HANDLE_KIND, rec.pk, rec.id)
        self.files.discard_upload(p.workspace_id, rec.body["upload_id"])

    def sweep_handles(self) -> int:
        """Drop the handles idle past their expiry with their staged blocks; returns how many.
        (The timer's work: a handle is only an abandoned upload's leftovers by then.)"""
        now = self.clock.now_ms()
        dropped = 0
        for rec in self.store.scan(HANDLE_KIND, field="state", values=["open", "closing"]):
            if int(rec.body.get("expires_ms", 0)) > now:
                continue
            try:
                self.store.delete(HANDLE_KIND, rec.pk, rec.id, etag=rec.etag)
            except (NotFound, PreconditionFailed):
                continue  # used or closed since the scan read it: not abandoned
            self.files.discard_upload(rec.pk, rec.body["upload_id"])
            dropped += 1
        return dropped

    # ------------------------------------------------------------------ Workspace API

    def ws_import(self, p: Principal, body: Mapping[str, Any]) -> dict[str, Any]:
        """`import` with base64 `content` (JSON)."""
        data = dom.b64(
            body.get("content"), "content", dom.MAX_IMPORT_BYTES, MaxNotebookSizeExceeded
        )
        return self._import(p, body, data)

    def ws_import_form(
        self, p: Principal, fields: Mapping[str, Any], data: bytes
    ) -> dict[str, Any]:
        """`import` as multipart/form-data, the file a form part (databricks-sdk's upload)."""
        if len(data) > dom.MAX_IMPORT_BYTES:
            raise MaxNotebookSizeExceeded(f"content is larger than {dom.MAX_IMPORT_BYTES} bytes.")
        return self._import(p, fields, data)

    def _import(self, p: Principal, fields: Mapping[str, Any], data: bytes) -> dict[str, Any]:
        user, _ = self._path(WORKSPACE, fields.get("path"))
        dom.import_format(fields.get("format"))
        dom.language(fields.get("language"))
        overwrite = dom.flag(fields.get("overwrite"), "overwrite")
        folder = paths.parent(user)
        # As in Databricks, the parent folder must exist (its standard folders always do).
        if folder in self._implicit(p, WORKSPACE):
            self._mkdirs(p, WORKSPACE, folder)
        try:
            parent_info = self._stat(p, WORKSPACE, folder)
        except ResourceDoesNotExist:
            parent_info = None
        if parent_info is None or not parent_info.is_dir:
            raise ResourceDoesNotExist(f"The parent folder ({folder}) does not exist.")
        self._write(p, WORKSPACE, user, data, overwrite)
        return {}

    def ws_export(
        self, p: Principal, path: Any, fmt: Any, direct_download: Any
    ) -> dict[str, Any] | bytes:
        """The file's bytes (`direct_download`), else `{content: base64, file_type}`."""
        user, sp = self._path(WORKSPACE, path)
        dom.export_format(fmt)
        raw = dom.flag(direct_download, "direct_download")
        info = self._stat(p, WORKSPACE, user)
        if info.is_dir:
            raise InvalidParameterValue(f"{user} is a directory: only files can be exported.")
        if info.size > dom.MAX_EXPORT_BYTES:
            raise MaxNotebookSizeExceeded(f"{user} is larger than {dom.MAX_EXPORT_BYTES} bytes.")
        try:
            data = self.files.read(p.workspace_id, sp, 0, dom.MAX_EXPORT_BYTES + 1)
        except FileMissing:  # deleted since the stat
            raise self._missing(WORKSPACE, user) from None
        except FileExists:  # replaced by a directory since the stat
            raise InvalidParameterValue(
                f"{user} is a directory: only files can be exported."
            ) from None
        if len(data) > dom.MAX_EXPORT_BYTES:
            raise MaxNotebookSizeExceeded(f"{user} is larger than {dom.MAX_EXPORT_BYTES} bytes.")
        if raw:
            return data
        return {
            "content": base64.b64encode(data).decode("ascii"),
            "file_type": dom.file_type(user),
        }

    def ws_get_status(self, p: Principal, path: Any) -> dict[str, Any]:
        user, _ = self._path(WORKSPACE, path)
        return dom.object_info(user, self._stat(p, WORKSPACE, user))

    def ws_list(self, p: Principal, path: Any) -> dict[str, Any]:
        user, _ = self._path(WORKSPACE, path)
        return {"objects": [dom.object_info(u, i) for u, i in self._entries(p, WORKSPACE, user)]}

    def ws_mkdirs(self, p: Principal, body: Mapping[str, Any]) -> dict[str, Any]:
        user, _ = self._path(WORKSPACE, body.get("path"))
        self._mkdirs(p, WORKSPACE, user)
        return {}

    def ws_delete(self, p: Principal, body: Mapping[str, Any]) -> dict[str, Any]:
        user, sp = self._path(WORKSPACE, body.get("path"))
        recursive = dom.flag(body.get("recursive"), "recursive")
        if user == "/":
            raise InvalidParameterValue("The workspace root cannot be deleted.")
        try:
            self.files.delete(p.workspace_id, sp, recursive=recursive)
        except FileMissing:
            if user in self._implicit(p, WORKSPACE):
                return {}  # a standard folder with nothing in it yet
            raise self._missing(WORKSPACE, user) from None
        except StoreDirectoryNotEmpty:
            raise DirectoryNotEmpty(
                f"Folder {user} is not empty: delete it with recursive=true."
            ) from None
        return {}

    # ------------------------------------------------------------------ job tasks

    def read_task_file(self, workspace_id: str, python_file: str) -> bytes:
        """The bytes of a job task's `python_file` (`dbfs:/...`, `/dbfs/...`, `/Workspace/...`
        or another absolute workspace path) in the workspace's files.

        Raises InvalidParameterValue for a path paths.task_file refuses, a directory, or a file
        larger than MAX_TASK_FILE_BYTES (10 MB); ResourceDoesNotExist if there is no file.
        """
        root, user = paths.task_file(python_file)
        sp = paths.store_path(root, user)
        limit = dom.MAX_TASK_FILE_BYTES
        try:
            data = self.files.read(workspace_id, sp, 0, limit + 1)
        except FileMissing:
            raise ResourceDoesNotExist(
                f"python_file {python_file} does not exist: upload it with the DBFS or "
                "Workspace API first."
            ) from None
        except FileExists:  # the path is a directory
            raise InvalidParameterValue(
                f"python_file {python_file} is a directory, not a file."
            ) from None
        if len(data) > limit:
            raise InvalidParameterValue(
                f"python_file {python_file} is larger than {limit} bytes, the most a task runs."
            )
        return data
