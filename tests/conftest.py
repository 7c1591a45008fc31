from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devhost.process import DevhostProcess


@pytest.fixture
def devhost(tmp_path: Path) -> Iterator[DevhostProcess]:
    """A devhost subprocess with the record provisioner (fast boots) on a free port."""
    h = DevhostProcess(tmp_path / "data").start()
    try:
        yield h
    finally:
        h.close()
