"""Sketch-style augmentation for ControlNet training: one garment, drawn the many ways designers draw.

A ControlNet trained only on the dataset's adaptive-threshold sketches follows those and little else. Each
training sample's sketch is, with probability `probability`, redrawn from the garment photo and its sketch:
    lines    the dataset's sketch, or the photo's lines from another extractor (adaptive, canny, xdog), or the
             garment's outer outline alone (interior lines dropped, as in a quick designer's outline);
    stroke   the lines drawn again at a random width;
    wobble   a smooth random displacement, as a hand's line wanders;
    gaps     a few short breaks in the line;
    pencil   grey lines on textured, off-white, unevenly lit paper.
Optionally the garment and its sketch are scaled and moved together (`scale_range`, `shift`), which needs the
photo encoded each step (no latent cache). Every draw comes from the generator passed in, which training seeds
from (seed, micro-batch, process, sample): the augmentation is a pure function of the run's seed and step.
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
        if not 0.0 <= self.shift <= 0.5 or not 0.0 <= self.wobble_amplitude <= 0.1 or not 0.0 <= self.gap_size <= 0.2:
            raise ValueError("shift must be in [0, 0.5], wobble_amplitude in [0, 0.1] and gap_size in [0, 0.2] "
                             "of the side")

    def moves_garment(self) -> bool:
        """True when the photo moves with the sketch (the latents must then be encoded every step)."""
        return tuple(self.scale_range) != (1.0, 1.0) or self.shift > 0

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
    if draws[0] >= augment.probability:
        return sketch, image
    lines = _source_lines(sketch, image, augment, draws[1], rng)
    side = max(lines.shape)
    if draws[2] < augment.stroke_probability:
        lines = redraw_stroke(lines, rng.uniform(*augment.stroke_range) * side)
    if draws[3] < augment.wobble_probability:
        lines = wobble(lines, augment.wobble_amplitude * side, rng)
    if draws[4] < augment.gap_probability:
        lines = break_lines(lines, int(rng.integers(1, 4)), augment.gap_size * side, rng)
    if not lines.any():  # e.g. an extractor found nothing on a pale garment: keep the dataset's sketch
        return sketch, image
    if draws[5] < augment.pencil_probability:
        return pencil_on_paper(lines, rng), image
    return np.where(lines, 0, 255).astype(np.uint8), image


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
    radius = int(round((width - 1) / 2))
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
        cv2.circle(broken, (int(xs[pick]), int(ys[pick])), max(1, int(round(length / 2))), 0, -1)
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


def _placement(shape: tuple[int, ...], augment: SketchAugment, rng: np.random.Generator) -> np.ndarray:
    """2 x 3 affine: scale about the centre by a factor from scale_range, then a shift of up to `shift`."""
    height, width = shape[:2]
    scale = rng.uniform(*augment.scale_range)
    dx, dy = rng.uniform(-augment.shift, augment.shift, size=2) * (width, height)
    centre_x, centre_y = width / 2, height / 2
    return np.array([[scale, 0, centre_x * (1 - scale) + dx], [0, scale, centre_y * (1 - scale) + dy]],
                    dtype=np.float32)


def _warp(array: np.ndarray, matrix: np.ndarray, fill: int) -> np.ndarray:
    height, width = array.shape[:2]
    border = (fill,) * (3 if array.ndim == 3 else 1)
    return cv2.warpAffine(array, matrix, (width, height), flags=cv2.INTER_LINEAR, borderValue=border)


def _check_range(name: str, value: tuple[float, float], low: float, high: float) -> None:
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise ValueError(f"{name} must be [min, max] with {low} <= min <= max <= {high}, got {list(value)}")
