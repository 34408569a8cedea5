"""Shared by the apps' browser tests: one headless Chromium page per test."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.apps import screenshots


@pytest.fixture
def page() -> Iterator[Any]:
    """A headless Chromium page, or a skip naming what is missing (`make test` installs Chromium as root)."""
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
    from playwright.sync_api import Error, sync_playwright

    if not Path(screenshots.CHROMIUM).exists():
        pytest.skip(f"no Chromium at {screenshots.CHROMIUM}")
    with sync_playwright() as playwright:
        try:
            browser = screenshots.launch_chromium(playwright)
        except Error as error:
            pytest.skip(f"headless Chromium did not start: {str(error).splitlines()[0]}")
        yield browser.new_page(viewport=screenshots.VIEWPORT)
        browser.close()
