"""Sketch -> the ControlNet conditioning tensor, the same in training, generation, the studio and evaluation.

ControlNet learns whatever it is trained on, so a sketch fed at generation time must go through exactly the
preprocessing it saw in training: `fashionsd_x.train.controlnet` builds every training batch with
`control_image`, and generation, the studio and the evaluation call it too (never their own resize).

Normalisation (`SketchConditioning`, on by default; recorded as `sketch_conditioning` in a ControlNet's
train_config.yaml) makes any sketch a user brings look like what the model was trained on:
    1. polarity: a sheet that is mostly dark is read as light lines on dark paper and flipped;
    2. paper: the paper's brightness is estimated at a coarse scale (a grey max filter erases the lines) and
       divided out, so off-white, textured or unevenly lit paper (a phone photo of a drawing) becomes white;
    3. ink: a pixel is line when it is `ink_threshold` darker than the paper around it (a pencil line at 30%
       grey counts); specks smaller than a line's dot are dropped;
    4. scale: the line mask is padded to a centred square and brought to the model's side by area averaging,
       with any coverage counting as line, so a 1 px line of a 2048 px scan survives at 128 px;
    5. stroke: the lines are thinned to their 1 px centre line (Zhang and Suen 1984) and drawn again at
       `line_width` of the side, so a 2 px tablet line and a 20 px marker line give the same conditioning.
Between 3 and 4, cleanup (`cleanup`, on by default; `data.page.clean_page`) finds the garment on the page: the
table around a photographed sheet, the paper's printing, a figure drawn around the garment and notes with their
leader lines are removed, so only the garment's line is conditioning. A clean drawing comes through unchanged.
A region (`SketchRegion`, fractions of the page) crops the page before anything else: the designer's own
answer to "where is the garment" when a page holds two.
The result is strictly black lines (0) on white (1). `SketchConditioning(normalize=False)` is the old path
(pad and resize only), which ControlNets trained before normalisation existed are fed.

Polarity of the tensor: black lines (0) on white (1), as `extract_sketch` makes them. `invert=True` (white lines
on black) exists only for ControlNets trained with that polarity, e.g. community scribble models; a FashionSD-X
ControlNet records the choice as `invert_sketch` in its train_config.yaml.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from fashionsd_x.data.images import pad_to_square, to_rgb
from fashionsd_x.data.page import KINDS, PageCleanup, clean_page

PAPER_WORK_SIDE = 256  # the paper's brightness is estimated on a copy this size (it varies slowly)


class BlankSketchError(ValueError):
    """A sketch with no line on it: nothing for the model to follow."""


@dataclass(frozen=True)
class SketchConditioning:
    """How a sketch becomes conditioning; stored with every ControlNet and applied identically at generation."""

    normalize: bool = True  # binarise against the paper, keep thin lines, one stroke width; False = resize only
    line_width: float = 1 / 64  # stroke width of the normalised lines as a share of the side (2 px at 128)
    ink_threshold: float = 0.15  # a pixel is line when this much darker than its paper (0 to 1 of the paper's light)
    cleanup: bool = True  # find the garment on the page: drop printing, notes, a figure, the table around a photo

    def __post_init__(self) -> None:
        for name in ("normalize", "cleanup"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not 0 < self.line_width <= 0.1:
            raise ValueError(f"line_width must be in (0, 0.1] of the side, got {self.line_width}")
        if not 0 < self.ink_threshold < 1:
            raise ValueError(f"ink_threshold must be in (0, 1), got {self.ink_threshold}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> SketchConditioning:
        """From stored values; None is a ControlNet trained before normalisation existed (resize only)."""
        if values is None:
            return LEGACY
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown sketch_conditioning setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def stroke_pixels(self, resolution: int) -> int:
        """The normalised lines' width in pixels at `resolution`."""
        return max(1, round(self.line_width * resolution))


LEGACY = SketchConditioning(normalize=False)


@dataclass(frozen=True)
class SketchRegion:
    """Where the garment is on the page: a box as fractions of the page's width and height (0 to 1)."""

    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self) -> None:
        values = (self.x0, self.y0, self.x1, self.y1)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise ValueError(f"a sketch region is four numbers x0,y0,x1,y1, got {values!r}")
        if not all(0.0 <= v <= 1.0 for v in values):
            raise ValueError(f"a sketch region lies on the page: x0,y0,x1,y1 are fractions from 0 to 1, got "
                             f"{_text(values)}")
        if not (self.x0 < self.x1 and self.y0 < self.y1):
            raise ValueError(f"a sketch region needs x0 < x1 and y0 < y1 (left, top, right, bottom), got "
                             f"{_text(values)}")

    @classmethod
    def parse(cls, value: str | Sequence[float] | SketchRegion | None) -> SketchRegion | None:
        """From "x0,y0,x1,y1" (the CLI), a list of four numbers (batch lines, PNG parameters) or None."""
        if value is None or isinstance(value, SketchRegion):
            return value
        if isinstance(value, str):
            parts = [part.strip() for part in value.split(",")]
            try:
                numbers = [float(part) for part in parts]
            except ValueError:
                raise ValueError(f"a sketch region is x0,y0,x1,y1 (fractions of the page, e.g. 0.5,0,1,1), got "
                                 f"{value!r}") from None
        elif isinstance(value, (list, tuple)):
            numbers = list(value)
        else:
            raise ValueError(f"a sketch region is x0,y0,x1,y1 (fractions of the page), got {value!r}")
        if len(numbers) != 4:
            raise ValueError(f"a sketch region is four numbers x0,y0,x1,y1, got {len(numbers)}: {value!r}")
        return cls(*numbers)

    def to_list(self) -> list[float]:
        return [self.x0, self.y0, self.x1, self.y1]

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The region in pixels of a WIDTH x HEIGHT page (left, top, right, bottom), at least 1 px each way."""
        left, top = math.floor(self.x0 * width), math.floor(self.y0 * height)
        right, bottom = max(left + 1, math.ceil(self.x1 * width)), max(top + 1, math.ceil(self.y1 * height))
        return left, top, min(width, right), min(height, bottom)

    def crop(self, image: Image.Image) -> Image.Image:
        """IMAGE cut to the region (a sketch, or the silhouette an evaluation scores against)."""
        return image.crop(self.box(*image.size))


def _text(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def control_image(sketch: Image.Image | np.ndarray, resolution: int, invert: bool = False,
                  conditioning: SketchConditioning = SketchConditioning(),
                  region: SketchRegion | None = None) -> torch.Tensor:
    """A sketch of any size, aspect ratio, line and paper as a 3 x resolution x resolution float tensor in [0, 1].

    The sketch is padded with paper to a centred square (never cropped, like the dataset's images), so a
    portrait sketch lines up with the garment the model draws. `np.ndarray` input is uint8, H x W or H x W x C.
    StableDiffusionControlNetPipeline takes the result as `image=` unchanged (its processor does not
    re-normalise [0, 1] tensors). A sheet with no line raises BlankSketchError when normalising. REGION, when
    given, cuts the page to that box first: only what is inside it reaches the model.
    """
    if isinstance(sketch, np.ndarray):
        sketch = Image.fromarray(_as_uint8(sketch))
    if region is not None:
        sketch = region.crop(sketch)
    if conditioning.normalize:
        lines = normalize_sketch(sketch, resolution, conditioning)
        # Three equal channels built in numpy: a torch expand + contiguous costs more than the normalisation.
        pixels = torch.from_numpy(np.repeat(lines[None] == 255, 3, axis=0).astype(np.float32))
    else:
        square = pad_to_square(to_rgb(sketch), resolution)
        pixels = torch.from_numpy(np.asarray(square, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
    # Inverting after padding keeps the padding the background colour of the chosen polarity.
    return 1.0 - pixels if invert else pixels


def conditioning_preview(sketch: Image.Image | np.ndarray, resolution: int,
                         conditioning: SketchConditioning = SketchConditioning(),
                         region: SketchRegion | None = None) -> Image.Image:
    """What the model receives, as a black-on-white grayscale image (for `fsdx sketch --preview` and the studio)."""
    tensor = control_image(sketch, resolution, False, conditioning, region)
    return Image.fromarray((tensor[0].numpy() * 255).round().astype(np.uint8), mode="L")


# Colours of what cleanup removed, on the explained page (kept ink stays black, the region's box is blue).
REMOVED_COLOURS = {"off_sheet": (150, 150, 150), "printing": (60, 170, 255), "figure": (60, 190, 80),
                   "outside": (235, 60, 40)}
EXPLAIN_SIDE = 768  # the explained page's longer side


def explain_sketch(sketch: Image.Image | np.ndarray, conditioning: SketchConditioning = SketchConditioning(),
                   region: SketchRegion | None = None) -> tuple[Image.Image, dict[str, float]]:
    """The page as cleanup read it, and the share of its ink removed per kind (`data.page.KINDS`).

    On a light copy of the page: the ink kept as the garment's line in black, the ink removed in a colour per
    kind (REMOVED_COLOURS: printing blue, a figure green, notes and other marks red, the sheet's surroundings
    grey) and the region, when given, as a blue box; what is outside the region is greyed out. At most
    EXPLAIN_SIDE px on its longer side.
    """
    if isinstance(sketch, np.ndarray):
        sketch = Image.fromarray(_as_uint8(sketch))
    page = to_rgb(sketch)
    scale = min(1.0, EXPLAIN_SIDE / max(page.size))
    size = (max(1, round(page.width * scale)), max(1, round(page.height * scale)))
    canvas = np.asarray(page.convert("L").resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    canvas = np.repeat((200 + canvas * 55 / 255)[..., None], 3, axis=2)  # the page, faint
    box = region.box(*page.size) if region is not None else (0, 0, page.width, page.height)
    cleaned = _page_cleanup(page.crop(box), conditioning)
    left, top = round(box[0] * scale), round(box[1] * scale)
    right, bottom = max(left + 1, round(box[2] * scale)), max(top + 1, round(box[3] * scale))
    inside = (slice(top, bottom), slice(left, right))
    for kind in KINDS:
        if kind in cleaned.removed:
            canvas[inside][_shown(cleaned.removed[kind], (right - left, bottom - top))] = REMOVED_COLOURS[kind]
    canvas[inside][_shown(cleaned.ink, (right - left, bottom - top))] = 0
    if region is not None:
        outside = np.ones(canvas.shape[:2], bool)
        outside[inside] = False
        canvas[outside] = 0.5 * canvas[outside] + 0.5 * 255
        cv2.rectangle(canvas, (left, top), (right - 1, bottom - 1), (40, 90, 230), max(2, round(0.004 * max(size))))
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB"), cleaned.summary()


def _shown(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """MASK at SIZE, a line kept visible however much it shrinks (any coverage counts)."""
    return cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0


def _page_cleanup(sketch: Image.Image, conditioning: SketchConditioning) -> PageCleanup:
    cleanup = conditioning.cleanup and conditioning.normalize
    gray, darkness, ink = _ink(sketch, conditioning.ink_threshold, shadows=cleanup)
    if not cleanup:  # the old resize-only path never cleaned a page
        return PageCleanup(ink)
    return clean_page(ink, darkness, gray)


def normalize_sketch(sketch: Image.Image, resolution: int,
                     conditioning: SketchConditioning = SketchConditioning()) -> np.ndarray:
    """uint8 resolution x resolution: the sketch's lines (0) on white (255) at one stroke width (steps 1-5 above)."""
    if resolution < 8:
        raise ValueError(f"resolution must be at least 8, got {resolution}")
    ink = _page_cleanup(sketch, conditioning).ink
    lines = _downscale_lines(_pad_square(ink), resolution)
    if not lines.any():  # the lines were all below a pixel's share (a speck on a huge sheet)
        raise BlankSketchError("the sketch has no line that shows at the model's resolution; draw larger or bolder")
    centre = thin_lines(lines)
    if not centre.any():  # Zhang-Suen erases a 2 x 2 block whole; a mark that small stays as it is, not a blank
        centre = lines
    return _stroke(centre, conditioning.stroke_pixels(resolution))


def ink_mask(sketch: Image.Image, ink_threshold: float = 0.15) -> np.ndarray:
    """Bool H x W: where the sketch has ink, whatever the paper, its lighting and the polarity (steps 1-3)."""
    return _ink(sketch, ink_threshold)[2]


def _ink(sketch: Image.Image, ink_threshold: float,
         shadows: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gray, darkness, ink) of steps 1-3: the page's brightness, how much darker than its paper each pixel is
    (0 to 1), and the bool ink mask; BlankSketchError when nothing is ink. SHADOWS: a shadow across the page is
    paper too (see _paper)."""
    if 0 in sketch.size:
        raise BlankSketchError(f"the sketch is empty ({sketch.width}x{sketch.height} px); draw on a sheet with some area")
    gray = np.asarray(to_rgb(sketch).convert("L"), dtype=np.float32) / 255.0
    if min(gray.shape) >= 512:  # a scan or photo: a 3 px median removes paper grain, keeps any line
        gray = cv2.medianBlur(np.ascontiguousarray(gray), 3)
    dark = float(np.median(gray)) < 0.5
    read = _read_ink(1.0 - gray if dark else gray, ink_threshold, shadows)
    if dark and shadows:
        # Mostly dark: light lines on dark paper, or a photo whose dark table fills most of the frame around a
        # white sheet. Lines are a small share of a page, so the reading with less ink is the right one.
        other = _read_ink(gray, ink_threshold, shadows)
        if other[2].sum() < read[2].sum():
            read = other
    if not read[2].any():
        raise BlankSketchError("the sketch is blank: nothing on it is darker than the paper; draw some lines")
    return read


def _read_ink(gray: np.ndarray, ink_threshold: float, shadows: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gray, darkness, ink) of GRAY read as dark lines on light paper."""
    darkness = 1.0 - gray / np.maximum(_paper(gray, shadows), 1e-3)
    return gray, darkness, _drop_specks(darkness > ink_threshold)


def _paper(gray: np.ndarray, shadows: bool = False) -> np.ndarray:
    """The paper's brightness under every pixel: lines erased by a grey max filter at a coarse scale, smoothed.

    The smoothing carries the light around a shadow (a hand, a phone held over the page) into it, so a shadow
    reads as a dark blot of ink. With SHADOWS, where a grey closing (the max filter followed by a min filter:
    lines gone, a shadow wider than the filter kept in place) finds the paper clearly darker than that, but at
    most twice as dark (a marker's filled area is darker still, and stays ink), the closing is the paper."""
    height, width = gray.shape
    scale = min(1.0, PAPER_WORK_SIDE / max(height, width))
    small = cv2.resize(gray, (max(1, round(width * scale)), max(1, round(height * scale))),
                       interpolation=cv2.INTER_AREA)
    radius = max(2, round(max(small.shape) / 24))  # wider than any line, narrower than a lighting change
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * radius + 1, 2 * radius + 1))
    lifted = cv2.dilate(small, kernel)
    paper = cv2.GaussianBlur(lifted, (0, 0), radius)
    if shadows:
        closed = cv2.GaussianBlur(cv2.erode(lifted, kernel), (0, 0), radius / 2)
        paper = np.where((paper - closed > 0.06) & (closed > 0.5 * paper), closed, paper)
    return cv2.resize(paper, (width, height), interpolation=cv2.INTER_LINEAR)


def _drop_specks(ink: np.ndarray) -> np.ndarray:
    """Ink without blobs smaller than 1/2000 of the side squared (paper grain, dust); a pencil dot stays."""
    area = max(1, round((max(ink.shape) / 2000) ** 2 * 40))
    if area <= 1:
        return ink
    count, labels, stats, _ = cv2.connectedComponentsWithStats(ink.astype(np.uint8), connectivity=8)
    keep = np.zeros(count, dtype=bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= area
    return keep[labels]


def _pad_square(ink: np.ndarray) -> np.ndarray:
    height, width = ink.shape
    side = max(height, width)
    square = np.zeros((side, side), dtype=np.float32)
    top, left = (side - height) // 2, (side - width) // 2
    square[top:top + height, left:left + width] = ink
    return square


def _downscale_lines(square: np.ndarray, resolution: int) -> np.ndarray:
    """Bool resolution^2: a target pixel is line when a line covers half of what a 1 px source line would."""
    side = square.shape[0]
    if side == resolution:
        return square > 0.5
    interpolation = cv2.INTER_AREA if side > resolution else cv2.INTER_LINEAR
    coverage = cv2.resize(square, (resolution, resolution), interpolation=interpolation)
    return coverage > 0.5 * min(1.0, resolution / side)


def thin_lines(lines: np.ndarray) -> np.ndarray:
    """Bool: the 1 px centre lines of a bool mask (Zhang and Suen 1984, two sub-iterations until nothing changes).

    Each sub-iteration codes every pixel's 8 neighbours as one byte (a 3 x 3 correlation with powers of two)
    and looks up whether it may be removed, so the loop is a few array operations per pass.
    """
    image = lines.astype(np.uint8)
    tables = _zhang_suen_tables()
    for _ in range(max(image.shape)):
        changed = False
        for table in tables:
            codes = cv2.filter2D(image, cv2.CV_32F, _NEIGHBOUR_WEIGHTS, borderType=cv2.BORDER_CONSTANT)
            remove = (image == 1) & table[codes.astype(np.int32)]
            if remove.any():
                image[remove] = 0
                changed = True
        if not changed:
            break
    return image.astype(bool)


# Neighbour weights for thin_lines: P2 (north) = 1, then clockwise P3 (north-east) = 2 ... P9 (north-west) = 128.
_NEIGHBOUR_WEIGHTS = np.array([[128, 1, 2], [64, 0, 4], [32, 16, 8]], dtype=np.float32)


@lru_cache(maxsize=1)
def _zhang_suen_tables() -> tuple[np.ndarray, np.ndarray]:
    """Per neighbour byte: may the pixel go in sub-iteration 1, in sub-iteration 2."""
    first, second = np.zeros(256, dtype=bool), np.zeros(256, dtype=bool)
    for code in range(256):
        p = [(code >> bit) & 1 for bit in range(8)]  # P2, P3, ..., P9
        neighbours = sum(p)
        transitions = sum(p[k] == 0 and p[(k + 1) % 8] == 1 for k in range(8))
        if not (2 <= neighbours <= 6 and transitions == 1):
            continue
        first[code] = p[0] * p[2] * p[4] == 0 and p[2] * p[4] * p[6] == 0
        second[code] = p[0] * p[2] * p[6] == 0 and p[0] * p[4] * p[6] == 0
    return first, second


def _stroke(centre: np.ndarray, width: int) -> np.ndarray:
    """uint8: centre lines drawn `width` px wide, black (0) on white (255)."""
    mask = centre.astype(np.uint8)
    if width > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE if width > 2 else cv2.MORPH_RECT, (width, width))
        mask = cv2.dilate(mask, kernel)
    return np.where(mask > 0, 0, 255).astype(np.uint8)


def _as_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype != np.uint8:
        raise ValueError(f"a sketch array must be uint8 (0 = line, 255 = paper), got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        return array[:, :, 0]
    # Pillow reads uint8 H x W x C as LA, RGB or RGBA; any other channel count it cannot make an image of.
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (2, 3, 4)):
        raise ValueError(f"a sketch array must be H x W or H x W x C with C 1 to 4, got shape {array.shape}")
    return array
