"""`fsdx demo` as the README's first command runs it: the embedded model, the bundled sketches, a contact sheet."""

from __future__ import annotations

from PIL import Image

from fashionsd_x.recipes.demo import CELL, DEMO_ITEMS, HAND_DRAWN, PAGES, read_demo_items
from fashionsd_x.generate import read_params
from tests.test_cli import fsdx


def test_bundled_sketches_and_prompts_cover_four_garments_hand_drawn_sketches_and_pages():
    items = read_demo_items()
    assert [name for name, _, _ in items] == list(DEMO_ITEMS) + [style for style, *_ in HAND_DRAWN + PAGES]
    for _, sketch, prompts in items[:len(DEMO_ITEMS)]:
        assert Image.open(sketch).size == (128, 128) and len(prompts) == 3
    for _, sketch, prompts in items[len(DEMO_ITEMS):]:
        assert max(Image.open(sketch).size) >= 512 and len(prompts) == 1  # drawn large, as designers draw


def test_demo_writes_the_contact_sheet_and_the_garments(tmp_path):
    result = fsdx("demo", "--out", tmp_path, "--steps", "4")
    assert result.returncode == 0, result.stderr
    sheet = tmp_path / "contact_sheet.png"
    assert str(sheet) in result.stdout
    # A row per garment, the hand-drawn row, and the pages' row: page, what the model sees, garment, for each page.
    rows, columns = len(DEMO_ITEMS) + 2, 3 * len(PAGES)
    width, height = Image.open(sheet).size
    assert width == columns * CELL and height > rows * CELL
    images = sorted((tmp_path / "images").glob("*.png"))
    assert len(images) == sum(len(prompts) for *_, prompts in DEMO_ITEMS.values()) + len(HAND_DRAWN) + len(PAGES)
    params = read_params(images[0])
    assert params.controlnet and params.lora and params.steps == 4
