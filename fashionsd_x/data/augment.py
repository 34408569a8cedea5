"""Sketch-style augmentation for ControlNet training: one garment, drawn the many ways designers draw.

A ControlNet trained only on the dataset's adaptive-threshold sketches follows those and little else. Each
training sample's sketch is, with probability `probability`, redrawn from the garment photo and its sketch:
    lines    the dataset's sketch, or the photo's lines from another extractor (adaptive, canny, xdog), or the
             garment's outer outline alone (interior lines dropped, as in a quick designer's outline);
    stroke   the lines drawn again at a random width;
    wobble   a smooth random displacement, as a hand's line wanders;
    gaps     a few short breaks in the line;
    pencil   grey lines on textured, off-white, unevenly lit paper.
Then, with probability `page_probability`, restyled or not, the sketch is put on a designer's page:
    printing  ruled lines, a square grid or a dot grid across the sheet, light grey, maybe a little askew;
    notes     a few words in the margin, each with a leader line (maybe an arrow) into the garment;
    figure    the fashion figure the garment is drawn on: head, neck, arms, legs, in a light thin line,
              visible only outside the garment's silhouette.
The conditioning tries to remove these, but what it misses the ControlNet must learn to ignore.
Optionally the garment and its sketch are scaled and moved together (`scale_range`, `shift`), which needs the
photo encoded each step (no latent cache). Every draw comes from the generator passed in, which training seeds
from (seed, micro-batch, sample): the augmentation is a pure function of the run's seed and step.
The result then goes through `control_image`, like any user's sketch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import cv2
import numpy as np
from PIL import Image

from fashionsd_x.data.sketch import SKETCH_METHODS, SketchConfig, extract_sketch

PAPER_THRESHOLD = 245  # a photo pixel with every channel at or above this is background (flat-lays on white)
_SUBPIXEL = 4  # page elements are drawn in cv2's fixed point to 1/16 px, so thin lines anti-alias evenly


@dataclass(frozen=True)
class SketchAugment:
    """Sketch-style augmentation settings (ControlNetTrainConfig.sketch_augment; None there = off, the paper's)."""

    probability: float = 0.8  # share of samples whose sketch is redrawn; the rest keep the dataset's sketch
    extractors: tuple[str, ...] = SKETCH_METHODS  # extractors the lines may be taken from instead of the dataset's
    extractor_probability: float = 0.3  # lines re-extracted from the photo with one of `extractors`
    outline_probability: float = 0.3  # the garment's outer outline only (its silhouette on white paper)
    stroke_probability: float = 0.5  # lines redrawn at a width drawn from stroke_range
    stroke_range: tuple[float, float] = (0.004, 0.03)  # stroke width as a share of the side (0.5 to 4 px at 128)
    wobble_probability: float = 0.4  # hand wobble
    wobble_amplitude: float = 0.012  # the wobble's largest shift as a share of the side
    gap_probability: float = 0.4  # one to three breaks in the line
    gap_size: float = 0.04  # a break's length as a share of the side
    pencil_probability: float = 0.3  # grey pencil on textured paper
    scale_range: tuple[float, float] = (1.0, 1.0)  # garment and sketch scaled together (needs uncached latents)
    shift: float = 0.0  # and moved by up to this share of the side (needs uncached latents)
    rotation: float = 0.0  # and turned by up to this many degrees either way (a photo of a page is never straight)
    page_probability: float = 0.0  # share of samples drawn on a designer's page (0 = off; 0.3 suggested)
    printing_probability: float = 0.6  # on a page: ruled lines, a square grid or a dot grid printed on the paper
    notes_probability: float = 0.5  # on a page: notes in the margin with leader lines into the garment
    figure_probability: float = 0.5  # on a page: the figure's head, neck, arms and legs around the garment

    def __post_init__(self) -> None:
        for item in fields(self):
            if item.name.endswith("probability") and not 0.0 <= getattr(self, item.name) <= 1.0:
                raise ValueError(f"{item.name} must be in [0, 1], got {getattr(self, item.name)}")
        unknown = [name for name in self.extractors if name not in SKETCH_METHODS]
        if unknown or not self.extractors:
            raise ValueError(f"extractors must name some of {', '.join(SKETCH_METHODS)}, got {list(self.extractors)}")
        if self.extractor_probability + self.outline_probability > 1.0:
            raise ValueError("extractor_probability + outline_probability must be at most 1 (they are exclusive)")
        _check_range("stroke_range", self.stroke_range, 0.0, 0.1)
        _check_range("scale_range", self.scale_range, 0.2, 2.0)
        if not 0.0 <= self.rotation <= 45.0:
            raise ValueError(f"rotation must be in [0, 45] degrees, got {self.rotation}")
        if not 0.0 <= self.shift <= 0.5 or not 0.0 <= self.wobble_amplitude <= 0.1 or not 0.0 <= self.gap_size <= 0.2:
            raise ValueError("shift must be in [0, 0.5], wobble_amplitude in [0, 0.1] and gap_size in [0, 0.2] "
                             "of the side")
        if self.page_probability > 0 and self.printing_probability == self.notes_probability == \
                self.figure_probability == 0:
            raise ValueError("page_probability > 0 needs printing_probability, notes_probability or "
                             "figure_probability above 0 (a page with nothing on it)")

    def moves_garment(self) -> bool:
        """True when the photo moves with the sketch (the latents must then be encoded every step)."""
        return tuple(self.scale_range) != (1.0, 1.0) or self.shift > 0 or self.rotation > 0

    def to_dict(self) -> dict[str, Any]:
        return {name: list(value) if isinstance(value, tuple) else value for name, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SketchAugment:
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown sketch_augment setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{name: tuple(value) if isinstance(value, list) else value for name, value in values.items()})


def augment_sample(sketch: np.ndarray, image: np.ndarray, augment: SketchAugment,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(sketch, photo) of one training sample, restyled and maybe moved; uint8 H x W and H x W x 3, same sizes.

    SKETCH is the dataset's (black lines on white), IMAGE the garment photo it was extracted from. The draws
    are made in a fixed order whatever is enabled, so one setting changed leaves the others' draws alone.
    """
    draws = rng.random(8)
    if augment.moves_garment():
        matrix = _placement(sketch.shape, augment, rng)
        sketch, image = _warp(sketch, matrix, 255), _warp(image, matrix, 255)
    lines = sketch < 128
    if draws[0] < augment.probability:
        sketch, lines = _restyle(sketch, image, augment, draws, rng)
    if draws[6] < augment.page_probability:
        # Restyled or not: a user's page carries printing, notes and a figure whatever the pen, so the ControlNet
        # must not learn that they come only with some line styles. The page draws from its own generator,
        # seeded by a draw already made: RNG's stream, hence every restyling, is as without pages (page_probability
        # 0 is the code before pages, byte for byte), and the page's draws do not depend on what the restyling drew.
        page_rng = np.random.default_rng(int(draws[7] * 2**53))
        sketch = on_page(sketch, lines, silhouette(image), augment, page_rng)
    return sketch, image


def _restyle(sketch: np.ndarray, image: np.ndarray, augment: SketchAugment, draws: np.ndarray,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(sketch, its lines as bool) redrawn in a random style (module docstring)."""
    lines = _source_lines(sketch, image, augment, draws[1], rng)
    side = max(lines.shape)
    if draws[2] < augment.stroke_probability:
        lines = redraw_stroke(lines, rng.uniform(*augment.stroke_range) * side)
    if draws[3] < augment.wobble_probability:
        lines = wobble(lines, augment.wobble_amplitude * side, rng)
    if draws[4] < augment.gap_probability:
        lines = break_lines(lines, int(rng.integers(1, 4)), augment.gap_size * side, rng)
    if not lines.any():  # e.g. an extractor found nothing on a pale garment: keep the dataset's sketch
        return sketch, sketch < 128
    if draws[5] < augment.pencil_probability:
        return pencil_on_paper(lines, rng), lines
    return np.where(lines, 0, 255).astype(np.uint8), lines


def _source_lines(sketch: np.ndarray, image: np.ndarray, augment: SketchAugment, draw: float,
                  rng: np.random.Generator) -> np.ndarray:
    method = augment.extractors[int(rng.integers(len(augment.extractors)))]
    if draw < augment.outline_probability:
        return outline(silhouette(image))
    if draw < augment.outline_probability + augment.extractor_probability:
        extracted = extract_sketch(Image.fromarray(image), SketchConfig(method=method))
        return np.asarray(extracted) < 128
    return sketch < 128


def silhouette(image: np.ndarray) -> np.ndarray:
    """Bool: the garment of a flat-lay photo on white, one filled region (the largest non-white one)."""
    ink = (image < PAPER_THRESHOLD).any(axis=2).astype(np.uint8)
    ink = cv2.morphologyEx(ink, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
    if count <= 1:
        return np.zeros(ink.shape, dtype=bool)
    garment = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    # Holes: what the border cannot reach without crossing the garment is inside it.
    outside = np.pad(1 - garment, 1, constant_values=1)
    cv2.floodFill(outside, None, (0, 0), 2)
    return (outside[1:-1, 1:-1] != 2) | garment.astype(bool)


def outline(region: np.ndarray) -> np.ndarray:
    """Bool: the 1 px outer contour of a region."""
    canvas = np.zeros(region.shape, dtype=np.uint8)
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(canvas, contours, -1, 1, 1)
    return canvas.astype(bool)


def redraw_stroke(lines: np.ndarray, width: float) -> np.ndarray:
    """Bool: the lines at about `width` px: thickened by a disc, or thinned by erosion (never below 1 px)."""
    radius = round((width - 1) / 2)
    if radius <= 0:
        return lines
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(lines.astype(np.uint8), kernel).astype(bool)


def wobble(lines: np.ndarray, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """Bool: the lines displaced by a smooth random field (a 4 x 4 grid of shifts, interpolated) of at most AMPLITUDE px."""
    height, width = lines.shape
    grid = rng.uniform(-amplitude, amplitude, size=(2, 4, 4)).astype(np.float32)
    dx, dy = (cv2.resize(grid[k], (width, height), interpolation=cv2.INTER_CUBIC) for k in range(2))
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    moved = cv2.remap(lines.astype(np.float32), xs + dx, ys + dy, cv2.INTER_LINEAR, borderValue=0)
    return moved > 0.35


def break_lines(lines: np.ndarray, count: int, length: float, rng: np.random.Generator) -> np.ndarray:
    """Bool: the lines with COUNT discs of diameter LENGTH erased, centred on line pixels."""
    ys, xs = np.nonzero(lines)
    if ys.size == 0:
        return lines
    broken = lines.astype(np.uint8)
    for pick in rng.integers(ys.size, size=count):
        cv2.circle(broken, (int(xs[pick]), int(ys[pick])), max(1, round(length / 2)), 0, -1)
    return broken.astype(bool)


def pencil_on_paper(lines: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8: the lines in grey pencil (30 to 70% dark) on off-white, grainy paper lit from one side."""
    height, width = lines.shape
    tone, grain, light, darkness = rng.uniform(0.85, 0.98), rng.uniform(0.01, 0.04), rng.uniform(0.0, 0.12), \
        rng.uniform(0.3, 0.7)
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (np.cos(angle) * xs / width + np.sin(angle) * ys / height).astype(np.float32)
    noise = cv2.GaussianBlur(rng.normal(0, 1, size=(height, width)).astype(np.float32), (0, 0), 0.7)
    paper = tone - light * (ramp - ramp.min()) + grain * noise
    soft = cv2.GaussianBlur(lines.astype(np.float32), (0, 0), 0.5)
    return np.clip(paper * (1 - darkness * np.clip(soft * 1.5, 0, 1)) * 255, 0, 255).astype(np.uint8)


def on_page(sketch: np.ndarray, lines: np.ndarray, region: np.ndarray, augment: SketchAugment,
            rng: np.random.Generator) -> np.ndarray:
    """uint8: SKETCH on a designer's page, with one or more of printing, margin notes and a fashion figure.

    LINES (bool) are the garment's lines, REGION its silhouette. Each element is a grey ink layer (255 = none)
    multiplied into the sheet, as ink darkens paper, so the elements show on pencil paper too; where one crosses
    the garment's line, the line wins (it stays as dark as it was).
    """
    chances = np.array([augment.printing_probability, augment.notes_probability, augment.figure_probability])
    draws, seeds = rng.random(4), rng.integers(2**63, size=3)  # each element its own stream, drawn whatever is on
    chosen = draws[:3] < chances
    if not chosen.any():  # a page shows at least one element: one kind, picked in proportion to its chance
        bounds = np.cumsum(chances) / np.sum(chances)
        chosen[min(int(np.searchsorted(bounds, draws[3], side="right")), 2)] = True
    blank = np.full(sketch.shape, 255, np.uint8)
    # The figure first, so notes keep clear of it; the layers multiply, so their order does not matter otherwise.
    body = figure(region, np.random.default_rng(seeds[2])) if chosen[2] else blank
    notes = margin_notes(region, lines, body < 255, np.random.default_rng(seeds[1])) if chosen[1] else blank
    layers = [body, notes, printing(sketch.shape, np.random.default_rng(seeds[0])) if chosen[0] else blank]
    ink = np.prod([layer.astype(np.float32) / 255 for layer in layers], axis=0)
    inked = np.round(sketch.astype(np.float32) * ink).astype(np.uint8)
    return np.where(lines, sketch, inked)


def printing(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """uint8 ink layer: the paper's ruled lines, square grid or dot grid across the sheet, light grey, 1 px-ish,
    spaced 3 to 10% of the side, a little askew half the time (a sheet is never scanned quite straight)."""
    height, width = shape[:2]
    side = max(height, width)
    kind = ("ruled", "grid", "dots")[int(rng.integers(3))]
    spacing = max(3.0, rng.uniform(0.03, 0.10) * side)
    tone, weight = int(rng.uniform(130, 230)), max(1, round(rng.uniform(0.003, 0.008) * side))
    angle = np.deg2rad(rng.uniform(-2.0, 2.0)) if rng.random() < 0.5 else 0.0
    phase = rng.uniform(0, spacing, size=2)
    margin = rng.uniform(0.06, 0.2) * width if rng.random() < 0.4 else None  # a ruled sheet's margin line
    along, across = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    centre, reach = np.array([width, height]) / 2, np.hypot(width, height) / 2
    steps = np.arange(-np.ceil(reach / spacing), np.ceil(reach / spacing) + 1) * spacing
    layer = np.full(shape[:2], 255, np.uint8)
    if kind == "dots":
        radius = max(0.5, weight * 0.6)
        for a in steps + phase[0]:
            for b in steps + phase[1]:
                cv2.circle(layer, _fixed(centre + a * along + b * across), _fixed_length(radius), tone, -1,
                           cv2.LINE_AA, _SUBPIXEL)
        return layer
    for offset in steps + phase[1]:  # the rules, across the sheet
        _stroke(layer, [centre + offset * across - reach * along, centre + offset * across + reach * along],
                tone, weight)
    columns = steps + phase[0] if kind == "grid" else [margin - width / 2] if margin is not None else []
    for offset in columns:
        _stroke(layer, [centre + offset * along - reach * across, centre + offset * along + reach * across],
                tone, weight)
    return layer


NOTE_WORDS = ("silk", "pleat", "hem", "dart", "lining", "zip", "cotton", "wool", "3cm", "x2", "belt", "seam",
              "trim", "A-line", "bias", "lace", "12", "04", "back", "tuck", "cuff", "yoke", "denim", "knit", "5mm",
              "SS24", "no.3", "hem 2cm", "topstitch", "pocket", "gathers", "midi", "V", "ok?")
NOTE_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX,
              cv2.FONT_HERSHEY_COMPLEX_SMALL, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX)


def margin_notes(region: np.ndarray, lines: np.ndarray, figure_ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 ink layer: one to three short notes where the page is empty (clear of the garment and FIGURE_INK),
    each with a leader line (half of them ending in an arrowhead) to a point in the garment (REGION, or its LINES
    when the region is unknown)."""
    height, width = region.shape
    side = max(height, width)
    layer = np.full(region.shape, 255, np.uint8)
    garment = region if region.any() else lines
    targets = np.argwhere(garment)
    if targets.size == 0:
        return layer
    taken = _dilate(garment | lines | figure_ink, max(2, round(0.03 * side)))  # clear of the drawing and each other
    for _ in range(int(rng.integers(1, 4))):
        word, font = NOTE_WORDS[int(rng.integers(len(NOTE_WORDS)))], NOTE_FONTS[int(rng.integers(len(NOTE_FONTS)))]
        tone, thickness = int(rng.uniform(20, 170)), max(1, round(rng.uniform(0.004, 0.008) * side))
        scale = rng.uniform(0.045, 0.075) * side / cv2.getTextSize("A", font, 1.0, 1)[0][1]
        (text_width, text_height), baseline = cv2.getTextSize(word, font, scale, thickness)
        box = _free_box(taken, text_width + 2, text_height + baseline + 2, rng)
        if box is None:
            continue
        left, top, right, bottom = box
        taken[top:bottom, left:right] = True
        cv2.putText(layer, word, (left + 1, bottom - baseline - 1), font, scale, tone, thickness, cv2.LINE_AA)
        candidates = targets[rng.integers(len(targets), size=4)][:, ::-1].astype(float)  # (x, y)
        middle = np.array([left + right, top + bottom]) / 2
        target = candidates[int(np.argmin(np.hypot(*(candidates - middle).T)))]  # a note points to what is near it
        _leader(layer, box, target, tone, rng)
    return layer


def _free_box(taken: np.ndarray, box_width: int, box_height: int,
              rng: np.random.Generator) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of a BOX_WIDTH x BOX_HEIGHT box on the sheet clear of TAKEN (a few tries), or None."""
    height, width = taken.shape
    if box_width >= width or box_height >= height:
        return None
    for _ in range(24):
        left, top = int(rng.integers(width - box_width)), int(rng.integers(height - box_height))
        if not taken[top:top + box_height, left:left + box_width].any():
            return left, top, left + box_width, top + box_height
    return None


def _leader(layer: np.ndarray, box: tuple[int, int, int, int], target: np.ndarray, tone: int,
            rng: np.random.Generator) -> None:
    """A note's leader line from the side of its BOX facing TARGET to TARGET, half the time with an arrowhead."""
    left, top, right, bottom = box
    middle = np.array([(left + right) / 2, (top + bottom) / 2])
    if target[0] > right or target[0] < left:  # beside the note: leave from its end
        start = np.array([right + 1 if target[0] > right else left - 2, middle[1]])
    else:  # above or below: leave from its middle
        start = np.array([middle[0], bottom + 1 if target[1] > bottom else top - 2])
    length = float(np.hypot(*(target - start)))
    if rng.random() < 0.5 and length > 1:
        tip = max(2.0, 0.04 * max(layer.shape)) / length
        cv2.arrowedLine(layer, _fixed(start), _fixed(target), tone, 1, cv2.LINE_AA, _SUBPIXEL, min(tip, 0.5))
    else:
        _stroke(layer, [start, target], tone, 1)


def figure(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 ink layer: the fashion figure the garment is drawn on, in a light thin line: head and neck above the
    garment, arms from its shoulders, legs below its hem (each part three times in four, at least one), erased
    inside the garment's silhouette REGION, as the garment covers the body."""
    layer = np.full(region.shape, 255, np.uint8)
    if not region.any():
        return layer
    ys, xs = np.nonzero(region)
    box = (int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max()))  # top, bottom, left, right
    side = max(region.shape)
    style = (int(rng.uniform(70, 200)), max(1, round(rng.uniform(0.002, 0.006) * side)))  # tone, weight
    head = float(np.clip(rng.uniform(0.18, 0.3) * (box[3] - box[2] + 1), 0.05 * side, 0.14 * side))  # its width
    parts = rng.random(3) < 0.75
    if not parts.any():
        parts[int(rng.integers(3))] = True
    centre_x = float(xs[ys < box[0] + 0.2 * (box[1] - box[0] + 1)].mean())  # the top's middle (a garment may lean)
    if parts[0]:
        _head_and_neck(layer, box, centre_x, head, style, rng)
    if parts[1]:
        _arms(layer, region, box, head, style, rng)
    if parts[2]:
        _legs(layer, region, box, centre_x, head, style, rng)
    layer[region] = 255
    return layer


def _head_and_neck(layer: np.ndarray, box: tuple[int, int, int, int], centre_x: float, head: float,
                   style: tuple[int, int], rng: np.random.Generator) -> None:
    """An oval head (sometimes with a line of hair) above the garment's top and a neck down into it."""
    top, bottom = box[0], box[1]
    tone, weight = style
    head_height, neck_length, neck = head * rng.uniform(1.2, 1.4), head * rng.uniform(0.3, 0.7), \
        head * rng.uniform(0.35, 0.5)
    centre = np.array([centre_x + head * rng.uniform(-0.1, 0.1), top - neck_length - head_height / 2])
    tilt = rng.uniform(-12, 12)
    axes = (_fixed_length(head / 2), _fixed_length(head_height / 2))
    cv2.ellipse(layer, _fixed(centre), axes, tilt, 0, 360, tone, weight, cv2.LINE_AA, _SUBPIXEL)
    if rng.random() < 0.5:  # hair: an arc over the crown, a little outside the head
        hair = (_fixed_length(head * 0.6), _fixed_length(head_height * 0.56))
        cv2.ellipse(layer, _fixed(centre - [0, head * 0.05]), hair, tilt, 170, 370, tone, weight, cv2.LINE_AA,
                    _SUBPIXEL)
    chin = centre[1] + head_height * 0.4
    for sign in (-1, 1):
        _stroke(layer, [(centre_x + sign * neck / 2, chin), (centre_x + sign * neck * 0.6, top + 0.2 * (bottom - top))],
                tone, weight)


def _arms(layer: np.ndarray, region: np.ndarray, box: tuple[int, int, int, int], head: float,
          style: tuple[int, int], rng: np.random.Generator) -> None:
    """Two arms from the garment's shoulders to hands: the upper arm along the sleeve (towards the garment's
    farthest point on that side in its upper part) or hanging when there is none, the forearm hanging on from the
    elbow, or straight on when the sleeve covers the elbow."""
    top, bottom = box[0], box[1]
    height = bottom - top + 1
    shoulder_row = top + round(rng.uniform(0.02, 0.1) * height)
    columns = np.nonzero(region[shoulder_row])[0]
    upper_ys, upper_xs = np.nonzero(region[top:top + max(1, int(0.6 * height))])
    upper, fore, hangs = head * rng.uniform(1.6, 2.0, size=2), head * rng.uniform(1.5, 1.9, size=2), \
        np.deg2rad(rng.uniform(4, 25, size=(2, 2)))
    if columns.size == 0:
        return
    for k, sign in enumerate((-1, 1)):
        shoulder = np.array([columns.min() if sign < 0 else columns.max(), shoulder_row], float)
        pick = int(np.argmin(upper_xs)) if sign < 0 else int(np.argmax(upper_xs))
        reach = np.array([upper_xs[pick], upper_ys[pick] + top], float) - shoulder
        hanging = [np.array([sign * np.sin(angle), np.cos(angle)]) for angle in hangs[k]]
        sleeve = abs(reach[0]) > 0.2 * head and reach[1] > 0  # the farthest point is out and down: a sleeve
        along = reach / np.hypot(*reach) if sleeve else hanging[0]
        if sleeve and np.hypot(*reach) > upper[k]:  # a long sleeve: the arm runs straight down it to the cuff
            path = [shoulder, shoulder + along * (np.hypot(*reach) + 0.2 * head)]
        else:
            elbow = shoulder + along * upper[k]
            path = [shoulder, elbow, elbow + hanging[1] * fore[k]]
        wrist, direction = _limb(layer, path, -sign, (0.45 * head, 0.22 * head), style)
        _oval(layer, wrist + direction * 0.25 * head, (0.14 * head, 0.28 * head), direction, style)


def _legs(layer: np.ndarray, region: np.ndarray, box: tuple[int, int, int, int], centre_x: float, head: float,
          style: tuple[int, int], rng: np.random.Generator) -> None:
    """Two legs down from under the garment's hem (out of each trouser leg when it has two), to feet."""
    top, bottom = box[0], box[1]
    height = bottom - top + 1
    runs = _runs(region[max(top, bottom - max(1, round(0.03 * height)))])
    widths = [end - start for start, end in runs]
    spread, splay, length = head * rng.uniform(0.3, 0.55), rng.uniform(0, 6, size=2), head * 1.3 * rng.uniform(3, 4)
    if len(runs) >= 2 and sorted(widths)[-2] > 0.1 * (box[3] - box[2] + 1):  # trousers: a leg in each
        pair = sorted(sorted(range(len(runs)), key=lambda i: widths[i])[-2:], key=lambda i: runs[i][0])
        feet_x = [(runs[i][0] + runs[i][1]) / 2 for i in pair]
        width = min(0.45 * head, 0.7 * min(widths[i] for i in pair))
    else:
        feet_x, width = [centre_x - spread, centre_x + spread], 0.45 * head
    for k, (x, sign) in enumerate(zip(feet_x, (-1, 1))):
        angle = np.deg2rad(splay[k])
        direction = np.array([sign * np.sin(angle), np.cos(angle)])
        outer = np.array([x + sign * width / 2, bottom - 0.25 * height])  # from inside the garment, hidden there
        ankle, _ = _limb(layer, [outer, outer + direction * length], -sign, (width, 0.5 * width), style)
        _oval(layer, ankle + [sign * 0.2 * head, 0.1 * head], (0.28 * head, 0.12 * head), np.array([1.0, 0.0]),
              style)


def _limb(layer: np.ndarray, path: list[np.ndarray], toward: int, widths: tuple[float, float],
          style: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A limb's two contour lines, one along PATH (its outer edge), the other beside it on the TOWARD side (+1:
    right, -1: left), tapering from widths[0] to widths[1]; returns the middle of its far end and its last direction."""
    inner = []
    for k, point in enumerate(path):
        step = path[min(k + 1, len(path) - 1)] - path[max(k - 1, 0)]
        across = np.array([step[1], -step[0]]) / max(np.hypot(*step), 1e-6)
        across = across if across[0] * toward >= 0 else -across
        inner.append(point + across * np.interp(k, [0, len(path) - 1], widths))
    _stroke(layer, path, *style)
    _stroke(layer, inner, *style)
    last = path[-1] - path[-2]
    return (path[-1] + inner[-1]) / 2, last / max(np.hypot(*last), 1e-6)


def _oval(layer: np.ndarray, centre: np.ndarray, axes: tuple[float, float], direction: np.ndarray,
          style: tuple[int, int]) -> None:
    """An ellipse outline with its second axis along DIRECTION (a hand, a foot)."""
    angle = np.degrees(np.arctan2(direction[1], direction[0])) - 90
    cv2.ellipse(layer, _fixed(centre), (_fixed_length(axes[0]), _fixed_length(axes[1])), angle, 0, 360, style[0],
                style[1], cv2.LINE_AA, _SUBPIXEL)


def _runs(row: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True in a bool row, end exclusive."""
    edges = np.diff(np.concatenate([[0], row.astype(np.int8), [0]]))
    return list(zip(np.nonzero(edges == 1)[0].tolist(), np.nonzero(edges == -1)[0].tolist()))


def _stroke(layer: np.ndarray, points, tone: int, weight: int) -> None:
    """An anti-aliased polyline through POINTS (x, y, in float px) in grey TONE, WEIGHT px wide."""
    fixed = np.array([_fixed(point) for point in points], np.int32)
    cv2.polylines(layer, [fixed], False, tone, weight, cv2.LINE_AA, _SUBPIXEL)


def _fixed(point) -> tuple[int, int]:
    """(x, y) in cv2's fixed point: _SUBPIXEL fractional bits."""
    return _fixed_length(point[0]), _fixed_length(point[1])


def _fixed_length(value: float) -> int:
    return round(float(value) * (1 << _SUBPIXEL))


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def _placement(shape: tuple[int, ...], augment: SketchAugment, rng: np.random.Generator) -> np.ndarray:
    """2 x 3 affine: scale about the centre by a factor from scale_range (turned by up to `rotation` degrees),
    then a shift of up to `shift`. The turn is drawn last and only when asked, so runs without it draw as before."""
    height, width = shape[:2]
    scale = rng.uniform(*augment.scale_range)
    dx, dy = rng.uniform(-augment.shift, augment.shift, size=2) * (width, height)
    angle = rng.uniform(-augment.rotation, augment.rotation) if augment.rotation > 0 else 0.0
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
    matrix[:, 2] += (dx, dy)
    return matrix.astype(np.float32)


def _warp(array: np.ndarray, matrix: np.ndarray, fill: int) -> np.ndarray:
    height, width = array.shape[:2]
    border = (fill,) * (3 if array.ndim == 3 else 1)
    return cv2.warpAffine(array, matrix, (width, height), flags=cv2.INTER_LINEAR, borderValue=border)


def _check_range(name: str, value: tuple[float, float], low: float, high: float) -> None:
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise ValueError(f"{name} must be [min, max] with {low} <= min <= max <= {high}, got {list(value)}")
