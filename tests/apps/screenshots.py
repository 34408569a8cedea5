"""docs/studio.png, the studio after a generation, taken with headless Chromium: `python -m tests.apps.screenshots`.

With the embedded model installed (fashionsd_x/embedded/model_index.json) the screenshot shows it generating
from one of its demo sketches; without it, a tiny random model stands in (its garments are noise: retake the
screenshot once the embedded model ships). The browser steps are the ones the studio's browser test takes.
"""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fashionsd_x.apps.studio.serve import gradio_folder, launch_options
from fashionsd_x.generate import GarmentGenerator

DOCS = Path(__file__).resolve().parents[2] / "docs"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu"]
VIEWPORT = {"width": 1320, "height": 900}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(generator: GarmentGenerator, out: Path) -> Iterator[str]:
    """The studio for `generator` served on a free local port, as `fsdx studio` serves it (with a Gradio folder of its
    own, removed once it is closed); yields its URL."""
    from fashionsd_x.apps.studio.ui import build_app

    port = free_port()
    with gradio_folder():
        demo = build_app(generator, out)
        demo.queue().launch(prevent_thread_lock=True, quiet=True, **launch_options(out, "127.0.0.1", port))
        try:
            yield f"http://127.0.0.1:{port}/"
        finally:
            demo.close()


def launch_chromium(playwright):
    """Headless system Chromium (Playwright's own browsers are not installed)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@contextmanager
def browser_page() -> Iterator:
    """A page in headless system Chromium driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield browser.new_page(viewport=VIEWPORT)
        finally:
            browser.close()


# The garments are in the gallery, or the page said why not (its line under Generate, or a toast).
FINISHED = """() => [...document.querySelectorAll('#gallery img')].some(img => img.offsetParent !== null)
  || document.querySelector('#message').textContent.includes('⚠')
  || [...document.querySelectorAll('.toast-body')].some(toast => toast.offsetParent !== null)"""
# What the page shows about a run: its line, toasts and progress timers, for a failure's message.
SHOWN_STATE = """() => [document.querySelector('#message').textContent,
  ...[...document.querySelectorAll('.toast-body, .progress-text')].map(el => el.textContent)]
  .map(text => text.trim()).filter(Boolean).join(' | ')"""


def generate_in_browser(page, url: str, sketch: Path, prompt: str, steps: int | None = None,
                        timeout_ms: int = 60_000, run_timeout_ms: int = 240_000) -> list[str]:
    """Upload `sketch`, type `prompt`, click Generate as a designer does; returns the PNG download links.

    The run itself may take minutes on a busy runner (`run_timeout_ms`); a run that ends without garments, or does
    not end, fails with what the page showed."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.goto(url)
    page.get_by_role("tab", name="Upload sketch").click()
    page.locator("#sketch-upload input[type=file]").set_input_files(str(sketch))
    page.locator("#sketch-preview img").wait_for(timeout=timeout_ms)  # the upload reached the server
    page.locator("#prompt textarea").fill(prompt)
    if steps is not None:
        set_number(page, "steps", steps)
    page.locator("#generate").click()
    try:
        page.wait_for_function(FINISHED, timeout=run_timeout_ms)
    except PlaywrightTimeout:
        raise AssertionError(f"no garments after {run_timeout_ms / 1000:.0f} s; the page showed: "
                             f"{page.evaluate(SHOWN_STATE)!r}") from None
    if not page.locator("#gallery img").first.is_visible():
        raise AssertionError(f"Generate gave no garments; the page showed: {page.evaluate(SHOWN_STATE)!r}")
    page.locator("#downloads a").first.wait_for(timeout=timeout_ms)
    return page.locator("#downloads a").evaluate_all("links => links.map(link => link.href)")


def drag(page, box: tuple[float, float, float, float], start: tuple[float, float], end: tuple[float, float]) -> None:
    """Drag the mouse in a straight line from `start` to `end`, fractions of BOX (left, top, width, height on
    the page), in ten moves: a stroke on the canvas, or a box on an image."""
    left, top, width, height = box
    (x0, y0), (x1, y1) = start, end
    points = [(left + width * (x0 + (x1 - x0) * k / 10), top + height * (y0 + (y1 - y0) * k / 10))
              for k in range(11)]
    page.mouse.move(*points[0])
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*point)
    page.mouse.up()


def set_number(page, elem_id: str, value: float) -> None:
    """Type into a slider's number box (the value reaches the server when the box loses focus)."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def screenshot(path: Path = DOCS / "studio.png") -> tuple[Path, bool]:
    """Generate in the studio and save the page as `path`; (path, whether the embedded model was used)."""
    with tempfile.TemporaryDirectory(prefix="fsdx-screenshot-") as folder:
        generator, sketch, prompt, embedded = _model_and_sketch(Path(folder))
        with serving(generator, Path(folder) / "out") as url, browser_page() as page:
            generate_in_browser(page, url, sketch, prompt, timeout_ms=600_000)
            page.wait_for_timeout(1000)  # let the gallery's images finish painting
            path.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(path), full_page=True)
    return path, embedded


def _model_and_sketch(folder: Path) -> tuple[GarmentGenerator, Path, str, bool]:
    from fashionsd_x.models.embedded import EMBEDDED_DIR

    if (EMBEDDED_DIR / "model_index.json").is_file():
        from fashionsd_x.recipes.demo import read_demo_items

        _, sketch, prompts = read_demo_items()[0]
        return GarmentGenerator.load(), sketch, prompts[0], True
    return (*_tiny_model_and_sketch(folder), False)


def _tiny_model_and_sketch(folder: Path) -> tuple[GarmentGenerator, Path, str]:
    from fashionsd_x.data.sketch import extract_sketch
    from fashionsd_x.models.tiny import build_tiny_base
    from tests.conftest import garment
    from tests.test_generate import _save_controlnet, _save_lora

    base = build_tiny_base(folder / "base")
    generator = GarmentGenerator.load(base, lora=_save_lora(base, folder / "lora", 0),
                                      controlnet=_save_controlnet(base, folder / "controlnet"), device="cpu")
    sketch = folder / "sketch.png"
    extract_sketch(garment(3, size=256, portrait=False)).save(sketch)
    return generator, sketch, "a navy dress with white polka dots"


def main() -> int:
    path, embedded = screenshot()
    model = "the embedded model" if embedded else "a tiny random model (no embedded model yet: retake it later)"
    print(f"wrote {path} with {model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
