"""The sketch-style benchmark: every style present and drawn as described, deterministic, and written by the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from datasets import load_from_disk

from fashionsd_x import limits
from fashionsd_x.data import synth
from fashionsd_x.data.sketch_styles import (
    MANIFEST,
    REGION_STYLES,
    STYLES,
    crop_to_region,
    draw_item,
    make_sketch_styles,
    prompt,
)
from tests.test_cli import fsdx, run_main

PER_STYLE = 2
OUTLINE_STYLES = ("fine_line", "pencil_scan", "small_lowres", "wobbly_gaps", "off_centre")
# Page styles leave room on the sheet for what else is on it (notes, a figure, the table around a photo), so the
# garment takes less of the frame than on a sheet of its own: (smallest span, smallest area).
SMALLER_ON_THE_PAGE = {"notes": (0.45, 0.05), "on_figure": (0.25, 0.04), "photo_shadow": (0.35, 0.05)}


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sketch_styles(tmp_path_factory.mktemp("styles") / "bench", per_style=PER_STYLE, seed=0, resolution=64)


@pytest.fixture(scope="module")
def rows(benchmark: Path) -> list[dict]:
    split = load_from_disk(str(benchmark))["test"]
    return [split[index] for index in range(split.num_rows)]


def _of(rows: list[dict], style: str) -> list[dict]:
    return [row for row in rows if row["style"] == style]


def _ink(row: dict) -> np.ndarray:
    """Bool: pixels clearly darker than the sheet's paper (its median)."""
    sketch = np.asarray(row["sketch"], np.float32)
    return sketch < 0.85 * np.median(sketch)


def _evaluated(row: dict) -> tuple[np.ndarray, np.ndarray]:
    """(sketch, silhouette) as evaluation uses them: cropped to the row's region when it has one."""
    return (crop_to_region(np.asarray(row["sketch"]), row["region"]),
            crop_to_region(np.asarray(row["silhouette"]), row["region"]))


def _distance_to_edge(silhouette: np.ndarray) -> np.ndarray:
    """Per pixel, the distance in pixels to the silhouette's boundary."""
    inside = silhouette > 127
    edge = inside & ~cv2.erode(inside.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, 3)


def test_every_style_with_its_items_columns_and_manifest(benchmark, rows):
    assert [row["style"] for row in rows] == [style for style in STYLES for _ in range(PER_STYLE)]
    assert len({row["id"] for row in rows}) == len(rows) and rows[0]["id"] == "fine_line-000"
    assert set(rows[0]) == {"id", "style", "category", "color", "pattern", "text", "sketch", "silhouette", "image",
                            "region"}
    for row in rows:
        assert row["sketch"].mode == "L" and row["silhouette"].mode == "L" and row["image"].mode == "RGB"
        assert row["silhouette"].size == row["sketch"].size and row["image"].size == (64, 64)
        assert row["category"] in synth.CATEGORIES and row["color"] in synth.PALETTE
        assert (len(row["region"]) == 4) == (row["style"] in REGION_STYLES), row["id"]
    manifest = json.loads((benchmark / MANIFEST).read_text())
    assert manifest["parameters"] == {"per_style": PER_STYLE, "seed": 0, "resolution": 64}
    assert manifest["counts"] == {style: PER_STYLE for style in STYLES}
    assert manifest["region_styles"] == list(REGION_STYLES)
    assert {"numpy", "opencv-python-headless"} <= set(manifest["versions"])


def test_cli_writes_the_same_benchmark_again(benchmark, rows, tmp_path):
    result = fsdx("data", "sketch-styles", "--out", tmp_path / "again", "--per-style", PER_STYLE, "--seed", 0,
                  "--resolution", 64)
    assert result.returncode == 0, result.stderr
    assert "fsdx evaluate --data" in result.stdout
    again = load_from_disk(str(tmp_path / "again"))["test"]
    assert again.num_rows == len(rows)
    for first, second in zip(rows, again):
        assert first["text"] == second["text"] and first["id"] == second["id"]
        assert first["region"] == second["region"]
        for column in ("sketch", "silhouette", "image"):
            assert np.array_equal(np.asarray(first[column]), np.asarray(second[column])), (first["id"], column)


# sha256 of item 1's sketch and silhouette bytes, seed 0, as the six styles drew them before the page styles were
# added (the page styles are appended to STYLES because a style's random stream is keyed by its index). Recompute
# with the earlier code only if an OpenCV or NumPy upgrade is what changed them.
EARLIER_STYLES = {"fine_line": "54150334fcb781c7", "pencil_scan": "a4b645de0b347239",
                  "small_lowres": "58a299a4f805c2f1", "wobbly_gaps": "58d9047aa3c4b539",
                  "detailed": "c4bc8a1a40373d9b", "off_centre": "08f5cbcdb79a7d26"}


@pytest.mark.parametrize("style", EARLIER_STYLES)
def test_earlier_styles_draw_the_same_bytes_as_before(style):
    item = draw_item(0, style, 1)
    digest = hashlib.sha256(item.sketch.tobytes() + item.silhouette.tobytes()).hexdigest()[:16]
    assert digest == EARLIER_STYLES[style]


def test_another_seed_draws_other_sketches():
    for style in STYLES:
        assert not np.array_equal(draw_item(0, style, 1).sketch, draw_item(1, style, 1).sketch), style


def test_neighbouring_items_differ_in_garment_and_size(rows):
    for style in STYLES:
        first, second = _of(rows, style)
        assert first["category"] != second["category"], style
        assert np.asarray(first["silhouette"]).sum() != np.asarray(second["silhouette"]).sum(), style


def test_silhouettes_are_filled_binary_and_inside_the_sheet(rows):
    for row in rows:
        silhouette = _evaluated(row)[1]
        assert set(np.unique(silhouette)) == {0, 255}, row["id"]
        assert (silhouette > 0).mean() > SMALLER_ON_THE_PAGE.get(row["style"], (0, 0.08))[1], row["id"]
        count, _ = cv2.connectedComponents((silhouette > 0).astype(np.uint8))
        assert count == 2, f"{row['id']}: the silhouette should be one garment, not {count - 1} pieces"
        border = np.concatenate([silhouette[0], silhouette[-1], silhouette[:, 0], silhouette[:, -1]])
        assert not border.any(), f"{row['id']} touches the edge of the sheet"


def test_garments_fill_half_to_most_of_the_square_frame(rows):
    for row in rows:
        silhouette = _evaluated(row)[1]
        ys, xs = np.nonzero(silhouette)
        span = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) / max(silhouette.shape)
        assert SMALLER_ON_THE_PAGE.get(row["style"], (0.45, 0))[0] <= span <= 0.95, (row["id"], span)


def test_outline_styles_draw_the_silhouette_edge(rows):
    for style in OUTLINE_STYLES:
        for row in _of(rows, style):
            ink, distance = _ink(row), _distance_to_edge(np.asarray(row["silhouette"]))
            tolerance = 2 + 0.005 * max(row["sketch"].size)  # half a line width and the anti-aliasing
            on_edge = (distance[ink] <= tolerance).mean()
            assert on_edge > 0.75, (row["id"], on_edge)  # the rest: a top's or a dress's front neckline
            edge = distance < 1
            near_ink = cv2.distanceTransform((~ink).astype(np.uint8), cv2.DIST_L2, 3) <= tolerance
            drawn = (near_ink[edge]).mean()
            assert drawn > (0.85 if style == "wobbly_gaps" else 0.97), (row["id"], drawn)


def test_detailed_sketches_have_lines_inside_the_garment(rows):
    for row in _of(rows, "detailed"):
        ink, distance = _ink(row), _distance_to_edge(np.asarray(row["silhouette"]))
        inside = np.asarray(row["silhouette"]) > 0
        interior = ink & inside & (distance > 0.02 * max(row["sketch"].size))
        assert interior.sum() > 0.15 * ink.sum(), row["id"]


def test_wobbly_outlines_have_gaps_but_closed_silhouettes(rows):
    for row in _of(rows, "wobbly_gaps"):
        side = row["sketch"].size[0]
        assert 512 <= side <= 768
        ink = _ink(row).astype(np.uint8)
        near_ink = cv2.dilate(ink, np.ones((5, 5), np.uint8)).astype(bool)
        edge = _distance_to_edge(np.asarray(row["silhouette"])) < 1
        assert (edge & ~near_ink).sum() >= 0.005 * side, row["id"]  # some edge left undrawn: a break


def test_off_centre_sheets_are_not_square_and_the_garment_is_off_centre(rows):
    for row in _of(rows, "off_centre"):
        width, height = row["sketch"].size
        assert width != height and max(width, height) >= 1.2 * min(width, height)
        ys, xs = np.nonzero(np.asarray(row["silhouette"]))
        offset = np.hypot(xs.mean() - width / 2, ys.mean() - height / 2)
        assert offset > 0.08 * max(width, height), (row["id"], offset)


def test_pencil_lines_are_grey_on_textured_off_white_paper(rows):
    for row in _of(rows, "pencil_scan"):
        sketch = np.asarray(row["sketch"])
        assert sketch.shape == (2048, 2048)
        paper = sketch[~cv2.dilate(_ink(row).astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)]
        assert 200 < np.median(paper) < 250 and paper.std() > 2, "paper should be off-white with grain"
        assert np.percentile(sketch, 0.01) > 60, "pencil lines should be grey, not black"
        assert np.median(sketch[_ink(row)]) < 0.8 * np.median(paper)


def test_small_sketches_are_thumbnails(rows):
    for row in _of(rows, "small_lowres"):
        assert 64 <= max(row["sketch"].size) <= 100


def test_fine_lines_are_black_on_white_big_sheets(rows):
    for row in _of(rows, "fine_line"):
        sketch = np.asarray(row["sketch"])
        assert 1024 <= sketch.shape[0] <= 2048 and np.median(sketch) == 255 and sketch.min() < 40


def _edge_is_drawn(ink: np.ndarray, silhouette: np.ndarray, tolerance: float) -> float:
    """Share of the silhouette's edge with ink within TOLERANCE px: the silhouette is the drawn outline's inside."""
    near_ink = cv2.distanceTransform((~ink).astype(np.uint8), cv2.DIST_L2, 3) <= tolerance
    return float(near_ink[_distance_to_edge(silhouette) < 1].mean())


def test_printed_paper_runs_across_the_sheet_but_not_into_the_silhouette(rows):
    for row in _of(rows, "ruled_page"):
        sketch, silhouette = np.asarray(row["sketch"]), np.asarray(row["silhouette"])
        pen = sketch < 110  # the garment's dark ink; the printing is a light grey (about 160-175)
        tolerance = 2 + 0.005 * max(sketch.shape)
        assert _edge_is_drawn(pen, silhouette, tolerance) > 0.97, row["id"]
        assert (_distance_to_edge(silhouette)[pen] <= tolerance).mean() > 0.75, row["id"]  # the pen drew the edge
        printed = (sketch < 0.95 * np.percentile(sketch, 99)) & ~pen
        corner = round(0.2 * min(sketch.shape))
        for printed_corner in (printed[:corner, :corner], printed[-corner:, -corner:]):
            assert printed_corner.any(), f"{row['id']}: no printing in a corner of the sheet"
        inside = (silhouette > 0) & (_distance_to_edge(silhouette) > tolerance)
        assert printed[inside].any(), f"{row['id']}: the printing should run under the garment"


def test_notes_are_written_beside_the_garment_with_leaders_into_it(rows):
    for row in _of(rows, "notes"):
        sketch, silhouette = np.asarray(row["sketch"]), np.asarray(row["silhouette"])
        ink, side = _ink(row), max(sketch.shape)
        assert _edge_is_drawn(ink, silhouette, 2 + 0.005 * side) > 0.97, row["id"]
        outside = (silhouette == 0) & (_distance_to_edge(silhouette) > 0.03 * side)
        letters, _ = cv2.connectedComponents((ink & outside).astype(np.uint8))
        assert letters > 8, f"{row['id']}: expected notes written beside the garment"
        # A leader crosses the outline, so the outline's stroke reaches far out of the garment.
        _, strokes = cv2.connectedComponents(ink.astype(np.uint8))
        outline = np.bincount(strokes[(_distance_to_edge(silhouette) < 1) & ink]).argmax()
        assert (outside & (strokes == outline)).sum() > 0.03 * side, f"{row['id']}: no leader into the garment"


def test_the_croquis_is_drawn_around_the_garment_in_a_lighter_line_and_hidden_under_it(rows):
    for row in _of(rows, "on_figure"):
        sketch, silhouette = np.asarray(row["sketch"]), np.asarray(row["silhouette"])
        ink, height = _ink(row), sketch.shape[0]
        distance = _distance_to_edge(silhouette)
        tolerance = 2 + 0.005 * max(sketch.shape)
        on_edge = ink & (distance <= tolerance)
        figure = ink & (silhouette == 0) & (distance > 3 * tolerance)
        assert figure.sum() > 0.1 * on_edge.sum(), f"{row['id']}: expected a figure around the garment"
        assert np.nonzero(figure)[0].min() < np.nonzero(silhouette)[0].min() - 0.1 * height, "no head above it"
        # The silhouette's edge is the garment's dark line, not the figure's lighter one ...
        assert np.median(sketch[on_edge]) < np.percentile(sketch[figure], 10), row["id"]
        # ... and the figure is not drawn inside the garment: inside it, only the garment's own neckline.
        assert (ink & (silhouette > 0) & (distance > tolerance)).sum() < 0.3 * on_edge.sum(), row["id"]


def test_two_garment_sheets_box_the_asked_for_garment_and_leave_the_other_outside(rows):
    for row in _of(rows, "two_garments"):
        sketch, silhouette = np.asarray(row["sketch"]), np.asarray(row["silhouette"])
        height, width = sketch.shape
        assert width > 1.3 * height, "two garments side by side on a landscape sheet"
        x0, y0, x1, y1 = row["region"]
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        box = np.zeros_like(silhouette, bool)
        box[round(y0 * height):round(y1 * height), round(x0 * width):round(x1 * width)] = True
        assert not (silhouette[~box] > 0).any(), f"{row['id']}: the garment runs out of its region"
        ink = _ink(row)
        assert ink[~box].sum() > 0.25 * ink.sum(), f"{row['id']}: the other garment should be outside the region"
        # (A flat's own detail lines may poke a little out of its outline: a tank top's armhole binding.)
        strays = ink & box & (silhouette == 0) & (_distance_to_edge(silhouette) > 0.03 * width)
        assert not strays.any(), f"{row['id']}: the other garment reaches into the region"


def test_phone_photos_show_the_sheet_on_a_darker_table_with_the_lines_on_the_silhouette(rows):
    for row in _of(rows, "photo_shadow"):
        sketch, silhouette = np.asarray(row["sketch"], np.float32), np.asarray(row["silhouette"])
        assert 900 <= max(sketch.shape) <= 1600
        # Ink against the local paper: the light falls off and a shadow lies across the page.
        ink = sketch < 0.75 * cv2.dilate(sketch, np.ones((9, 9), np.uint8))
        assert _edge_is_drawn(ink, silhouette, 3 + 0.005 * max(sketch.shape)) > 0.9, row["id"]
        border = np.concatenate([sketch[:4].ravel(), sketch[-4:].ravel(), sketch[:, :4].ravel(),
                                 sketch[:, -4:].ravel()])
        paper = sketch[(silhouette > 0) & ~cv2.dilate(ink.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)]
        assert np.percentile(border, 25) < 0.75 * np.median(paper), f"{row['id']}: expected the table around the sheet"


def test_reference_image_is_the_silhouette_in_the_prompt_colour(rows):
    for row in rows:
        image = np.asarray(row["image"]).reshape(-1, 3)
        garment = image[(image < 250).any(axis=1)]
        colours, counts = np.unique(garment, axis=0, return_counts=True)
        assert tuple(colours[np.argmax(counts)]) == synth.PALETTE[row["color"]], row["id"]
        assert row["color"] in row["text"]


def test_prompts_alternate_plain_and_prints():
    patterns = [draw_item(0, "small_lowres", index).pattern for index in range(4)]
    assert patterns == ["solid", "dots", "solid", "checks"]
    assert prompt("t-shirt", "red", "solid") == "a plain t-shirt in red"
    assert prompt("tank top", "orange", "dots") == "an orange polka-dot tank top"


@pytest.mark.parametrize("category, color, pattern", [("t-shirt", "red", "solid"), ("dress", "navy", "dots"),
                                                      ("trousers", "orange", "checks"), ("tank top", "orange", "dots")])
def test_prompts_are_captions_the_synthetic_catalogue_writes(category, color, pattern):
    # The model learnt to read synth's captions; a prompt in other words would measure wording, not sketches.
    spec = synth.sample_spec(np.random.default_rng(0), categories=[category], colors=[color], patterns=[pattern])
    captions = {synth.caption(spec, np.random.default_rng(index)) for index in range(4000)}
    assert prompt(category, color, pattern) in captions


def test_bad_arguments_and_foreign_output_folders_are_refused(tmp_path):
    with pytest.raises(ValueError, match="per_style"):
        make_sketch_styles(tmp_path / "x", per_style=0)
    with pytest.raises(ValueError, match="resolution"):
        make_sketch_styles(tmp_path / "x", per_style=1, resolution=16)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a sketch-style benchmark"):
        make_sketch_styles(tmp_path / "mine", per_style=1)
    assert (tmp_path / "mine" / "notes.txt").is_file()
    with pytest.raises(ValueError, match="unknown sketch style"):
        draw_item(0, "charcoal", 0)


@pytest.mark.parametrize(("gigabytes", "options", "message"), [
    (64, ["--per-style", "1001"],
     "--per-style 1001: at most 1000 (item ids carry three digits, fine_line-000 to fine_line-999)"),
    (16, ["--per-style", "1000"],
     "--per-style 1000: at most 715 (holding 11000 sketches and 128 px references until saved needs 22 GB; this "
     "machine has 16 GB available)"),
    (16, ["--per-style", "1000", "--resolution", "4096"],
     "--per-style 1000: at most 382 (holding 11000 sketches and 4096 px references until saved needs 41 GB; this "
     "machine has 16 GB available)"),
    (16, ["--resolution", "100000"], "--resolution 100000: at most 4096 (the largest image side the data stages make)"),
])
def test_counts_and_sizes_over_their_bounds_are_one_line_before_anything_is_drawn(gigabytes, options, message, tmp_path,
                                                                                  capsys, monkeypatch):
    monkeypatch.setattr(limits, "available_memory", lambda: gigabytes * 10**9)
    code, error = run_main(capsys, "data", "sketch-styles", "--out", tmp_path / "out", *options)
    assert (code, error) == (2, f"fsdx data sketch-styles: error: {message}\n")
    assert list(tmp_path.iterdir()) == []  # no out, no .out.building
