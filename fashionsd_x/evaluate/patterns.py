"""Pattern adherence: does a generated garment carry the print its prompt asked for (solid, stripes, dots, checks)?

A handful of hand-made features of the print inside the garment (pattern_features) feed a multinomial logistic
regression (PatternClassifier) fitted on the synthetic catalogue's own renders (reference_classifier);
pattern_accuracy is the share of images whose predicted pattern is the asked one. The features look at colour
contrast against the garment's main colour, not at exact pixels, so they survive the blur and noise of a small
generator's 128 px images.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageFilter, ImageOps

from fashionsd_x.data.images import WHITE, to_rgb
from fashionsd_x.data.synth import PATTERNS, render_garment, sample_spec
from fashionsd_x.evaluate.metrics import check_labels, garment_mask

FEATURE_SIZE = 128  # px: every image is padded square and resized to this, so features do not depend on its size
SMOOTHING = 1.0  # px Gaussian sigma at FEATURE_SIZE: damps a generator's pixel noise before contrasts are taken
EDGE_MARGIN = 5  # px eroded off the garment mask: the outline, edge shading and blur halo are no print
TILE = 32  # px: orientation is measured per tile, since stripes turn with sleeves, legs and flared skirts
MIN_CONTRAST = 0.2  # RGB distance / 255 below which a pixel is main colour (shading, creases), never print
PRINT_LEVEL = 0.3  # print: above this share of the strongest contrast; keeps gingham's half-strength lines
MIN_BLOB = 3  # px: smaller contrasting specks are noise, not dots
MIN_GARMENT = 50  # px of eroded garment at FEATURE_SIZE; fewer means no garment to read a print from
NUM_FEATURES = 10


def pattern_features(image: Image.Image) -> np.ndarray:
    """(NUM_FEATURES,) float64 description of the print inside the garment; all zeros when there is no garment.

    On the contrast map (RGB distance to the main colour) inside the eroded garment mask:
    print share, strength and mean contrast; gradient energy and tile-wise orientation coherence of doubled and
    quadrupled gradient angles (stripes: both high, checks: only the quadrupled, dots and solid: neither);
    connected print regions per 1000 garment px, the largest one's share, median elongation and compactness
    (dots: many compact round blobs, checks: one sparse grid, stripes: a few long bands).
    """
    region = _garment_region(image)
    return np.zeros(NUM_FEATURES) if region is None else _features(*region)


def _garment_region(image: Image.Image) -> tuple[np.ndarray, np.ndarray] | None:
    """(contrast map, eroded garment mask) at FEATURE_SIZE, or None when the garment is missing or too small."""
    square = ImageOps.pad(to_rgb(image), (FEATURE_SIZE, FEATURE_SIZE), Image.Resampling.LANCZOS, color=WHITE)
    rgb = cv2.GaussianBlur(np.asarray(square, np.float32), (0, 0), SMOOTHING)
    # The mask is taken after smoothing too: noisy background pixels would otherwise dip below the white
    # threshold and join the garment.
    mask = garment_mask(Image.fromarray(np.rint(rgb).astype(np.uint8)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * EDGE_MARGIN + 1,) * 2)
    inner = cv2.erode(mask.astype(np.uint8), kernel).astype(bool)
    if inner.sum() < MIN_GARMENT:
        return None
    # Per-channel median, not dominant_color: every print covers under a third of the garment, so the median
    # is the main colour, while dominant_color's coarse histogram lands on the mixed colours of a blurred print.
    main = np.median(rgb[inner], axis=0)
    return np.linalg.norm(rgb - main, axis=2) / 255.0, inner


def _features(contrast: np.ndarray, inner: np.ndarray) -> np.ndarray:
    values = contrast[inner]
    strength = float(np.percentile(values, 99))
    printed = inner & (contrast > max(MIN_CONTRAST, PRINT_LEVEL * strength))
    share = printed.sum() / inner.sum()
    return np.array([share, strength, values.mean(), *_orientation(contrast, inner), *_blobs(printed, inner.sum())])


def _orientation(contrast: np.ndarray, inner: np.ndarray) -> tuple[float, float, float]:
    """(gradient energy, coherence of 2x angles, coherence of 4x angles), coherence averaged over tiles.

    Doubling maps a gradient and its opposite (both sides of a stripe) to one direction; quadrupling also maps
    orthogonal ones together, so the two grid directions of checks agree there and cancel in the doubled sum.
    """
    dx, dy = cv2.Sobel(contrast, cv2.CV_32F, 1, 0), cv2.Sobel(contrast, cv2.CV_32F, 0, 1)
    weight, angle = np.hypot(dx, dy) * inner, np.arctan2(dy, dx)
    tiles = FEATURE_SIZE // TILE
    weight, angle = (array.reshape(tiles, TILE, tiles, TILE).swapaxes(1, 2).reshape(tiles**2, -1)
                     for array in (weight, angle))
    total = max(float(weight.sum()), 1e-9)
    # sum over tiles of |tile resultant| / total weight: each tile's coherence, weighted by its gradient energy
    coherence = [np.abs((weight * np.exp(1j * k * angle)).sum(axis=1)).sum() / total for k in (2, 4)]
    return total / inner.sum(), float(coherence[0]), float(coherence[1])


def _blobs(printed: np.ndarray, garment_area: int) -> tuple[float, float, float, float]:
    """(print regions per 1000 garment px, largest region's share, median log elongation, median compactness)."""
    count, labels = cv2.connectedComponents(printed.astype(np.uint8), connectivity=8)
    area, elongation, compactness = _region_shapes(labels, count - 1)
    keep = area >= MIN_BLOB
    if not keep.any():
        return 0.0, 0.0, 0.0, 0.0
    return (1000 * keep.sum() / garment_area, area.max() / area.sum(), float(np.median(elongation[keep])),
            float(np.median(compactness[keep])))


def _region_shapes(labels: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(area, log axis ratio, compactness) of regions 1..COUNT from their second moments.

    Compactness is the area over that of the ellipse with the same moments: about 1 for discs and bands, far
    below 1 for a grid. Rotation-invariant, unlike bounding boxes, so diagonal stripes read as bands.
    """
    ys, xs = np.nonzero(labels)
    label = labels[ys, xs] - 1
    area = np.bincount(label, minlength=count).astype(np.float64)

    def mean(values: np.ndarray) -> np.ndarray:
        return np.bincount(label, values, minlength=count) / np.maximum(area, 1)

    mean_x, mean_y = mean(xs), mean(ys)
    var_x = mean(xs * xs) - mean_x**2 + 1 / 12  # + a pixel's own variance: a one-pixel line has some spread
    var_y = mean(ys * ys) - mean_y**2 + 1 / 12
    cov = mean(xs * ys) - mean_x * mean_y
    half_gap = np.sqrt((var_x - var_y) ** 2 / 4 + cov**2)
    major, minor = (var_x + var_y) / 2 + half_gap, np.maximum((var_x + var_y) / 2 - half_gap, 1e-6)
    return area, 0.5 * np.log(major / minor), area / (4 * np.pi * np.sqrt(major * minor))


# ---------------------------------------------------------------------------------------------- classifier


@dataclass(frozen=True, eq=False)
class PatternClassifier:
    """Multinomial logistic regression on standardised pattern_features; fit() builds one.

    Its arrays are made read-only, since reference_classifier hands one cached instance to every caller.
    """

    labels: tuple[str, ...]  # pattern names, in the order of the weight columns
    mean: np.ndarray  # (NUM_FEATURES,) feature means of the training images
    scale: np.ndarray  # (NUM_FEATURES,) feature standard deviations (floored, so a constant feature is harmless)
    weights: np.ndarray  # (NUM_FEATURES + 1, len(labels)): last row is the bias

    def __post_init__(self) -> None:
        for name in ("mean", "scale", "weights"):
            array = np.array(getattr(self, name), dtype=np.float64)
            array.setflags(write=False)
            object.__setattr__(self, name, array)

    @classmethod
    def fit(cls, images: Sequence[Image.Image], patterns: Sequence[str], steps: int = 500,
            l2: float = 0.01) -> PatternClassifier:
        """Fit on IMAGES labelled with PATTERNS by full-batch gradient descent (deterministic), L2-penalised."""
        check_labels(images, patterns, PATTERNS, "pattern")
        labels = tuple(name for name in PATTERNS if name in set(patterns))
        if len(labels) < 2:
            raise ValueError(f"need images of at least two patterns to fit a classifier, got only {labels}")
        regions = [_garment_region(image) for image in images]
        missing = [index for index, region in enumerate(regions) if region is None]
        if missing:
            raise ValueError(f"no garment found in training image(s) {missing[:10]}; pass garments on white")
        features = np.array([_features(*region) for region in regions])
        mean, scale = features.mean(axis=0), np.maximum(features.std(axis=0), 1e-6)
        targets = np.eye(len(labels))[[labels.index(name) for name in patterns]]
        return cls(labels, mean, scale, _logistic_regression(_design(features, mean, scale), targets, steps, l2))

    def predict(self, images: Sequence[Image.Image]) -> list[str | None]:
        """The most likely pattern name of each image; None where there is no garment (a blank image)."""
        return [self._predict_region(_garment_region(image)) for image in images]

    def _predict_region(self, region: tuple[np.ndarray, np.ndarray] | None) -> str | None:
        if region is None:
            return None
        scores = _design(_features(*region)[None], self.mean, self.scale) @ self.weights
        return self.labels[int(np.argmax(scores))]


def _design(features: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Standardised features with a constant 1 column for the bias."""
    standard = (features - mean) / scale
    return np.concatenate([standard, np.ones((len(standard), 1))], axis=1)


def _logistic_regression(design: np.ndarray, targets: np.ndarray, steps: int, l2: float) -> np.ndarray:
    """Softmax regression weights by gradient descent; the problem is convex, so a fixed step size converges."""
    weights = np.zeros((design.shape[1], targets.shape[1]))
    penalty = np.ones((design.shape[1], 1))
    penalty[-1] = 0.0  # the bias is not shrunk
    for _ in range(steps):
        logits = design @ weights
        probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        weights -= 0.5 * (design.T @ (probabilities - targets) / len(design) + l2 * penalty * weights)
    return weights


@functools.lru_cache(maxsize=8)
def reference_classifier(resolution: int = 128, per_pattern: int = 60, seed: int = 0) -> PatternClassifier:
    """A PatternClassifier fitted on PER_PATTERN synthetic renders of each pattern at RESOLUTION px, plus a
    softened copy of each (Gaussian blur up to 2 px at 128 px, pixel noise up to 8 levels), since generated
    images are blurrier and noisier than renders. Deterministic in its arguments; cached.
    """
    rng = np.random.default_rng([seed, resolution])
    images, patterns = [], []
    for _ in range(per_pattern):
        for pattern in PATTERNS:
            render = render_garment(sample_spec(rng, patterns=[pattern]), resolution, seed=len(images))
            images += [render, _soften(render, rng)]
            patterns += [pattern, pattern]
    return PatternClassifier.fit(images, patterns)


def _soften(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    radius = rng.uniform(0.0, 2.0) * image.width / FEATURE_SIZE  # blur in proportion to the image size
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(radius)), np.float64)
    noisy = blurred + rng.normal(0.0, rng.uniform(0.0, 8.0), blurred.shape)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


def pattern_accuracy(images: Sequence[Image.Image], patterns: Sequence[str],
                     classifier: PatternClassifier | None = None) -> float:
    """Share of IMAGES whose predicted pattern is the asked one in PATTERNS (a blank image is a miss).

    CLASSIFIER defaults to reference_classifier at the images' size (they must then all have one size).
    """
    check_labels(images, patterns, PATTERNS if classifier is None else classifier.labels, "pattern")
    if classifier is None:
        classifier = reference_classifier(_one_size(images))
    return float(np.mean([got == asked for got, asked in zip(classifier.predict(images), patterns)]))


def _one_size(images: Sequence[Image.Image]) -> int:
    sizes = sorted({image.size for image in images})
    if len(sizes) > 1:
        raise ValueError(f"images have several sizes {sizes}; resize them to one or pass a classifier")
    return max(sizes[0])
