"""The rating page in headless Chromium: enter a code, answer, reload, continue where left off.

Skipped (with the reason) where Chromium or Playwright's driver is missing. With FSDX_STUDY_SCREENSHOT=PATH set,
another test also writes the screenshot of the page used in the docs (docs/study.png).
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any, Iterator

import pytest

from fashionsd_x.apps.study.create import create_study
from tests.apps.test_study_create import make_evaluation
from tests.apps.test_study_server import running

CHROMIUM = Path("/usr/bin/chromium")
PER_RATER = 4


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright (python) is not installed")
    try:
        playwright = sync_api.sync_playwright().start()
    except Exception as error:  # noqa: BLE001 - any failure of the driver means: cannot run here
        pytest.skip(f"Playwright's driver cannot start: {error}")
    try:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
    except Exception as error:  # noqa: BLE001
        playwright.stop()
        pytest.skip(f"Chromium does not start under Playwright: {error}")
    yield chromium
    chromium.close()
    playwright.stop()


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_evaluation(tmp_path_factory.mktemp("browser"))


def answer(page: Any, criterion: str, choice: str, finishes_pair: bool, done: int) -> None:
    """Click one answer and wait until the page shows it stored (or the next pair, for a pair's last answer)."""
    from playwright.sync_api import expect

    button = page.locator(f'.question[data-criterion="{criterion}"] button[data-choice="{choice}"]')
    button.click()
    if finishes_pair:
        expect(page.locator("#count")).to_have_text(f"{done} / {PER_RATER}")
    else:
        expect(button).to_have_attribute("aria-pressed", "true")


def images_loaded(page: Any) -> None:
    # An arrow function, not an expression: Playwright evals expressions, which the page's CSP forbids.
    page.wait_for_function("() => ['sketch', 'left', 'right'].every(id => { const img = document.getElementById(id);"
                           " return img.complete && img.naturalWidth > 0; })")


def test_rate_reload_and_continue(browser: Any, evaluation: Path, tmp_path: Path):
    from playwright.sync_api import expect

    study = create_study(evaluation, tmp_path / "study.db", per_rater=PER_RATER).out
    with running(study) as base:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        requests, errors = [], []
        page.on("request", lambda request: requests.append(request.url))
        page.on("pageerror", lambda error: errors.append(error))
        page.goto(base + "/")
        page.fill("#code", "not valid!")
        page.click("text=Start")
        expect(page.locator("#status")).to_contain_text("a rater code is 1 to 32 letters")
        page.fill("#code", "designer-01")
        page.click("text=Start")
        expect(page.locator("#count")).to_have_text(f"0 / {PER_RATER}")
        given = [("realism", "left"), ("sketch", "tie"), ("text", "right")] * 2 + [("realism", "right")]
        for index, (criterion, choice) in enumerate(given):
            images_loaded(page)
            answer(page, criterion, choice, finishes_pair=criterion == "text", done=index // 3 + 1)
        shown = page.get_attribute("#left", "src")

        page.reload()  # stop and come back: the URL keeps the code, the server knows where they were
        expect(page.locator("#count")).to_have_text(f"2 / {PER_RATER}")
        assert page.get_attribute("#left", "src") == shown and "rater=designer-01" in page.url
        pressed = page.locator('.question[data-criterion="realism"] button[data-choice="right"]')
        expect(pressed).to_have_attribute("aria-pressed", "true")
        expect(pressed).to_be_disabled()
        answer(page, "sketch", "left", finishes_pair=False, done=2)
        answer(page, "text", "tie", finishes_pair=True, done=3)
        given += [("sketch", "left"), ("text", "tie")]
        images_loaded(page)
        assert not errors and all(url.startswith(base) for url in requests)
    with closing(sqlite3.connect(study)) as connection:
        stored = connection.execute(
            "SELECT a.criterion, a.choice, s.position FROM answers a JOIN raters r ON r.id = a.rater "
            "JOIN assignments s ON s.rater = a.rater AND s.comparison = a.comparison "
            "WHERE r.code = 'designer-01' ORDER BY a.id").fetchall()
    assert [(criterion, choice) for criterion, choice, _ in stored] == given
    assert [position for _, _, position in stored] == [0] * 3 + [1] * 3 + [2] * 3  # the queue's order


@pytest.mark.skipif(not os.environ.get("FSDX_STUDY_SCREENSHOT"),
                    reason="set FSDX_STUDY_SCREENSHOT=docs/study.png to retake the docs' screenshot")
def test_screenshot_for_the_docs(browser: Any, tmp_path: Path):
    evaluation = make_evaluation(tmp_path, garments=24, size=256)
    study = create_study(evaluation, tmp_path / "study.db", per_rater=12, seed=1).out
    with running(study) as base:
        page = browser.new_page(viewport={"width": 1200, "height": 860})
        page.goto(base + "/?rater=designer-07")
        for index, (criterion, choice) in enumerate([("realism", "left"), ("sketch", "left"), ("text", "tie")] * 4):
            images_loaded(page)
            page.locator(f'.question[data-criterion="{criterion}"] button[data-choice="{choice}"]').click()
            done = f"{(index + 1) // 3} /"
            page.wait_for_function(f"() => document.getElementById('count').textContent.startsWith('{done}')")
        images_loaded(page)
        page.locator('.question[data-criterion="realism"] button[data-choice="right"]').click()
        page.wait_for_selector('button[aria-pressed="true"]')
        page.screenshot(path=os.environ["FSDX_STUDY_SCREENSHOT"], full_page=True)
