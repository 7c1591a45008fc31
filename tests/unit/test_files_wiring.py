"""`Container.files`: the file store the settings choose (shared/wiring.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.adapters.blob_files import BlobFileStore
from shared.adapters.local_files import LocalFileStore
from shared.domain.paths import id_segment
from shared.settings import Settings
from shared.wiring import _files


def test_local_by_default_under_the_data_dir(tmp_path: Path) -> None:
    store = _files(Settings(data_dir=tmp_path))
    assert isinstance(store, LocalFileStore)
    assert store.root == tmp_path / "files"
    store.write("ws", "/dbfs/f", b"x", overwrite=False)
    assert (tmp_path / "files" / id_segment("ws") / "tree" / "dbfs" / "f").read_bytes() == b"x"


def test_local_root_from_files_dir(tmp_path: Path) -> None:
    store = _files(Settings(data_dir=tmp_path / "data", files_dir=str(tmp_path / "elsewhere")))
    assert isinstance(store, LocalFileStore)
    assert store.root == tmp_path / "elsewhere"


def test_blob_needs_an_account(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="SPARKPLANE_FILES_ACCOUNT_URL"):
        _files(Settings(data_dir=tmp_path, files="blob"))


def test_blob_from_an_account_url(tmp_path: Path) -> None:
    # DefaultAzureCredential is made without a request; no token is asked for here.
    s = Settings(
        data_dir=tmp_path,
        files="blob",
        files_account_url="https://example.blob.core.windows.net",
    )
    store = _files(s)
    assert isinstance(store, BlobFileStore)
    assert store.container.url == "https://example.blob.core.windows.net/workspaces"


@pytest.mark.parametrize("opaque", ["ws-1", "..", "a/b", "/", "ümlaut", "x" * 500])
def test_id_segments_are_single_safe_names(opaque: str) -> None:
    segment = id_segment(opaque)
    assert segment and "/" not in segment and not segment.startswith(".")
    assert len(segment) <= 32 + 1 + 32
    assert segment == id_segment(opaque)
    assert segment != id_segment(opaque + "x")
