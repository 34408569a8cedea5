"""Metrics against reference implementations (scipy, scikit-image, CLIP's own similarity head, brute force)
and against the behaviour a metric must show on synthetic garments."""

from __future__ import annotations

import math
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg
from skimage.metrics import structural_similarity
from transformers import CLIPModel, CLIPProcessor

from fashionsd_x.data.sketch import SketchConfig, extract_sketch
from fashionsd_x.data.synth import CATEGORIES, PALETTE, PATTERNS, render_garment, sample_spec
from fashionsd_x.evaluate.metrics import (
    MetricUnavailable,
    TORCH_FIDELITY_INCEPTION,
    chamfer_distance,
    clip_scores,
    color_accuracy,
    dominant_color,
    edge_prf,
    fid_kid,
    fid_kid_from_features,
    find_inception_weights,
    garment_mask,
    inception_features,
    kid_subset_size,
    load_clip,
    load_inception,
    nearest_palette_color,
    predicted_color,
    silhouette_iou,
    sketch_mse,
    sketch_pixel_mse,
    ssim,
)


def garment(index: int, size: int = 64, **filters) -> Image.Image:
    return render_garment(sample_spec(np.random.default_rng([5, index]), **filters), size=size, seed=index)


def brighter(image: Image.Image, amount: int) -> Image.Image:
    return Image.fromarray(np.clip(np.asarray(image).astype(int) + amount, 0, 255).astype(np.uint8))


def blank(size: int = 64, value: int = 255) -> Image.Image:
    return Image.new("L", (size, size), value)


class TinyFeatures(torch.nn.Module):
    """A fixed random conv net with 32 features, standing in for Inception: uint8 (B, 3, H, W) -> (B, 32)."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.first = torch.nn.Conv2d(3, 16, 3, stride=2)
            self.second = torch.nn.Conv2d(16, 32, 3, stride=2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.first(images.float() / 127.5 - 1.0))
        # x10: features of order 1, like Inception's pool3, so KID's cubic kernel is not flat
        return 10 * torch.relu(self.second(x)).mean(dim=(2, 3))


# ------------------------------------------------------------------------------------------ FID / KID


@pytest.fixture(scope="module")
def garments() -> list[Image.Image]:
    return [garment(index) for index in range(24)]


def reference_fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Heusel et al.'s formula with scipy's sqrtm, as pytorch-fid computes it."""
    mu1, mu2 = real.mean(0), fake.mean(0)
    sigma1, sigma2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    root = linalg.sqrtm(sigma1 @ sigma2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1 + sigma2 - 2 * root))


def reference_kid(real: np.ndarray, fake: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (Binkowski et al. 2018) on the whole sets."""
    kernel = lambda a, b: (a @ b.T / real.shape[1] + 1) ** 3  # noqa: E731
    m = len(real)
    k_xx, k_yy, k_xy = kernel(real, real), kernel(fake, fake), kernel(real, fake)
    return float((k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1)) - 2 * k_xy.mean())


def test_fid_and_kid_match_the_formulas():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(40, 8)), rng.normal(0.3, 1.2, size=(40, 8))
    # With the subset as large as the sets, every KID subset is the whole set: one deterministic value.
    result = fid_kid_from_features(torch.from_numpy(real), torch.from_numpy(fake), kid_subset=40)
    assert result["fid"] == pytest.approx(reference_fid(real, fake), rel=1e-6)
    assert result["kid_mean"] == pytest.approx(reference_kid(real, fake), rel=1e-6)
    assert result["kid_std"] == pytest.approx(0.0, abs=1e-12)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift(garments):
    features = TinyFeatures()
    same = fid_kid(garments, garments, feature_extractor=features)
    small = fid_kid(garments, [brighter(image, -30) for image in garments], feature_extractor=features)
    large = fid_kid(garments, [brighter(image, -80) for image in garments], feature_extractor=features)
    assert abs(same["fid"]) < 1e-6
    assert small["fid"] > 100 * max(abs(same["fid"]), 1e-6)
    assert large["fid"] > 2 * small["fid"]
    # KID of a set with itself is slightly negative, not 0: the unbiased MMD estimator assumes independent
    # sets, and identical ones bias it by about -(mean k(x, x) - mean k(x, y)) * 2 / m. Small next to a shift.
    assert abs(same["kid_mean"]) < 0.2 * small["kid_mean"]
    assert large["kid_mean"] > 2 * small["kid_mean"]


def test_kid_is_reproducible_and_subset_size_adapts(garments):
    features = TinyFeatures()
    real, fake = garments[:10], [brighter(image, -40) for image in garments[10:17]]
    with torch.random.fork_rng(devices=[]):  # KID's subsets must not follow the global generator
        torch.manual_seed(1)
        first = fid_kid(real, fake, feature_extractor=features)
        torch.manual_seed(2)
        assert first == fid_kid(real, fake, feature_extractor=features)
    assert first["kid_std"] > 0  # subsets of 7 out of 10 real images differ
    assert kid_subset_size(10, 7) == 7 and kid_subset_size(5000, 3000) == 1000


def test_features_are_computed_per_image_whatever_the_batching(garments):
    features = TinyFeatures()
    mixed = garments[:3] + [garments[3].resize((96, 96))] + garments[4:6]  # a size change splits a batch
    batched = inception_features(mixed, features, batch_size=4)
    single = torch.cat([inception_features([image], features) for image in mixed])
    assert batched.shape == (6, 32) and batched.dtype == torch.float64
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)


def test_fid_needs_two_images_per_set(garments):
    with pytest.raises(ValueError, match="at least 2 real and 2 generated images, got 1 and 3"):
        fid_kid(garments[:1], garments[:3], feature_extractor=TinyFeatures())
    with pytest.raises(ValueError, match="kid_subset_size must be between 2 and"):
        fid_kid(garments[:4], garments[:3], feature_extractor=TinyFeatures(), kid_subset_size=4)


def test_without_weights_fid_is_unavailable_at_once_with_the_flag_to_pass(garments, empty_torch_home):
    start = time.monotonic()
    with pytest.raises(MetricUnavailable) as caught:
        fid_kid(garments[:2], garments[2:4])
    assert time.monotonic() - start < 5
    message = str(caught.value)
    assert "\n" not in message and "--inception-weights" in message and str(empty_torch_home) in message
    with pytest.raises(MetricUnavailable, match="nowhere.pth does not exist.*--inception-weights"):
        fid_kid(garments[:2], garments[2:4], weights_path=Path("nowhere.pth"))


def test_cached_inception_weights_are_found_without_a_flag(empty_torch_home):
    cached = empty_torch_home / "hub" / "checkpoints" / TORCH_FIDELITY_INCEPTION
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert find_inception_weights() == cached


def test_weights_file_gives_torchmetrics_own_inception(random_inception_weights, garments):
    from torchmetrics.image.fid import NoTrainInceptionV3

    network = load_inception(random_inception_weights)
    # torchmetrics' default extractor, built by its own (unpickling) loader from the same file
    reference = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                   feature_extractor_weights_path=str(random_inception_weights))
    assert type(network) is type(reference) and network.features_list == ["2048"]
    ours, theirs = network.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[key], theirs[key]) for key in ours)
    # Inception at 299 px is the slow part of this file: two images, eight forward passes in all.
    images = garments[:2]
    features = inception_features(images, network)
    assert features.shape == (2, 2048) and torch.isfinite(features).all() and features.abs().mean() > 0.01
    shifted = fid_kid_from_features(features, inception_features([brighter(image, -60) for image in images], network))
    same = fid_kid(images, images, weights_path=random_inception_weights)  # the route a user's flag takes
    assert shifted["fid"] > 0 and abs(same["fid"]) < 1e-4 * shifted["fid"]


class _Touch:
    """A pickle that creates a file when unpickled: stands for arbitrary code in an untrusted weights file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_weights_files_are_never_unpickled(tmp_path):
    marker, hostile = tmp_path / "code-ran", tmp_path / "hostile.pth"
    hostile.write_bytes(pickle.dumps({"Conv2d_1a_3x3.conv.weight": _Touch(marker)}, protocol=2))
    with pytest.raises(MetricUnavailable, match="not a readable weights-only state dict"):
        load_inception(hostile)
    assert not marker.exists()
    wrong = tmp_path / "wrong.pth"
    torch.save({"layer.weight": torch.zeros(2)}, wrong)
    with pytest.raises(MetricUnavailable, match="is not an Inception-v3 FID weights file"):
        load_inception(wrong)


# ------------------------------------------------------------------------------------------ CLIP score


TEXTS = ["a red dress", "blue striped trousers with a long description of the fabric and the cut",
         "a black t-shirt", "green shorts", "a yellow skirt", "a white tank top", "pink polka-dot dress"]


def reference_clip_scores(folder: Path, images: list[Image.Image], texts: list[str]) -> list[float]:
    """CLIP's own similarity head: logits_per_image = exp(logit_scale) * cos, so cos = diagonal / exp(scale)."""
    model, processor = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        output = model(**inputs)
    cosine = output.logits_per_image.diagonal() / model.logit_scale.exp()
    return (100 * cosine).clamp(min=0).tolist()


def test_clip_scores_match_clips_own_similarity(tiny_clip_folder):
    images = [garment(index) for index in range(len(TEXTS))]
    scores = clip_scores(images, TEXTS, load_clip(tiny_clip_folder))
    expected = reference_clip_scores(tiny_clip_folder, images, TEXTS)
    assert scores == pytest.approx(expected, abs=1e-4)
    assert all(score > 1 for score in scores)


def test_clip_score_is_clamped_at_zero(tiny_clip_folder):
    images, clip = [garment(index) for index in range(3)], load_clip(tiny_clip_folder)
    assert all(score > 1 for score in clip_scores(images, TEXTS[:3], clip))
    with torch.no_grad():
        clip.model.text_projection.weight.neg_()  # every cosine changes sign
    assert clip_scores(images, TEXTS[:3], clip) == [0.0, 0.0, 0.0]


def test_clip_scores_do_not_depend_on_batching(tiny_clip_folder):
    images, clip = [garment(index) for index in range(len(TEXTS))], load_clip(tiny_clip_folder)
    assert clip_scores(images, TEXTS, clip, batch_size=1) == pytest.approx(clip_scores(images, TEXTS, clip), abs=1e-5)


def test_clip_truncates_long_texts_and_needs_one_text_per_image(tiny_clip_folder):
    clip = load_clip(tiny_clip_folder)
    long_text = " ".join(["a very long red dress with many details"] * 30)  # about 250 tokens
    [score] = clip_scores([garment(0)], [long_text], clip)
    assert 0 <= score <= 100
    with pytest.raises(ValueError, match="one text per image"):
        clip_scores([garment(0)], ["a", "b"], clip)


def test_clip_not_available_locally_is_unavailable_at_once(tmp_path):
    start = time.monotonic()
    with pytest.raises(MetricUnavailable) as caught:
        load_clip("openai/clip-vit-base-patch16", cache_dir=tmp_path / "empty-cache")
    assert time.monotonic() - start < 10
    assert "\n" not in str(caught.value) and "--clip-model" in str(caught.value)
    with pytest.raises(MetricUnavailable, match="--clip-model"):
        load_clip(tmp_path / "no-such-folder")


# ------------------------------------------------------------------------------------------ SSIM


def reference_ssim(a: Image.Image, b: Image.Image) -> float:
    return structural_similarity(np.asarray(a) / 255.0, np.asarray(b) / 255.0, channel_axis=2, gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False, data_range=1.0)


def noise(size: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize("pair", ["random", "noisy garment", "brighter garment", "other garment", "same garment"])
def test_ssim_agrees_with_scikit_image(pair):
    image = garment(1, size=96)
    first, second = {"random": (noise(96, 0), noise(96, 1)),
                     "noisy garment": (image, Image.blend(image, noise(96, 2), 0.2)),
                     "brighter garment": (image, brighter(image, 25)), "other garment": (image, garment(2, size=96)),
                     "same garment": (image, image)}[pair]
    assert ssim(first, second) == pytest.approx(reference_ssim(first, second), abs=1e-3)


def test_ssim_orders_degradations_and_rejects_mismatched_sizes():
    image = garment(3, size=96)
    assert ssim(image, image) == pytest.approx(1.0, abs=1e-9)
    assert ssim(image, Image.blend(image, noise(96, 0), 0.1)) > ssim(image, Image.blend(image, noise(96, 0), 0.4))
    with pytest.raises(ValueError, match="same size"):
        ssim(image, garment(3, size=64))


# ------------------------------------------------------------------------------------------ sketch similarity


def test_sketch_mse_is_zero_for_the_images_own_sketch_and_one_for_blank_against_full():
    image = garment(4)
    assert sketch_mse(image, extract_sketch(image)) == 0.0
    canny = SketchConfig(method="canny")
    assert sketch_mse(image, extract_sketch(image, canny), canny) == 0.0
    assert sketch_mse(image, extract_sketch(image, canny)) > 0  # the config must be the dataset's
    assert sketch_mse(Image.new("RGB", (64, 64), "white"), blank(value=0)) == 1.0
    assert sketch_pixel_mse(blank(value=255), blank(value=0)) == 1.0


def test_sketch_mse_grows_with_a_shift_and_resizes_a_generated_image():
    image = garment(4, size=128)
    sketch = np.asarray(extract_sketch(image))
    shifted = [Image.fromarray(np.pad(sketch, ((0, 0), (shift, 0)), constant_values=255)[:, :128]) for shift in (1, 4)]
    assert 0 < sketch_mse(image, shifted[0]) < sketch_mse(image, shifted[1])
    # a generated image at twice the input sketch's size is compared at the sketch's size
    small_sketch = extract_sketch(image.resize((64, 64), Image.Resampling.LANCZOS))
    assert sketch_mse(image, small_sketch) < 0.02 < sketch_mse(garment(5), small_sketch)


def lines_sketch(rows: list[int], size: int = 96) -> Image.Image:
    """Horizontal 1-px lines across a white page at the given rows."""
    page = np.full((size, size), 255, np.uint8)
    page[rows, 8:-8] = 0
    return Image.fromarray(page)


ROWS = list(range(8, 88, 8))  # ten lines, 8 px apart: farther than the tolerance


def test_edge_prf_counts_missing_and_invented_lines():
    full = lines_sketch(ROWS)
    assert edge_prf(full, full) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    half = edge_prf(lines_sketch(ROWS[::2]), full)
    assert half["precision"] == 1.0 and half["recall"] == pytest.approx(0.5) and half["f1"] == pytest.approx(2 / 3)
    invented = edge_prf(lines_sketch(ROWS + [row + 4 for row in ROWS[:5]]), full)  # 4 px off every line
    assert invented["recall"] == 1.0 and invented["precision"] == pytest.approx(10 / 15)


def test_edge_prf_tolerance_absorbs_a_one_pixel_shift():
    sketch = np.asarray(extract_sketch(garment(6, size=96)))
    moved = Image.fromarray(np.pad(sketch, ((1, 0), (1, 0)), constant_values=255)[:96, :96])  # diagonal: 1.41 px
    assert edge_prf(moved, Image.fromarray(sketch), tolerance=2) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert edge_prf(lines_sketch([row + 1 for row in ROWS]), lines_sketch(ROWS), tolerance=0)["f1"] == 0.0
    assert edge_prf(lines_sketch([row + 1 for row in ROWS]), lines_sketch(ROWS), tolerance=1)["f1"] == 1.0


def test_edge_prf_empty_cases():
    full = lines_sketch(ROWS)
    assert edge_prf(blank(96), blank(96)) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    # A blank image follows no sketch: no column may reward it (a blank precision of 1 would top the table).
    assert edge_prf(blank(96), full) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert edge_prf(full, blank(96)) == {"precision": 0.0, "recall": 1.0, "f1": 0.0}


def brute_force_prf(drawn: np.ndarray, target: np.ndarray, tolerance: float) -> tuple[float, float]:
    a, b = np.argwhere(drawn), np.argwhere(target)
    distances = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return float((distances.min(1) <= tolerance).mean()), float((distances.min(0) <= tolerance).mean())


@pytest.mark.parametrize("seed", range(3))
def test_edge_prf_agrees_with_brute_force_distances(seed):
    rng = np.random.default_rng(seed)
    drawn, target = rng.random((40, 40)) < 0.03, rng.random((40, 40)) < 0.05
    for tolerance in (0, 1, 2, 3):
        result = edge_prf(Image.fromarray(np.where(drawn, 0, 255).astype(np.uint8)),
                          Image.fromarray(np.where(target, 0, 255).astype(np.uint8)), tolerance)
        precision, recall = brute_force_prf(drawn, target, tolerance)
        assert (result["precision"], result["recall"]) == pytest.approx((precision, recall), abs=1e-12)
        inverted = edge_prf(Image.fromarray(np.where(drawn, 255, 0).astype(np.uint8)),
                            Image.fromarray(np.where(target, 255, 0).astype(np.uint8)), tolerance, invert=True)
        assert inverted == result


def test_chamfer_is_zero_for_identical_sketches_symmetric_and_grows_with_a_shift():
    sketch = np.asarray(extract_sketch(garment(6, size=96)))
    assert chamfer_distance(Image.fromarray(sketch), Image.fromarray(sketch)) == 0.0
    shifted = [Image.fromarray(np.pad(sketch, ((0, 0), (shift, 0)), constant_values=255)[:, :96])
               for shift in (1, 3, 9)]
    distances = [chamfer_distance(moved, Image.fromarray(sketch)) for moved in shifted]
    assert 0 < distances[0] < distances[1] < distances[2] < 9 / math.hypot(96, 96)
    assert chamfer_distance(Image.fromarray(sketch), shifted[1]) == distances[1]  # symmetric
    # ten 1-px lines moved down by 2 px: every pixel of either sketch is exactly 2 px from the other's lines
    assert chamfer_distance(lines_sketch([row + 2 for row in ROWS]), lines_sketch(ROWS)) == \
        pytest.approx(2 / math.hypot(96, 96))


def test_chamfer_does_not_depend_on_resolution():
    small, large = lines_sketch([20, 60], size=96), lines_sketch([20 * 4, 60 * 4], size=96 * 4)
    moved_small, moved_large = lines_sketch([23, 63], size=96), lines_sketch([23 * 4, 63 * 4], size=96 * 4)
    # the lines' ends differ by a pixel or so between the scales, hence the tolerance
    assert chamfer_distance(moved_small, small) == pytest.approx(chamfer_distance(moved_large, large), rel=0.05)


def test_chamfer_empty_cases():
    full = lines_sketch(ROWS)
    assert chamfer_distance(blank(96), blank(96)) == 0.0
    assert chamfer_distance(blank(96), full) == chamfer_distance(full, blank(96)) == 1.0
    corner, opposite = np.full((96, 96), 255, np.uint8), np.full((96, 96), 255, np.uint8)
    corner[0, 0], opposite[-1, -1] = 0, 0  # the farthest apart two drawings can be: still better than a blank
    assert 0.95 < chamfer_distance(Image.fromarray(corner), Image.fromarray(opposite)) < 1.0
    with pytest.raises(ValueError, match="same size"):
        chamfer_distance(full, blank(64))


@pytest.mark.parametrize("seed", range(2))
def test_chamfer_agrees_with_brute_force_distances(seed):
    rng = np.random.default_rng(seed)
    drawn, target = rng.random((40, 30)) < 0.03, rng.random((40, 30)) < 0.05
    a, b = np.argwhere(drawn), np.argwhere(target)
    distances = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    expected = (distances.min(1).mean() + distances.min(0).mean()) / (2 * math.hypot(40, 30))
    result = chamfer_distance(Image.fromarray(np.where(drawn, 0, 255).astype(np.uint8)),
                              Image.fromarray(np.where(target, 0, 255).astype(np.uint8)))
    assert result == pytest.approx(expected, abs=1e-6)
    assert chamfer_distance(Image.fromarray(np.where(drawn, 255, 0).astype(np.uint8)),
                            Image.fromarray(np.where(target, 255, 0).astype(np.uint8)), invert=True) == result


# ------------------------------------------------------------------------------------------ attributes


def test_garment_mask_is_the_rendered_garment_even_when_white():
    for image in (garment(7, colors=["white"]), garment(8, colors=["black"], patterns=["dots"])):
        truth = (np.asarray(image) < 255).any(axis=2)  # the renderer keeps the background pure white
        mask = garment_mask(image)
        assert (mask & truth).sum() / (mask | truth).sum() > 0.97
    specks = np.asarray(garment(7)).copy()
    specks[2:4, 2:4] = 0  # a stray mark in the corner is not garment
    assert not garment_mask(Image.fromarray(specks))[2:4, 2:4].any()


def test_silhouette_iou_is_high_for_the_own_sketch_and_lower_for_another_category():
    own, other = [], []
    for index in range(12):
        image = garment(index)
        category = sample_spec(np.random.default_rng([5, index])).category
        different = garment(100 + index, categories=[name for name in CATEGORIES if name != category])
        own.append(silhouette_iou(image, extract_sketch(image)))
        other.append(silhouette_iou(image, extract_sketch(different)))
    assert min(own) > 0.9, own
    assert all(o < s for o, s in zip(other, own)) and np.mean(other) < np.mean(own) - 0.2, other
    assert silhouette_iou(Image.new("RGB", (64, 64), "white"), blank()) == 1.0


def test_every_palette_colour_is_recovered_from_solid_garments():
    images, names = [], []
    for color in PALETTE:
        for index in range(3):
            images.append(garment(index, colors=[color], patterns=["solid"]))
            names.append(color)
    assert color_accuracy(images, names) == 1.0
    assert color_accuracy(images, names[3:] + names[:3]) == 0.0  # every label one colour off: all caught
    assert predicted_color(Image.new("RGB", (64, 64), "white")) is None  # no garment: a miss, not a crash
    assert color_accuracy([images[0], Image.new("RGB", (64, 64), "white")], ["black", "black"]) == 0.5


@pytest.mark.parametrize("pattern", [name for name in PATTERNS if name != "solid"])
def test_main_colour_is_recovered_from_patterned_garments(pattern):
    names = [color for color in PALETTE for _ in range(2)]
    images = [garment(index, colors=[color], patterns=[pattern]) for index, color in enumerate(names)]
    accuracy = color_accuracy(images, names)
    assert accuracy >= 0.9, f"{pattern}: {accuracy:.2f}"


def test_palette_colours_map_to_their_own_names():
    for name, rgb in PALETTE.items():
        assert nearest_palette_color(rgb) == name
        assert nearest_palette_color(tuple(int(np.clip(c + 12, 0, 255)) for c in rgb)) == name
    assert nearest_palette_color((255, 255, 255)) == "white"


def test_dominant_colour_is_the_most_common_not_a_channel_mix():
    # 45 % red, 30 % blue, 25 % yellow: the per-channel median is (200, 110, 45), an orange that is not there
    stripes = [PALETTE["red"]] * 9 + [PALETTE["blue"]] * 6 + [PALETTE["yellow"]] * 5
    image = Image.fromarray(np.repeat(np.array(stripes, np.uint8)[:, None, :], 20, axis=1).repeat(3, axis=0))
    mask = np.ones((60, 20), bool)
    assert nearest_palette_color(tuple(np.median(np.asarray(image)[mask], axis=0))) != "red"
    assert dominant_color(image, mask) == PALETTE["red"]
    assert predicted_color(garment(9, colors=["navy"], patterns=["checks"])) == "navy"
