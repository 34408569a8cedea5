"""Sketch extraction: the one image -> sketch function that dataset build, generation and metrics share."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from fashionsd_x import limits
from fashionsd_x.data.images import load_image
from fashionsd_x.data.sketch import (
    REPORT_NAME,
    SKETCH_METHODS,
    SketchConfig,
    extract_sketch,
    iter_image_files,
    sketch_files,
    write_sketches,
)
from tests.test_cli import run_main

SIZE = 256
SEAM_ROW = 150  # y of the darker seam drawn across the body


def garment(size: int = SIZE, color: tuple[int, int, int] = (200, 60, 60), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A t-shirt on white with weave texture, soft shading, camera noise and one seam; (RGB uint8, mask)."""
    rng = np.random.default_rng(seed)
    scale = size / 256
    outline = np.array([[88, 40], [112, 34], [128, 46], [144, 34], [168, 40], [216, 84], [192, 112], [176, 98],
                        [176, 224], [80, 224], [80, 98], [64, 112], [40, 84]]) * scale
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [outline.astype(np.int32)], 1)
    yy, xx = np.mgrid[0:size, 0:size] / size
    shading = 1.0 - 40 / 255 * (0.5 + 0.5 * np.sin(6 * xx + 3 * yy))  # soft folds: up to 16 % darker
    weave = 8.0 * np.sin(2.1 * size * xx) * np.sin(1.9 * size * yy)  # fabric grain, period ~3 px
    cloth = np.asarray(color, float) * shading[..., None] + weave[..., None]
    seam_color = tuple(0.7 * c for c in color)
    cv2.line(cloth, (round(80 * scale), round(SEAM_ROW * scale)), (round(176 * scale), round(SEAM_ROW * scale)),
             seam_color, max(1, round(scale)))
    image = np.full((size, size, 3), 255.0)
    image[mask > 0] = cloth[mask > 0]
    image += rng.normal(0.0, 4.0, image.shape)  # sensor noise
    return np.clip(image, 0, 255).astype(np.uint8), mask.astype(bool)


def as_array(sketch: Image.Image) -> np.ndarray:
    assert sketch.mode == "L"
    return np.asarray(sketch)


def jpeg(image: np.ndarray, quality: int = 80) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def interior(mask: np.ndarray, margin: int) -> np.ndarray:
    return ndimage.binary_erosion(mask, iterations=margin)


# ------------------------------------------------------------------------------------------ the paper's method


COLOURS = {"red": (200, 60, 60), "navy": (40, 40, 120), "yellow": (230, 220, 120)}


@pytest.mark.parametrize("source", ["clean", "jpeg"])
@pytest.mark.parametrize("colour", COLOURS)
def test_adaptive_outline_is_closed(source: str, colour: str) -> None:
    # Yellow is the hard case: little contrast with the white paper, so the line thins at the armpits.
    image, mask = garment(color=COLOURS[colour])
    image = jpeg(image) if source == "jpeg" else image
    sketch = as_array(extract_sketch(image))
    # Flood the paper (white) from the corner with 8-connectivity, the leakiest choice: a closed outline
    # must keep the garment's inside from being reached.
    paper, _ = ndimage.label(sketch == 255, structure=np.ones((3, 3)))
    outside = paper == paper[0, 0]
    assert not outside[interior(mask, 4)].any()
    assert outside[~ndimage.binary_dilation(mask, iterations=8)].all()  # nothing drawn in the background


@pytest.mark.parametrize("source", ["clean", "jpeg"])
@pytest.mark.parametrize("colour", COLOURS)
def test_adaptive_has_few_speckles_inside_and_keeps_the_seam(source: str, colour: str) -> None:
    image, mask = garment(color=COLOURS[colour])
    image = jpeg(image) if source == "jpeg" else image
    sketch = as_array(extract_sketch(image))
    inside = interior(mask, 8)
    seam_band = np.zeros_like(mask)
    seam_band[SEAM_ROW - 8: SEAM_ROW + 9] = True
    # Texture, noise, JPEG blocks and shading must not turn into dots ...
    assert (sketch[inside & ~seam_band] == 0).mean() < 0.005
    # ... while the seam, a real detail, is drawn across the body.
    seam = (sketch[SEAM_ROW - 2: SEAM_ROW + 3] == 0).any(axis=0)
    assert seam[inside[SEAM_ROW]].mean() > 0.95


def test_default_config_is_the_papers() -> None:
    config = SketchConfig()
    assert (config.method, config.block_size, config.offset, config.invert) == ("adaptive", 11, 2.0, False)


# ------------------------------------------------------------------------------------------ every method


@pytest.mark.parametrize("method", SKETCH_METHODS)
def test_output_is_binary_black_lines_on_white(method: str) -> None:
    image, mask = garment()
    sketch = as_array(extract_sketch(image, SketchConfig(method=method)))
    assert sketch.dtype == np.uint8 and sketch.shape == (SIZE, SIZE)
    assert set(np.unique(sketch)) == {0, 255}
    assert (sketch == 255).mean() > 0.8  # mostly paper
    assert {sketch[0, 0], sketch[0, -1], sketch[-1, 0], sketch[-1, -1]} == {255}
    # The lines are where the garment's edge (and seam) is, not elsewhere.
    edge = ndimage.binary_dilation(mask, iterations=6) & ~ndimage.binary_erosion(mask, iterations=6)
    seam_band = np.zeros_like(mask)
    seam_band[SEAM_ROW - 6: SEAM_ROW + 7] = True
    boundary = mask & ~ndimage.binary_erosion(mask)
    assert ndimage.binary_dilation(sketch == 0, iterations=3)[boundary].mean() > 0.95  # traced all round
    assert (sketch[~edge & ~seam_band] == 0).mean() < 0.005


@pytest.mark.parametrize("method", SKETCH_METHODS)
def test_invert_is_exactly_the_complement(method: str) -> None:
    image, _ = garment()
    normal = as_array(extract_sketch(image, SketchConfig(method=method)))
    inverted = as_array(extract_sketch(image, SketchConfig(method=method, invert=True)))
    np.testing.assert_array_equal(inverted, 255 - normal)


@pytest.mark.parametrize("method", SKETCH_METHODS)
def test_deterministic(method: str) -> None:
    image, _ = garment(seed=3)
    first = extract_sketch(image, SketchConfig(method=method)).tobytes()
    second = extract_sketch(image.copy(), SketchConfig(method=method)).tobytes()
    assert first == second


@pytest.mark.parametrize("method", SKETCH_METHODS)
@pytest.mark.parametrize("size", [(300, 200), (123, 257)])
def test_keeps_non_square_size(method: str, size: tuple[int, int]) -> None:
    image, _ = garment(size=max(size))
    photo = Image.fromarray(image).resize(size)
    sketch = extract_sketch(photo, SketchConfig(method=method))
    assert sketch.size == size and sketch.mode == "L"
    assert as_array(sketch).shape == (size[1], size[0])


@pytest.mark.parametrize("method", SKETCH_METHODS)
def test_white_image_gives_white_sketch(method: str) -> None:
    for white in (np.full((64, 96, 3), 255, np.uint8), Image.new("L", (96, 64), 255)):
        assert (as_array(extract_sketch(white, SketchConfig(method=method))) == 255).all()


def test_flat_colour_gives_white_sketch() -> None:
    # A flat area of any tone is paper, not ink: sketches are lines, not filled regions.
    for tone in (0, 90, 200):
        flat = np.full((64, 64, 3), tone, np.uint8)
        for method in SKETCH_METHODS:
            assert (as_array(extract_sketch(flat, SketchConfig(method=method))) == 255).all(), (method, tone)


# ------------------------------------------------------------------------------------------ inputs


@pytest.mark.parametrize("method", SKETCH_METHODS)
def test_array_and_pil_inputs_agree(method: str) -> None:
    config = SketchConfig(method=method)
    image, _ = garment(seed=1)
    from_pil = as_array(extract_sketch(Image.fromarray(image), config))
    np.testing.assert_array_equal(as_array(extract_sketch(image, config)), from_pil)
    gray = np.asarray(Image.fromarray(image).convert("L"))
    expected = as_array(extract_sketch(Image.fromarray(gray, mode="L"), config))
    np.testing.assert_array_equal(as_array(extract_sketch(gray, config)), expected)
    # An RGB picture of a gray image is the same gray image.
    np.testing.assert_array_equal(as_array(extract_sketch(np.repeat(gray[..., None], 3, axis=2), config)), expected)


def test_rgba_is_composited_on_white() -> None:
    image, mask = garment()
    # Transparent pixels carry black RGB: read without compositing, the background would be black.
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[mask, :3] = image[mask]
    rgba[mask, 3] = 255
    on_white = np.where(mask[..., None], image, 255).astype(np.uint8)
    expected = as_array(extract_sketch(on_white))
    np.testing.assert_array_equal(as_array(extract_sketch(Image.fromarray(rgba, mode="RGBA"))), expected)
    np.testing.assert_array_equal(as_array(extract_sketch(rgba)), expected)
    assert (expected[~ndimage.binary_dilation(mask, iterations=8)] == 255).all()


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.float32), np.zeros((8, 8, 2), np.uint8), np.zeros(8, np.uint8),
                                 np.zeros((0, 8), np.uint8)])
def test_unusable_arrays_are_rejected(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="image array"):
        extract_sketch(bad)


# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("block_size", [10, 2, 1, 0, -3])
def test_bad_block_size_is_rejected(block_size: int) -> None:
    with pytest.raises(ValueError, match="block_size"):
        SketchConfig(block_size=block_size)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"method": "sobel"}, "method"),
        ({"block_size": 11.0}, "block_size"),
        ({"offset": 0.0}, "offset"),
        ({"offset": float("nan")}, "offset"),
        ({"invert": "yes"}, "invert"),
        ({"denoise": -1.0}, "denoise"),
        ({"min_speckle_area": -1}, "min_speckle_area"),
        ({"canny_low": 100.0, "canny_high": 100.0}, "canny_high"),
        ({"canny_dilate": -1}, "canny_dilate"),
        ({"xdog_sigma": 0.0}, "xdog_sigma"),
        ({"xdog_k": 1.0}, "xdog_k"),
        ({"xdog_tau": 1.5}, "xdog_tau"),
        ({"xdog_phi": 0.0}, "xdog_phi"),
    ],
)
def test_bad_values_are_rejected_naming_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SketchConfig(**changes)


@pytest.mark.parametrize(("field", "highest", "above"), [
    ("block_size", 1025, 1027), ("denoise", 64.0, 64.5), ("close_gaps", 32, 33), ("canny_dilate", 32, 33),
    ("xdog_sigma", 64.0, 64.5), ("xdog_k", 16.0, 16.5),
])
def test_windows_beyond_line_scale_are_refused(field: str, highest: float, above: float) -> None:
    # Each window's work grows with it: a 100001 px block took 5 s on one 512 px image, a 1000 px closing 16 s.
    SketchConfig(**{field: highest})
    with pytest.raises(ValueError, match=f"^{field} {above}: at most {highest} \\("):
        SketchConfig(**{field: above})


def test_config_round_trips_through_json() -> None:
    config = SketchConfig(method="xdog", block_size=15, offset=3.0, invert=True, xdog_sigma=0.8)
    restored = SketchConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert SketchConfig.from_dict({}) == SketchConfig()
    with pytest.raises(ValueError, match="blocksize"):
        SketchConfig.from_dict({"blocksize": 11})


def test_config_changes_the_sketch() -> None:
    # Guards against a parameter that is stored but never reaches the extractor.
    image, _ = garment()
    base = as_array(extract_sketch(image))
    for changes in ({"block_size": 31}, {"offset": 8.0}, {"denoise": 0.0}, {"min_speckle_area": 0}):
        assert not np.array_equal(as_array(extract_sketch(image, SketchConfig(**changes))), base), changes


# ------------------------------------------------------------------------------------------ files


def write_image(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    write_image(root / "tee.png", garment(seed=0)[0])
    write_image(root / "tops" / "red.jpg", garment(seed=1)[0])
    write_image(root / "tops" / "blue" / "navy.webp", garment(color=(40, 40, 120), seed=2)[0])
    (root / "tops" / "broken.jpg").write_bytes(b"this is not a JPEG")
    (root / "notes.txt").write_text("not an image, not an image extension: ignored")
    return root


def test_iter_image_files_walks_folders_in_sorted_order(photos: Path, tmp_path: Path) -> None:
    loose = write_image(tmp_path / "loose.bmp", garment()[0])
    found = list(iter_image_files([loose, photos]))
    assert found == [loose, photos / "tee.png", photos / "tops" / "blue" / "navy.webp",
                     photos / "tops" / "broken.jpg", photos / "tops" / "red.jpg"]


def test_sketch_files_writes_sketches_and_reports_bad_files(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "sketches"
    report = sketch_files([photos], out)
    expected = [out / "tee.png", out / "tops" / "blue" / "navy.png", out / "tops" / "red.png"]
    assert report.written == expected
    assert sorted(path for path in out.rglob("*") if path.is_file()) == sorted([*expected, out / REPORT_NAME])
    assert [path for path, _ in report.skipped] == [str(photos / "tops" / "broken.jpg")]
    reason = report.skipped[0][1]
    assert reason and "\n" not in reason
    # Each file is the same sketch the function gives for the loaded photo.
    written = Image.open(out / "tops" / "red.png")
    assert written.mode == "L"
    np.testing.assert_array_equal(np.asarray(written), np.asarray(extract_sketch(load_image(photos / "tops" / "red.jpg"))))
    # The folder describes itself: settings, outputs and skips, as in the returned report.
    summary = json.loads((out / REPORT_NAME).read_text())
    assert summary == json.loads(json.dumps(report.to_dict()))
    assert SketchConfig.from_dict(summary["config"]) == SketchConfig()
    assert summary["skipped"][0]["path"].endswith("broken.jpg")


def test_sketch_files_options_reach_the_extractor(photos: Path, tmp_path: Path) -> None:
    photo = photos / "tee.png"
    report = sketch_files([photo], tmp_path / "a", method="canny", block_size=15, offset=3.0, invert=True)
    config = SketchConfig(method="canny", block_size=15, offset=3.0, invert=True)
    assert report.config == config
    expected = np.asarray(extract_sketch(load_image(photo), config))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a" / "tee.png")), expected)
    # write_sketches takes the whole config, settings the CLI does not expose included.
    config = SketchConfig(method="xdog", xdog_sigma=1.5)
    write_sketches([photo], tmp_path / "b", config)
    expected = np.asarray(extract_sketch(load_image(photo), config))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "b" / "tee.png")), expected)


def test_sketch_files_rejects_bad_options_before_writing(photos: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="block_size"):
        sketch_files([photos], tmp_path / "out", block_size=4)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("side", "message"), [
    ("100000",
     "--resolution 100000: at most 2048 (a 100000 px preview needs 320 GB; this machine has 16 GB available)"),
    ("2049", "--resolution 2049: at most 2048 (a ControlNet trains at most at 2048 px, as generation makes at most "
             "2048 px)"),
])
def test_a_preview_side_over_its_bound_is_one_line_before_any_file_is_read(side: str, message: str, photos: Path,
                                                                          tmp_path: Path, capsys, monkeypatch) -> None:
    # Issue 29: a huge --preview side ran out of memory inside cv2 with a traceback.
    monkeypatch.setattr(limits, "available_memory", lambda: 16 * 10**9)
    code, error = run_main(capsys, "sketch", photos, "--out", tmp_path / "out", "--preview", "--resolution", side)
    assert (code, error) == (2, f"fsdx sketch: error: {message}\n")
    assert not (tmp_path / "out").exists()


def test_a_controlnets_recorded_side_over_its_bound_is_refused(photos: Path, tmp_path: Path, capsys) -> None:
    controlnet = tmp_path / "controlnet"
    controlnet.mkdir()
    (controlnet / "train_config.yaml").write_text("resolution: 4096\n")
    code, error = run_main(capsys, "sketch", photos, "--out", tmp_path / "out", "--preview", "--controlnet", controlnet)
    assert code == 2 and error.startswith(f"fsdx sketch: error: {controlnet / 'train_config.yaml'}: resolution 4096: "
                                          "at most 2048 (")
    assert not (tmp_path / "out").exists()


def test_sketch_files_never_overwrites_on_name_clash(tmp_path: Path) -> None:
    first = write_image(tmp_path / "in" / "shirt.jpg", garment(seed=0)[0])
    second = write_image(tmp_path / "in" / "shirt.png", garment(color=(40, 40, 120), seed=1)[0])
    out = tmp_path / "out"
    report = sketch_files([first, tmp_path / "in"], out)
    assert report.written == [out / "shirt.png"]
    assert [path for path, _ in report.skipped] == [str(first), str(second)]  # folder walk meets both again
    np.testing.assert_array_equal(np.asarray(Image.open(out / "shirt.png")), np.asarray(extract_sketch(load_image(first))))


def test_sketch_files_does_not_sketch_its_own_output(photos: Path) -> None:
    out = photos / "sketches"
    first = sketch_files([photos], out)
    second = sketch_files([photos], out)
    assert second.written == first.written
    assert not (out / "sketches").exists()


def test_sketch_files_does_not_overwrite_an_input(tmp_path: Path) -> None:
    photo = write_image(tmp_path / "tee.png", garment()[0])
    before = photo.read_bytes()
    report = sketch_files([photo], tmp_path)
    assert report.written == [] and report.skipped[0][0] == str(photo)
    assert photo.read_bytes() == before


def test_missing_path_raises_before_writing(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="nope"):
        sketch_files([photos, tmp_path / "nope"], out)
    assert not out.exists()
