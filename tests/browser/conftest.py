"""A real browser for the console's tests: Playwright for Python driving the system's Chromium
(Debian's `chromium`, which `make setup` installs; Playwright's own browser download is not
used). Without it the tests skip, except in CI (CI=true), where they fail."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devhost.process import DevhostProcess


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() not in ("", "false", "0"):
        pytest.fail(f"{reason} (CI needs it: `make setup` installs it)")
    pytest.skip(f"{reason}: the browser tests skip (`make setup` installs it)")


def chromium_path() -> str | None:
    found = os.environ.get("SPARKPLANE_CHROMIUM") or shutil.which("chromium")
    return found or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright for Python is not installed")
    path = chromium_path()
    if path is None:
        _missing("chromium is not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(
        viewport={"width": 1280, "height": 860},
        permissions=["clipboard-read", "clipboard-write"],
    )
    p = context.new_page()
    p.set_default_timeout(15_000)
    p.on("dialog", lambda d: d.accept())  # the console confirms terminate and delete
    # A script error or anything the Content-Security-Policy refused fails the test.
    problems: list[str] = []
    p.on("pageerror", lambda e: problems.append(f"script error: {e}"))
    p.on(
        "console",
        lambda m: (
            problems.append(m.text)
            if m.type == "error" and "Content Security Policy" in m.text
            else None
        ),
    )
    try:
        yield p
    finally:
        context.close()
    assert problems == []


@pytest.fixture(scope="module")
def devhost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevhostProcess]:
    """One devhost (record provisioner, fast boots) for a module's browser tests: each test
    reads only what it made, so they share it and the suite stays fast."""
    data: Path = tmp_path_factory.mktemp("devhost") / "data"
    h = DevhostProcess(
        data,
        env={"SPARKPLANE_JOBS_SCHEDULE": "*/1 * * * * *", "SPARKPLANE_JOBS_POLL_INTERVAL_S": "0.3"},
    ).start()
    try:
        yield h
    finally:
        h.close()
