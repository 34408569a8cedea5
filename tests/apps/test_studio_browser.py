"""A designer draws a garment on the studio's canvas in headless Chromium and the embedded model follows it.

The outline is drawn with the mouse as soon as the canvas shows after the page loads, no tool picked (issue 14),
off-centre and clearly smaller than the canvas, so a garment generated from the prompt alone (centred, standard
size) cannot fill it. The same on grid paper and on the fashion figure (issue 28: the paper is part of the page the
model gets, and cleanup takes it off), and a region box dragged over one of two garments on the page: the model gets that one alone.
One studio is served for the module; each test opens its own page (its own session). Skipped (with the reason)
where Chromium or Playwright is missing; CI installs both.
"""

from __future__ import annotations

import io
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from fashionsd_x.apps.studio.actions import IMAGE_NAME
from fashionsd_x.apps.studio.paper import FIGURE_HEIGHT, HEADS
from fashionsd_x.apps.studio.ui import BRUSH_SIZE, CANVAS, REGION_BOX
from fashionsd_x.data.conditioning import SketchRegion, conditioning_preview, ink_mask
from fashionsd_x.evaluate.metrics import garment_mask, sketch_region
from fashionsd_x.generate import GarmentGenerator, read_params
from tests.apps import screenshots

PROMPT = "a plain red t-shirt"
SEED = 0
MIN_IOU = 0.8  # issue 12: the generated garment fills the drawn region
# A t-shirt outline in units of its bounding box (x right, y down): neckline, right sleeve, hem, left sleeve.
T_SHIRT = [(0.38, 0.0), (0.5, 0.1), (0.62, 0.0), (1.0, 0.18), (0.88, 0.4), (0.78, 0.3), (0.78, 1.0), (0.22, 1.0),
           (0.22, 0.3), (0.12, 0.4), (0.0, 0.18)]
PLACE = (50, 150, 260, 290)  # left, top, width, height on the 512 px canvas: 57% of its side, left of and below
# its centre; the embedded model was trained on garments 47% to 86% of the frame, placed anywhere
TIMEOUT_MS = 600_000  # 20 steps of the embedded model on a busy 2-core runner
DRESS_PROMPT = "a plain red dress"
# A short-sleeved maxi dress drawn on the figure paper's croquis, in its head heights (x from its centre line, y from
# the top of its head; paper.HEADS tall): neckline, right sleeve, flared to the ankles, left sleeve.
DRESS = [(-0.4, 1.5), (0.0, 1.85), (0.4, 1.5), (0.95, 1.5), (1.45, 2.3), (1.1, 2.6), (0.8, 2.3), (0.62, 3.1),
         (1.5, 7.9), (-1.5, 7.9), (-0.62, 3.1), (-0.8, 2.3), (-1.1, 2.6), (-1.45, 2.3), (-0.95, 1.5)]
TWO_SHIRTS = ((30, 150, 200, 230), (282, 150, 200, 230))  # two t-shirts side by side on one page (left, top, w, h)
RIGHT_HALF = ((0.5, 0.15), (0.98, 0.9))  # a box dragged over the right one, corners as fractions of the page

# Canvas pixels -> page coordinates, through the zoom and pan of the editor (Gradio 6 keeps it on `window.editor`).
TO_PAGE = """points => { const e = window.editor, box = e.app.canvas.getBoundingClientRect();
    return points.map(([x, y]) => { const p = e.image_container.toGlobal({x, y});
                                    return [box.left + p.x, box.top + p.y]; }); }"""


@pytest.fixture(scope="module")
def embedded() -> GarmentGenerator:
    """The shipped default model, as `fsdx studio` loads it."""
    return GarmentGenerator.load(device="cpu")


@pytest.fixture(scope="module")
def studio(embedded, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """The studio served once for the module's tests: (its URL, the folder it writes under)."""
    out = tmp_path_factory.mktemp("studio") / "out"
    with screenshots.serving(embedded, out) as url:
        yield url, out


def outline(place: tuple[float, float, float, float] = PLACE) -> list[tuple[float, float]]:
    """The t-shirt's corners in canvas pixels, closed (the last point is the first)."""
    left, top, width, height = place
    points = [(left + x * width, top + y * height) for x, y in T_SHIRT]
    return [*points, points[0]]


def dress_on_the_figure() -> list[tuple[float, float]]:
    """DRESS in canvas pixels, where the figure paper's croquis stands, closed."""
    head, top = FIGURE_HEIGHT * CANVAS / HEADS, (1 - FIGURE_HEIGHT) / 2 * CANVAS
    points = [(CANVAS / 2 + x * head, top + y * head) for x, y in DRESS]
    return [*points, points[0]]


def filled(points: list[tuple[float, float]], canvas: int, resolution: int) -> np.ndarray:
    """Bool resolution^2: the outline's interior in the generated image's frame.

    The studio gives the model the canvas padded to a centred square (it is square already) and resized to the
    model's side, so a canvas pixel maps to resolution / canvas of a generated one; a generated pixel is inside
    when at least half of it is.
    """
    mask = Image.new("L", (canvas, canvas), 0)
    ImageDraw.Draw(mask).polygon(points, fill=255)
    return np.asarray(mask.resize((resolution, resolution), Image.Resampling.BOX)) >= 128


def covered(points: list[tuple[float, float]], canvas: int) -> np.ndarray:
    """Bool canvas^2: what the stroke and its inside cover on the canvas (the brush size is a radius)."""
    mask = Image.new("L", (canvas, canvas), 0)
    pen = ImageDraw.Draw(mask)
    pen.polygon(points, fill=255)
    pen.line(points, fill=255, width=2 * BRUSH_SIZE, joint="curve")
    return np.asarray(mask) > 0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def draw(page: Any, points: list[tuple[float, float]]) -> None:
    """As soon as the canvas is on screen, press the mouse on the first point, move through the others, release:
    one stroke, as a designer draws, no tool picked and nothing else waited for."""
    canvas = page.locator("#canvas canvas").first
    canvas.wait_for(timeout=60_000)
    canvas.scroll_into_view_if_needed()  # after work further down the page, the canvas may be scrolled off
    on_page = page.evaluate(TO_PAGE, [list(point) for point in points])
    page.mouse.move(*on_page[0])
    page.mouse.down()
    for x, y in on_page[1:]:
        page.mouse.move(x, y)
    page.mouse.up()


def choose_paper(page: Any, label: str) -> None:
    page.locator("#paper").get_by_label(label, exact=True).check()


def generate(page: Any, prompt: str, out: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Generate one garment (seed SEED) as a designer does; (its PNG downloaded, the sketch the server received).

    A new run's link replaces the last one: the run is named in the PNG's name (IMAGE_NAME), and its folder
    under `out` keeps the sketch it was given.
    """
    page.locator("#prompt textarea").fill(prompt)
    screenshots.set_number(page, "num-images", 1)
    screenshots.set_number(page, "seed", SEED)
    before = page.locator("#downloads a").evaluate_all("links => links.map(link => link.href)")
    page.locator("#generate").click()
    page.wait_for_function("before => { const link = document.querySelector('#downloads a');"
                           " return link && !before.includes(link.href); }", arg=before, timeout=TIMEOUT_MS)
    href = page.locator("#downloads a").first.evaluate("a => a.href")
    generated = tmp_path / href.rsplit("/", 1)[-1]
    generated.write_bytes(urllib.request.urlopen(href, timeout=60).read())
    run = generated.stem.split("-", 1)[1]
    assert generated.name == IMAGE_NAME.format(seed=SEED, run=run)
    return generated, out / run / "sketch.png"


def shown(page: Any, elem_id: str) -> Image.Image:
    """The image a panel shows, as the server sent it."""
    src = page.locator(f"#{elem_id} img").evaluate("img => img.src")
    return Image.open(io.BytesIO(urllib.request.urlopen(src, timeout=60).read()))


def model_input(page: Any, resolution: int) -> np.ndarray:
    """"What the model sees", back at the model's resolution (the page enlarges it, nearest)."""
    seen = shown(page, "model-view").convert("L")
    return np.asarray(seen.resize((resolution, resolution), Image.Resampling.NEAREST))


def strokes_only(page: Any, received: Path, points: list[tuple[float, float]], resolution: int) -> None:
    """The server received the page, paper and strokes, and the model gets the strokes alone: "What the model
    sees" (the conditioning, which the server computed from that page) has no line further than a brush width
    from the stroke, and has the stroke."""
    sketch = Image.open(received)
    near = Image.fromarray(covered(points, CANVAS)).filter(ImageFilter.MaxFilter(4 * BRUSH_SIZE + 1))
    assert (ink_mask(sketch) & ~np.asarray(near)).any(), "the paper should be on the page the server received"
    seen = model_input(page, resolution) < 128
    allowed = np.asarray(near.resize((resolution, resolution), Image.Resampling.BOX)) > 0
    assert seen.sum() >= resolution, "the model sees no stroke"  # an outline runs at least a side's length
    assert (seen & ~allowed).sum() <= 0.02 * seen.sum(), "the paper reached the model"


def test_a_drawn_garment_is_followed(embedded, studio, page, tmp_path):
    url, out = studio
    target = filled(outline(), CANVAS, embedded.resolution)
    # The check can tell: the same t-shirt centred, where a prompt-only garment goes, scores far below MIN_IOU.
    shift = np.round((np.array(target.shape) - 1) / 2 - np.argwhere(target).mean(axis=0)).astype(int)
    assert iou(target, np.roll(target, shift, axis=(0, 1))) < 0.6
    page.goto(url)
    draw(page, outline())
    assert page.get_by_text("the embedded tiny FashionSD-X model: base + LoRA + ControlNet").is_visible()
    generated, received = generate(page, PROMPT, out, tmp_path)
    measured = iou(garment_mask(Image.open(generated)), target)
    print(f"\nIoU of the generated garment with the drawn t-shirt: {measured:.3f} (seed {SEED}, needs {MIN_IOU})")
    params = read_params(generated)
    assert (params.prompt, params.seed) == (PROMPT, SEED)
    assert params.sketch_sha256 is not None, "the studio generated from the prompt alone, not the drawing"
    seen = model_input(page, embedded.resolution)
    page.get_by_label("Clear canvas").click()
    page.locator("#generate").click()  # nothing drawn now
    page.locator("#message").get_by_text("the canvas is blank").wait_for(timeout=60_000)

    # The stroke reached the server where it was drawn (else a low IoU below would blame the model wrongly).
    assert iou(sketch_region(Image.open(received)), covered(outline(), CANVAS)) >= 0.97
    # "What the model sees" shows what the model received: the conditioning of that sketch, enlarged.
    expected = conditioning_preview(Image.open(received), embedded.resolution, embedded.conditioning)
    assert np.array_equal(seen, np.asarray(expected))
    assert measured >= MIN_IOU, f"the garment fills the drawn outline with IoU {measured:.3f} < {MIN_IOU}"


def test_a_garment_drawn_on_grid_paper_is_followed(embedded, studio, page, tmp_path):
    url, out = studio
    page.goto(url)
    choose_paper(page, "Grid")
    draw(page, outline())  # at once: the canvas waits for the new sheet ("Preparing the canvas…")
    generated, received = generate(page, PROMPT, out, tmp_path)
    measured = iou(garment_mask(Image.open(generated)), filled(outline(), CANVAS, embedded.resolution))
    print(f"\nIoU of the garment drawn on grid paper with its outline: {measured:.3f} (seed {SEED}, needs {MIN_IOU})")
    strokes_only(page, received, outline(), embedded.resolution)
    assert measured >= MIN_IOU, f"the garment fills the drawn outline with IoU {measured:.3f} < {MIN_IOU}"


def test_a_dress_drawn_on_the_figure_is_followed(embedded, studio, page, tmp_path):
    url, out = studio
    page.goto(url)
    choose_paper(page, "Figure (croquis)")
    draw(page, dress_on_the_figure())
    generated, received = generate(page, DRESS_PROMPT, out, tmp_path)
    target = filled(dress_on_the_figure(), CANVAS, embedded.resolution)
    measured = iou(garment_mask(Image.open(generated)), target)
    print(f"\nIoU of the dress drawn on the figure with its outline: {measured:.3f} (seed {SEED}, needs {MIN_IOU})")
    strokes_only(page, received, dress_on_the_figure(), embedded.resolution)  # no croquis line in or around it
    # The check can tell: a dress from the prompt alone (the studio's process has run the model: about a second).
    unprompted = embedded(DRESS_PROMPT, seed=SEED)[0].image
    assert iou(garment_mask(unprompted), target) < 0.6
    assert measured >= MIN_IOU, f"the dress fills the drawn outline with IoU {measured:.3f} < {MIN_IOU}"


def drag(page: Any, elem_id: str, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Drag the mouse over a panel's image from `start` to `end`, fractions of the image as shown (letterboxed)."""
    area = page.locator(f"#{elem_id} img").evaluate("""img => { const box = img.getBoundingClientRect();
        const scale = Math.min(box.width / img.naturalWidth, box.height / img.naturalHeight);
        const width = img.naturalWidth * scale, height = img.naturalHeight * scale;
        return [box.left + (box.width - width) / 2, box.top + (box.height - height) / 2, width, height]; }""")
    screenshots.drag(page, tuple(area), start, end)


def test_a_region_box_dragged_on_the_page_gives_the_model_one_garment(embedded, studio, page, tmp_path):
    url, out = studio
    resolution = embedded.resolution
    page.goto(url)
    for place in TWO_SHIRTS:
        draw(page, outline(place))
    page.locator("#show-page").click()  # a drawing's page shows on request (strokes send no reliable event)
    page.locator("#sketch-page img").wait_for(timeout=60_000)
    before = page.locator("#model-view img").evaluate("img => img.src")
    drag(page, "sketch-page", *RIGHT_HALF)
    region = page.locator("#sketch-region input")
    page.wait_for_function("() => document.querySelector('#sketch-region input').value !== ''", timeout=30_000)
    page.wait_for_function("src => document.querySelector('#model-view img').src !== src", arg=before,
                           timeout=60_000)
    box = SketchRegion.parse(region.input_value())
    assert np.allclose(box.to_list(), [*RIGHT_HALF[0], *RIGHT_HALF[1]], atol=0.01), box
    dragged = model_input(page, resolution)
    explained = np.asarray(shown(page, "sketch-page").convert("RGB"))
    assert (explained == REGION_BOX).all(axis=2).sum() > 100  # the page shows the box
    # A stroke outside the box, then Generate: the stroke reaches the server, and changes nothing the model gets.
    scribble = [(40, 60), (200, 440), (120, 470)]
    draw(page, scribble)
    generated, received = generate(page, PROMPT, out, tmp_path)
    assert read_params(generated).sketch_region == box.to_list()
    line = Image.new("1", (CANVAS, CANVAS))
    ImageDraw.Draw(line).line(scribble, fill=1, width=BRUSH_SIZE)  # the middle of the stroke
    assert ink_mask(Image.open(received))[np.asarray(line)].mean() > 0.9
    # What the model sees, before the stroke and after Generate, is the conditioning of the page cut to the box:
    # the right t-shirt alone, not the page's two.
    page_cut = np.asarray(conditioning_preview(Image.open(received), resolution, embedded.conditioning, box))
    assert np.array_equal(dragged, page_cut) and np.array_equal(model_input(page, resolution), page_cut)
    whole = np.asarray(conditioning_preview(Image.open(received), resolution, embedded.conditioning))
    assert not np.array_equal(page_cut, whole)
