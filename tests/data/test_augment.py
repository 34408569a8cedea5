"""Sketch-style augmentation: varied, valid sketches of the same garment, a pure function of the seed."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fashionsd_x.data.augment import SketchAugment, augment_sample, outline, silhouette
from fashionsd_x.data.conditioning import control_image
from fashionsd_x.data.sketch import extract_sketch
from fashionsd_x.data.synth import GarmentSpec, render_garment


@pytest.fixture(scope="module")
def garment() -> tuple[np.ndarray, np.ndarray]:
    """(sketch, photo) of a dotted dress at 128 px, as a dataset row holds them."""
    spec = GarmentSpec(category="dress", color="red", pattern="dots", pattern_color="white", width=0.5, length=0.6,
                       flare=0.5, neckline=0.5, sleeve_length=0.3)
    photo = render_garment(spec, 128)
    return np.asarray(extract_sketch(photo)), np.asarray(photo)


def styles(garment, augment: SketchAugment, seeds=range(12)) -> list[np.ndarray]:
    sketch, photo = garment
    return [augment_sample(sketch, photo, augment, np.random.default_rng(seed))[0] for seed in seeds]


def test_augmentation_is_a_pure_function_of_the_seed(garment):
    augment = SketchAugment(probability=1.0)
    first, again, other = styles(garment, augment), styles(garment, augment), styles(garment, augment, range(12, 24))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_restyled_sketches_differ_and_stay_on_the_garment(garment):
    sketch, photo = garment
    region = silhouette(photo)
    drawn = styles(garment, SketchAugment(probability=1.0, scale_range=(1.0, 1.0)))
    assert len({item.tobytes() for item in drawn}) == len(drawn)  # twelve different drawings
    for item in drawn:
        assert item.shape == sketch.shape and item.dtype == np.uint8
        ink = control_image(item, 128)[0].numpy() < 0.5  # every style survives normalisation
        grown = np.asarray(Image.fromarray(region.astype(np.uint8) * 255).resize((128, 128))) > 0
        assert ink.any() and (ink & ~_dilate(grown, 6)).mean() < 0.01  # lines stay on and around the garment


def test_outline_only_drops_the_print(garment):
    sketch, photo = garment
    only = SketchAugment(probability=1.0, outline_probability=1.0, extractor_probability=0.0, stroke_probability=0.0,
                         wobble_probability=0.0, gap_probability=0.0, pencil_probability=0.0)
    drawn = augment_sample(sketch, photo, only, np.random.default_rng(0))[0] < 128
    assert np.array_equal(drawn, outline(silhouette(photo)))
    assert drawn.sum() < 0.5 * (sketch < 128).sum()  # the dots of the print are gone


def test_pencil_style_is_grey_on_off_white(garment):
    sketch, photo = garment
    pencil = SketchAugment(probability=1.0, pencil_probability=1.0, outline_probability=0.0, extractor_probability=0.0)
    drawn = augment_sample(sketch, photo, pencil, np.random.default_rng(1))[0]
    assert drawn.min() > 40 and np.median(drawn) < 252  # grey lines, paper not pure white


def test_moving_the_garment_moves_photo_and_sketch_together(garment):
    sketch, photo = garment
    move = SketchAugment(probability=0.0, scale_range=(0.6, 0.6), shift=0.1)
    moved_sketch, moved_photo = augment_sample(sketch, photo, move, np.random.default_rng(3))
    assert silhouette(moved_photo).sum() < 0.5 * silhouette(photo).sum()
    lines = moved_sketch < 128
    assert (lines & ~_dilate(silhouette(moved_photo), 2)).mean() < 0.002


def test_turning_the_garment_turns_photo_and_sketch_together(garment):
    sketch, photo = garment
    turn = SketchAugment(probability=0.0, rotation=20.0)
    turned = [augment_sample(sketch, photo, turn, np.random.default_rng(seed)) for seed in range(4)]
    for turned_sketch, turned_photo in turned:
        assert (turned_sketch < 128).sum() > 0.5 * (sketch < 128).sum()
        assert ((turned_sketch < 128) & ~_dilate(silhouette(turned_photo), 2)).mean() < 0.002
    # Turned, not only moved: the silhouette is no longer the upright one, and each seed turns it its own way.
    assert all(not np.array_equal(silhouette(one), silhouette(photo)) for _, one in turned)
    assert len({silhouette(one).tobytes() for _, one in turned}) == 4


def test_page_elements_appear_around_the_garment_whose_lines_stay_dark(garment):
    sketch, photo = garment
    outside = ~_dilate(silhouette(photo), 3)
    for restyle in ({"probability": 0.0}, {"probability": 1.0, "pencil_probability": 1.0}):  # black, grey lines
        plain, paged = (styles(garment, SketchAugment(**restyle, page_probability=chance)) for chance in (0.0, 1.0))
        for before, after in zip(plain, paged):
            assert after.shape == sketch.shape and after.dtype == np.uint8
            assert ((after != before) & outside).sum() > 20  # printing, notes or a figure on the page
            lines = before < 128
            assert np.array_equal(after[lines], before[lines])  # the garment's line wins where they cross


def test_each_element_kind_looks_like_itself(garment):
    sketch, photo = garment
    region = silhouette(photo)
    kinds = ("printing_probability", "notes_probability", "figure_probability")
    printed, noted, figured = (styles(garment, SketchAugment(probability=0.0, page_probability=1.0,
                                                             **{name: float(name == kind) for name in kinds}))
                               for kind in kinds)
    for page in printed:  # across the whole sheet, under the garment too, lighter than the garment's black
        marks = page < 250
        assert marks[:32].any() and marks[-32:].any() and marks[:, :32].any() and marks[:, -32:].any()
        assert (marks & region & (sketch >= 128)).any() and page[(sketch >= 128) & marks].min() >= 100
    for page in noted:  # words off the garment, a leader line into it
        assert ((page < 250) & ~_dilate(region, 3)).sum() > 10 and ((page < 250) & region & (sketch >= 128)).any()
    drawn = [(page != sketch) for page in figured]
    assert sum(changed.sum() > 20 for changed in drawn) >= 9  # a figure shows on most pages
    assert not any((changed & region).any() for changed in drawn)  # and never inside the garment


def test_pages_are_a_pure_function_of_the_seed_and_leave_the_restyling_alone(garment):
    sketch, photo = garment
    paged = SketchAugment(probability=0.8, page_probability=1.0)
    first, again = styles(garment, paged), styles(garment, paged)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert len({item.tobytes() for item in first}) == len(first)
    assert SketchAugment(page_probability=0.0) == SketchAugment()  # off by default: saved runs are unchanged
    for seed in range(12):  # the page draws nothing from the caller's generator, so no restyling can change
        without, with_page = np.random.default_rng(seed), np.random.default_rng(seed)
        augment_sample(sketch, photo, SketchAugment(probability=0.8), without)
        augment_sample(sketch, photo, paged, with_page)
        assert without.random() == with_page.random()


def test_settings_are_checked():
    assert SketchAugment.from_dict(SketchAugment().to_dict()) == SketchAugment()
    with pytest.raises(ValueError, match="probability"):
        SketchAugment(probability=1.5)
    with pytest.raises(ValueError, match="extractors"):
        SketchAugment(extractors=("sobel",))
    with pytest.raises(ValueError, match="unknown"):
        SketchAugment.from_dict({"wobbel_probability": 0.1})
    with pytest.raises(ValueError, match="page_probability"):
        SketchAugment(page_probability=1.2)
    with pytest.raises(ValueError, match="figure_probability"):
        SketchAugment(figure_probability=-0.1)
    with pytest.raises(ValueError, match="printing_probability, notes_probability or figure_probability"):
        SketchAugment(page_probability=0.3, printing_probability=0.0, notes_probability=0.0, figure_probability=0.0)
    paged = SketchAugment(page_probability=0.3, notes_probability=0.2)
    assert SketchAugment.from_dict(paged.to_dict()) == paged
    assert SketchAugment(shift=0.1).moves_garment() and not SketchAugment().moves_garment()


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    import cv2

    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
