"""DBFS and workspace files through a devhost subprocess, driven by databricks-sdk, plain HTTP
and the legacy databricks-cli (0.18): uploads of every size, the Databricks errors for bad input
with nothing half-written left visible, paths that try to leave the workspace, workspace isolation,
token roles, and the file a job task runs (read_task_file) read back from what was uploaded."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.config import Config
from databricks.sdk.errors import (
    DatabricksError,
    InvalidParameterValue,
    NotFound,
    PermissionDenied,
    ResourceAlreadyExists,
)
from databricks.sdk.service.workspace import ExportFormat, ImportFormat, Language, ObjectType

from devhost.process import DevhostProcess
from shared.adapters.local_files import LocalFileStore
from shared.adapters.sqlite_store import SqliteStore
from shared.errors import InvalidParameterValue as ApiInvalidParameterValue
from shared.errors import ResourceDoesNotExist as ApiResourceDoesNotExist
from shared.services.auth import LOCAL_WORKSPACE, Auth
from shared.services.files import FilesService
from shared.wiring import SystemClock
from tests.support import http, wait_for

MB = 1 << 20


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def client(url: str, token: str) -> WorkspaceClient:
    cfg = Config(host=url, token=token, auth_type="pat", retry_timeout_seconds=60)
    return WorkspaceClient(config=cfg)


def code_of(e: pytest.ExceptionInfo[DatabricksError]) -> str:
    return str(e.value.error_code)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevhostProcess]:
    h = DevhostProcess(
        tmp_path_factory.mktemp("files") / "data",
        env={"SPARKPLANE_RATE_LIMIT_PER_S": "10000", "SPARKPLANE_RATE_LIMIT_BURST": "10000"},
    ).start()
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="module")
def w(host: DevhostProcess) -> WorkspaceClient:
    return host.client()


@pytest.fixture(scope="module")
def other(host: DevhostProcess) -> tuple[str, WorkspaceClient]:
    """A second workspace (through the operator admin API) and its token's client."""
    op = host.operator_token
    r = http.post(
        host.url + "/api/admin/workspaces",
        json={"name": "team b", "workspace_id": "team-b"},
        headers=bearer(op),
    )
    assert r.status_code == 200, r.text
    token = r.json()["token_value"]
    return token, client(host.url, token)


def raw_post(host: DevhostProcess, op: str, body: Any, token: str | None = None) -> httpx.Response:
    return http.post(
        f"{host.url}/api/2.0/{op}", json=body, headers=bearer(token or host.token), timeout=60
    )


def raw_get(host: DevhostProcess, op: str, token: str | None = None, **q: Any) -> httpx.Response:
    return http.get(
        f"{host.url}/api/2.0/{op}", params=q, headers=bearer(token or host.token), timeout=60
    )


def error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error_code"] == code, r.text
    assert r.json()["message"], r.text


# ---------------------------------------------------------------------------- DBFS


def test_dbfs_with_the_sdk(host: DevhostProcess, w: WorkspaceClient) -> None:
    w.dbfs.mkdirs("dbfs:/sdk/empty")
    w.dbfs.upload("/sdk/a.txt", io.BytesIO(b"alpha"))
    w.dbfs.upload("dbfs:/sdk/deep/er/b.py", io.BytesIO(b"print('b')\n"))  # parents are made
    assert w.dbfs.download("dbfs:/sdk/a.txt").read() == b"alpha"
    r = raw_get(host, "dbfs/get-status", path="dbfs:/sdk//deep/er/b.py/")  # normalised
    assert r.json()["path"] == "/sdk/deep/er/b.py", r.text

    st = w.dbfs.get_status("/sdk/a.txt")
    assert (st.path, st.is_dir, st.file_size) == ("/sdk/a.txt", False, 5)
    assert abs(st.modification_time - time.time() * 1000) < 60_000
    assert w.dbfs.get_status("dbfs:/sdk").is_dir
    assert w.dbfs.get_status("/").is_dir

    listed = {f.path: (f.is_dir, f.file_size) for f in w.dbfs.list("dbfs:/sdk")}
    assert listed == {"/sdk/a.txt": (False, 5), "/sdk/deep": (True, 0), "/sdk/empty": (True, 0)}
    everything = {f.path for f in w.dbfs.list("/sdk", recursive=True)}
    assert everything == {"/sdk/a.txt", "/sdk/deep/er/b.py"}
    [itself] = w.dbfs.list("/sdk/a.txt")  # a file lists as itself
    assert (itself.path, itself.file_size) == ("/sdk/a.txt", 5)
    assert "/sdk" in {f.path for f in w.dbfs.list("/")}

    w.dbfs.move("dbfs:/sdk/a.txt", "dbfs:/sdk/moved/a.txt")
    assert not w.dbfs.exists("/sdk/a.txt")
    assert w.dbfs.download("/sdk/moved/a.txt").read() == b"alpha"
    w.dbfs.move("/sdk/deep", "/sdk/deeper")  # a directory moves with what it holds
    assert w.dbfs.download("/sdk/deeper/er/b.py").read() == b"print('b')\n"

    w.dbfs.upload("/sdk/moved/a.txt", io.BytesIO(b"beta"), overwrite=True)
    assert w.dbfs.download("/sdk/moved/a.txt").read() == b"beta"
    w.dbfs.upload("/sdk/zero", io.BytesIO(b""))
    assert w.dbfs.get_status("/sdk/zero").file_size == 0
    assert w.dbfs.download("/sdk/zero").read() == b""

    w.dbfs.delete("/sdk/moved/a.txt")
    w.dbfs.delete("/sdk/missing")  # as Databricks: a missing path deletes fine
    w.dbfs.delete("dbfs:/sdk", recursive=True)
    with pytest.raises(NotFound):
        w.dbfs.get_status("/sdk")
    with pytest.raises(NotFound):
        list(w.dbfs.list("/sdk"))


def test_dbfs_put_inline_and_as_a_form(host: DevhostProcess, w: WorkspaceClient) -> None:
    w.dbfs.put("/put/inline.bin", contents=base64.b64encode(b"\x00\x01\xff").decode())
    assert w.dbfs.download("/put/inline.bin").read() == b"\x00\x01\xff"
    # multipart/form-data, the file as a part (the legacy CLI's `fs cp` and `curl -F`)
    for part in ("file", "contents"):
        r = http.post(
            host.url + "/api/2.0/dbfs/put",
            data={"path": f"dbfs:/put/{part}.bin", "overwrite": "True"},
            files={part: ("x.bin", b"form " * 1000, "application/octet-stream")},
            headers=bearer(host.token),
        )
        assert r.status_code == 200 and r.json() == {}, r.text
        assert w.dbfs.download(f"/put/{part}.bin").read() == b"form " * 1000
    w.dbfs.delete("/put", recursive=True)


def test_a_5mb_file_round_trips_through_create_add_block_close(w: WorkspaceClient) -> None:
    data = os.urandom(5 * MB + 12345)
    handle = w.dbfs.create("dbfs:/big/five.bin").handle
    for i in range(0, len(data), MB):
        w.dbfs.add_block(handle, base64.b64encode(data[i : i + MB]).decode())
        # nothing is visible before close
        with pytest.raises(NotFound):
            w.dbfs.get_status("/big/five.bin")
    w.dbfs.close(handle)
    assert w.dbfs.get_status("/big/five.bin").file_size == len(data)

    got = b""
    while True:  # read back in 1 MB pieces, as the legacy CLI does
        r = w.dbfs.read("/big/five.bin", offset=len(got), length=MB)
        if r.bytes_read == 0:
            break
        assert r.bytes_read <= MB
        got += base64.b64decode(r.data)
    assert got == data
    assert w.dbfs.read("/big/five.bin", offset=len(data) + 10, length=10).bytes_read == 0
    assert base64.b64decode(w.dbfs.read("/big/five.bin", offset=MB, length=3).data) == data[MB:][:3]
    # the default length is 0.5 MB
    assert w.dbfs.read("/big/five.bin").bytes_read == MB // 2
    # and the SDK's own upload/download of the same file
    w.dbfs.upload("/big/sdk.bin", io.BytesIO(data))
    assert w.dbfs.download("/big/sdk.bin").read() == data
    # a closed handle is gone
    with pytest.raises(NotFound):
        w.dbfs.close(handle)
    with pytest.raises(NotFound):
        w.dbfs.add_block(handle, "")
    w.dbfs.delete("/big", recursive=True)


def test_concurrent_add_blocks_on_one_handle_lose_no_block(
    host: DevhostProcess, w: WorkspaceClient
) -> None:
    handle = w.dbfs.create("/race/blocks.bin").handle
    size, n = 4096, 12
    errors: list[str] = []

    def add(i: int) -> None:
        body = {"handle": handle, "data": base64.b64encode(bytes([i]) * size).decode()}
        for _ in range(50):
            r = raw_post(host, "dbfs/add-block", body)
            if r.status_code == 200:
                return
            if r.json().get("error_code") != "ABORTED":  # lost every compare-and-swap: again
                break
        errors.append(r.text)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    w.dbfs.close(handle)
    data = w.dbfs.download("/race/blocks.bin").read()
    assert len(data) == n * size
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    # every block whole, each exactly once, in whatever order they were claimed
    assert sorted(p[0] for p in pieces) == list(range(n))
    assert all(p == bytes([p[0]]) * size for p in pieces)
    w.dbfs.delete("/race", recursive=True)


def test_bad_input_gets_the_databricks_error_and_leaves_nothing_half_written(
    host: DevhostProcess, w: WorkspaceClient
) -> None:
    w.dbfs.upload("/bad/old.txt", io.BytesIO(b"old"))
    w.dbfs.mkdirs("/bad/dir/sub")

    # an oversized block or inline put: MAX_BLOCK_SIZE_EXCEEDED (also far beyond the limit)
    handle = w.dbfs.create("/bad/new.txt").handle
    for size in (MB + 1, 3 * MB):
        too_big = base64.b64encode(b"x" * size).decode()
        error(raw_post(host, "dbfs/add-block", {"handle": handle, "data": too_big}), 400,
              "MAX_BLOCK_SIZE_EXCEEDED")  # fmt: skip
        r = raw_post(host, "dbfs/put", {"path": "/bad/put.txt", "contents": too_big})
        error(r, 400, "MAX_BLOCK_SIZE_EXCEEDED")
    with pytest.raises(NotFound):
        w.dbfs.get_status("/bad/put.txt")
    error(raw_post(host, "dbfs/add-block", {"handle": handle, "data": "not base64!"}), 400,
          "INVALID_PARAMETER_VALUE")  # fmt: skip

    # a read of more than 1 MB, of a directory, with a negative offset
    error(raw_get(host, "dbfs/read", path="/bad/old.txt", length=MB + 1), 400,
          "MAX_READ_SIZE_EXCEEDED")  # fmt: skip
    error(raw_get(host, "dbfs/read", path="/bad/dir"), 400, "INVALID_PARAMETER_VALUE")
    error(raw_get(host, "dbfs/read", path="/bad/old.txt", offset=-1), 400,
          "INVALID_PARAMETER_VALUE")  # fmt: skip
    error(raw_get(host, "dbfs/read", path="/bad/nothing"), 404, "RESOURCE_DOES_NOT_EXIST")

    # handles nobody made
    for op in ("close", "add-block"):
        r = raw_post(host, f"dbfs/{op}", {"handle": 123456789, "data": ""})
        error(r, 404, "RESOURCE_DOES_NOT_EXIST")
    error(raw_post(host, "dbfs/close", {"handle": "x"}), 400, "INVALID_PARAMETER_VALUE")

    # put or create onto an existing file without overwrite, or onto a directory at all
    with pytest.raises(ResourceAlreadyExists):
        w.dbfs.put("/bad/old.txt", contents=base64.b64encode(b"new").decode())
    with pytest.raises(ResourceAlreadyExists):
        w.dbfs.create("/bad/old.txt")
    for overwrite in (False, True):
        r = raw_post(host, "dbfs/put", {"path": "/bad/dir", "contents": "", "overwrite": overwrite})
        error(r, 400, "RESOURCE_ALREADY_EXISTS")
        with pytest.raises(ResourceAlreadyExists):
            w.dbfs.create("/bad/dir", overwrite=overwrite)
    with pytest.raises(ResourceAlreadyExists):  # a file where a parent directory should be
        w.dbfs.put("/bad/old.txt/child", contents="")
    with pytest.raises(ResourceAlreadyExists):
        w.dbfs.mkdirs("/bad/old.txt/sub")
    assert w.dbfs.download("/bad/old.txt").read() == b"old"
    assert w.dbfs.get_status("/bad/dir").is_dir

    # a close that cannot publish: the path was taken meanwhile; nothing of the upload shows
    w.dbfs.add_block(handle, base64.b64encode(b"half").decode())
    w.dbfs.upload("/bad/new.txt", io.BytesIO(b"first"))
    with pytest.raises(ResourceAlreadyExists):
        w.dbfs.close(handle)
    assert w.dbfs.download("/bad/new.txt").read() == b"first"
    with pytest.raises(NotFound):  # the failed close dropped its handle
        w.dbfs.close(handle)
    handle = w.dbfs.create("/bad/later-dir", overwrite=True).handle
    w.dbfs.add_block(handle, base64.b64encode(b"data").decode())
    w.dbfs.mkdirs("/bad/later-dir/x")
    with pytest.raises(ResourceAlreadyExists):
        w.dbfs.close(handle)
    assert w.dbfs.get_status("/bad/later-dir").is_dir

    # a non-recursive delete of a non-empty directory: IO_ERROR (400), nothing deleted
    error(raw_post(host, "dbfs/delete", {"path": "/bad/dir", "recursive": False}), 400,
          "IO_ERROR")  # fmt: skip
    assert w.dbfs.get_status("/bad/dir/sub").is_dir
    # an empty directory needs no recursive flag (the SDK insists on one: plain HTTP here)
    assert raw_post(host, "dbfs/delete", {"path": "/bad/dir/sub"}).status_code == 200

    # moves: a missing source, an existing destination, into itself
    with pytest.raises(NotFound):
        w.dbfs.move("/bad/nothing", "/bad/x")
    with pytest.raises(ResourceAlreadyExists):
        w.dbfs.move("/bad/new.txt", "/bad/old.txt")
    with pytest.raises(InvalidParameterValue):
        w.dbfs.move("/bad", "/bad/dir/inside")
    assert w.dbfs.download("/bad/old.txt").read() == b"old"
    # the root stays
    error(raw_post(host, "dbfs/delete", {"path": "/", "recursive": True}), 400,
          "INVALID_PARAMETER_VALUE")  # fmt: skip
    w.dbfs.delete("/bad", recursive=True)


ESCAPES = [
    "dbfs:/../x",
    "/../x",
    "/a/../../x",
    "/a/./b",
    "/a\x00b",
    "/a\\..\\b",
    "a/relative",
    "dbfs:relative",
    "",
    "/" + "n" * 256,  # a name longer than any file system keeps
]


@pytest.mark.parametrize("path", ESCAPES, ids=repr)
def test_dbfs_paths_that_leave_the_workspace_are_refused(host: DevhostProcess, path: str) -> None:
    for op, body in (
        ("dbfs/put", {"path": path, "contents": "eA=="}),
        ("dbfs/create", {"path": path}),
        ("dbfs/mkdirs", {"path": path}),
        ("dbfs/delete", {"path": path, "recursive": True}),
        ("dbfs/move", {"source_path": "/ok", "destination_path": path}),
    ):
        error(raw_post(host, op, body), 400, "INVALID_PARAMETER_VALUE")
    for op in ("dbfs/read", "dbfs/get-status", "dbfs/list"):
        error(raw_get(host, op, path=path), 400, "INVALID_PARAMETER_VALUE")


@pytest.mark.parametrize(
    "path", ["/Workspace/../../x", "/Users/../../x", "/Users/me/\x00", "/Users\\me", "Users/me"]
)
def test_workspace_paths_that_leave_the_workspace_are_refused(
    host: DevhostProcess, w: WorkspaceClient, path: str
) -> None:
    with pytest.raises(DatabricksError) as e:  # the SDK's upload re-raises it as its base class
        w.workspace.upload(path, b"x", format=ImportFormat.AUTO)
    assert code_of(e) == "INVALID_PARAMETER_VALUE"
    for op, body in (
        ("workspace/import", {"path": path, "content": "eA==", "format": "AUTO"}),
        ("workspace/mkdirs", {"path": path}),
        ("workspace/delete", {"path": path, "recursive": True}),
    ):
        error(raw_post(host, op, body), 400, "INVALID_PARAMETER_VALUE")
    for op in ("workspace/export", "workspace/get-status", "workspace/list"):
        error(raw_get(host, op, path=path), 400, "INVALID_PARAMETER_VALUE")


def test_nothing_is_written_outside_the_workspace_directories(host: DevhostProcess) -> None:
    files = host.data_dir / "files"
    for p in ESCAPES:
        raw_post(host, "dbfs/put", {"path": p, "contents": "eA==", "overwrite": True})
    raw_post(host, "dbfs/put", {"path": "/inside", "contents": "eA=="})
    # only the workspaces' own directories below the file store's root
    assert all(child.is_dir() for child in files.iterdir())
    assert not list(host.data_dir.parent.glob("x")) and not (host.data_dir / "x").exists()


# ---------------------------------------------------------------------------- workspace files


def test_workspace_files_with_the_sdk(host: DevhostProcess, w: WorkspaceClient) -> None:
    w.workspace.mkdirs("/Workspace/Users/me@example.com/etl")
    w.workspace.upload("/Users/me@example.com/etl/job.py", b"print('etl')\n")
    w.workspace.upload(
        "/Workspace/Users/me@example.com/etl/data.csv",
        io.BytesIO(b"a,b\n"),
        format=ImportFormat.AUTO,
    )
    # /Workspace/... and /Users/... name the same file
    assert w.workspace.download("/Workspace/Users/me@example.com/etl/job.py").read() == (
        b"print('etl')\n"
    )
    assert w.workspace.download("/Users/me@example.com/etl/data.csv").read() == b"a,b\n"

    st = w.workspace.get_status("/Workspace/Users/me@example.com/etl/job.py")
    assert st.object_type == ObjectType.FILE and st.path == "/Users/me@example.com/etl/job.py"
    assert st.size == 13 and st.object_id and st.modified_at
    assert st.object_id == w.workspace.get_status("/Users/me@example.com/etl/job.py").object_id
    folder = w.workspace.get_status("/Users/me@example.com/etl")
    assert folder.object_type == ObjectType.DIRECTORY

    listed = {o.path: o.object_type for o in w.workspace.list("/Users/me@example.com/etl")}
    assert listed == {
        "/Users/me@example.com/etl/data.csv": ObjectType.FILE,
        "/Users/me@example.com/etl/job.py": ObjectType.FILE,
    }
    deep = {o.path for o in w.workspace.list("/Users/me@example.com", recursive=True)}
    assert deep == set(listed)
    [itself] = w.workspace.list("/Users/me@example.com/etl/job.py")
    assert itself.object_type == ObjectType.FILE
    # the standard folders exist from the start, the caller's home folder too
    top = {o.path for o in w.workspace.list("/")}
    assert {"/Users", "/Shared"} <= top
    assert "/Users/admin@local" in {o.path for o in w.workspace.list("/Users")}
    w.workspace.upload("/Users/admin@local/home.py", b"1")
    w.workspace.upload("/Shared/shared.py", b"2", language=Language.PYTHON)
    with pytest.raises(ResourceAlreadyExists):  # a standard folder never becomes a file
        w.workspace.upload("/Shared", b"x", format=ImportFormat.AUTO, overwrite=True)
    assert w.workspace.get_status("/Shared").object_type == ObjectType.DIRECTORY

    # the JSON import/export of base64 content
    w.workspace.import_(
        "/Users/me@example.com/etl/job.py",
        content=base64.b64encode(b"v2").decode(),
        format=ImportFormat.SOURCE,
        language=Language.PYTHON,
        overwrite=True,
    )
    exported = w.workspace.export("/Users/me@example.com/etl/job.py", format=ExportFormat.SOURCE)
    assert base64.b64decode(exported.content) == b"v2" and exported.file_type == "py"
    w.workspace.upload("/Users/me@example.com/etl/job.py", b"v3", overwrite=True)
    assert w.workspace.download("/Users/me@example.com/etl/job.py").read() == b"v3"
    r = raw_get(
        host, "workspace/export", path="/Users/me@example.com/etl/job.py", direct_download="true"
    )
    assert r.status_code == 200 and r.content == b"v3"

    # errors: exists without overwrite, no parent folder, notebook formats, a non-empty folder
    with pytest.raises(ResourceAlreadyExists):
        w.workspace.upload("/Users/me@example.com/etl/job.py", b"v4")
    with pytest.raises(NotFound):
        w.workspace.upload("/Users/me@example.com/nowhere/x.py", b"x")
    with pytest.raises(NotFound):
        w.workspace.get_status("/Users/me@example.com/nowhere")
    with pytest.raises(DatabricksError) as e:
        w.workspace.upload("/Users/me@example.com/etl/nb.html", b"<html>", format=ImportFormat.HTML)
    assert code_of(e) == "INVALID_PARAMETER_VALUE"
    with pytest.raises(ResourceAlreadyExists):
        w.workspace.mkdirs("/Users/me@example.com/etl/job.py/sub")
    with pytest.raises(DatabricksError) as e:
        w.workspace.delete("/Users/me@example.com/etl")
    assert code_of(e) == "DIRECTORY_NOT_EMPTY"
    assert w.workspace.download("/Users/me@example.com/etl/job.py").read() == b"v3"
    error(raw_get(host, "workspace/export", path="/Users/me@example.com/etl"), 400,
          "INVALID_PARAMETER_VALUE")  # fmt: skip

    w.workspace.delete("/Users/me@example.com/etl/data.csv")
    with pytest.raises(NotFound):
        w.workspace.get_status("/Users/me@example.com/etl/data.csv")
    with pytest.raises(NotFound):
        w.workspace.delete("/Users/me@example.com/etl/data.csv")
    w.workspace.delete("/Workspace/Users/me@example.com", recursive=True)
    with pytest.raises(NotFound):
        w.workspace.get_status("/Users/me@example.com/etl/job.py")


def test_workspace_import_size_limit(host: DevhostProcess) -> None:
    big = base64.b64encode(b"x" * (10 * MB + 1)).decode()
    r = raw_post(host, "workspace/import", {"path": "/Shared/big.py", "content": big})
    error(r, 400, "MAX_NOTEBOOK_SIZE_EXCEEDED")
    error(raw_get(host, "workspace/get-status", path="/Shared/big.py"), 404,
          "RESOURCE_DOES_NOT_EXIST")  # fmt: skip


# ---------------------------------------------------------------------------- isolation, roles


def test_workspaces_do_not_see_each_others_files(
    host: DevhostProcess, w: WorkspaceClient, other: tuple[str, WorkspaceClient]
) -> None:
    token_b, b = other
    w.dbfs.upload("/iso/x.txt", io.BytesIO(b"from a"))
    with pytest.raises(NotFound):
        b.dbfs.get_status("dbfs:/iso/x.txt")
    b.dbfs.upload("/iso/x.txt", io.BytesIO(b"from b"))
    assert w.dbfs.download("/iso/x.txt").read() == b"from a"
    assert b.dbfs.download("/iso/x.txt").read() == b"from b"
    b.dbfs.delete("/iso", recursive=True)
    assert w.dbfs.download("/iso/x.txt").read() == b"from a"

    # one workspace's upload handle is unknown to the other
    handle = w.dbfs.create("/iso/h.bin").handle
    data = base64.b64encode(b"b's block").decode()
    error(raw_post(host, "dbfs/add-block", {"handle": handle, "data": data}, token_b), 404,
          "RESOURCE_DOES_NOT_EXIST")  # fmt: skip
    error(raw_post(host, "dbfs/close", {"handle": handle}, token_b), 404,
          "RESOURCE_DOES_NOT_EXIST")  # fmt: skip
    w.dbfs.close(handle)
    assert w.dbfs.download("/iso/h.bin").read() == b""

    w.workspace.upload("/Shared/iso.py", b"a")
    with pytest.raises(NotFound):
        b.workspace.get_status("/Shared/iso.py")
    assert "/Shared/iso.py" not in {o.path for o in b.workspace.list("/Shared")}
    w.dbfs.delete("/iso", recursive=True)
    w.workspace.delete("/Shared/iso.py")


def test_a_deleted_workspace_takes_its_files_along(host: DevhostProcess) -> None:
    op = bearer(host.operator_token)
    url = host.url + "/api/admin/workspaces"

    def make() -> WorkspaceClient:
        r = http.post(url, json={"name": "c", "workspace_id": "team-c"}, headers=op)
        assert r.status_code == 200, r.text
        return client(host.url, r.json()["token_value"])

    c = make()
    c.dbfs.upload("/kept.txt", io.BytesIO(b"c"))
    c.workspace.upload("/Shared/kept.py", b"c")
    assert http.delete(url + "/team-c", headers=op).status_code == 200
    # The deletion finishes in the background (the id is refused with 409 until then).
    wait_for("team-c to go", lambda: http.get(url + "/team-c", headers=op).status_code == 404)
    c = make()  # the same id again: it starts empty
    with pytest.raises(NotFound):
        c.dbfs.get_status("/kept.txt")
    with pytest.raises(NotFound):
        c.workspace.get_status("/Shared/kept.py")
    assert http.delete(url + "/team-c", headers=op).status_code == 200


def test_operator_and_agent_tokens_cannot_reach_the_files(host: DevhostProcess) -> None:
    operator = host.operator_token
    store = SqliteStore(host.data_dir / "store.db")
    try:
        agent, _ = Auth(store, SystemClock()).issue_token(
            LOCAL_WORKSPACE, user="agent", role="agent", scope="some-cluster"
        )
    finally:
        store.close()
    for token in (operator, agent):
        for op in ("dbfs/list", "dbfs/read", "workspace/list", "workspace/export"):
            error(raw_get(host, op, token, path="/"), 403, "PERMISSION_DENIED")
        for op in ("dbfs/put", "dbfs/create", "workspace/import", "workspace/mkdirs"):
            error(raw_post(host, op, {"path": "/x"}, token), 403, "PERMISSION_DENIED")
        with pytest.raises(PermissionDenied):
            client(host.url, token).dbfs.get_status("/")
    error(raw_get(host, "dbfs/list", "dapi" + "0" * 32, path="/"), 401, "UNAUTHENTICATED")


# ---------------------------------------------------------------------------- a task's file


def test_read_task_file_reads_what_was_uploaded(host: DevhostProcess, w: WorkspaceClient) -> None:
    """The job machinery's read: the files the APIs wrote, by every python_file form."""
    w.dbfs.upload("/jobs/main.py", io.BytesIO(b"print('dbfs')\n"))
    w.workspace.mkdirs("/Users/admin@local/jobs")
    w.workspace.upload("/Users/admin@local/jobs/main.py", b"print('ws')\n")
    w.dbfs.upload("/jobs/big.py", io.BytesIO(b"#" * (10 * MB + 1)))
    store = SqliteStore(host.data_dir / "store.db")
    try:
        s = FilesService(LocalFileStore(host.data_dir / "files"), store, SystemClock())
        for python_file, want in (
            ("dbfs:/jobs/main.py", b"print('dbfs')\n"),
            ("/dbfs/jobs/main.py", b"print('dbfs')\n"),
            ("/Workspace/Users/admin@local/jobs/main.py", b"print('ws')\n"),
            ("/Users/admin@local/jobs/main.py", b"print('ws')\n"),
        ):
            assert s.read_task_file(LOCAL_WORKSPACE, python_file) == want
        with pytest.raises(ApiResourceDoesNotExist):
            s.read_task_file(LOCAL_WORKSPACE, "dbfs:/jobs/missing.py")
        with pytest.raises(ApiResourceDoesNotExist):  # another workspace's file
            s.read_task_file("team-b", "dbfs:/jobs/main.py")
        for bad in ("dbfs:/../etc/passwd", "file:/etc/passwd", "s3://b/x.py", "dbfs:/jobs",
                    "dbfs:/jobs/big.py", "/Users/x\x00.py", ""):  # fmt: skip
            with pytest.raises(ApiInvalidParameterValue):
                s.read_task_file(LOCAL_WORKSPACE, bad)
    finally:
        store.close()
    w.dbfs.delete("/jobs", recursive=True)
    w.workspace.delete("/Users/admin@local/jobs", recursive=True)


# ---------------------------------------------------------------------------- legacy CLI

CLI = Path(sys.executable).with_name("databricks")


def legacy_cli(host: DevhostProcess, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The legacy CLI keeps only the scheme and host name of DATABRICKS_HOST (the port is
    dropped), so it reaches the devhost as its HTTP proxy: devhost serves a request target in
    absolute-form (`GET http://sparkplane/api/2.0/...`) as the path it names."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DATABRICKS_") and k.lower() not in ("http_proxy", "no_proxy")
    }
    env.update(
        HOME=str(home),
        DATABRICKS_HOST="http://sparkplane",
        DATABRICKS_TOKEN=host.token,
        HTTP_PROXY=host.url,
    )
    return subprocess.run(
        [str(CLI), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_legacy_databricks_cli_fs(host: DevhostProcess, w: WorkspaceClient, tmp_path: Path) -> None:
    def ok(*args: str) -> str:
        p = legacy_cli(host, tmp_path, *args)
        assert p.returncode == 0, (args, p.stdout, p.stderr)
        return p.stdout

    small = tmp_path / "small.py"
    small.write_bytes(b"print('legacy')\n")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * MB + 7))  # multipart put up, 1 MB reads down

    ok("fs", "mkdirs", "dbfs:/legacy/dir")
    ok("fs", "cp", str(small), "dbfs:/legacy/small.py")
    ok("fs", "cp", str(big), "dbfs:/legacy/dir/big.bin")
    assert w.dbfs.download("/legacy/small.py").read() == small.read_bytes()
    assert w.dbfs.get_status("/legacy/dir/big.bin").file_size == big.stat().st_size

    assert ok("fs", "ls", "dbfs:/legacy").split() == ["dir", "small.py"]
    long = ok("fs", "ls", "-l", "dbfs:/legacy/dir")
    assert "big.bin" in long and str(big.stat().st_size) in long

    down = tmp_path / "down"
    ok("fs", "cp", "dbfs:/legacy/dir/big.bin", str(down))
    assert down.read_bytes() == big.read_bytes()

    # without --overwrite an existing file stays; with it, it is replaced
    small2 = tmp_path / "small2.py"
    small2.write_bytes(b"print('v2')\n")
    p = legacy_cli(host, tmp_path, "fs", "cp", str(small2), "dbfs:/legacy/small.py")
    assert p.returncode != 0 and "RESOURCE_ALREADY_EXISTS" in p.stdout + p.stderr
    assert w.dbfs.download("/legacy/small.py").read() == small.read_bytes()
    ok("fs", "cp", "--overwrite", str(small2), "dbfs:/legacy/small.py")
    assert w.dbfs.download("/legacy/small.py").read() == small2.read_bytes()

    p = legacy_cli(host, tmp_path, "fs", "rm", "dbfs:/legacy")  # not empty, no -r
    assert p.returncode != 0 and "IO_ERROR" in p.stdout + p.stderr
    ok("fs", "rm", "-r", "dbfs:/legacy")
    with pytest.raises(NotFound):
        w.dbfs.get_status("/legacy")

    # its workspace commands: JSON import of base64 content, list, export
    ok("workspace", "mkdirs", "/Shared/legacy")
    ok("workspace", "import", "-l", "PYTHON", "-f", "SOURCE", str(small), "/Shared/legacy/s.py")
    assert "s.py" in ok("workspace", "ls", "/Shared/legacy")
    ok("workspace", "export", "-o", "/Shared/legacy/s.py", str(tmp_path / "exported.py"))
    assert (tmp_path / "exported.py").read_bytes() == small.read_bytes()
    ok("workspace", "rm", "-r", "/Shared/legacy")
    with pytest.raises(NotFound):
        w.workspace.get_status("/Shared/legacy")


def test_the_make_run_banner_cli_hint_works_as_printed(
    host: DevhostProcess, w: WorkspaceClient, tmp_path: Path
) -> None:
    """The `try:` line devhost prints at start-up, run as a user would paste it into a shell
    (the legacy CLI on PATH, no DATABRICKS_* or proxy settings of the caller's)."""
    [line] = [ln for ln in host.out.read_text().splitlines() if ln.strip().startswith("try:")]
    command = line.strip().removeprefix("try:").strip()
    c = w.clusters.create(spark_version="4.1.x-scala2.13", node_type_id="rec-small", num_workers=0)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DATABRICKS_") and not k.lower().endswith("_proxy")
    }
    env.update(HOME=str(tmp_path), PATH=f"{CLI.parent}:{env.get('PATH', '')}")
    p = subprocess.run(
        ["bash", "-c", command], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert p.returncode == 0, p.stderr
    assert c.cluster_id in p.stdout
    w.clusters.permanent_delete(c.cluster_id)
