"""The synthetic catalogue: reproducible, self-describing, and garments that survive a 64 px downscale."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashionsd_x import limits
from fashionsd_x.data import synth
from fashionsd_x.data.synth import (CATEGORIES, PALETTE, PATTERNS, GarmentSpec, caption, render_garment, sample_spec,
                                    synthesize)
from tests.test_cli import run_main

SYNONYMS = {"t-shirt": ("t-shirt", "tee"), "long-sleeve top": ("long-sleeve top", "long-sleeved top", "top with long sleeves"),
            "tank top": ("tank", "sleeveless top"), "dress": ("dress",), "skirt": ("skirt",),
            "trousers": ("trousers", "pants"), "shorts": ("shorts",)}
PATTERN_WORDS = {"stripes": r"stripe", "dots": r"dot|spotted", "checks": r"check"}
SHAPE_FIELDS = ("width", "length", "flare", "neckline", "sleeve_length")


def spec_for(category: str, color: str = "red", pattern: str = "solid", pattern_color: str = "", **shape: float) -> GarmentSpec:
    """A valid spec with mid-range shape values; SHAPE overrides them."""
    values = {"width": 0.5, "length": 0.5, "flare": 0.5 if category in ("dress", "skirt", "trousers", "shorts") else 0.0,
              "neckline": 0.5 if category in ("t-shirt", "long-sleeve top", "tank top", "dress") else 0.0,
              "sleeve_length": {"t-shirt": 0.3, "long-sleeve top": 0.9}.get(category, 0.0)}
    values.update(shape)
    return GarmentSpec(category, color, pattern, pattern_color, **values)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def garment_mask(image: Image.Image) -> np.ndarray:
    return (np.asarray(image) < 255).any(axis=2)


def runs(row: np.ndarray) -> int:
    """Number of separate garment stretches in one mask row."""
    return int((np.diff(np.r_[0, row.astype(int), 0]) == 1).sum())


def row_width(mask: np.ndarray, y: int) -> int:
    xs = np.nonzero(mask[y])[0]
    return int(xs.max() - xs.min() + 1) if xs.size else 0


def vertical_extent(mask: np.ndarray) -> tuple[int, int]:
    ys = np.nonzero(mask.any(axis=1))[0]
    return int(ys.min()), int(ys.max() - ys.min() + 1)


def nearest_palette_name(rgb: np.ndarray) -> str:
    names = list(PALETTE)
    return names[int(np.linalg.norm(np.array([PALETTE[n] for n in names]) - rgb, axis=1).argmin())]


def read_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


# --- reproducibility --------------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(tmp_path):
    first = folder_bytes(synthesize(tmp_path / "a", 4, seed=3, size=64))
    second = folder_bytes(synthesize(tmp_path / "b", 4, seed=3, size=64))
    assert len(first) == 5  # four images and the metadata
    assert first == second


def test_different_seeds_give_different_garments(tmp_path):
    first = folder_bytes(synthesize(tmp_path / "a", 4, seed=3, size=64))
    second = folder_bytes(synthesize(tmp_path / "b", 4, seed=4, size=64))
    assert first.keys() == second.keys()
    assert all(first[name] != second[name] for name in first)


def test_an_item_depends_only_on_seed_and_index(tmp_path):
    three = synthesize(tmp_path / "three", 3, seed=7, size=64)
    five = synthesize(tmp_path / "five", 5, seed=7, size=64)
    tail = synthesize(tmp_path / "tail", 2, seed=7, size=64, start=3)
    assert read_rows(five)[:3] == read_rows(three)
    assert read_rows(five)[3:] == read_rows(tail)
    for index in range(5):
        name = f"images/synth_{index:06d}.png"
        expected = (three if index < 3 else tail) / name
        assert (five / name).read_bytes() == expected.read_bytes()


def test_render_seed_moves_creases_not_the_silhouette():
    spec = spec_for("dress", "blue", "stripes", "white")
    first, again, other = render_garment(spec, 128, 1), render_garment(spec, 128, 1), render_garment(spec, 128, 2)
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))
    assert np.array_equal(garment_mask(first), garment_mask(other))


# --- the folder on disk -----------------------------------------------------------------------------------


def test_metadata_rows_describe_their_images(tmp_path):
    out = synthesize(tmp_path / "synth", 6, seed=1, size=64, start=40)
    assert out == tmp_path / "synth"
    rows = read_rows(out)
    assert [row["file_name"] for row in rows] == [f"images/synth_{i:06d}.png" for i in range(40, 46)]
    for row in rows:
        assert isinstance(row["text"], str) and re.search(rf"\b{row['color']}\b", row["text"])
        assert row["category"] in CATEGORIES and row["pattern"] in PATTERNS
        assert row["color_rgb"] == list(PALETTE[row["color"]])
        assert all(isinstance(row[name], float) and 0.0 <= row[name] <= 1.0 for name in SHAPE_FIELDS)
        with Image.open(out / row["file_name"]) as image:
            assert image.mode == "RGB" and image.size == (64, 64)
            saved = pixels(image)
        # A row is enough to redraw its image: the artifact describes itself.
        spec = GarmentSpec(**{field.name: row[field.name] for field in dataclasses.fields(GarmentSpec)})
        assert np.array_equal(pixels(render_garment(spec, 64, row["render_seed"])), saved)


def test_metadata_lists_exactly_the_last_call_and_leaves_no_temporary_files(tmp_path):
    synthesize(tmp_path, 5, seed=0, size=32)
    synthesize(tmp_path, 2, seed=0, size=32, start=10)
    assert sorted(path.name for path in tmp_path.rglob("*") if path.is_file()) == [
        "metadata.jsonl", "synth_000010.png", "synth_000011.png"]
    assert len(read_rows(tmp_path)) == 2


def test_interrupted_run_leaves_no_metadata(tmp_path, monkeypatch):
    synthesize(tmp_path, 3, seed=0, size=32)
    saved = []

    def save_then_fail(image, path):
        if saved:
            raise OSError("disk full")
        saved.append(path)
        image.save(path, format="PNG")

    monkeypatch.setattr(synth, "_save_png", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        synthesize(tmp_path, 3, seed=1, size=32)
    assert not (tmp_path / "metadata.jsonl").exists()


# --- sampling ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("argument", "names", "field"), [("categories", CATEGORIES, "category"),
                                                         ("colors", tuple(PALETTE), "color"),
                                                         ("patterns", PATTERNS, "pattern")])
def test_filters_reach_every_name(argument, names, field):
    rng = np.random.default_rng(0)
    for name in names:
        assert {getattr(sample_spec(rng, **{argument: [name]}), field) for _ in range(5)} == {name}
    unfiltered = {getattr(sample_spec(rng), field) for _ in range(400)}
    assert unfiltered == set(names)


def test_synthesize_applies_filters(tmp_path):
    rows = read_rows(synthesize(tmp_path, 6, size=32, categories=["skirt", "shorts"], colors=["navy"], patterns=["dots"]))
    assert {row["category"] for row in rows} <= {"skirt", "shorts"}
    assert {(row["color"], row["pattern"]) for row in rows} == {("navy", "dots")}


def test_palette_has_the_required_well_separated_colours():
    required = {"black", "white", "grey", "red", "orange", "yellow", "green", "blue", "navy", "purple", "pink", "brown", "beige"}
    assert required <= set(PALETTE)
    for first, second in itertools.combinations(PALETTE, 2):
        assert np.linalg.norm(np.subtract(PALETTE[first], PALETTE[second])) > 75, (first, second)


def test_sampled_specs_keep_shape_fields_meaningful():
    rng = np.random.default_rng(1)
    for _ in range(300):
        spec = sample_spec(rng)
        if spec.category in ("skirt", "trousers", "shorts"):
            assert spec.neckline == 0.0 and spec.sleeve_length == 0.0
        if spec.category in ("t-shirt", "long-sleeve top", "tank top"):
            assert spec.flare == 0.0
        if spec.pattern != "solid":
            assert spec.pattern_color in PALETTE and spec.pattern_color != spec.color


# --- captions ---------------------------------------------------------------------------------------------


def test_caption_names_colour_category_and_pattern():
    rng = np.random.default_rng(2)
    for _ in range(400):
        spec = sample_spec(rng)
        text = caption(spec, rng)
        assert re.search(rf"\b{spec.color}\b", text), text
        assert any(word in text for word in SYNONYMS[spec.category]), text
        for pattern, words in PATTERN_WORDS.items():
            assert bool(re.search(words, text)) == (pattern == spec.pattern), text
        assert not re.search(r"\ba [aeiou]", text), text


def test_captions_vary_in_wording():
    spec = spec_for("dress", "navy", "dots", "white")
    rng = np.random.default_rng(3)
    assert len({caption(spec, rng) for _ in range(60)}) >= 10


# --- rendering --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("extreme", [0.0, 1.0])
def test_flat_lay_is_centred_uncropped_on_pure_white(category, extreme):
    sleeves = {"t-shirt": (0.15, 0.4), "long-sleeve top": (0.75, 1.0), "dress": (0.0, 1.0)}.get(category, (0.0, 0.0))
    shape = {"width": extreme, "length": extreme, "sleeve_length": sleeves[int(extreme)]}
    if category in ("dress", "skirt", "trousers", "shorts"):
        shape["flare"] = extreme
    spec = dataclasses.replace(spec_for(category, "white", "checks", "black"), pose=extreme, **shape)
    for size in (64, 256):
        image = pixels(render_garment(spec, size))
        mask = garment_mask(render_garment(spec, size))
        border = np.ones_like(mask)
        border[2:-2, 2:-2] = False
        assert (image[border] == 255).all()
        ys, xs = np.nonzero(mask)
        assert max(np.ptp(ys), np.ptp(xs)) + 1 >= 0.8 * size  # fills most of the frame
        assert abs((ys.min() + ys.max()) / 2 - (size - 1) / 2) <= 2 and abs((xs.min() + xs.max()) / 2 - (size - 1) / 2) <= 2


def test_scale_and_position_move_the_garment_without_cropping_it():
    spec = spec_for("dress")
    size = 128
    standard = garment_mask(render_garment(spec, size))
    small = garment_mask(render_garment(dataclasses.replace(spec, scale=0.5), size))
    corner = garment_mask(render_garment(dataclasses.replace(spec, scale=0.5, position_x=0.0, position_y=1.0), size))
    assert 0.2 < small.sum() / standard.sum() < 0.3  # half the side: a quarter of the area
    ys, xs = np.nonzero(corner)
    assert xs.min() <= 1 and ys.max() >= size - 2  # pushed to the bottom-left edge ...
    border = np.ones_like(corner)
    border[1:-1, 1:-1] = False
    assert corner[border].sum() < 0.25 * corner[border].size  # ... touching it, never cut off by it
    assert abs(corner.sum() - small.sum()) <= 0.02 * small.sum()


def test_varied_framing_changes_only_size_and_place(tmp_path):
    centred = read_rows(synthesize(tmp_path / "centred", num=6, seed=4, size=32))
    varied = read_rows(synthesize(tmp_path / "varied", num=6, seed=4, size=32, framing="varied"))
    framing = ("scale", "position_x", "position_y")
    for plain, moved in zip(centred, varied):
        assert (plain["scale"], plain["position_x"], plain["position_y"]) == (1.0, 0.5, 0.5)
        assert {k: v for k, v in plain.items() if k not in framing} == {k: v for k, v in moved.items() if k not in framing}
        assert 0.55 <= moved["scale"] <= 1.0
    assert len({row["scale"] for row in varied}) == 6


@pytest.mark.parametrize("pattern", PATTERNS)
def test_dominant_colour_at_64px_is_the_palette_colour(pattern):
    for color in PALETTE:
        for seed in range(3):
            rng = np.random.default_rng([seed, 100])
            spec = sample_spec(rng, colors=[color], patterns=[pattern])
            image = pixels(render_garment(spec, 64, seed)).reshape(-1, 3)
            garment = image[(image < 255).any(axis=1)]
            assert nearest_palette_name(np.median(garment, axis=0)) == color, spec


@pytest.mark.parametrize("pattern", ["stripes", "dots", "checks"])
def test_pattern_is_printed_but_secondary(pattern):
    for category in CATEGORIES:
        spec = spec_for(category, "green", pattern, "white")
        image = pixels(render_garment(spec, 256)).reshape(-1, 3)
        garment = image[(image < 255).any(axis=1)]
        to_main = np.linalg.norm(garment - PALETTE["green"], axis=1)
        to_pattern = np.linalg.norm(garment - PALETTE["white"], axis=1)
        share = float((to_pattern < to_main).mean())
        assert 0.04 < share < 0.4, (category, share)


def test_white_garment_stands_out_from_the_background():
    image = pixels(render_garment(spec_for("t-shirt", "white"), 64))
    mask = garment_mask(render_garment(spec_for("t-shirt", "white"), 64))
    assert mask.mean() > 0.25
    assert np.median(image[mask]) < 245
    edge = mask & ~np.pad(mask, 1)[2:, 1:-1]  # garment pixels with background just below (the hem)
    assert image[edge].mean() < 235  # a darker outline separates white cloth from white paper


def test_category_silhouettes_differ_at_64px():
    masks = {category: garment_mask(render_garment(spec_for(category), 64)) for category in CATEGORIES}
    for first, second in itertools.combinations(CATEGORIES, 2):
        overlap = (masks[first] & masks[second]).sum() / (masks[first] | masks[second]).sum()
        assert overlap < 0.9, (first, second, overlap)


@pytest.mark.parametrize("category", CATEGORIES)
def test_only_trousers_and_shorts_have_two_legs(category):
    rng = np.random.default_rng(4)
    legs = 2 if category in ("trousers", "shorts") else 1
    for seed in range(6):
        mask = garment_mask(render_garment(sample_spec(rng, categories=[category]), 64, seed))
        top, height = vertical_extent(mask)
        if category != "long-sleeve top":  # its cuffs hang beside the hem
            assert runs(mask[top + int(0.97 * height)]) == legs


def test_tank_top_is_narrower_at_the_shoulders_than_a_t_shirt():
    rng = np.random.default_rng(5)

    def shoulder_to_hem(spec: GarmentSpec) -> float:
        mask = garment_mask(render_garment(spec, 64))
        top, height = vertical_extent(mask)
        return row_width(mask, top + int(0.1 * height)) / row_width(mask, top + int(0.95 * height))

    for _ in range(8):
        tee = sample_spec(rng, categories=["t-shirt"])
        tank = dataclasses.replace(tee, category="tank top", sleeve_length=0.0)
        assert shoulder_to_hem(tank) < 0.8 < shoulder_to_hem(tee)


def test_long_sleeves_hang_lower_than_short_ones():
    def lowest_sleeve_row(spec: GarmentSpec) -> float:
        """Where, as a fraction of the height, the last row cut into three stretches (sleeve, body, sleeve) is."""
        mask = garment_mask(render_garment(spec, 64))
        top, height = vertical_extent(mask)
        split = [y for y in range(top, top + height) if runs(mask[y]) >= 3]
        return (max(split) - top) / height if split else 0.0

    rng = np.random.default_rng(6)
    for _ in range(6):
        assert lowest_sleeve_row(sample_spec(rng, categories=["t-shirt"])) < 0.55
        assert lowest_sleeve_row(sample_spec(rng, categories=["long-sleeve top"])) > 0.6


def test_shape_parameters_change_the_silhouette():
    def aspect(spec: GarmentSpec) -> float:
        ys, xs = np.nonzero(garment_mask(render_garment(spec, 128)))
        return (np.ptp(ys) + 1) / (np.ptp(xs) + 1)

    def hem_to_waist(spec: GarmentSpec) -> float:
        mask = garment_mask(render_garment(spec, 128))
        top, height = vertical_extent(mask)
        return row_width(mask, top + int(0.9 * height)) / row_width(mask, top + 2)

    assert aspect(spec_for("dress", length=1.0)) > 1.2 * aspect(spec_for("dress", length=0.0))
    assert aspect(spec_for("trousers", width=0.0)) > aspect(spec_for("trousers", width=1.0))
    assert hem_to_waist(spec_for("skirt", flare=1.0)) > 1.3 * hem_to_waist(spec_for("skirt", flare=0.0))
    assert garment_mask(render_garment(spec_for("dress", sleeve_length=1.0), 64)).sum() > \
        garment_mask(render_garment(spec_for("dress", sleeve_length=0.0), 64)).sum()


# --- bad input --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arguments", "message"), [
    ({"num": 0}, "num"), ({"size": 16}, "size"), ({"start": -1}, "start"), ({"seed": -1}, "seed"),
    ({"categories": ["hat"]}, r"'hat'.*allowed: t-shirt"), ({"colors": ["teal"]}, r"'teal'.*allowed: black"),
    ({"patterns": ["plaid"]}, r"'plaid'.*allowed: solid"), ({"categories": "dress"}, r"list of names"),
    ({"colors": []}, "empty"), ({"framing": "random"}, r"'random'.*allowed: centred, varied"),
])
def test_synthesize_rejects_bad_arguments(tmp_path, arguments, message):
    with pytest.raises(ValueError, match=message):
        synthesize(tmp_path, **{"num": 2, "size": 32, **arguments})
    assert not (tmp_path / "metadata.jsonl").exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"category": "hat"}, "category"), ({"color": "teal"}, "color"), ({"pattern": "plaid"}, "pattern"),
    ({"width": 1.5}, "width"), ({"pattern": "stripes", "pattern_color": "red"}, "pattern_color"),
    ({"pattern": "stripes", "pattern_color": ""}, "pattern_color"), ({"pattern_color": "white"}, "pattern_color"),
    ({"sleeve_length": 0.0}, "sleeve_length"), ({"flare": 0.4}, "flare"), ({"scale": 0.3}, "scale"),
    ({"position_x": 1.2}, "position_x"),
])
def test_spec_rejects_contradictions(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(spec_for("t-shirt"), **change)


def test_render_rejects_tiny_sizes():
    with pytest.raises(ValueError, match="size"):
        render_garment(spec_for("skirt"), size=31)


@pytest.mark.parametrize(("options", "message"), [
    (["--num", "10000000"],
     "--num 10000000: at most 1000000 (the metadata of 10000000 garments needs 41 GB; this machine has 16 GB "
     "available)"),
    (["--num", "1000001"],
     "--num 1000001: at most 1000000 (a million garments at 256 px are ~22 GB and ~12 hours of drawing; make more in "
     "calls with --start)"),
    (["--num", "1", "--size", "100000"],
     "--size 100000: at most 4096 (drawing a 100000 px garment needs 3.2 TB; this machine has 16 GB available)"),
    (["--num", "1", "--size", "4097"], "--size 4097: at most 4096 (the largest image side the data stages make)"),
])
def test_counts_and_sizes_over_their_bounds_are_one_line_before_anything_is_written(options, message, tmp_path, capsys,
                                                                                    monkeypatch):
    monkeypatch.setattr(limits, "available_memory", lambda: 16 * 10**9)
    code, error = run_main(capsys, "data", "synth", "--out", tmp_path / "out", *options)
    assert (code, error) == (2, f"fsdx data synth: error: {message}\n")
    assert not (tmp_path / "out").exists()
