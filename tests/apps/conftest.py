"""Shared by the apps' browser tests: one headless Chromium page per test."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.apps import screenshots


def _unavailable(reason: str) -> None:
    """Skip on a developer's machine; under CI (CI=true) a browser test that cannot run is a failure, so CI
    never passes without exercising the apps in a browser."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must run the browser tests: {reason} (`make test` installs Chromium as root)")
    pytest.skip(reason)


@pytest.fixture
def page() -> Iterator[Any]:
    """A headless Chromium page, or a skip naming what is missing (`make test` installs Chromium as root)."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        _unavailable("Playwright is not installed")
    if not Path(screenshots.CHROMIUM).exists():
        _unavailable(f"no Chromium at {screenshots.CHROMIUM}")
    with sync_playwright() as playwright:
        try:
            browser = screenshots.launch_chromium(playwright)
        except Error as error:
            _unavailable(f"headless Chromium did not start: {str(error).splitlines()[0]}")
        yield browser.new_page(viewport=screenshots.VIEWPORT)
        browser.close()
