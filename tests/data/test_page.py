"""Finding the garment on a page: printing, notes, a figure and a photo's surroundings never reach the model, a
clean drawing is conditioned bit for bit as without cleanup, and a region cuts the page to the garment."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from fashionsd_x.data.conditioning import (SketchConditioning, SketchRegion, conditioning_preview, control_image,
                                           explain_sketch)
from fashionsd_x.data.sketch_styles import draw_item
from tests.data.test_conditioning import TSHIRT, agreement

SIDE = 1000
RES = 128
OFF = SketchConditioning(cleanup=False)


def garment(page: np.ndarray, ink: int = 20, width: int = 5, box: tuple[float, float, float, float] = (0, 0, 1, 1),
            shape: list[tuple[float, float]] = TSHIRT) -> np.ndarray:
    """PAGE (RGB) with the t-shirt outline drawn in BOX (fractions of the page), in dark ink."""
    height, width_px = page.shape[:2]
    x0, y0, x1, y1 = box
    points = np.array([((x0 + x * (x1 - x0)) * width_px, (y0 + y * (y1 - y0)) * height) for x, y in shape], np.int32)
    cv2.polylines(page, [points], True, (ink, ink, ink), width, cv2.LINE_AA)
    return page


def paper(height: int = SIDE, width: int = SIDE) -> np.ndarray:
    return np.full((height, width, 3), 250, np.uint8)


def grid(page: np.ndarray, spacing: int, colour: tuple[int, int, int], angle: float = 0.0,
         dots: bool = False) -> np.ndarray:
    """Printing across the whole page: a square grid (or a dot grid), turned by ANGLE degrees."""
    printed = np.zeros(page.shape[:2], np.uint8)
    height, width = printed.shape
    for offset in range(-2 * max(height, width), 2 * max(height, width), spacing):
        if dots:
            for other in range(0, 2 * max(height, width), spacing):
                cv2.circle(printed, (offset % (width + spacing), other), 3, 255, -1)
        else:
            cv2.line(printed, (offset, -height), (offset, 2 * height), 255, 2)
            cv2.line(printed, (-width, offset), (2 * width, offset), 255, 2)
    if angle:
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
        printed = cv2.warpAffine(printed, matrix, (width, height))
    page[printed > 0] = colour
    return page


def conditioning(page: np.ndarray, settings: SketchConditioning = SketchConditioning(),
                 region: SketchRegion | None = None):
    return control_image(Image.fromarray(page), RES, False, settings, region)


@pytest.fixture(scope="module")
def alone():
    """The garment alone on plain paper: what every page below should come down to."""
    return conditioning(garment(paper()))


@pytest.mark.parametrize("style", ["fine_line", "pencil_scan", "small_lowres", "wobbly_gaps", "detailed",
                                   "off_centre"])
def test_a_clean_drawing_is_conditioned_bit_for_bit_as_without_cleanup(style):
    for index in range(3):
        sketch = Image.fromarray(draw_item(0, style, index).sketch)
        assert np.array_equal(control_image(sketch, RES).numpy(), control_image(sketch, RES, False, OFF).numpy())


@pytest.mark.parametrize("printing", [
    {"spacing": 38, "colour": (150, 190, 230)},  # light blue squared paper
    {"spacing": 25, "colour": (170, 170, 170), "angle": 3.0},  # grey, scanned 3 degrees off
    {"spacing": 60, "colour": (230, 120, 120), "angle": -1.5},  # red, wide
    {"spacing": 30, "colour": (120, 120, 120), "dots": True},  # a dot grid
])
def test_the_papers_printing_is_removed(alone, printing):
    page = garment(grid(paper(), **printing))
    assert agreement(conditioning(page, OFF), alone) < 0.6  # without cleanup the grid is taken for line
    assert agreement(conditioning(page), alone) > 0.9


def test_notes_with_leader_lines_and_a_faint_figure_are_removed(alone):
    page = garment(paper())
    for text, at, to in (("cotton jersey", (700, 700), (640, 650)), ("rib 2cm", (620, 120), (520, 200)),
                         ("hem 3 cm", (40, 940), (340, 850))):
        cv2.putText(page, text, at, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, 1.1, (30, 30, 30), 2, cv2.LINE_AA)
        cv2.line(page, (at[0] - 5, at[1] - 10), to, (30, 30, 30), 3, cv2.LINE_AA)
    cv2.ellipse(page, (500, 80), (55, 70), 0, 0, 360, (175, 175, 175), 2, cv2.LINE_AA)  # a head, in pencil
    for x in (200, 800):  # arms hanging from the sleeves
        cv2.line(page, (x, 400), (x + (30 if x < 500 else -30), 700), (175, 175, 175), 2, cv2.LINE_AA)
    assert agreement(conditioning(page, OFF), alone) < 0.75
    assert agreement(conditioning(page), alone) > 0.9


def test_a_photographed_page_loses_the_table_around_it(alone):
    table = np.full((SIDE, SIDE, 3), 90, np.uint8)
    sheet = garment(paper())
    corners = np.float32([[0, 0], [SIDE, 0], [SIDE, SIDE], [0, SIDE]])
    tilted = np.float32([[60, 30], [960, 70], [930, 980], [30, 950]])  # a phone held a little askew
    matrix = cv2.getPerspectiveTransform(corners, tilted)
    warped = cv2.warpPerspective(sheet, matrix, (SIDE, SIDE), borderValue=(0, 0, 0))
    inside = cv2.warpPerspective(np.ones((SIDE, SIDE), np.uint8), matrix, (SIDE, SIDE)) > 0
    photo = np.where(inside[..., None], warped, table)
    expected = conditioning(np.where(inside[..., None], warped, 250).astype(np.uint8))
    assert agreement(conditioning(photo, OFF), expected) < 0.7
    assert agreement(conditioning(photo), expected) > 0.9


def test_two_garments_on_a_page_the_region_picks_one():
    page = garment(garment(paper(700, 1400), box=(0.02, 0, 0.48, 1)), box=(0.52, 0, 0.98, 1))
    region = SketchRegion.parse("0.5,0,1,1")
    right = conditioning(page, region=region)
    cut = conditioning(np.ascontiguousarray(page[:, 700:]))
    assert np.array_equal(right.numpy(), cut.numpy())  # the page cut to the box, nothing else
    # What lies outside the box never reaches the model, whatever is drawn there.
    scribbled = page.copy()
    cv2.line(scribbled, (50, 50), (600, 650), (0, 0, 0), 6)
    assert np.array_equal(conditioning(scribbled, region=region).numpy(), right.numpy())
    assert not np.array_equal(conditioning(page).numpy(), right.numpy())


@pytest.mark.parametrize("text, message", [
    ("0.5,0,1", "four numbers"), ("a,b,c,d", "x0,y0,x1,y1"), ("0.5,0,1.5,1", "fractions from 0 to 1"),
    ("0.5,0.2,0.5,1", "x0 < x1"), ("-0.1,0,1,1", "fractions from 0 to 1"), ("nan,0,1,1", "four numbers"),
])
def test_a_bad_region_is_a_one_line_error(text, message):
    with pytest.raises(ValueError, match=message) as error:
        SketchRegion.parse(text)
    assert "\n" not in str(error.value)


def test_explain_shows_what_was_removed_by_kind():
    page = garment(grid(paper(), 38, (150, 190, 230)))
    cv2.putText(page, "linen", (40, 960), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (30, 30, 30), 2, cv2.LINE_AA)
    image, removed = explain_sketch(Image.fromarray(page))
    assert removed["printing"] > 0.5 and removed["outside"] > 0.0
    pixels = np.asarray(image)
    assert (np.abs(pixels.astype(int) - (60, 170, 255)).sum(axis=2) == 0).mean() > 0.02  # printing, in blue
    assert (pixels.sum(axis=2) == 0).any()  # the garment's line, in black
    _, nothing = explain_sketch(Image.fromarray(garment(paper())))
    assert nothing == {}


def test_cleanup_off_is_the_page_as_drawn():
    page = garment(grid(paper(), 38, (150, 190, 230)))
    preview = np.asarray(conditioning_preview(Image.fromarray(page), RES, OFF))
    assert (preview < 128).mean() > 0.3  # every grid line taken for line
