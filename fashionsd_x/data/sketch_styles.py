"""A held-out benchmark of sketches drawn the way designers draw them (GitHub issue 12, part 3).

The training sketches are adaptive-threshold extractions of the project's own renders: one line quality, one
size, garments centred on a square. Users bring fine-liner drawings on big sheets, pencil scans on grey paper,
thumbnails, shaky outlines with breaks, flats full of seams and buttons, portrait pages with the garment in a
corner. `make_sketch_styles` draws such sketches procedurally, each with the filled silhouette it outlines, so
`fsdx evaluate` can say how far each kind of sketch is followed.

The page styles (issue 28, part 5) add what else is on a designer's sheet: ruled, squared or dotted paper, margin
notes with leader lines, the croquis the garment is drawn on, a second garment beside it, a phone photo of the
page on a table with a hand's shadow. The silhouette is always the asked-for garment alone: printing, notes,
figure and the other garment never enter it. A sheet with two garments has a `region`, the box around the one the
prompt asks for (fractions x0, y0, x1, y1 of the sheet, on whole pixels); `fsdx evaluate` crops sketch and
silhouette to it, and the reference image is drawn from the cropped silhouette.

The garments here are this module's own: parametric front-view flats (a few control points joined by straight
edges and quadratic Bezier curves) for the seven categories of `fashionsd_x.data.synth`, drawn with OpenCV.
Nothing of synth's renderer or geometry is used, so the benchmark does not share its shapes with the training
data; only synth's vocabulary (categories, palette names, caption words) is shared, so that prompts are ones
the model has learnt to read.

Every item depends only on (seed, style, index): same seed, same bytes; a larger --per-style adds items.
Coordinates are in garment units (a top's body is about one unit wide), x to the right, y down.
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
from datasets import Dataset, DatasetDict, Features, Sequence, Value
from datasets import Image as ImageFeature
from PIL import Image

from fashionsd_x.data.images import pad_to_square
from fashionsd_x.data.synth import CATEGORIES, PALETTE
from fashionsd_x.limits import MAX_IMAGE_SIDE, check_at_most, check_fits
from fashionsd_x.provenance import package_versions

__all__ = ["REGION_STYLES", "STYLES", "SketchItem", "crop_to_region", "draw_item", "make_sketch_styles", "prompt"]

STYLES: dict[str, str] = {
    "fine_line": "clean black fine-liner outline on a 1024-2048 px white sheet",
    "pencil_scan": "2048 px scan of a grey pencil line on grainy, unevenly lit off-white paper",
    "small_lowres": "a thumbnail drawing, 64-100 px, 1 px line",
    "wobbly_gaps": "a shaky hand-drawn outline with 1-3 breaks, 512-768 px",
    "detailed": "a flat with seams, pockets, buttons, collar or waistband lines, 512-1024 px",
    "off_centre": "a portrait or landscape page with the garment well away from the centre",
    # Page styles: what else is on a designer's sheet. Appended: a style's random stream is keyed by its index.
    "ruled_page": "a pen drawing on printed paper: ruled lines, a square grid or a dot grid in light ink",
    "notes": "a flat with handwritten margin notes and leader lines (some with arrowheads) into the garment",
    "on_figure": "the garment worn on a croquis drawn in a lighter, thinner line (head, arms, legs, feet)",
    "two_garments": "two different garments side by side on a landscape page; `region` boxes the asked-for one",
    "photo_shadow": "a 900-1600 px phone photo of the drawing: sheet in perspective on a table, a hand's or phone's "
                    "shadow, noise and JPEG",
}
REGION_STYLES = ("two_garments",)  # styles whose items have a region to crop to; the others' region is []
MANIFEST = "sketch_styles.json"
SPLIT = "test"
SHIFT = 4  # cv2 drawing takes coordinates with 4 fractional bits: sub-pixel accurate lines at any sheet size
# Pattern words exactly as synth's captions use them (_PATTERN_ADJECTIVES); prints alternate dots, checks.
PRINT_WORDS = {"dots": "polka-dot", "checks": "checked"}
_TOPS = ("t-shirt", "long-sleeve top", "tank top")
# Memory, measured: every row is held (as PNG bytes, then as an Arrow table, then in save buffers) until the dataset
# is saved, about 1.6 MB an item; drawing one sheet (up to 2048 px) peaks near 120 MB; the reference image costs a
# padded RGB canvas, its resize and its PNG while drawn, and its flat-colour PNG (~0.02 B/px) while held.
ITEM_BYTES = 2_000_000
DRAW_BYTES = 256_000_000
REFERENCE_BYTES_PER_PIXEL = 16
HELD_REFERENCE_BYTES_PER_PIXEL = 0.1
MAX_PER_STYLE = 1000  # item ids carry three digits (fine_line-999)


@dataclass(frozen=True)
class SketchItem:
    """One benchmark row before it is encoded: the sheet, the garment's mask and what the prompt asks."""

    sketch: np.ndarray  # uint8 H x W, dark lines on light paper
    silhouette: np.ndarray  # uint8 H x W, 255 inside the garment, 0 outside
    category: str
    color: str
    pattern: str  # solid, dots or checks
    region: tuple[float, ...] = ()  # (x0, y0, x1, y1) in fractions of the sheet: the box to crop to, or () for all


class _Drawing(NamedTuple):
    """What a style draws: the sheet, the garment's silhouette and, on a sheet of several garments, its region."""

    sketch: np.ndarray
    silhouette: np.ndarray
    region: tuple[float, ...] = ()


@dataclass(frozen=True)
class _Openings:
    """Where a body comes out of a garment (garment units, the right half): how a croquis wears it (on_figure)."""

    top: tuple[float, float]  # half width and y of the opening at the top: the neck (tops, dresses) or the waist
    arm: np.ndarray | None  # (2, 2): a sleeve's cuff corners (top, bottom) or an armhole's ends; None below the waist
    sleeved: bool
    leg: tuple[float, float, float]  # (inner x, outer x, y) of a trouser leg's opening; a hem: (0, half width, y)


@dataclass(frozen=True)
class _Flat:
    """A garment drawn flat from the front: its outline and the lines inside it (garment units)."""

    outline: np.ndarray  # (n, 2) closed polygon, the silhouette's edge
    neck: np.ndarray | None  # open polyline of the front neckline, drawn in every style
    details: tuple[np.ndarray, ...]  # open polylines (seams, hems, pockets) of the "detailed" style
    buttons: tuple[tuple[float, float], ...]  # button centres
    button_radius: float
    category: str
    openings: _Openings


@dataclass(frozen=True)
class _Sheet:
    """The paper a garment is drawn on and how big the garment is on it."""

    width: int
    height: int
    span: tuple[float, float]  # the garment's larger side as a share of the padded square frame (max side)
    line: float  # line width in pixels
    corner: bool = False  # push the garment towards a corner (off_centre)


# --- the benchmark on disk --------------------------------------------------------------------------------


def make_sketch_styles(out: Path, per_style: int = 24, seed: int = 0, resolution: int = 128) -> Path:
    """Write the sketch-style benchmark: PER_STYLE sketches of each style, as a test-only dataset.

    Styles (STYLES): fine_line (fine-liner on a big white sheet), pencil_scan (grey pencil, scanned paper),
    small_lowres (a 64-100 px thumbnail), wobbly_gaps (a shaky outline with breaks), detailed (seams, pockets,
    buttons), off_centre (a portrait or landscape page, the garment in a corner); and what else is on a page:
    ruled_page (ruled, squared or dotted paper), notes (handwritten margin notes with leader lines into the
    garment), on_figure (the garment worn on a lightly drawn croquis), two_garments (two garments side by side on
    a landscape page) and photo_shadow (a phone photo of the page on a table, with a hand's or phone's shadow).

    OUT is a Hugging Face DatasetDict (split "test"; `datasets.load_from_disk`, `fsdx evaluate --data OUT`) with
    columns id ("fine_line-003"), style, category, color, pattern (solid, dots or checks), text (the prompt),
    sketch (grayscale, at the style's own size and aspect ratio), silhouette (same size, 255 inside the asked-for
    garment, 0 outside: page printing, notes, figure or a second garment are never in it), region (x0, y0, x1, y1
    as fractions of the sketch, the box to crop sketch and silhouette to before use; two_garments only, [] for
    the other styles) and image (RESOLUTION px RGB: the silhouette, cropped to the region if any, padded to a
    centred square and filled with the prompt's palette colour on white). `image` is only a flat-colour stand-in
    for a photo, so SSIM, FID and KID on this set are indicative only; silhouette IoU, colour and pattern accuracy
    and the line metrics are the ones it is built for. OUT/sketch_styles.json records the parameters, the count
    per style, the styles with regions and the versions. Half the items of each style ask for a plain garment,
    half for a print (dots, checks), alternately.

    Args:
        out: folder to write (replaced if it holds an earlier benchmark or is empty).
        per_style: number of sketches of each style, at most 1000 (and what fits in memory, ~2 MB a sketch).
        seed: seed; the same seed gives the same benchmark byte for byte.
        resolution: side in pixels of the square flat-colour reference images, 32 to 4096.
    """
    _check_arguments(per_style, seed, resolution)
    out = Path(out)
    _check_replaceable(out)
    rows = [_row(seed, style, index, resolution) for style in STYLES for index in range(per_style)]
    features = Features({"id": Value("string"), "style": Value("string"), "category": Value("string"),
                         "color": Value("string"), "pattern": Value("string"), "text": Value("string"),
                         "sketch": ImageFeature(), "silhouette": ImageFeature(), "image": ImageFeature(),
                         "region": Sequence(Value("float64"))})
    dataset = DatasetDict({SPLIT: Dataset.from_list(rows, features=features)})
    work = out.parent / f".{out.name}.building"  # written aside and moved into place: never half written
    shutil.rmtree(work, ignore_errors=True)
    try:
        dataset.save_to_disk(str(work))
        (work / MANIFEST).write_text(json.dumps(_manifest(per_style, seed, resolution), indent=2) + "\n",
                                     encoding="utf-8")
        shutil.rmtree(out, ignore_errors=True)
        work.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _check_arguments(per_style: int, seed: int, resolution: int) -> None:
    if isinstance(per_style, bool) or not isinstance(per_style, (int, np.integer)) or per_style < 1:
        raise ValueError(f"per_style must be an integer >= 1, got {per_style!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 32:
        raise ValueError(f"resolution must be an integer >= 32 pixels, got {resolution!r}")
    # Memory grows with the number of items held, so it bounds --per-style; one reference image of at most
    # MAX_IMAGE_SIDE is small beside them.
    check_at_most("--resolution", resolution, MAX_IMAGE_SIDE, "the largest image side the data stages make")
    check_fits("--per-style", per_style, MAX_PER_STYLE, "item ids carry three digits, fine_line-000 to fine_line-999",
               need=lambda count: _memory_needed(count, resolution),
               work=lambda count: f"holding {count * len(STYLES)} sketches and {resolution} px references until saved")


def _memory_needed(per_style: int, resolution: int) -> float:
    """Bytes make_sketch_styles holds at its peak: every item until the dataset is saved, plus one drawing."""
    held = len(STYLES) * per_style * (ITEM_BYTES + resolution * resolution * HELD_REFERENCE_BYTES_PER_PIXEL)
    return held + DRAW_BYTES + resolution * resolution * REFERENCE_BYTES_PER_PIXEL


def _check_replaceable(out: Path) -> None:
    # Only an earlier benchmark (or an empty folder) is replaced: a typo in --out must not delete a user's files.
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise ValueError(f"output {out} exists and is not a sketch-style benchmark; choose another --out")


def _row(seed: int, style: str, index: int, resolution: int) -> dict[str, Any]:
    item = draw_item(seed, style, index)
    # The reference shows what the generator is asked for: on a sheet with a region, the garment in that crop.
    garment = crop_to_region(item.silhouette, item.region)[..., None] > 0
    fill = np.where(garment, np.array(PALETTE[item.color], np.uint8), np.uint8(255))
    image = pad_to_square(Image.fromarray(fill.astype(np.uint8), "RGB"), resolution)
    return {"id": f"{style}-{index:03d}", "style": style, "category": item.category, "color": item.color,
            "pattern": item.pattern, "text": prompt(item.category, item.color, item.pattern),
            "sketch": _png(Image.fromarray(item.sketch, "L")),
            "silhouette": _png(Image.fromarray(item.silhouette, "L")),
            "image": _png(image), "region": list(item.region)}


def crop_to_region(array: np.ndarray, region: Any) -> np.ndarray:
    """ARRAY (H x W ...) cropped to REGION (x0, y0, x1, y1 as fractions of W and H, rounded to whole pixels);
    an empty region keeps it whole."""
    if len(region) == 0:
        return array
    height, width = array.shape[:2]
    x0, y0, x1, y1 = region
    return array[round(y0 * height):round(y1 * height), round(x0 * width):round(x1 * width)]


def _png(image: Image.Image) -> dict[str, Any]:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)  # a grainy 2048 px scan: half the time of level 6, +13%
    return {"bytes": buffer.getvalue(), "path": None}


def _manifest(per_style: int, seed: int, resolution: int) -> dict[str, Any]:
    return {"parameters": {"per_style": per_style, "seed": seed, "resolution": resolution},
            "split": SPLIT, "num_items": per_style * len(STYLES), "counts": {style: per_style for style in STYLES},
            "styles": STYLES, "region_styles": list(REGION_STYLES),
            "versions": package_versions(("numpy", "opencv-python-headless", "pillow", "datasets"))}


# --- one item ---------------------------------------------------------------------------------------------


def draw_item(seed: int, style: str, index: int) -> SketchItem:
    """Item INDEX of STYLE: the garment, its colour and pattern, the sheet and the drawing.

    Category and colour rotate through a per-style shuffle, so neighbouring items always differ in garment;
    the pattern alternates solid, dots, solid, checks. Shape, size, place and line come from the item's own
    random stream (seed, style, index).
    """
    if style not in STYLES:
        raise ValueError(f"unknown sketch style {style!r}; known: {', '.join(STYLES)}")
    style_number = list(STYLES).index(style)
    order = np.random.default_rng([seed, style_number])
    categories, colors = order.permutation(len(CATEGORIES)), order.permutation(len(PALETTE))
    category = CATEGORIES[int(categories[index % len(CATEGORIES)])]
    color = list(PALETTE)[int(colors[index % len(PALETTE)])]
    pattern = "solid" if index % 2 == 0 else ("dots", "checks")[index // 2 % 2]
    rng = np.random.default_rng([seed, style_number, index])
    flat = _FLATS[category](rng)
    drawing = _Drawing(*_DRAWERS[style](flat, rng))
    return SketchItem(drawing.sketch, drawing.silhouette, category, color, pattern, drawing.region)


def prompt(category: str, color: str, pattern: str) -> str:
    """The prompt in the words of synth's captions: "a plain t-shirt in red", "a pair of navy checked trousers".

    Both wordings are caption templates of synth ("{a} {adj} {noun} in {color}" and "{a} {color} {adj} {noun}");
    the noun is the category's own name, which is also its first caption noun.
    """
    article = "a pair of" if category in ("trousers", "shorts") else "a"
    if pattern == "solid":
        text = f"{article} plain {category} in {color}"
    elif pattern in PRINT_WORDS:
        text = f"{article} {color} {PRINT_WORDS[pattern]} {category}"
    else:
        raise ValueError(f"unknown pattern {pattern!r} for a benchmark prompt; use solid, {', '.join(PRINT_WORDS)}")
    return re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)  # "a orange" -> "an orange", as synth does


# --- garment geometry (garment units, y down) -------------------------------------------------------------


def _curve(start: Any, control: Any, end: Any, n: int = 16) -> np.ndarray:
    """A quadratic Bezier from START to END pulled towards CONTROL, as N points."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * np.asarray(start, float) + 2 * (1 - t) * t * np.asarray(control, float) \
        + t**2 * np.asarray(end, float)


def _chain(*pieces: Any) -> np.ndarray:
    """Consecutive points and curves joined into one polyline (a point shared by two pieces is kept once)."""
    points: list[np.ndarray] = []
    for piece in pieces:
        for point in np.atleast_2d(np.asarray(piece, float)):
            if not points or np.abs(points[-1] - point).max() > 1e-9:
                points.append(point)
    return np.array(points)


def _symmetric(right: np.ndarray, bottom: np.ndarray | None = None) -> np.ndarray:
    """A closed outline from its right half (top centre down to the bottom) and an optional bottom edge (a hem,
    drawn right to left); the left half is the right one mirrored."""
    left = right[::-1] * np.array([-1.0, 1.0])
    outline = _chain(right, bottom if bottom is not None else np.empty((0, 2)), left)
    return outline[:-1] if np.abs(outline[0] - outline[-1]).max() < 1e-9 else outline


def _crossings(outline: np.ndarray, y: float) -> np.ndarray:
    """Sorted x where the horizontal line at Y crosses the closed OUTLINE."""
    start, end = outline, np.roll(outline, -1, axis=0)
    crossing = ((start[:, 1] - y) * (end[:, 1] - y) <= 0) & (start[:, 1] != end[:, 1])
    t = (y - start[crossing, 1]) / (end[crossing, 1] - start[crossing, 1])
    return np.sort(start[crossing, 0] + t * (end[crossing, 0] - start[crossing, 0]))


def _across(outline: np.ndarray, y: float, inset: float = 0.0) -> np.ndarray:
    """A horizontal line at Y across the garment's middle, INSET from its edges.

    It ends at the crossings nearest the centre line, so a seam across a top stops at the body even where a
    long sleeve hangs beside it.
    """
    xs = _crossings(outline, y)
    left, right = xs[xs < 0].max(), xs[xs > 0].min()
    return np.array([[left + inset, y], [right - inset, y]])


def _right_edge(outline: np.ndarray, y: float) -> float:
    """x of the garment's right edge at Y (the crossing nearest the centre line on the right)."""
    xs = _crossings(outline, y)
    return float(xs[xs > 0].min())


def _box(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]])


def _both_sides(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return points, points * np.array([-1.0, 1.0])


def _top(rng: np.random.Generator, category: str) -> _Flat:
    """A t-shirt, long-sleeve top or tank top: body, shoulders, sleeves (or straps and armholes), a neckline."""
    body, hem = rng.uniform(0.42, 0.55), rng.uniform(0.42, 0.58)  # half widths at the chest and the hem
    length, armpit = rng.uniform(1.1, 1.45), rng.uniform(0.36, 0.44)
    tank = category == "tank top"
    neck, depth = (rng.uniform(0.17, 0.24), rng.uniform(0.25, 0.4)) if tank else \
        (rng.uniform(0.13, 0.19), rng.uniform(0.08, 0.2))
    back = rng.uniform(0.02, 0.05)  # the back neckline is the top edge of a flat; the front one is drawn inside
    shoulder = np.array([body + rng.uniform(0.0, 0.06), rng.uniform(0.05, 0.1)])
    side = _curve((body, armpit), (body * rng.uniform(0.92, 1.0), (armpit + length) / 2), (hem, length), 10)
    hem_line = _curve((hem, length), (0.0, length + rng.uniform(0.0, 0.04)), (-hem, length), 12)
    top_edge = _curve((0.0, back), (neck * 0.6, back), (neck, 0.0), 6)
    if tank:
        strap = rng.uniform(0.07, 0.12)
        armhole = _curve((neck + strap, 0.0), (neck + strap, armpit), (body, armpit), 12)
        right = _chain(top_edge, armhole, side)
        cuffs: tuple[np.ndarray, ...] = ()
        arm = np.array([[neck + strap, 0.0], [body, armpit]])
    else:
        right, cuff, arm = _sleeved_half(rng, category, top_edge, shoulder, (body, armpit), side)
        cuffs = _both_sides(cuff)
    outline = _symmetric(right, hem_line)
    front = _curve((-neck, 0.0), (0.0, 2 * depth), (neck, 0.0), 20)
    rib = _curve((-neck + 0.02, 0.02), (0.0, 2 * depth + 0.06), (neck - 0.02, 0.02), 20)
    details = [rib, _across(outline, length - 0.06, 0.01), *cuffs]
    buttons: list[tuple[float, float]] = []
    if category == "t-shirt":
        details.append(_box(0.12, 0.38, 0.3, 0.58))  # a chest pocket
    elif category == "long-sleeve top":  # a henley: a short button placket
        bottom = depth + rng.uniform(0.3, 0.45)
        details += [np.array([[-0.05, depth + 0.02], [-0.05, bottom], [0.05, bottom], [0.05, depth + 0.02]])]
        buttons = [(0.0, y) for y in np.linspace(depth + 0.1, bottom - 0.07, 3)]
    else:
        details += list(_both_sides(_curve((neck + strap - 0.03, 0.02), (neck + strap - 0.03, armpit - 0.03),
                                           (body - 0.02, armpit - 0.03), 12)))  # armhole binding
    return _Flat(outline, front, tuple(details), tuple(buttons), 0.022, category,
                 _Openings((neck, 0.0), arm, not tank, (0.0, hem, length)))


def _sleeved_half(rng: np.random.Generator, category: str, top_edge: np.ndarray, shoulder: np.ndarray,
                  armpit: tuple[float, float], side: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The right half from the neck to the hem with a sleeve, the sleeve's cuff line (for details) and its
    opening (the cuff's two corners on the outline, top then bottom)."""
    long = category == "long-sleeve top"
    angle = math.radians(rng.uniform(50, 64) if long else rng.uniform(25, 42))  # below the horizontal
    reach, width = (rng.uniform(1.0, 1.2), rng.uniform(0.18, 0.24)) if long else \
        (rng.uniform(0.28, 0.42), rng.uniform(0.27, 0.35))
    along, across = np.array([math.cos(angle), math.sin(angle)]), np.array([-math.sin(angle), math.cos(angle)])
    cuff_top = shoulder + reach * along
    cuff_bottom = cuff_top + width * across
    under = _curve(cuff_bottom, (cuff_bottom + np.asarray(armpit)) / 2 + 0.03 * across, armpit, 8)
    right = _chain(top_edge, shoulder, cuff_top, under, side)
    inset = 0.07 if long else 0.05  # a cuff or sleeve hem line just inside the opening
    cuff = np.array([cuff_top - inset * along + 0.01 * across, cuff_bottom - inset * along - 0.01 * across])
    return right, cuff, np.array([cuff_top, cuff_bottom])


def _dress(rng: np.random.Generator) -> _Flat:
    """A dress: a fitted bodice with straps or short sleeves, a seam at the waist, a skirt to the hem."""
    body, waist_y, waist = rng.uniform(0.4, 0.5), rng.uniform(0.5, 0.62), rng.uniform(0.33, 0.42)
    armpit, length = rng.uniform(0.34, 0.42), rng.uniform(1.4, 2.3)
    hem = waist + rng.uniform(0.12, 0.6)
    neck, depth, back = rng.uniform(0.14, 0.2), rng.uniform(0.12, 0.3), rng.uniform(0.02, 0.05)
    top_edge = _curve((0.0, back), (neck * 0.6, back), (neck, 0.0), 6)
    bodice = _curve((body, armpit), (waist * 0.98, (armpit + waist_y) / 2), (waist, waist_y), 8)
    skirt = _curve((waist, waist_y), (waist + (hem - waist) * 0.35, (waist_y + length) / 2), (hem, length), 14)
    side = _chain(bodice, skirt)
    sleeveless = rng.random() < 0.5
    if sleeveless:  # straps and armholes
        strap = rng.uniform(0.06, 0.1)
        right = _chain(top_edge, _curve((neck + strap, 0.0), (neck + strap, armpit), (body, armpit), 12), side)
        arm = np.array([[neck + strap, 0.0], [body, armpit]])
    else:
        right, _, arm = _sleeved_half(rng, "t-shirt", top_edge, np.array([body + 0.03, 0.07]), (body, armpit), side)
    hem_line = _curve((hem, length), (0.0, length + rng.uniform(0.02, 0.1)), (-hem, length), 16)
    outline = _symmetric(right, hem_line)
    front = _curve((-neck, 0.0), (0.0, 2 * depth), (neck, 0.0), 20)
    seam = _across(outline, waist_y, 0.0)
    top, bottom = waist_y + 0.1, waist_y + 0.3  # slanted pocket openings just inside the side seams
    pockets = _both_sides(np.array([[_right_edge(outline, top) - 0.1, top],
                                    [_right_edge(outline, bottom) - 0.03, bottom]]))
    buttons = tuple((0.0, y) for y in np.linspace(depth + 0.08, waist_y - 0.06, 4))
    return _Flat(outline, front, (seam, _across(outline, length - 0.08, 0.015), *pockets), buttons, 0.02, "dress",
                 _Openings((neck, 0.0), arm, not sleeveless, (0.0, hem, length)))


def _skirt(rng: np.random.Generator) -> _Flat:
    """A skirt: waistband, hips, then straight (pencil) to flared down to a curved hem."""
    waist, hip_y = rng.uniform(0.38, 0.5), rng.uniform(0.22, 0.34)
    hip = waist + rng.uniform(0.04, 0.1)
    length = rng.uniform(0.6, 1.3)
    hem = hip + rng.uniform(-0.05, 0.5)
    side = _chain((waist, 0.0), _curve((waist, 0.0), (hip, hip_y * 0.6), (hip, hip_y), 6),
                  _curve((hip, hip_y), (hip + (hem - hip) * 0.3, (hip_y + length) / 2), (hem, length), 10))
    hem_line = _curve((hem, length), (0.0, length + 0.03 + 0.15 * max(0.0, hem - hip)), (-hem, length), 16)
    right = _chain((0.0, 0.0), side)
    outline = _symmetric(right, hem_line)
    band = rng.uniform(0.07, 0.1)
    pleats = tuple(np.array([[x, band + 0.05], [x * (1 + 0.6 * (hem - hip)), length - 0.02]])
                   for x in (-0.2, 0.2))
    return _Flat(outline, None, (_across(outline, band, 0.0), _across(outline, length - 0.05, 0.02), *pleats),
                 ((waist - 0.08, band / 2),), 0.02, "skirt", _Openings((waist, 0.0), None, False, (0.0, hem, length)))


def _legwear(rng: np.random.Generator, short: bool) -> _Flat:
    """Trousers or shorts: waistband, hips, two legs meeting at the crotch, hems."""
    waist, hip_y = rng.uniform(0.38, 0.48), rng.uniform(0.24, 0.32)
    hip = waist + rng.uniform(0.03, 0.08)
    crotch = rng.uniform(0.36, 0.46) if short else rng.uniform(0.4, 0.52)
    length = rng.uniform(0.55, 0.85) if short else rng.uniform(1.6, 2.1)
    outer = hip + (rng.uniform(0.02, 0.12) if short else rng.uniform(-0.08, 0.12))
    leg = rng.uniform(0.38, 0.5) if short else rng.uniform(0.22, 0.4)
    inner = max(outer - leg, 0.04)
    right = _chain((0.0, 0.0), (waist, 0.0), _curve((waist, 0.0), (hip, hip_y * 0.5), (hip, hip_y), 6),
                   (outer, length), (inner, length),
                   _curve((inner, length), (inner * 0.6, crotch + 0.3 * (length - crotch)), (0.0, crotch), 10))
    outline = _symmetric(right)
    band = rng.uniform(0.07, 0.09)
    fly = _chain((0.06, band), (0.06, crotch - 0.12), _curve((0.06, crotch - 0.12), (0.06, crotch - 0.04),
                                                             (0.0, crotch - 0.04), 6))
    pockets = _both_sides(np.array([[waist - 0.14, band], [hip - 0.01, hip_y + 0.06]]))
    leg_hem = _crossings(outline, length - 0.06)
    leg_hem = leg_hem[leg_hem > 0]
    hems = _both_sides(np.array([[leg_hem[0] + 0.01, length - 0.06], [leg_hem[-1] - 0.01, length - 0.06]]))
    details = [_across(outline, band, 0.0), fly, *pockets, *hems]
    if not short:  # pressed creases down the middle of each leg
        middle = (hip / 2, (outer + inner) / 2)
        details += list(_both_sides(np.array([[middle[0], hip_y + 0.12], [middle[1], length - 0.1]])))
    return _Flat(outline, None, tuple(details), ((0.0, band / 2),), 0.022, "shorts" if short else "trousers",
                 _Openings((waist, 0.0), None, False, (inner, outer, length)))


_FLATS: dict[str, Callable[[np.random.Generator], _Flat]] = {
    "t-shirt": lambda rng: _top(rng, "t-shirt"),
    "long-sleeve top": lambda rng: _top(rng, "long-sleeve top"),
    "tank top": lambda rng: _top(rng, "tank top"),
    "dress": _dress,
    "skirt": _skirt,
    "trousers": lambda rng: _legwear(rng, short=False),
    "shorts": lambda rng: _legwear(rng, short=True),
}


# --- placing a garment on a sheet -------------------------------------------------------------------------


def _placement(flat: _Flat, sheet: _Sheet, rng: np.random.Generator, room: float = 0.0) -> Callable[[Any], np.ndarray]:
    """A map from garment units to sheet pixels: the garment at a drawn size and place, never touching the edge.

    Size is the garment's larger side as a share of the padded square frame (what the model sees); a garment
    that would not fit the sheet with a margin is made smaller. ROOM (pixels) is kept free for a wobble.
    """
    low, high = flat.outline.min(axis=0), flat.outline.max(axis=0)
    extent = high - low
    frame = max(sheet.width, sheet.height)
    margin = 0.03 * frame + sheet.line + room
    fit = min((sheet.width - 2 * margin) / extent[0], (sheet.height - 2 * margin) / extent[1])
    scale = min(rng.uniform(*sheet.span) * frame / extent.max(), fit)
    free = np.array([sheet.width, sheet.height]) - 2 * margin - scale * extent
    where = rng.uniform(0.0, 1.0, 2)
    if sheet.corner:  # well away from the centre: the first or last tenth of the free room on each axis
        where = np.where(rng.random(2) < 0.5, 0.1 * where, 1.0 - 0.1 * where)
    offset = margin + free * where

    def to_pixels(points: Any) -> np.ndarray:
        return (np.asarray(points, float) - low) * scale + offset

    return to_pixels


def _fixed(points: np.ndarray) -> np.ndarray:
    """Pixel coordinates as cv2's fixed-point int32 (SHIFT fractional bits); pixel centres at integers."""
    return np.round(points * (1 << SHIFT)).astype(np.int32)


def _fill(shape: tuple[int, int], outline: np.ndarray) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [_fixed(outline)], 255, cv2.LINE_8, SHIFT)
    return mask


def _stroke(shape: tuple[int, int], lines: list[tuple[np.ndarray, bool]], width: float) -> np.ndarray:
    """float32 coverage in [0, 1] of anti-aliased lines WIDTH px wide; each line is (points, closed)."""
    canvas = np.zeros(shape, np.uint8)
    for points, closed in lines:
        cv2.polylines(canvas, [_fixed(points)], closed, 255, max(1, round(width)), cv2.LINE_AA, SHIFT)
    return canvas.astype(np.float32) / 255.0


def _ink_on_paper(coverage: np.ndarray, ink: float, paper: np.ndarray | float = 255.0) -> np.ndarray:
    """uint8 sheet: PAPER darkened towards INK (0 black .. 255 white) where COVERAGE is."""
    sheet = paper - coverage * (paper - ink)
    return np.clip(np.rint(sheet), 0, 255).astype(np.uint8)


def _outline_lines(flat: _Flat, to_pixels: Callable[[Any], np.ndarray]) -> list[tuple[np.ndarray, bool]]:
    lines = [(to_pixels(flat.outline), True)]
    return lines + ([(to_pixels(flat.neck), False)] if flat.neck is not None else [])


# --- the styles -------------------------------------------------------------------------------------------


def _fine_line(flat: _Flat, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    side = int(rng.integers(1024, 2049))
    return _outline_on_sheet(flat, _Sheet(side, side, (0.55, 0.92), side * rng.uniform(0.0018, 0.0028)), rng, 25)


def _off_centre(flat: _Flat, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    short, long = int(rng.integers(850, 951)), int(rng.integers(1150, 1251))
    width, height = (short, long) if rng.random() < 0.5 else (long, short)
    return _outline_on_sheet(flat, _Sheet(width, height, (0.5, 0.62), rng.uniform(2.0, 4.0), corner=True), rng, 30)


def _small_lowres(flat: _Flat, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    side = int(rng.integers(64, 101))
    return _outline_on_sheet(flat, _Sheet(side, side, (0.6, 0.92), 1.0), rng, 40)


def _outline_on_sheet(flat: _Flat, sheet: _Sheet, rng: np.random.Generator,
                      darkest_grey: float) -> tuple[np.ndarray, np.ndarray]:
    """(sketch, silhouette) of a plain outline on white: placed, stroked at sheet.line, inked up to DARKEST_GREY."""
    to_pixels = _placement(flat, sheet, rng)
    shape = (sheet.height, sheet.width)
    coverage = _stroke(shape, _outline_lines(flat, to_pixels), sheet.line)
    return _ink_on_paper(coverage, rng.uniform(0, darkest_grey)), _fill(shape, to_pixels(flat.outline))


def _detailed(flat: _Flat, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    side = int(rng.integers(512, 1025))
    sheet = _Sheet(side, side, (0.6, 0.92), side * rng.uniform(0.004, 0.006))
    to_pixels = _placement(flat, sheet, rng)
    shape = (side, side)
    coverage = _stroke(shape, _outline_lines(flat, to_pixels), sheet.line)
    inner = _stroke(shape, [(to_pixels(points), False) for points in flat.details], 0.6 * sheet.line)
    scale = np.linalg.norm(to_pixels((1.0, 0.0)) - to_pixels((0.0, 0.0)))
    buttons = [(_circle(to_pixels(centre), flat.button_radius * scale), True) for centre in flat.buttons]
    coverage = np.maximum(coverage, np.maximum(inner, _stroke(shape, buttons, 0.5 * sheet.line)))
    return _ink_on_paper(coverage, rng.uniform(0, 25)), _fill(shape, to_pixels(flat.outline))


def _circle(centre: np.ndarray, radius: float, n: int = 24) -> np.ndarray:
    angles = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return centre + radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _wobbly_gaps(flat: _Flat, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A shaky hand: the drawing bent by a smooth random displacement (up to about 1% of the side), the outline
    broken in 1 to 3 places. The silhouette is the bent outline filled; breaks do not change it."""
    side = int(rng.integers(512, 769))
    amplitude = side * rng.uniform(0.01, 0.014)
    sheet = _Sheet(side, side, (0.6, 0.92), side * rng.uniform(0.003, 0.0045))
    to_pixels = _placement(flat, sheet, rng, room=amplitude)
    shake = _displacement(amplitude, side, rng)
    outline = shake(_resample(to_pixels(flat.outline), 2.0, closed=True))
    runs = _with_gaps(outline, int(rng.integers(1, 4)), side * rng.uniform(0.01, 0.02, 3) + sheet.line, rng)
    lines = [(run, False) for run in runs]
    if flat.neck is not None:
        lines.append((shake(_resample(to_pixels(flat.neck), 2.0, closed=False)), False))
    coverage = _stroke((side, side), lines, sheet.line)
    return _ink_on_paper(coverage, rng.uniform(0, 35)), _fill((side, side), outline)


def _displacement(amplitude: float, side: int, rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
    """A smooth random displacement of the sheet: per axis, four plane waves with wavelengths of 12-40% of SIDE,
    weights summing to AMPLITUDE (the largest possible shift).

    A field over the sheet rather than a wave along the line: lines that meet (the neckline and the shoulders)
    still meet, and a sharp corner (an armpit, the crotch) is bent, not torn into a spike by flipping normals.
    Wavelengths far above the amplitude keep the map one-to-one, so the outline never crosses itself.
    """
    angles = rng.uniform(0.0, 2 * math.pi, (2, 4))
    frequencies = 2 * math.pi / (side * rng.uniform(0.12, 0.4, (2, 4)))
    phases = rng.uniform(0.0, 2 * math.pi, (2, 4))
    weights = rng.uniform(0.5, 1.0, (2, 4))
    weights *= amplitude / weights.sum(axis=1, keepdims=True)

    def shake(points: np.ndarray) -> np.ndarray:
        waves = np.stack([np.cos(angles), np.sin(angles)], axis=-1) * frequencies[..., None]  # (2, 4, 2)
        argument = np.einsum("nd,akd->nak", points, waves) + phases
        return points + (weights * np.sin(argument)).sum(axis=2)

    return shake


def _resample(points: np.ndarray, step: float, closed: bool) -> np.ndarray:
    """POINTS as a polyline with a point every STEP pixels of arc length (the last point kept when open)."""
    path = np.vstack([points, points[:1]]) if closed else points
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    where = np.arange(0.0, arc[-1], step) if closed else np.linspace(0.0, arc[-1], max(2, round(arc[-1] / step)))
    return np.stack([np.interp(where, arc, path[:, 0]), np.interp(where, arc, path[:, 1])], axis=1)


def _with_gaps(closed: np.ndarray, count: int, lengths: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """The closed polyline CLOSED as open runs with COUNT breaks of the given LENGTHS (pixels), spread apart."""
    steps = np.linalg.norm(np.roll(closed, -1, axis=0) - closed, axis=1)
    arc = np.concatenate([[0.0], np.cumsum(steps)[:-1]])
    total = arc[-1] + steps[-1]
    # Breaks in different sectors of the outline, so they never merge into one.
    centres = (np.arange(count) + rng.uniform(0.2, 0.8, count)) * total / count
    drawn = np.ones(len(closed), bool)
    for centre, length in zip(centres, lengths):
        distance = np.abs((arc - centre + total / 2) % total - total / 2)
        drawn &= distance > length / 2
    start = int(np.argmin(drawn))  # start the walk inside a break, so no run wraps around the end
    order = np.roll(np.arange(len(closed)), -start)
    runs, current = [], []
    for index in order:
        if drawn[index]:
            current.append(closed[index])
        elif current:
            runs.append(np.array(current))
            current = []
    if current:
        runs.append(np.array(current))
    return [run for run in runs if len(run) >= 2]


def _pencil_scan(flat: _Flat, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A pencil drawing scanned at 2048 px: grain and uneven light on off-white paper, a grey graphite line whose
    width and darkness follow the hand's pressure, broken up where the paper's tooth catches less graphite."""
    side = 2048
    sheet = _Sheet(side, side, (0.55, 0.92), side * 0.0025)
    to_pixels = _placement(flat, sheet, rng)
    shape = (side, side)
    paper = _paper(shape, rng)
    canvas = np.zeros(shape, np.uint8)
    for run in _pressure_runs(_outline_lines(flat, to_pixels)):
        # A stroke's darkness and width follow the pressure of the hand.
        pressure, width = rng.uniform(0.75, 1.0), round(sheet.line * rng.uniform(0.8, 1.35))
        cv2.polylines(canvas, [_fixed(run)], False, round(255 * pressure), width, cv2.LINE_AA, SHIFT)
    line = canvas.astype(np.float32) / 255.0
    tooth = np.clip(1.0 - 0.35 * _noise(shape, rng, 1.0), 0.0, 1.0)  # grain: less graphite on the paper's peaks
    darkness = rng.uniform(0.35, 0.6) * line * tooth
    return np.clip(np.rint(paper * (1.0 - darkness)), 0, 255).astype(np.uint8), _fill(shape, to_pixels(flat.outline))


def _pressure_runs(lines: list[tuple[np.ndarray, bool]], length: int = 40) -> list[np.ndarray]:
    """Each line cut into overlapping strokes of about LENGTH points (a pencil is lifted and set down again)."""
    runs = []
    for points, closed in lines:
        points = _resample(points, 8.0, closed)
        if closed:
            points = np.vstack([points, points[:1]])
        for start in range(0, len(points) - 1, length):
            runs.append(points[start:start + length + 1])
    return runs


def _paper(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """float32 off-white paper (about 235 of 255): a lighting gradient of a few per cent, mottling and grain."""
    height, width = shape
    angle = rng.uniform(0, 2 * math.pi)
    x = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :] * np.float32(math.cos(angle))
    y = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None] * np.float32(math.sin(angle))
    light = 1.0 + np.float32(rng.uniform(0.03, 0.06)) * (x + y)  # brighter towards the lamp
    texture = 1.0 + 0.01 * _noise(shape, rng, 24.0) + np.float32(rng.uniform(0.015, 0.03)) * _noise(shape, rng, 0.8)
    return np.float32(rng.uniform(228.0, 242.0)) * light * texture


def _noise(shape: tuple[int, int], rng: np.random.Generator, grain: float) -> np.ndarray:
    """float32 Gaussian noise correlated over about GRAIN px, rescaled to unit standard deviation."""
    if grain >= 4:  # coarse: drawn small and enlarged, much faster than a wide blur
        small = rng.standard_normal((max(2, round(shape[0] / grain)), max(2, round(shape[1] / grain))),
                                    dtype=np.float32)
        noise = cv2.resize(small, shape[::-1], interpolation=cv2.INTER_CUBIC)
    else:
        noise = cv2.GaussianBlur(rng.standard_normal(shape, dtype=np.float32), (0, 0), grain)
    return noise / max(float(noise.std()), 1e-6)


# --- page styles: what else is on a designer's sheet ------------------------------------------------------


def _ruled_page(flat: _Flat, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A pen drawing on printed paper: ruled lines, a square grid or a dot grid across the whole sheet, in a light
    printing ink scanned to grey. The printing runs under the garment too; the silhouette is the garment's alone."""
    width = int(rng.integers(1024, 1537))
    height = width if rng.random() < 0.5 else round(width * rng.uniform(1.25, 1.42))  # a pad or a notebook
    sheet = _Sheet(width, height, (0.55, 0.88), width * rng.uniform(0.002, 0.0035))
    to_pixels = _placement(flat, sheet, rng)
    shape = (height, width)
    coverage = _stroke(shape, _outline_lines(flat, to_pixels), sheet.line)
    sketch = _ink_on_paper(coverage, rng.uniform(0, 40), _printed_paper(shape, rng))
    return sketch, _fill(shape, to_pixels(flat.outline))


# Printing inks as RGB; a grayscale scan keeps their luminance (ITU-R 601, as PIL's "L" conversion).
PRINT_INKS = {"light blue": (120, 170, 225), "grey": (160, 160, 160), "green": (125, 190, 140),
              "light red": (235, 120, 120)}


def _printed_paper(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """float32 white paper printed with ruled lines (and a margin rule), a square grid (with heavier lines every
    fifth) or a dot grid: spacing 2-8% of the sheet's width, lines 1-3 px, phase at random, in one printing ink
    seen through a grayscale scan."""
    height, width = shape
    kind = ("ruled", "grid", "dots")[int(rng.integers(3))]
    red, green, blue = PRINT_INKS[list(PRINT_INKS)[int(rng.integers(len(PRINT_INKS)))]]
    grey = 0.299 * red + 0.587 * green + 0.114 * blue
    spacing, weight = width * rng.uniform(0.02, 0.08), max(1.0, width * rng.uniform(0.0007, 0.0018))
    xs = np.arange(rng.uniform(0, spacing), width, spacing)
    ys = np.arange(rng.uniform(0, spacing), height, spacing)
    canvas = np.zeros(shape, np.uint8)
    if kind == "dots":  # a dot about a tenth of the spacing across, as dot-grid notebooks print them
        radius = round(float(np.clip(0.045 * spacing, 1.2, 3.5)) * (1 << SHIFT))
        for x in xs:
            for y in ys:
                cv2.circle(canvas, tuple(_fixed(np.array([x, y]))), radius, 255, -1, cv2.LINE_AA, SHIFT)
    else:
        heavy = kind == "grid" and rng.random() < 0.5
        for number, y in enumerate(ys):
            _printed_line(canvas, (0, y), (width - 1, y), weight * (1.8 if heavy and number % 5 == 0 else 1.0))
        for number, x in enumerate(xs if kind == "grid" else ()):
            _printed_line(canvas, (x, 0), (x, height - 1), weight * (1.8 if heavy and number % 5 == 0 else 1.0))
    paper = np.float32(rng.uniform(244, 254))
    printed = paper - canvas.astype(np.float32) / 255.0 * (paper - np.float32(grey))
    if kind == "ruled" and rng.random() < 0.6:  # a notebook's red margin rule, printed over the lines
        margin, x = np.zeros(shape, np.uint8), width * rng.uniform(0.08, 0.14)
        _printed_line(margin, (x, 0), (x, height - 1), weight * 1.5)
        printed = np.minimum(printed, paper - margin.astype(np.float32) / 255.0 * (paper - np.float32(160.0)))
    return printed


def _printed_line(canvas: np.ndarray, start: Any, end: Any, weight: float) -> None:
    """A straight anti-aliased line WEIGHT px wide (rounded to whole pixels, at least one)."""
    cv2.line(canvas, tuple(_fixed(np.array(start, float))), tuple(_fixed(np.array(end, float))), 255,
             max(1, round(weight)), cv2.LINE_AA, SHIFT)


# Margin notes a designer writes beside a flat: fabric, construction, fit. Category words first, then any.
NOTE_WORDS: dict[str, tuple[str, ...]] = {
    "t-shirt": ("crew neck", "rib 2cm", "jersey", "chest pocket", "drop shoulder", "boxy fit"),
    "long-sleeve top": ("henley placket", "3 buttons", "rib cuff", "waffle knit", "slim fit"),
    "tank top": ("racer back?", "bound armhole", "rib knit", "scoop neck", "thin straps"),
    "dress": ("A-line", "waist seam", "side pockets", "midi length", "invisible zip", "fit & flare"),
    "skirt": ("A-line", "box pleat", "waistband 4cm", "side zip", "knee length", "pencil?"),
    "trousers": ("wide leg", "pressed crease", "fly front", "belt loops", "turn-up 4cm", "slant pocket"),
    "shorts": ("bermuda", "side pocket", "fly front", "hem 2cm", "relaxed fit", "5\" inseam"),
    "any": ("cotton", "100% linen", "silk crepe", "topstitch 5mm", "hem 3cm", "double needle", "raw edge",
            "denim 12oz", "French seams", "lined", "size M", "self fabric", "wool blend", "keep it simple!",
            "see back", "shell button", "bias binding", "twin needle", "ease +4cm"),
}
# Hershey fonts that read as handwriting; the italic flag slants the upright ones as a quick hand does.
NOTE_FONTS = (cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, cv2.FONT_HERSHEY_SIMPLEX | cv2.FONT_ITALIC,
              cv2.FONT_HERSHEY_DUPLEX | cv2.FONT_ITALIC, cv2.FONT_HERSHEY_COMPLEX_SMALL | cv2.FONT_ITALIC)


def _notes(flat: _Flat, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A flat with 2-4 handwritten margin notes, each slightly rotated, its words jittered, with a leader line
    (straight or curved, some ending in an arrowhead, some in a dot) from the note into the garment."""
    side = int(rng.integers(1100, 1501))
    sheet = _Sheet(side, side, (0.46, 0.6), side * rng.uniform(0.002, 0.003))
    to_pixels = _placement(flat, sheet, rng)
    shape = (side, side)
    silhouette = _fill(shape, to_pixels(flat.outline))
    coverage = _stroke(shape, _outline_lines(flat, to_pixels), sheet.line)
    # Keep-out: the garment with a margin; each placed note adds its box.
    reach = cv2.distanceTransform(255 - silhouette, cv2.DIST_L2, 3)  # how far from the garment
    taken = reach < side * 0.03
    depth = cv2.distanceTransform(silhouette, cv2.DIST_L2, 3)
    ys, xs = np.nonzero(depth > side * 0.03)
    pick = rng.integers(0, len(xs), 64)
    targets = np.stack([xs[pick], ys[pick]], axis=1).astype(float)  # leader ends: well inside the garment
    centre = targets.mean(axis=0)
    words = NOTE_WORDS[flat.category] + NOTE_WORDS["any"]
    font, text_height = NOTE_FONTS[int(rng.integers(len(NOTE_FONTS)))], side * rng.uniform(0.022, 0.03)
    notes, leaders = np.zeros(shape, np.float32), []
    for text in (words[int(i)] for i in rng.choice(len(words), int(rng.integers(2, 5)), replace=False)):
        patch = _handwriting(text, font, text_height, rng)
        place = _free_place(taken, patch.shape, side * 0.02, rng, reach)
        if place is None:
            continue
        x, y = place
        notes[y:y + patch.shape[0], x:x + patch.shape[1]] = np.maximum(
            notes[y:y + patch.shape[0], x:x + patch.shape[1]], patch)
        pad = round(side * 0.012)
        taken[max(0, y - pad):y + patch.shape[0] + pad, max(0, x - pad):x + patch.shape[1] + pad] = True
        leaders += _leader((x, y, x + patch.shape[1], y + patch.shape[0]), centre, targets, side, rng)
    strength = np.float32(rng.uniform(0.75, 1.0))  # notes in the same pen, or a little lighter
    line = _stroke(shape, leaders, max(1.0, 0.8 * sheet.line))
    coverage = np.maximum(coverage, strength * np.maximum(notes, line))
    return _ink_on_paper(coverage, rng.uniform(0, 40)), silhouette


def _handwriting(text: str, font: int, height: float, rng: np.random.Generator) -> np.ndarray:
    """float32 coverage of TEXT written HEIGHT px high (capital height): each word a little above or below the
    line and a little apart, the whole note turned by up to 7 degrees."""
    thickness = max(1, round(height * rng.uniform(0.07, 0.1)))
    scale = cv2.getFontScaleFromHeight(font, round(height), thickness)
    space = cv2.getTextSize(" ", font, scale, thickness)[0][0]
    sizes = [cv2.getTextSize(word, font, scale, thickness)[0] for word in text.split()]
    margin = round(height)
    canvas = np.zeros((round(3 * height) + 2 * margin, sum(w for w, _ in sizes) + 2 * space * len(sizes) + 2 * margin),
                      np.uint8)
    x = margin
    for word, (word_width, _) in zip(text.split(), sizes):
        baseline = round(margin + 1.6 * height + rng.normal(0, 0.08) * height)
        cv2.putText(canvas, word, (x, baseline), font, scale, 255, thickness, cv2.LINE_AA)
        x += word_width + round(space * rng.uniform(0.8, 1.4))
    turn = cv2.getRotationMatrix2D((canvas.shape[1] / 2, canvas.shape[0] / 2), rng.uniform(-7, 7), 1.0)
    # Expand the canvas so the turned note is never cut off.
    cos, sin = abs(turn[0, 0]), abs(turn[0, 1])
    width, tall = canvas.shape[1], canvas.shape[0]
    new_width, new_tall = int(width * cos + tall * sin) + 2, int(width * sin + tall * cos) + 2
    turn[:, 2] += ((new_width - width) / 2, (new_tall - tall) / 2)
    turned = cv2.warpAffine(canvas, turn, (new_width, new_tall), flags=cv2.INTER_LINEAR)
    ys, xs = np.nonzero(turned)
    return turned[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32) / 255.0


def _free_place(taken: np.ndarray, size: tuple[int, int], margin: float, rng: np.random.Generator,
                reach: np.ndarray, tries: int = 120, keep: int = 6) -> tuple[int, int] | None:
    """Top-left corner of a free SIZE box at least MARGIN px inside the sheet: of the first KEEP free boxes found
    at random, the one whose centre is nearest the garment (REACH: distance to it), as a designer writes beside
    what a note is about. None if no box is free."""
    height, width = size
    room_x, room_y = taken.shape[1] - width - 2 * margin, taken.shape[0] - height - 2 * margin
    if room_x <= 0 or room_y <= 0:
        return None
    free: list[tuple[int, int]] = []
    for _ in range(tries):
        x, y = round(margin + rng.uniform(0, room_x)), round(margin + rng.uniform(0, room_y))
        if not taken[y:y + height, x:x + width].any():
            free.append((x, y))
            if len(free) == keep:
                break
    if not free:
        return None
    return min(free, key=lambda corner: reach[corner[1] + height // 2, corner[0] + width // 2])


def _leader(box: tuple[int, int, int, int], centre: np.ndarray, targets: np.ndarray, side: int,
            rng: np.random.Generator) -> list[tuple[np.ndarray, bool]]:
    """A leader from the note in BOX to the nearest of TARGETS: straight or bowed, ending in an arrowhead, a dot or
    nothing. It leaves the note from the side that faces the garment's CENTRE."""
    x0, y0, x1, y1 = box
    gap = side * 0.008
    if x1 < centre[0] - side * 0.1:
        start = np.array([x1 + gap, (y0 + y1) / 2])
    elif x0 > centre[0] + side * 0.1:
        start = np.array([x0 - gap, (y0 + y1) / 2])
    else:  # above or below the garment
        start = np.array([(x0 + x1) / 2, y1 + gap if (y0 + y1) / 2 < centre[1] else y0 - gap])
    end = targets[np.argmin(np.linalg.norm(targets - start, axis=1))]
    along = end - start
    bow = 0.0 if rng.random() < 0.4 else rng.uniform(-0.3, 0.3)
    path = _curve(start, (start + end) / 2 + bow * np.array([-along[1], along[0]]), end, 24)
    ending = rng.random()
    if ending < 0.55:  # an arrowhead: two barbs back along the last stretch of the leader
        back = path[-4] - path[-1]
        back /= max(np.linalg.norm(back), 1e-6)
        barb = side * rng.uniform(0.012, 0.02)
        heads = [(np.array([path[-1] + barb * _turned(back, angle), path[-1]]), False) for angle in (-25.0, 25.0)]
        return [(path, False), *heads]
    if ending < 0.8:  # a dot
        return [(path, False), (_circle(path[-1], side * 0.0015, 8), True)]  # the stroke fills it in
    return [(path, False)]


def _turned(vector: np.ndarray, degrees: float) -> np.ndarray:
    angle = math.radians(degrees)
    return np.array([vector[0] * math.cos(angle) - vector[1] * math.sin(angle),
                     vector[0] * math.sin(angle) + vector[1] * math.cos(angle)])


@dataclass(frozen=True)
class _Figure:
    """A fashion croquis's proportions (garment units): a nine-head figure standing front on."""

    head: float  # head height
    girth: float  # widths as a multiple of a slim figure's (a flat of trousers is wider than the body in them)
    neck: float  # y of the neck's base

    def y(self, heads: float) -> float:
        """y at HEADS head heights below the neck's base."""
        return self.neck + heads * self.head

    def x(self, heads: float) -> float:
        """A half width of HEADS head heights, times the girth."""
        return heads * self.head * self.girth


# Levels of a nine-head croquis in head heights below the neck's base (the crown is 1.3 above it).
_ARMPIT, _WAIST, _HIP, _CROTCH, _KNEE, _CALF, _ANKLE, _SOLE = 0.9, 1.75, 2.35, 2.75, 4.7, 5.6, 6.85, 7.4


def _on_figure(flat: _Flat, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The garment worn on a croquis: head, neck, arms and hands, torso, legs and feet in a thinner, lighter line.
    A top covers the torso and the arms come out of its sleeves or armholes; legs come out of a hem or a trouser
    leg; a skirt or trousers have the torso above. The garment is opaque: the figure is not drawn inside it.
    Dresses and trousers are drawn down to the feet, other garments on a sheet that may cut the legs lower down."""
    figure = _figure_for(flat, rng)
    lines = _croquis(flat, figure, rng)
    drawn = np.vstack([flat.outline] + [line for line, _ in lines])
    top = figure.y(-1.3) - 0.3 * figure.head
    if flat.category in ("dress", "trousers"):
        bottom = figure.y(_SOLE) + 0.25 * figure.head
    else:  # a half croquis: the sheet ends somewhere between just under the garment and the feet
        bottom = rng.uniform(max(flat.outline[:, 1].max() + 0.6 * figure.head, figure.y(3.7)),
                             figure.y(_SOLE) + 0.25 * figure.head)
    height = int(rng.integers(1000, 1401))
    scale = height / (bottom - top)
    left, right = drawn[:, 0].min() - 0.3 * figure.head, drawn[:, 0].max() + 0.3 * figure.head
    width = max(round((right - left) * scale), round(height * rng.uniform(0.6, 0.75)))
    shift = np.array([(width / scale - (right - left)) * rng.uniform(0.3, 0.7) - left, -top])

    def to_pixels(garment_points: Any) -> np.ndarray:
        return (np.asarray(garment_points, float) + shift) * scale

    shape = (height, width)
    silhouette = _fill(shape, to_pixels(flat.outline))
    line = height * rng.uniform(0.0025, 0.0035)
    body = _stroke(shape, [(to_pixels(points), closed) for points, closed in lines], line * rng.uniform(0.45, 0.7))
    body[silhouette > 0] = 0.0  # the garment hides the body under it
    sheet = _ink_on_paper(body, rng.uniform(110, 165))
    garment = _stroke(shape, _outline_lines(flat, to_pixels), line)
    return _ink_on_paper(garment, rng.uniform(0, 35), sheet.astype(np.float32)), silhouette


def _figure_for(flat: _Flat, rng: np.random.Generator) -> _Figure:
    """The croquis that wears FLAT: its neck at a top's neckline, or its waist at a skirt's or trousers' waistband.

    A flat is drawn as wide as the garment laid flat, wider than the body in it: a figure under a waistband gets a
    girth that makes its waist 60% of the band's width (at most 1.3 times a slim figure's).
    """
    if flat.openings.arm is not None:  # a top or a dress
        return _Figure(rng.uniform(0.5, 0.58), 1.0, 0.05)
    head = rng.uniform(0.42, 0.5)
    girth = float(np.clip(0.6 * flat.openings.top[0] / (0.44 * head), 1.0, 1.3))
    return _Figure(head, girth, -_WAIST * head)


def _croquis(flat: _Flat, figure: _Figure, rng: np.random.Generator) -> list[tuple[np.ndarray, bool]]:
    """The croquis's lines (garment units): head, neck, shoulders, torso, legs and feet, symmetric; each arm posed
    on its own draws (both fit the garment's sleeves or armholes, but bend a little differently)."""
    h = figure.head
    crown, chin = figure.y(-1.3), figure.y(-0.3)
    head = _ellipse(np.array([rng.uniform(-0.03, 0.03) * h, (crown + chin) / 2]), 0.36 * h, 0.5 * h,
                    rng.uniform(-6, 6))
    tip = _shoulder_tip(flat, figure)
    half = [np.array([[0.15 * h, figure.y(-0.42)], [0.16 * h, figure.y(0.0)]]),  # the neck
            _curve((0.16 * h, figure.y(0.0)), (0.5 * tip, figure.y(0.08)), (tip, figure.y(0.32)), 10),
            _chain(_curve((figure.x(0.58), figure.y(_ARMPIT)), (figure.x(0.47), figure.y(1.3)),
                          (figure.x(0.44), figure.y(_WAIST)), 8),
                   _curve((figure.x(0.44), figure.y(_WAIST)), (figure.x(0.6), figure.y(2.0)),
                          (figure.x(0.66), figure.y(_HIP)), 8)),
            *_leg(flat, figure, rng)]
    lines = [(head, True)] + [(points, False) for points in half]
    lines += [(points * np.array([-1.0, 1.0]), False) for points in half]
    for mirror in (1.0, -1.0):
        lines += [(points * np.array([mirror, 1.0]), closed) for points, closed in _arm(flat, figure, tip, rng)]
    return lines


def _ellipse(centre: np.ndarray, half_width: float, half_height: float, degrees: float, n: int = 40) -> np.ndarray:
    angles = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    points = np.stack([half_width * np.cos(angles), half_height * np.sin(angles)], axis=1)
    return centre + np.array([_turned(point, degrees) for point in points])


def _shoulder_tip(flat: _Flat, figure: _Figure) -> float:
    """x of the right shoulder's tip; in a sleeveless garment, beyond the strap, so the arm comes out of the armhole."""
    tip = figure.x(0.8)
    openings = flat.openings
    if openings.arm is not None and not openings.sleeved:
        tip = max(tip, openings.arm[0, 0] + 0.1, openings.arm[1, 0] - 0.08)
    return tip


def _leg(flat: _Flat, figure: _Figure, rng: np.random.Generator) -> list[np.ndarray]:
    """The right leg's outer and inner contours and its foot (a heeled foot seen from the front, pointing down).

    The leg's centre runs straight from the hip joint to the ankle; in trousers or shorts it runs through the
    middle of the leg opening and is made slimmer if it would not fit through it.
    """
    levels = np.array([_HIP, _CROTCH, _KNEE, _CALF, _ANKLE])
    ys = np.array([figure.y(level) for level in levels])
    widths = np.array([figure.x(0.32), figure.x(0.29), figure.x(0.15), figure.x(0.17), figure.x(0.085)])
    hip, ankle = figure.x(0.34), figure.x(0.17) + rng.uniform(0.0, 0.25) * figure.head
    inner, outer, opening = flat.openings.leg
    if inner > 0:  # trousers or shorts: through the opening's middle, then on down towards the ankle
        middle = (inner + outer) / 2
        ankle = max(ankle, middle - 0.5 * figure.head)
        xs = np.interp(ys, [ys[0], opening, max(ys[-1], opening + 1e-6)], [hip, middle, (middle + ankle) / 2])
        fit = 0.75 * (outer - inner) / 2 / float(np.interp(opening, ys, widths))
        widths[1:] *= min(1.0, fit)
    else:
        xs = hip + (ankle - hip) * (ys - ys[0]) / (ys[-1] - ys[0])
        xs[2] -= 0.03 * figure.head  # knees a little together
    centre = np.stack([xs, ys], axis=1)
    outward = _normals(centre)
    outer_line = centre + widths[:, None] * outward
    inner_line = np.vstack([[0.0, figure.y(_CROTCH) + 0.02 * figure.head], (centre - widths[:, None] * outward)[1:]])
    foot_tip = centre[-1] + np.array([0.03 * figure.head, (_SOLE - _ANKLE) * figure.head])
    foot = _chain(_curve(outer_line[-1], (outer_line[-1] + foot_tip) / 2 + [0.02 * figure.head, 0.0], foot_tip, 6),
                  _curve(foot_tip, (inner_line[-1] + foot_tip) / 2 - [0.02 * figure.head, 0.0], inner_line[-1], 6))
    return [_smooth(outer_line), _smooth(inner_line), foot]


def _normals(centre: np.ndarray) -> np.ndarray:
    """Unit normals to the right of a polyline running down (+x for a vertical line), averaged at the joints."""
    steps = np.diff(centre, axis=0)
    steps /= np.linalg.norm(steps, axis=1, keepdims=True)
    tangents = np.vstack([steps[:1], steps[:-1] + steps[1:], steps[-1:]])
    tangents /= np.linalg.norm(tangents, axis=1, keepdims=True)
    return np.stack([tangents[:, 1], -tangents[:, 0]], axis=1)


def _smooth(points: np.ndarray, rounds: int = 2) -> np.ndarray:
    """Chaikin's corner cutting: a polyline rounded at its joints, its two ends kept."""
    for _ in range(rounds):
        cut = np.empty((2 * len(points) - 2, 2))
        cut[0::2] = 0.75 * points[:-1] + 0.25 * points[1:]
        cut[1::2] = 0.25 * points[:-1] + 0.75 * points[1:]
        points = np.vstack([points[:1], cut, points[-1:]])
    return points


def _arm(flat: _Flat, figure: _Figure, tip: float, rng: np.random.Generator) -> list[tuple[np.ndarray, bool]]:
    """The right arm's outer and inner contours and its hand.

    In a sleeve the arm runs along the sleeve and out through the middle of the cuff: a long sleeve holds the whole
    arm and only the hand comes out; out of a short one the forearm bends down. Otherwise the arm hangs from the
    shoulder, held away from the body out of an armhole so that it clears the garment's side.
    """
    h, openings = figure.head, flat.openings
    widths = np.array([figure.x(0.2), figure.x(0.13), figure.x(0.085)])
    if openings.sleeved:
        top, bottom = openings.arm
        cuff, sleeve = (top + bottom) / 2, float(np.linalg.norm(bottom - top)) / 2  # its middle and half width
        along = np.array([bottom[1] - top[1], top[0] - bottom[0]]) / (2 * sleeve)
        widths = np.minimum(widths, 0.8 * sleeve)  # the arm fits in the sleeve
        shoulder = _up_the_sleeve(flat.outline, cuff, along, tip - 0.2 * h, widths[0])
        if flat.category == "long-sleeve top":  # the whole arm in the sleeve, the wrist at the cuff
            wrist = cuff + 0.03 * along
            elbow = (shoulder + wrist) / 2
        else:
            elbow = shoulder + 1.45 * h * along
            down = along * (1 - rng.uniform(0.5, 0.9)) + np.array([0.0, 1.0]) * rng.uniform(0.5, 0.9)
            wrist = elbow + 1.3 * h * down / np.linalg.norm(down)
    else:
        away = rng.uniform(18, 30) if openings.arm is not None else rng.uniform(8, 20)
        shoulder = np.array([tip - figure.x(0.18), figure.y(0.35)])
        elbow = shoulder + 1.45 * h * _turned(np.array([0.0, 1.0]), -away)
        wrist = elbow + 1.3 * h * _turned(np.array([0.0, 1.0]), -(away - rng.uniform(-4, 12)))
    centre = np.array([shoulder, elbow, wrist])
    under = -_normals(centre)  # the side towards the body
    inner = np.vstack([[figure.x(0.58), figure.y(_ARMPIT)], (centre + widths[:, None] * under)[1:]])
    outer = np.vstack([[tip, figure.y(0.32)], (centre - widths[:, None] * under)[1:]])
    if openings.sleeved:
        inner, outer = centre + widths[:, None] * under, centre - widths[:, None] * under
    return [(_smooth(outer), False), (_smooth(inner), False), (_hand(wrist, wrist - elbow, widths[-1], h), True)]


def _up_the_sleeve(outline: np.ndarray, cuff: np.ndarray, along: np.ndarray, shoulder_x: float,
                   half_width: float) -> np.ndarray:
    """The shoulder joint: up the sleeve's middle from the CUFF, as far as SHOULDER_X but no further than where the
    arm (HALF_WIDTH) would stick out of the garment (a steep sleeve's middle leaves it over the shoulder)."""
    contour = outline.astype(np.float32)
    joint = cuff - 0.05 * along
    for step in np.arange(0.05, 3.0, 0.02):
        point = cuff - step * along
        depth = cv2.pointPolygonTest(contour, (float(point[0]), float(point[1])), True)  # > 0 inside
        if point[0] <= shoulder_x or depth < half_width:
            break
        joint = point
    return joint


def _hand(wrist: np.ndarray, direction: np.ndarray, half_width: float, head: float) -> np.ndarray:
    """A closed hand, two thirds of a head long, from WRIST along DIRECTION: a slim teardrop."""
    along = direction / np.linalg.norm(direction)
    side = np.array([-along[1], along[0]])
    fingertips = wrist + 0.68 * head * along
    return _chain(_curve(wrist + half_width * side, wrist + 0.4 * head * along + 0.2 * head * side, fingertips, 8),
                  _curve(fingertips, wrist + 0.4 * head * along - 0.2 * head * side, wrist - half_width * side, 8))


def _two_garments(flat: _Flat, rng: np.random.Generator) -> _Drawing:
    """Two different garments side by side on a landscape sheet, each in its own half, in one pen (half the sheets
    with seams and pockets). The region is the asked-for garment's box with a margin of 6-15% of its size, kept
    inside its half, so the other garment lies wholly outside it."""
    height = int(rng.integers(800, 1101))
    width = round(height * rng.uniform(1.35, 1.6))
    half = width // 2
    others = [category for category in CATEGORIES if category != flat.category]
    other = _FLATS[others[int(rng.integers(len(others)))]](rng)
    asked_left = rng.random() < 0.5
    line = height * rng.uniform(0.0025, 0.0035)
    sheet = _Sheet(half, height, (0.6, 0.85), line)
    detailed = rng.random() < 0.5
    maps = [_shifted(_placement(garment, sheet, rng), 0.0 if left else float(width - half))
            for garment, left in ((flat, asked_left), (other, not asked_left))]
    lines = []
    for garment, to_pixels in zip((flat, other), maps):
        lines += _outline_lines(garment, to_pixels)
        lines += [(to_pixels(points), False) for points in garment.details] if detailed else []
    outline = maps[0](flat.outline)
    shape = (height, width)
    coverage = _stroke(shape, lines, line)
    margin = rng.uniform(0.06, 0.15) * (outline.max(axis=0) - outline.min(axis=0)).max() + line
    low, high = outline.min(axis=0) - margin, outline.max(axis=0) + margin
    x_range = (0, half) if asked_left else (width - half, width)
    x0, x1 = max(x_range[0], math.floor(low[0])), min(x_range[1], math.ceil(high[0]))
    y0, y1 = max(0, math.floor(low[1])), min(height, math.ceil(high[1]))
    region = (x0 / width, y0 / height, x1 / width, y1 / height)
    return _Drawing(_ink_on_paper(coverage, rng.uniform(0, 35)), _fill(shape, outline), region)


def _shifted(to_pixels: Callable[[Any], np.ndarray], dx: float) -> Callable[[Any], np.ndarray]:
    return lambda points: to_pixels(points) + np.array([dx, 0.0])


def _photo_shadow(flat: _Flat, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A phone photo of a pen drawing: the sheet turned and seen in perspective on a darker table (its edges and
    the table's wedges at the corners in view), an uneven light, the soft shadow of a hand or a phone across part
    of it (20-45% darker), sensor noise, a little blur and JPEG compression; 900-1600 px.

    The silhouette is the outline taken through the same homography and filled, so it stays exact.
    """
    long_side = int(rng.integers(900, 1601))
    portrait = rng.random() < 0.6
    size = np.array([round(long_side * 0.75), long_side] if portrait else [long_side, round(long_side * 0.75)])
    # 1. the drawing at about the size it has in the photo
    aspect = rng.uniform(1.0, 1.414)
    fill = rng.uniform(0.72, 0.88)  # of the photo's short side
    paper_size = size.min() * fill * (np.array([1.0, aspect]) if portrait else np.array([aspect, 1.0]))
    paper_size = np.minimum(paper_size, size * 0.9).round().astype(int)
    sheet = _Sheet(int(paper_size[0]), int(paper_size[1]), (0.6, 0.85), paper_size.min() * rng.uniform(0.004, 0.006))
    to_pixels = _placement(flat, sheet, rng)
    paper_shape = (sheet.height, sheet.width)
    ink = _stroke(paper_shape, _outline_lines(flat, to_pixels), sheet.line)
    drawing = _ink_on_paper(ink, rng.uniform(15, 60), np.float32(rng.uniform(236, 250))).astype(np.float32)
    # 2. the sheet's corners in the photo: turned, shifted, each corner pulled a little (perspective)
    homography = _sheet_in_photo(paper_size, size, rng)
    photo_shape = (int(size[1]), int(size[0]))
    warped = cv2.warpPerspective(drawing, homography, tuple(size), flags=cv2.INTER_LINEAR)
    cover = cv2.warpPerspective(np.ones(paper_shape, np.float32), homography, tuple(size), flags=cv2.INTER_LINEAR)
    # 3. the table, darkened a little under the sheet's edge, then the sheet on it
    table = _table(photo_shape, rng)
    contact = cv2.GaussianBlur(cover, (0, 0), long_side * 0.006)
    photo = table * (1.0 - 0.35 * contact) * (1.0 - cover) + warped
    # 4. light: a gradient, a vignette and the shadow of a hand or a phone
    photo *= _lighting(photo_shape, rng) * (1.0 - rng.uniform(0.2, 0.45) * _shadow(photo_shape, rng))
    # 5. the camera: a little blur, noise, JPEG
    photo = cv2.GaussianBlur(photo, (0, 0), rng.uniform(0.5, 1.0))
    photo += rng.normal(0.0, rng.uniform(2.0, 4.5), photo.shape).astype(np.float32)
    encoded = cv2.imencode(".jpg", np.clip(np.rint(photo), 0, 255).astype(np.uint8),
                           [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(55, 86))])[1]
    photo_outline = cv2.perspectiveTransform(to_pixels(flat.outline)[None], homography)[0]
    return cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE), _fill(photo_shape, photo_outline)


def _sheet_in_photo(paper_size: np.ndarray, size: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The homography taking the sheet (PAPER_SIZE px) into a photo of SIZE px: turned by 2-9 degrees either way,
    its corners pulled by up to 4% of the photo (a phone held a little off square), all inside the photo."""
    corners = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float) * paper_size
    turn = rng.uniform(2, 9) * (1 if rng.random() < 0.5 else -1)
    pulls = rng.uniform(-0.04, 0.04, (4, 2)) * size
    for _ in range(30):  # shrink until the turned, pulled sheet sits inside the photo with a strip of table
        placed = np.array([_turned(corner - paper_size / 2, turn) for corner in corners]) + pulls
        low, high = placed.min(axis=0), placed.max(axis=0)
        if (high - low <= size * 0.97).all():
            break
        corners = (corners - paper_size / 2) * 0.96 + paper_size / 2
    free = size - (high - low)
    placed += free * rng.uniform(0.25, 0.75, 2) - low
    source = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float) * paper_size
    return cv2.getPerspectiveTransform(source.astype(np.float32), placed.astype(np.float32))


def _table(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """float32 table top, darker than paper: wood (streaks along one axis) or a plain desk with a little grain."""
    height, width = shape
    base = np.float32(rng.uniform(55, 140))
    if rng.random() < 0.6:  # wood grain: noise long along one axis, short across it
        small = rng.standard_normal((6, max(2, width // 6)) if rng.random() < 0.5 else (max(2, height // 6), 6))
        streaks = cv2.resize(small.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
        grain = np.float32(rng.uniform(0.03, 0.07)) * streaks / max(float(streaks.std()), 1e-6)
        surface = base * (1.0 + grain + 0.015 * _noise(shape, rng, 2.0))
    else:
        surface = base * (1.0 + 0.04 * _noise(shape, rng, 12.0))
    return surface.astype(np.float32)


def _lighting(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """float32 gain: brighter towards one side (up to 15%) and a vignette darkening the corners by 10-25%."""
    height, width = shape
    x = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    y = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    angle = rng.uniform(0, 2 * math.pi)
    slope = np.float32(rng.uniform(0.04, 0.08))
    gradient = 1.0 + slope * (np.float32(math.cos(angle)) * x + np.float32(math.sin(angle)) * y)
    return gradient * (1.0 - np.float32(rng.uniform(0.05, 0.125)) * (x * x + y * y))


def _shadow(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """float32 in [0, 1]: the soft shadow of a hand (a palm and four fingers) or a phone reaching in from one edge."""
    height, width = shape
    scale = 8  # drawn small and enlarged: the shadow is blurred far beyond a pixel anyway
    small = np.zeros((height // scale, width // scale), np.uint8)
    side = max(small.shape)
    edge = int(rng.integers(4))
    reach = rng.uniform(0.35, 0.65)
    # Build it reaching down from the top edge, then turn the canvas so it comes from EDGE.
    canvas = np.zeros((side, side), np.uint8)
    x = rng.uniform(0.2, 0.8) * side
    if rng.random() < 0.5:  # a forearm from the edge, a palm and four fingers
        palm = np.array([x, reach * side * 0.7])
        cv2.fillConvexPoly(canvas, np.array([[x - side * 0.09, -1], [x + side * 0.09, -1], palm + [side * 0.11, 0],
                                             palm - [side * 0.11, 0]]).round().astype(np.int32), 255)
        cv2.ellipse(canvas, tuple(palm.round().astype(int)), (round(side * 0.12), round(side * 0.1)), 0, 0, 360, 255,
                    -1)
        for finger in range(4):
            length = side * (0.11 - 0.02 * abs(finger - 1.5))
            tip = palm + [(finger - 1.5) * side * 0.05, side * 0.08 + length / 2]
            cv2.ellipse(canvas, tuple(tip.round().astype(int)), (round(side * 0.022), round(length / 2)),
                        rng.uniform(-10, 10), 0, 360, 255, -1)
    else:  # a phone and the hand holding it, over the page
        cv2.rectangle(canvas, (round(x - side * 0.1), -1), (round(x + side * 0.1), round(reach * side)), 255, -1)
    canvas = np.rot90(canvas, edge)
    small = cv2.resize(np.ascontiguousarray(canvas), small.shape[::-1], interpolation=cv2.INTER_AREA)
    blurred = cv2.GaussianBlur(small.astype(np.float32) / 255.0, (0, 0), side * rng.uniform(0.03, 0.06))
    return cv2.resize(blurred, (width, height), interpolation=cv2.INTER_LINEAR)


# A drawer returns (sketch, silhouette) or a _Drawing with a region.
_DRAWERS: dict[str, Callable[[_Flat, np.random.Generator], tuple[np.ndarray, ...]]] = {
    "fine_line": _fine_line,
    "pencil_scan": _pencil_scan,
    "small_lowres": _small_lowres,
    "wobbly_gaps": _wobbly_gaps,
    "detailed": _detailed,
    "off_centre": _off_centre,
    "ruled_page": _ruled_page,
    "notes": _notes,
    "on_figure": _on_figure,
    "two_garments": _two_garments,
    "photo_shadow": _photo_shadow,
}
