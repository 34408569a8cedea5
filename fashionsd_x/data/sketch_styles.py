"""A held-out benchmark of sketches drawn the way designers draw them (GitHub issue 12, part 3).

The training sketches are adaptive-threshold extractions of the project's own renders: one line quality, one
size, garments centred on a square. Users bring fine-liner drawings on big sheets, pencil scans on grey paper,
thumbnails, shaky outlines with breaks, flats full of seams and buttons, portrait pages with the garment in a
corner. `make_sketch_styles` draws such sketches procedurally, each with the filled silhouette it outlines, so
`fsdx evaluate` can say how far each kind of sketch is followed.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
from datasets import Dataset, DatasetDict, Features, Value
from datasets import Image as ImageFeature
from PIL import Image

from fashionsd_x.data.images import pad_to_square
from fashionsd_x.data.synth import CATEGORIES, PALETTE
from fashionsd_x.provenance import package_versions

__all__ = ["STYLES", "SketchItem", "draw_item", "make_sketch_styles", "prompt"]

STYLES: dict[str, str] = {
    "fine_line": "clean black fine-liner outline on a 1024-2048 px white sheet",
    "pencil_scan": "2048 px scan of a grey pencil line on grainy, unevenly lit off-white paper",
    "small_lowres": "a thumbnail drawing, 64-100 px, 1 px line",
    "wobbly_gaps": "a shaky hand-drawn outline with 1-3 breaks, 512-768 px",
    "detailed": "a flat with seams, pockets, buttons, collar or waistband lines, 512-1024 px",
    "off_centre": "a portrait or landscape page with the garment well away from the centre",
}
MANIFEST = "sketch_styles.json"
SPLIT = "test"
SHIFT = 4  # cv2 drawing takes coordinates with 4 fractional bits: sub-pixel accurate lines at any sheet size
# Pattern words exactly as synth's captions use them (_PATTERN_ADJECTIVES); prints alternate dots, checks.
PRINT_WORDS = {"dots": "polka-dot", "checks": "checked"}
_TOPS = ("t-shirt", "long-sleeve top", "tank top")


@dataclass(frozen=True)
class SketchItem:
    """One benchmark row before it is encoded: the sheet, the garment's mask and what the prompt asks."""

    sketch: np.ndarray  # uint8 H x W, dark lines on light paper
    silhouette: np.ndarray  # uint8 H x W, 255 inside the garment, 0 outside
    category: str
    color: str
    pattern: str  # solid, dots or checks


@dataclass(frozen=True)
class _Flat:
    """A garment drawn flat from the front: its outline and the lines inside it (garment units)."""

    outline: np.ndarray  # (n, 2) closed polygon, the silhouette's edge
    neck: np.ndarray | None  # open polyline of the front neckline, drawn in every style
    details: tuple[np.ndarray, ...]  # open polylines (seams, hems, pockets) of the "detailed" style
    buttons: tuple[tuple[float, float], ...]  # button centres
    button_radius: float


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
    buttons), off_centre (a portrait or landscape page, the garment in a corner).

    OUT is a Hugging Face DatasetDict (split "test"; `datasets.load_from_disk`, `fsdx evaluate --data OUT`) with
    columns id ("fine_line-003"), style, category, color, pattern (solid, dots or checks), text (the prompt),
    sketch (grayscale, at the style's own size and aspect ratio), silhouette (same size, 255 inside the garment,
    0 outside) and image (RESOLUTION px RGB: the silhouette padded to a centred square and filled with the
    prompt's palette colour on white). `image` is only a flat-colour stand-in for a photo, so SSIM, FID and KID
    on this set are indicative only; silhouette IoU, colour and pattern accuracy and the line metrics are the
    ones it is built for. OUT/sketch_styles.json records the parameters, the count per style and the versions.
    Half the items of each style ask for a plain garment, half for a print (dots, checks), alternately.

    Args:
        out: folder to write (replaced if it holds an earlier benchmark or is empty).
        per_style: number of sketches of each style.
        seed: seed; the same seed gives the same benchmark byte for byte.
        resolution: side in pixels of the square flat-colour reference images.
    """
    _check_arguments(per_style, seed, resolution)
    out = Path(out)
    _check_replaceable(out)
    rows = [_row(seed, style, index, resolution) for style in STYLES for index in range(per_style)]
    features = Features({"id": Value("string"), "style": Value("string"), "category": Value("string"),
                         "color": Value("string"), "pattern": Value("string"), "text": Value("string"),
                         "sketch": ImageFeature(), "silhouette": ImageFeature(), "image": ImageFeature()})
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


def _check_replaceable(out: Path) -> None:
    # Only an earlier benchmark (or an empty folder) is replaced: a typo in --out must not delete a user's files.
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise ValueError(f"output {out} exists and is not a sketch-style benchmark; choose another --out")


def _row(seed: int, style: str, index: int, resolution: int) -> dict[str, Any]:
    item = draw_item(seed, style, index)
    fill = np.where(item.silhouette[..., None] > 0, np.array(PALETTE[item.color], np.uint8), np.uint8(255))
    image = pad_to_square(Image.fromarray(fill.astype(np.uint8), "RGB"), resolution)
    return {"id": f"{style}-{index:03d}", "style": style, "category": item.category, "color": item.color,
            "pattern": item.pattern, "text": prompt(item.category, item.color, item.pattern),
            "sketch": _png(Image.fromarray(item.sketch, "L")),
            "silhouette": _png(Image.fromarray(item.silhouette, "L")),
            "image": _png(image)}


def _png(image: Image.Image) -> dict[str, Any]:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)  # a grainy 2048 px scan: half the time of level 6, +13%
    return {"bytes": buffer.getvalue(), "path": None}


def _manifest(per_style: int, seed: int, resolution: int) -> dict[str, Any]:
    return {"parameters": {"per_style": per_style, "seed": seed, "resolution": resolution},
            "split": SPLIT, "num_items": per_style * len(STYLES), "counts": {style: per_style for style in STYLES},
            "styles": STYLES, "versions": package_versions(("numpy", "opencv-python-headless", "pillow", "datasets"))}


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
    sketch, silhouette = _DRAWERS[style](flat, rng)
    return SketchItem(sketch, silhouette, category, color, pattern)


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
    else:
        right, cuff = _sleeved_half(rng, category, top_edge, shoulder, (body, armpit), side)
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
    return _Flat(outline, front, tuple(details), tuple(buttons), 0.022)


def _sleeved_half(rng: np.random.Generator, category: str, top_edge: np.ndarray, shoulder: np.ndarray,
                  armpit: tuple[float, float], side: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The right half from the neck to the hem with a sleeve, and the sleeve's cuff line (for details)."""
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
    return right, np.array([cuff_top - inset * along + 0.01 * across, cuff_bottom - inset * along - 0.01 * across])


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
    if rng.random() < 0.5:  # sleeveless: straps and armholes
        strap = rng.uniform(0.06, 0.1)
        right = _chain(top_edge, _curve((neck + strap, 0.0), (neck + strap, armpit), (body, armpit), 12), side)
    else:
        right, _ = _sleeved_half(rng, "t-shirt", top_edge, np.array([body + 0.03, 0.07]), (body, armpit), side)
    hem_line = _curve((hem, length), (0.0, length + rng.uniform(0.02, 0.1)), (-hem, length), 16)
    outline = _symmetric(right, hem_line)
    front = _curve((-neck, 0.0), (0.0, 2 * depth), (neck, 0.0), 20)
    seam = _across(outline, waist_y, 0.0)
    top, bottom = waist_y + 0.1, waist_y + 0.3  # slanted pocket openings just inside the side seams
    pockets = _both_sides(np.array([[_right_edge(outline, top) - 0.1, top],
                                    [_right_edge(outline, bottom) - 0.03, bottom]]))
    buttons = tuple((0.0, y) for y in np.linspace(depth + 0.08, waist_y - 0.06, 4))
    return _Flat(outline, front, (seam, _across(outline, length - 0.08, 0.015), *pockets), buttons, 0.02)


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
                 ((waist - 0.08, band / 2),), 0.02)


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
    return _Flat(outline, None, tuple(details), ((0.0, band / 2),), 0.022)


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


_DRAWERS: dict[str, Callable[[_Flat, np.random.Generator], tuple[np.ndarray, np.ndarray]]] = {
    "fine_line": _fine_line,
    "pencil_scan": _pencil_scan,
    "small_lowres": _small_lowres,
    "wobbly_gaps": _wobbly_gaps,
    "detailed": _detailed,
    "off_centre": _off_centre,
}
