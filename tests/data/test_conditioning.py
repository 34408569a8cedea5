"""The ControlNet conditioning: one normalisation of any sketch, for training, generation, studio and evaluation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from fashionsd_x.data.conditioning import (LEGACY, BlankSketchError, SketchConditioning, conditioning_preview,
                                           control_image, thin_lines)
from tests.train.test_controlnet import sketch

# A t-shirt outline in unit coordinates (x, y), drawn at any size by `outline`.
TSHIRT = [(0.35, 0.15), (0.45, 0.2), (0.55, 0.2), (0.65, 0.15), (0.85, 0.3), (0.78, 0.42), (0.68, 0.36),
          (0.68, 0.85), (0.32, 0.85), (0.32, 0.36), (0.22, 0.42), (0.15, 0.3)]


def outline(side: int, line_width: float, ink: int = 0, paper: np.ndarray | int = 255,
            height: int | None = None) -> np.ndarray:
    """The t-shirt drawn with a line `line_width` of the side wide, on a side x side (or side x height) sheet."""
    height = height or side
    sheet = np.full((height, side), paper, dtype=np.uint8) if np.isscalar(paper) else paper.copy()
    points = np.array([(x * side, y * side + (height - side) / 2) for x, y in TSHIRT], dtype=np.int32)
    cv2.polylines(sheet, [points], True, int(ink), max(1, round(line_width * side)), cv2.LINE_AA)
    return sheet


def lines(tensor: torch.Tensor) -> np.ndarray:
    return tensor[0].numpy() < 0.5


def agreement(a: torch.Tensor, b: torch.Tensor, tolerance: int = 2) -> float:
    """Share of line pixels of each within TOLERANCE px of the other's lines (symmetric, worst side)."""
    first, second = lines(a), lines(b)
    def near(points, target):
        distance = cv2.distanceTransform((~target).astype(np.uint8), cv2.DIST_L2, 3)
        return float((distance[points] <= tolerance).mean())
    return min(near(first, second), near(second, first))


def test_legacy_path_pads_and_keeps_polarity():
    drawn = sketch("dress")
    tensor = control_image(drawn, 32, conditioning=LEGACY)
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32
    assert tensor.min() == 0.0 and tensor.max() == 1.0  # black lines stay 0, paper stays 1: no inversion
    assert torch.all(tensor[:, :, :3] == 1.0)  # the portrait sketch is padded with white at the sides
    assert torch.equal(control_image(np.asarray(drawn), 32, conditioning=LEGACY), tensor)
    assert torch.equal(control_image(drawn, 32, invert=True, conditioning=LEGACY), 1.0 - tensor)
    with pytest.raises(ValueError, match="uint8"):
        control_image(np.zeros((8, 8), dtype=np.float32), 32)


def test_normalised_sketch_is_binary_lines_at_one_width():
    tensor = control_image(outline(512, 0.01), 128)
    assert tensor.shape == (3, 128, 128)
    assert set(torch.unique(tensor).tolist()) == {0.0, 1.0}  # strictly lines and paper
    assert torch.equal(tensor[0], tensor[1]) and torch.equal(tensor[0], tensor[2])
    share = lines(tensor).mean()
    assert 0.02 < share < 0.12  # an outline, not a filled blob and not vanished
    assert torch.equal(control_image(outline(512, 0.01), 128), tensor)  # deterministic
    assert torch.equal(control_image(outline(512, 0.01), 128, invert=True), 1.0 - tensor)


def test_the_same_outline_at_any_size_gives_nearly_the_same_conditioning():
    reference = control_image(outline(512, 0.008), 128)
    for side in (256, 2048):
        assert agreement(control_image(outline(side, 0.008), 128), reference) > 0.95, side
    # A plain resize loses the 2048 px sheet's fine line: most of the outline vanishes.
    resized = control_image(Image.fromarray(outline(2048, 0.001)).resize((128, 128), Image.Resampling.LANCZOS), 128,
                            conditioning=LEGACY)
    assert lines(resized).sum() < 0.5 * lines(reference).sum()
    assert agreement(control_image(outline(2048, 0.001), 128), reference) > 0.9  # normalised, it survives


def test_line_width_is_normalised():
    thin, thick = control_image(outline(512, 0.006), 128), control_image(outline(512, 0.04), 128)
    assert agreement(thin, thick) > 0.9
    assert abs(int(lines(thin).sum()) - int(lines(thick).sum())) < 0.2 * lines(thin).sum()


def test_grey_pencil_on_textured_unevenly_lit_paper_reads_as_black_on_white():
    rng = np.random.default_rng(0)
    side = 1024
    ramp = np.linspace(0.95, 0.8, side)[None, :]  # light falling off across the sheet
    grain = cv2.GaussianBlur(rng.normal(0, 1, (side, side)).astype(np.float32), (0, 0), 1.0) * 0.03
    paper = np.clip((ramp + grain) * 255, 0, 255).astype(np.uint8)
    # Pencil at 30% grey: the line is 30% darker than the paper under it.
    drawn = np.where(outline(side, 0.004) < 128, paper * 0.7, paper).astype(np.uint8)
    clean = control_image(outline(side, 0.004), 128)
    assert agreement(control_image(drawn, 128), clean) > 0.9
    assert lines(control_image(drawn, 128)).mean() < 1.5 * lines(clean).mean()  # no grain let through


def test_inverted_input_is_handled():
    drawn = outline(512, 0.01)
    assert agreement(control_image(255 - drawn, 128), control_image(drawn, 128)) > 0.98


def test_a_portrait_sheet_is_padded_not_stretched():
    sheet = outline(600, 0.01, height=800)
    padded = np.full((800, 800), 255, dtype=np.uint8)
    padded[:, 100:700] = sheet  # the same drawing on a square sheet, centred
    assert agreement(control_image(sheet, 128), control_image(padded, 128)) > 0.95
    stretched = Image.fromarray(sheet).resize((800, 800))
    assert agreement(control_image(stretched, 128), control_image(padded, 128)) < 0.8


def test_a_blank_or_empty_sheet_is_a_clear_error():
    for blank in (np.full((256, 256), 255, np.uint8), np.full((256, 256), 230, np.uint8), np.zeros((64, 64), np.uint8)):
        with pytest.raises(BlankSketchError, match="blank"):
            control_image(blank, 128)
    assert issubclass(BlankSketchError, ValueError)


def test_preview_shows_what_the_model_receives():
    drawn = outline(512, 0.01)
    preview = conditioning_preview(drawn, 128)
    assert preview.mode == "L" and preview.size == (128, 128)
    assert np.array_equal(np.asarray(preview) < 128, lines(control_image(drawn, 128)))


def test_thinning_gives_one_pixel_centre_lines():
    bar = np.zeros((40, 40), dtype=bool)
    bar[15:24, 5:35] = True  # a 9 px thick bar
    thin = thin_lines(bar)
    assert thin.any() and (thin.sum(axis=0)[12:28] == 1).all()  # one pixel across, along its length
    assert 17 <= np.nonzero(thin[:, 20])[0][0] <= 21  # in the middle


def test_settings_are_checked_and_round_trip():
    conditioning = SketchConditioning(line_width=0.02)
    assert SketchConditioning.from_dict(conditioning.to_dict()) == conditioning
    assert SketchConditioning.from_dict(None) == LEGACY
    assert conditioning.stroke_pixels(128) == 3 and SketchConditioning().stroke_pixels(512) == 8
    with pytest.raises(ValueError, match="line_width"):
        SketchConditioning(line_width=0)
    with pytest.raises(ValueError, match="unknown"):
        SketchConditioning.from_dict({"width": 2})


def test_fsdx_sketch_preview_writes_what_the_controlnet_receives(tmp_path):
    from fashionsd_x.models.embedded import EMBEDDED_DIR
    from tests.test_cli import fsdx

    Image.fromarray(outline(1024, 0.003)).save(tmp_path / "drawing.png")
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(tmp_path / "blank.png")
    result = fsdx("sketch", tmp_path / "drawing.png", tmp_path / "blank.png", "--preview", "--controlnet",
                  EMBEDDED_DIR / "controlnet", "--out", tmp_path / "preview")
    assert result.returncode == 0, result.stderr
    written = Image.open(tmp_path / "preview" / "drawing.png")
    assert written.size == (128, 128)  # the embedded ControlNet's resolution
    assert "blank" in result.stdout and not (tmp_path / "preview" / "blank.png").exists()  # skipped, with reason
    expected = conditioning_preview(Image.open(tmp_path / "drawing.png"), 128)
    assert np.array_equal(np.asarray(written), np.asarray(expected))
