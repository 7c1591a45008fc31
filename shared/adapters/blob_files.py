"""The Azure Blob Storage `FileStore` (azure-storage-blob): every workspace's files in one
container of the platform's files account.

Where: `SPARKPLANE_FILES_ACCOUNT_URL` names the account and `SPARKPLANE_FILES_CONTAINER` the
container (infra/main.bicep makes both and gives the app's identity Storage Blob Data
Contributor on the account). Each workspace has a virtual directory of its own in it,
`<workspace>/`, named like the local adapter's directories: a readable prefix of the id plus
a SHA-256 of it, so no id reaches another workspace's names. Why not the workspace's own
storage account (`spws...` in its managed resource group): that account admits only its
workers subnet (networkAcls defaultAction Deny) and the function app has no VNet integration,
so the control plane cannot reach it; the nodes keep it for Spark's own data. Why not a
container per workspace: deleting a container is asynchronous in Azure and its name cannot be
used again for a while; a prefix is deleted blob by blob and is reusable at once.

Names inside a workspace:

    <workspace>/files/<path without its leading "/">    a file, or a directory marker
    <workspace>/uploads/<upload>/<index>                 a staged block of a streaming upload

so no user path reaches the staged blocks, whatever its name. Directories follow ADLS Gen2 on a
flat namespace: `mkdirs` (and `write`, for the parents it makes) puts an empty marker blob with
metadata `hdi_isfolder=true` at the directory's name; a name that other blobs have as a prefix
("a/" of "a/b") is a directory too (implicit: written by something else, or its marker lost).
The hierarchy is checked before each write (a file is never made under a file, nor where a
directory is); those checks are separate requests, not one transaction.

All or nothing: `write` is one Put Blob (`upload_blob`; the SDK switches to staged blocks plus
one Put Block List for large data, which publishes just as atomically) and overwrite=False is
its If-None-Match: * (a 409 is FileExists). A streaming upload's blocks are small blobs under
`uploads/`, since the target path is not known until the commit. The commit copies them
server-side into uncommitted blocks of the target with Put Block From URL (no byte passes
through the control plane; uncommitted blocks are invisible), then publishes them with one
Put Block List (If-None-Match: * for overwrite=False), then deletes the staged blobs. `move` of
a file is the same copy from one source, followed by the delete of the source. Moving or
deleting a directory works blob by blob: not atomic (ADLS Gen2 with a hierarchical namespace
would rename in one step; a flat namespace cannot).

Authentication: with an account key (Azurite's well-known development key in the tests) the
copy sources carry a short read-only SAS; with Microsoft Entra ID (DefaultAzureCredential: the
app's managed identity in Azure) they carry the app's bearer token (x-ms-copy-source-
authorization), which needs Storage Blob Data Reader or more on the account: the role it has.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import (
    BlobBlock,
    BlobPrefix,
    BlobProperties,
    BlobSasPermissions,
    ContainerClient,
    generate_blob_sas,
)

from shared.domain.paths import id_segment, store_parts
from shared.ports import DirectoryNotEmpty, FileExists, FileInfo, FileMissing

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from shared.settings import Settings

FOLDER_META = "hdi_isfolder"
STORAGE_SCOPE = "https://storage.azure.com/.default"
# Put Block From URL copies at most this much per block (the service's limit is 4000 MiB;
# 100 MiB blocks keep each request short).
COPY_BLOCK = 100 * 2**20
# A concurrent commit to the same name discards our uncommitted blocks (InvalidBlockList), and
# a blob can change between its lookup and its read: such steps are tried this many times.
ATTEMPTS = 3
BATCH = 256  # blobs per batch delete (the service's maximum)


def _ms(t: datetime.datetime | None) -> int:
    return int(t.timestamp() * 1000) if t is not None else 0


def _is_marker(props: BlobProperties) -> bool:
    return (props.metadata or {}).get(FOLDER_META, "").lower() == "true"


class BlobFileStore:
    """`FileStore` on one Blob Storage container; see the module docstring."""

    def __init__(
        self,
        container: ContainerClient,
        *,
        account_key: str | None = None,
        credential: TokenCredential | None = None,
        copy_block: int = COPY_BLOCK,
    ) -> None:
        if (account_key is None) == (credential is None):
            raise ValueError("BlobFileStore needs either an account key or a token credential")
        self.container = container
        self._account_key = account_key
        self._credential = credential
        self._copy_block = copy_block

    @classmethod
    def connect(
        cls,
        container: str,
        *,
        account_url: str = "",
        connection_string: str = "",
        credential: TokenCredential | None = None,
        create_container: bool = False,
        copy_block: int = COPY_BLOCK,
    ) -> BlobFileStore:
        """A store on `container` of the account a connection string (with an account key:
        Azurite, development) or an account URL names; with a URL, `credential` or else
        DefaultAzureCredential authenticates. `create_container` makes it if missing (tests;
        in Azure, main.bicep made it)."""
        if connection_string:
            client = ContainerClient.from_connection_string(connection_string, container)
            key = getattr(client.credential, "account_key", None)
            if not key:
                raise ValueError("the files connection string must hold an AccountKey")
            store = cls(client, account_key=key, copy_block=copy_block)
        elif account_url:
            if credential is None:
                from azure.identity import DefaultAzureCredential

                credential = DefaultAzureCredential()
            store = cls(
                ContainerClient(account_url, container, credential=credential),
                credential=credential,
                copy_block=copy_block,
            )
        else:
            raise ValueError(
                "files=blob needs SPARKPLANE_FILES_ACCOUNT_URL (or, for development, "
                "SPARKPLANE_FILES_CONNECTION_STRING)"
            )
        if create_container:
            # Made before (or concurrently): fine.
            with contextlib.suppress(ResourceExistsError):
                store.container.create_container()
        return store

    @classmethod
    def from_settings(cls, s: Settings) -> BlobFileStore:
        return cls.connect(
            s.files_container,
            account_url=s.files_account_url,
            connection_string=s.files_connection_string,
        )

    # ------------------------------------------------------------------------ names

    @staticmethod
    def _ws(workspace_id: str) -> str:
        return id_segment(workspace_id) + "/"

    def _name(self, workspace_id: str, parts: list[str]) -> str:
        """The blob name of a path (for "/": the tree's prefix, ending in "/")."""
        return self._ws(workspace_id) + "files/" + "/".join(parts)

    def _upload_prefix(self, workspace_id: str, upload_id: str) -> str:
        return f"{self._ws(workspace_id)}uploads/{id_segment(upload_id, 16)}/"

    # ------------------------------------------------------------------------ lookups

    def _props(self, name: str) -> BlobProperties | None:
        try:
            return self.container.get_blob_client(name).get_blob_properties()
        except ResourceNotFoundError:
            return None  # no blob of that name (it may still be an implicit directory)

    def _has_children(self, name: str) -> bool:
        pages = self.container.list_blobs(name_starts_with=name + "/", results_per_page=1)
        return next(iter(pages), None) is not None

    def _lookup(self, path: str, name: str) -> FileInfo | None:
        """What is at `name`: a file, a directory (marker or implicit), or nothing."""
        props = self._props(name)
        if props is not None:
            if _is_marker(props):
                return FileInfo(path=path, is_dir=True, modified_ms=_ms(props.last_modified))
            return FileInfo(
                path=path, is_dir=False, size=props.size, modified_ms=_ms(props.last_modified)
            )
        if self._has_children(name):
            return FileInfo(path=path, is_dir=True)
        return None

    def _put_marker(self, name: str) -> bool:
        """A directory marker at `name` unless something is there (then False)."""
        try:
            self.container.upload_blob(name, b"", metadata={FOLDER_META: "true"}, overwrite=False)
        except ResourceExistsError:
            return False  # a marker or a file: the caller looks which
        return True

    def _make_dirs(self, workspace_id: str, parts: list[str], *, blocked: type[Exception]) -> None:
        """Directories for every prefix of `parts` (markers where missing); a file on the way
        is `blocked`."""
        for i in range(1, len(parts) + 1):
            path = "/" + "/".join(parts[:i])
            name = self._name(workspace_id, parts[:i])
            found = self._lookup(path, name)
            if found is None and not self._put_marker(name):
                found = self._lookup(path, name)  # made concurrently: by whom?
            if found is not None and not found.is_dir:
                raise blocked(f"not a directory: {path}")

    def _check_target(self, path: str, name: str, *, overwrite: bool) -> None:
        """A file may go to `name`: no directory is there (nor a file, unless overwrite)."""
        found = self._lookup(path, name)
        if found is not None and (found.is_dir or not overwrite):
            raise FileExists(f"a directory exists at {path}" if found.is_dir else f"{path} exists")

    def _names_under(self, prefix: str) -> Iterator[str]:
        for blob in self.container.list_blobs(name_starts_with=prefix):
            yield blob.name

    def _delete_names(self, names: Iterable[str]) -> None:
        batch: list[str] = []
        for name in names:
            batch.append(name)
            if len(batch) == BATCH:
                self._delete_batch(batch)
                batch = []
        if batch:
            self._delete_batch(batch)

    def _delete_batch(self, names: list[str]) -> None:
        results = self.container.delete_blobs(*names, raise_on_any_failure=False)
        for name, result in zip(names, results, strict=True):
            if result.status_code not in (200, 202, 404):  # 404: deleted concurrently
                raise HttpResponseError(f"delete of {name} failed: {result.status_code}")

    # ------------------------------------------------------------------------ server-side copy

    def _source_url(self, name: str) -> tuple[str, dict[str, Any]]:
        """The URL Put Block From URL reads `name` from, and the request's extra arguments."""
        blob = self.container.get_blob_client(name)
        if self._account_key is not None:
            sas = generate_blob_sas(
                account_name=self.container.account_name or "",
                container_name=self.container.container_name,
                blob_name=name,
                account_key=self._account_key,
                permission=BlobSasPermissions(read=True),
                expiry=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1),
            )
            return f"{blob.url}?{sas}", {}
        assert self._credential is not None
        token = self._credential.get_token(STORAGE_SCOPE).token
        return blob.url, {"source_authorization": f"Bearer {token}"}

    def _copy(
        self,
        sources: list[tuple[str, int]],
        target: str,
        *,
        overwrite: bool,
        before_commit: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Publish the concatenation of `sources` ((blob name, size) each) as `target` in one
        Put Block List; `before_commit()` runs once the blocks are staged (it makes the
        parents: nothing is made when a source is missing). Returns the commit's response."""
        dest = self.container.get_blob_client(target)
        for attempt in range(ATTEMPTS):
            nonce = uuid.uuid4().hex
            ids: list[str] = []
            for name, size in sources:
                url, extra = self._source_url(name)
                for offset in range(0, size, self._copy_block):
                    block_id = base64.b64encode(f"{nonce}{len(ids):08d}".encode()).decode()
                    try:
                        dest.stage_block_from_url(
                            block_id,
                            url,
                            source_offset=offset,
                            source_length=min(self._copy_block, size - offset),
                            **extra,
                        )
                    except ResourceNotFoundError:
                        raise FileMissing(f"{name} is missing") from None  # source deleted
                    ids.append(block_id)
            if before_commit is not None:
                before_commit()
                before_commit = None
            condition = None if overwrite else MatchConditions.IfMissing
            try:
                return dest.commit_block_list(
                    [BlobBlock(block_id) for block_id in ids], match_condition=condition
                )
            except ResourceExistsError:
                raise FileExists(f"{target} exists") from None  # If-None-Match: * failed
            except HttpResponseError as e:
                # InvalidBlockList: a concurrent commit to the same name dropped our blocks.
                # (storage errors carry error_code; azure-core's type does not declare it)
                if getattr(e, "error_code", None) != "InvalidBlockList" or attempt == ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------------ the port

    def write(self, workspace_id: str, path: str, data: bytes, *, overwrite: bool) -> FileInfo:
        parts = store_parts(path)
        if not parts:
            raise FileExists("/ is a directory")
        name = self._name(workspace_id, parts)
        self._check_target(path, name, overwrite=overwrite)
        self._make_dirs(workspace_id, parts[:-1], blocked=FileMissing)
        try:
            blob = self.container.get_blob_client(name)
            result = blob.upload_blob(bytes(data), overwrite=overwrite)
        except ResourceExistsError:
            raise FileExists(f"{path} exists") from None  # If-None-Match: * failed
        return FileInfo(
            path=path, is_dir=False, size=len(data), modified_ms=_ms(result.get("last_modified"))
        )

    def read(self, workspace_id: str, path: str, offset: int = 0, length: int = -1) -> bytes:
        parts = store_parts(path)
        if offset < 0 or length < -1:
            raise ValueError("offset must be >= 0 and length >= -1")
        if not parts:
            raise FileExists("/ is a directory")
        name = self._name(workspace_id, parts)
        for _ in range(ATTEMPTS):
            found = self._props(name)
            if found is None:
                if self._has_children(name):
                    raise FileExists(f"{path} is a directory")
                raise FileMissing(path)
            if _is_marker(found):
                raise FileExists(f"{path} is a directory")
            end = found.size if length == -1 else min(found.size, offset + length)
            if offset >= end:
                return b""  # past the end, or nothing asked for (a range there is a 416)
            try:
                stream = self.container.get_blob_client(name).download_blob(
                    offset=offset,
                    length=end - offset,
                    etag=found.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
                return stream.readall()
            except ResourceModifiedError:
                continue  # replaced since the lookup: look again
            except ResourceNotFoundError:
                raise FileMissing(path) from None  # deleted since the lookup
        raise FileMissing(f"{path} kept changing while it was read")

    def stat(self, workspace_id: str, path: str) -> FileInfo:
        parts = store_parts(path)
        if not parts:
            return FileInfo(path="/", is_dir=True)
        found = self._lookup(path, self._name(workspace_id, parts))
        if found is None:
            raise FileMissing(path)
        return found

    def list(self, workspace_id: str, path: str) -> list[FileInfo]:
        parts = store_parts(path)
        if parts:
            info = self.stat(workspace_id, path)
            if not info.is_dir:
                return [info]
        prefix = self._name(workspace_id, parts) + ("/" if parts else "")
        base = path.rstrip("/") + "/"
        entries: dict[str, FileInfo] = {}
        for item in self.container.walk_blobs(
            name_starts_with=prefix, delimiter="/", include=["metadata"]
        ):
            child = item.name[len(prefix) :].rstrip("/")
            if not child:
                continue  # a blob named like the prefix itself (never made by this store)
            child_path = base + child
            if isinstance(item, BlobPrefix):
                entries.setdefault(child_path, FileInfo(path=child_path, is_dir=True))
            elif _is_marker(item):
                entries[child_path] = FileInfo(
                    path=child_path, is_dir=True, modified_ms=_ms(item.last_modified)
                )
            elif child_path not in entries:  # a directory of the same name wins
                entries[child_path] = FileInfo(
                    path=child_path,
                    is_dir=False,
                    size=item.size,
                    modified_ms=_ms(item.last_modified),
                )
        return sorted(entries.values(), key=lambda i: i.path)

    def mkdirs(self, workspace_id: str, path: str) -> None:
        self._make_dirs(workspace_id, store_parts(path), blocked=FileExists)

    def delete(self, workspace_id: str, path: str, *, recursive: bool) -> None:
        parts = store_parts(path)
        if not parts:
            raise ValueError("the root of a workspace cannot be deleted")
        name = self._name(workspace_id, parts)
        found = self._lookup(path, name)
        if found is None:
            raise FileMissing(path)
        if found.is_dir:
            if not recursive and self._has_children(name):
                raise DirectoryNotEmpty(path)
            # The entries first, the marker last: a failure half-way leaves the directory.
            self._delete_names(self._names_under(name + "/"))
        try:
            self.container.delete_blob(name)
        except ResourceNotFoundError:
            if not found.is_dir:
                raise FileMissing(path) from None  # deleted concurrently
            # An implicit directory has no marker: nothing else to delete.

    def move(self, workspace_id: str, src: str, dst: str) -> None:
        src_parts, dst_parts = store_parts(src), store_parts(dst)
        if not src_parts:
            raise ValueError("the root of a workspace cannot be moved")
        if not dst_parts:
            raise FileExists("/ exists")
        if dst.startswith(src + "/"):
            raise ValueError(f"cannot move {src} into itself ({dst})")
        src_name = self._name(workspace_id, src_parts)
        dst_name = self._name(workspace_id, dst_parts)
        found = self._lookup(src, src_name)
        if found is None:
            raise FileMissing(src)
        if self._lookup(dst, dst_name) is not None:
            raise FileExists(f"{dst} exists")

        def parents() -> None:
            self._make_dirs(workspace_id, dst_parts[:-1], blocked=FileMissing)

        if not found.is_dir:
            self._copy([(src_name, found.size)], dst_name, overwrite=False, before_commit=parents)
            self.container.delete_blob(src_name)
            return
        # A directory: claim dst with its marker, copy every entry, then delete the sources.
        parents()
        if not self._put_marker(dst_name):
            raise FileExists(f"{dst} exists")
        moved: list[str] = []
        entries = self.container.list_blobs(name_starts_with=src_name + "/", include=["metadata"])
        for blob in entries:
            target = dst_name + blob.name[len(src_name) :]
            if _is_marker(blob):
                self._put_marker(target)
            else:
                self._copy([(blob.name, blob.size)], target, overwrite=False)
            moved.append(blob.name)
        self._delete_names([*moved, src_name])

    # ------------------------------------------------------------------------ uploads

    def stage_block(self, workspace_id: str, upload_id: str, index: int, data: bytes) -> None:
        if index < 0:
            raise ValueError("a block index is >= 0")
        name = f"{self._upload_prefix(workspace_id, upload_id)}{index}"
        self.container.upload_blob(name, bytes(data), overwrite=True)

    def commit_upload(
        self, workspace_id: str, upload_id: str, path: str, blocks: int, *, overwrite: bool
    ) -> FileInfo:
        parts = store_parts(path)
        if blocks < 0:
            raise ValueError("blocks must be >= 0")
        if not parts:
            raise FileExists("/ is a directory")
        prefix = self._upload_prefix(workspace_id, upload_id)
        sources: list[tuple[str, int]] = []
        for index in range(blocks):
            props = self._props(f"{prefix}{index}")
            if props is None:
                raise FileMissing(f"block {index} of upload {upload_id!r} is missing")
            if props.size:
                sources.append((props.name, props.size))
        name = self._name(workspace_id, parts)
        self._check_target(path, name, overwrite=overwrite)

        def parents() -> None:
            self._make_dirs(workspace_id, parts[:-1], blocked=FileMissing)

        result = self._copy(sources, name, overwrite=overwrite, before_commit=parents)
        self._delete_names(self._names_under(prefix))
        return FileInfo(
            path=path,
            is_dir=False,
            size=sum(size for _, size in sources),
            modified_ms=_ms(result.get("last_modified")),
        )

    def discard_upload(self, workspace_id: str, upload_id: str) -> None:
        self._delete_names(self._names_under(self._upload_prefix(workspace_id, upload_id)))

    def delete_workspace(self, workspace_id: str) -> None:
        self._delete_names(self._names_under(self._ws(workspace_id)))
