"""Pattern adherence on synthetic garments: held-out renders are read correctly, also when softened the way a
small generator softens them, wrong labels score low, and bad input fails with a clear message."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from fashionsd_x.data.synth import PATTERNS, render_garment, sample_spec
from fashionsd_x.evaluate.patterns import (
    NUM_FEATURES,
    PatternClassifier,
    pattern_accuracy,
    pattern_features,
    reference_classifier,
)

HELD_OUT_SEED = 12345  # the reference classifier samples from default_rng([0, resolution]): other garments


def _renders(size: int, per_pattern: int, patterns: tuple[str, ...] = PATTERNS) -> tuple[list[Image.Image], list[str]]:
    rng = np.random.default_rng(HELD_OUT_SEED)
    images, labels = [], []
    for _ in range(per_pattern):
        for pattern in patterns:
            images.append(render_garment(sample_spec(rng, patterns=[pattern]), size, seed=50_000 + len(images)))
            labels.append(pattern)
    return images, labels


def _like_generator(image: Image.Image, seed: int, radius: float = 1.5, noise: float = 6.0) -> Image.Image:
    """Gaussian blur and pixel noise, roughly what a small diffusion model's 128 px samples look like."""
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(radius)), np.float64)
    noisy = blurred + np.random.default_rng(seed).normal(0.0, noise, blurred.shape)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


def _recall(predicted: list[str | None], labels: list[str]) -> dict[str, float]:
    return {name: float(np.mean([got == name for got, asked in zip(predicted, labels) if asked == name]))
            for name in PATTERNS}


@pytest.fixture(scope="module")
def held_out() -> tuple[list[Image.Image], list[str]]:
    return _renders(128, per_pattern=40)


def test_held_out_renders_are_classified(held_out):
    images, labels = held_out
    predicted = reference_classifier(128).predict(images)
    # Measured: 160/160 correct.
    assert pattern_accuracy(images, labels) >= 0.95
    assert min(_recall(predicted, labels).values()) >= 0.9


def test_held_out_renders_at_64_px():
    images, labels = _renders(64, per_pattern=25)
    # Measured: 100/100 (and 160/160 over 40 per pattern).
    assert pattern_accuracy(images, labels) >= 0.95


def test_blur_and_noise_keep_accuracy(held_out):
    images, labels = held_out
    softened = [_like_generator(image, seed) for seed, image in enumerate(images)]
    # Measured: 0.975 (4 of 40 checks read as dots, every other pattern 40/40); 0.85 at blur radius 2.
    assert pattern_accuracy(softened, labels) >= 0.9
    assert min(_recall(reference_classifier(128).predict(softened), labels).values()) >= 0.8


def test_solid_garments_are_not_called_dots(held_out):
    images, labels = held_out
    solids = [image for image, label in zip(images, labels) if label == "solid"]
    softened = [_like_generator(image, seed) for seed, image in enumerate(solids)]
    predicted = reference_classifier(128).predict(solids + softened)
    assert "dots" not in predicted
    assert predicted.count("solid") >= 0.95 * len(predicted)


def test_wrong_labels_score_low(held_out):
    images, labels = held_out
    shifted = {name: PATTERNS[(index + 1) % len(PATTERNS)] for index, name in enumerate(PATTERNS)}
    assert pattern_accuracy(images, [shifted[label] for label in labels]) <= 0.05  # measured 0.0


def test_blank_and_odd_images_give_valid_features():
    blank = Image.new("RGB", (128, 128), "white")
    features = pattern_features(blank)
    assert features.shape == (NUM_FEATURES,) and not features.any()
    assert reference_classifier(128).predict([blank]) == [None]
    assert pattern_accuracy([blank], ["solid"]) == 0.0  # nothing drawn is no solid garment
    for image in (Image.new("RGB", (32, 32), (200, 30, 40)), Image.new("L", (90, 60), 40),
                  Image.new("RGBA", (64, 64), (0, 0, 0, 0))):
        features = pattern_features(image)
        assert features.shape == (NUM_FEATURES,) and np.isfinite(features).all()


def test_features_of_renders_are_finite_and_deterministic(held_out):
    images, _ = held_out
    features = np.array([pattern_features(image) for image in images[:8]])
    assert features.shape == (8, NUM_FEATURES) and np.isfinite(features).all()
    assert np.array_equal(features, np.array([pattern_features(image) for image in images[:8]]))


def test_reference_classifier_is_deterministic_and_read_only():
    fit = reference_classifier.__wrapped__  # bypass the cache: two independent fits
    first, second = fit(64, per_pattern=4, seed=3), fit(64, per_pattern=4, seed=3)
    assert first.labels == second.labels == PATTERNS
    assert np.array_equal(first.weights, second.weights) and np.array_equal(first.mean, second.mean)
    assert not first.weights.flags.writeable
    assert reference_classifier(128) is reference_classifier(128)


def test_batch_prediction_equals_single(held_out):
    images, _ = held_out
    classifier = reference_classifier(128)
    assert classifier.predict(images[:6]) == [classifier.predict([image])[0] for image in images[:6]]


def test_custom_classifier_on_two_patterns():
    images, labels = _renders(64, per_pattern=8, patterns=("stripes", "dots"))
    classifier = PatternClassifier.fit(images, labels)
    assert classifier.labels == ("stripes", "dots")
    assert pattern_accuracy(images, labels, classifier) == 1.0
    with pytest.raises(ValueError, match=r"unknown pattern name\(s\) \['checks'\]; known: stripes, dots"):
        pattern_accuracy(images[:1], ["checks"], classifier)


@pytest.mark.parametrize(("images", "patterns", "message"), [
    ([Image.new("RGB", (64, 64))] * 2, ["solid"], "need one pattern name per image"),
    ([], [], "at least one image"),
    ([Image.new("RGB", (64, 64))], ["striped"], r"unknown pattern name\(s\) \['striped'\]"),
    ([Image.new("RGB", (64, 64)), Image.new("RGB", (96, 96))], ["solid", "dots"], "several sizes"),
])
def test_pattern_accuracy_rejects_bad_input(images, patterns, message):
    with pytest.raises(ValueError, match=message):
        pattern_accuracy(images, patterns)


def test_fit_rejects_one_pattern_and_blank_images():
    images, labels = _renders(64, per_pattern=2, patterns=("dots",))
    with pytest.raises(ValueError, match="at least two patterns"):
        PatternClassifier.fit(images, labels)
    blank = Image.new("RGB", (64, 64), "white")
    with pytest.raises(ValueError, match=r"no garment found in training image\(s\) \[1\]"):
        PatternClassifier.fit([images[0], blank], ["dots", "solid"])
