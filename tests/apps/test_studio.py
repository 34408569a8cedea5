"""FashionSD-X Studio on a tiny real base, LoRA and ControlNet: the actions as functions, then the page in Chromium."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from fashionsd_x.apps.studio import StudioError, serve_studio
from fashionsd_x.apps.studio.actions import (PageSettings, PageView, Settings, SketchSettings, blank_canvas,
                                             canvas_sketch, control_values, describe_model, extract, generated_files,
                                             history_rows, load_upload, model_view, page_values, page_view,
                                             pick_sketch, read_canvas_image, repapered, reuse, run_generation,
                                             unreadable_canvas)
from fashionsd_x.apps.studio.paper import FIGURE_HEIGHT, PAPERS, paper
from fashionsd_x.apps.studio.ui import CANVAS, _page_outputs
from fashionsd_x.data.conditioning import SketchConditioning, SketchRegion, conditioning_preview, control_image
from fashionsd_x.data.images import ImageLoadError, load_image, pad_to_square
from fashionsd_x.data.sketch import SketchConfig, extract_sketch
from fashionsd_x.generate import GarmentGenerator, read_params
from tests.apps import screenshots
from tests.conftest import garment
from tests.data.test_conditioning import agreement
from tests.test_generate import _save_controlnet, _save_lora

STEPS = 2


@pytest.fixture(scope="module")
def generator(tiny_base, tmp_path_factory) -> GarmentGenerator:
    root = tmp_path_factory.mktemp("studio_models")
    return GarmentGenerator.load(tiny_base, lora=_save_lora(tiny_base, root / "lora", 0),
                                 controlnet=_save_controlnet(tiny_base, root / "controlnet"), device="cpu")


@pytest.fixture(scope="module")
def normalising(tiny_base, generator, tmp_path_factory) -> GarmentGenerator:
    """The same models, with a ControlNet whose train_config.yaml says it was trained on normalised sketches."""
    folder = tmp_path_factory.mktemp("normalising") / "controlnet"
    shutil.copytree(generator.controlnet_path, folder)
    (folder / "train_config.yaml").write_text(yaml.safe_dump({"sketch_conditioning": SketchConditioning().to_dict()}))
    return GarmentGenerator.load(tiny_base, lora=generator.lora, controlnet=folder, device="cpu")


def _drawn_canvas(side: int = 128, grey: int = 0) -> dict:
    """The canvas's value after drawing an off-centre box with the brush (strokes on a transparent layer)."""
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    ImageDraw.Draw(layer).rectangle((20, 30, 70, 110), outline=(grey, grey, grey, 255), width=4)
    return {**blank_canvas(side), "layers": [layer]}


def _sketch_file(folder: Path, shape: str = "box") -> Path:
    image = Image.new("L", (48, 64), 255)
    draw = ImageDraw.Draw(image)
    (draw.rectangle if shape == "box" else draw.ellipse)((6, 6, 42, 58), outline=0, width=3)
    path = folder / f"{shape}.png"
    image.save(path)
    return path


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_uploaded_sketch_gives_pngs_that_carry_their_parameters(generator, tmp_path, one_thread):
    sketch, message = load_upload(_sketch_file(tmp_path))
    assert message == ""
    settings = Settings(prompt="a red dress", negative_prompt="blurry", num_images=2, steps=STEPS, seed=5,
                        guidance_scale=6.0, controlnet_scale=0.8, lora_scale=0.5)
    seen: list[float] = []
    outcome = run_generation(generator, tmp_path / "out", settings, sketch, source="upload",
                             progress=lambda fraction, text: seen.append(fraction))
    assert outcome.message == "" and seen == [0.0, 0.5]
    assert len(outcome.files) == 2 and generated_files(tmp_path / "out") == sorted(outcome.files)
    for k, file in enumerate(outcome.files):
        params = read_params(file)
        assert (params.prompt, params.negative_prompt, params.seed, params.steps) == ("a red dress", "blurry", 5 + k, 2)
        assert (params.guidance_scale, params.controlnet_scale, params.lora_scale) == (6.0, 0.8, 0.5)
        assert params.sketch_sha256 is not None
    # Each PNG is the image `fsdx generate` makes with its seed.
    single = generator("a red dress", sketch=sketch, negative_prompt="blurry", steps=STEPS, seed=6,
                       guidance_scale=6.0, controlnet_scale=0.8, lora_scale=0.5)[0]
    assert np.array_equal(_pixels(outcome.files[1]), np.asarray(single.image).astype(int))
    [entry] = outcome.history
    assert entry.source == "upload" and entry.files == tuple(outcome.files)
    assert history_rows(outcome.history)[0][:5] == [1, "a red dress", "upload", 2, 5]


def test_canvas_layers_are_composited_on_white(tmp_path):
    layer = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # untouched canvas pixels are transparent black
    ImageDraw.Draw(layer).line((10, 10, 50, 50), fill=(0, 0, 0, 255), width=4)
    sketch = canvas_sketch({"background": Image.new("RGBA", (64, 64), (0, 0, 0, 0)), "layers": [layer],
                            "composite": None})
    pixels = np.asarray(sketch)
    assert sketch.mode == "L" and pixels[0, 63] == 255 and pixels[30, 30] == 0
    assert canvas_sketch({"background": None, "layers": [Image.new("RGBA", (64, 64))], "composite": None}) is None
    assert canvas_sketch(None) is None
    _, message = pick_sketch("draw", None, None, None, SketchSettings(), 32)
    assert "canvas is blank" in message


def test_the_model_view_is_what_the_model_received(normalising, generator, tmp_path, one_thread):
    canvas = _drawn_canvas()
    preview, note = model_view(normalising, canvas_sketch(canvas))
    side = normalising.resolution
    assert note == "" and preview.mode == "L" and preview.size == (side, side)
    pixels = np.asarray(preview)
    assert set(np.unique(pixels).tolist()) == {0, 255}  # normalised: strictly black lines on white
    rows, columns = np.nonzero(pixels == 0)
    drawn = np.array([20, 30, 70, 110]) * side / 128  # the box's left, top, right, bottom at the model's side
    assert np.abs(np.array([columns.min(), rows.min(), columns.max(), rows.max()]) - drawn).max() <= 1.5
    outcome = run_generation(normalising, tmp_path / "out", Settings(prompt="a top", num_images=2, steps=STEPS),
                             canvas_sketch(canvas), source="draw")
    assert outcome.message == "" and np.array_equal(np.asarray(outcome.seen), pixels)
    # A ControlNet trained before normalisation gets (and is shown) the plain resize, not the normalised lines.
    legacy, _ = model_view(generator, canvas_sketch(canvas))
    assert not np.array_equal(np.asarray(legacy), pixels)
    kept = run_generation(generator, tmp_path / "out", Settings(prompt="a top", num_images=1, steps=STEPS),
                          canvas_sketch(canvas), source="draw")
    assert np.array_equal(np.asarray(kept.seen), np.asarray(legacy))
    text_only = run_generation(normalising, tmp_path / "out", Settings(prompt="a top", num_images=1, steps=STEPS))
    assert text_only.seen is None


def test_a_blank_sheet_gives_a_message_not_an_exception(normalising, tmp_path, one_thread):
    blank = blank_canvas(64)
    assert canvas_sketch(blank) is None
    assert pick_sketch("draw", blank, None, None, SketchSettings(), 32)[1].startswith("the canvas is blank")
    # A stroke too faint to be a line passes the canvas check but leaves the model nothing to follow.
    faint = canvas_sketch(_drawn_canvas(grey=235))
    assert faint is not None
    image, note = model_view(normalising, faint)
    assert image is None and "blank" in note
    outcome = run_generation(normalising, tmp_path / "out", Settings(prompt="a top", num_images=1, steps=STEPS), faint,
                             source="draw")
    assert outcome.files == [] and "blank" in outcome.message and "\n" not in outcome.message


def test_photo_sketch_follows_the_threshold_settings(generator, tmp_path, one_thread):
    photo = tmp_path / "photo.png"
    garment(5, size=128).save(photo)
    fine, message = extract(photo, "adaptive", 3, 2.0, 64)
    coarse, _ = extract(photo, "adaptive", 31, 2.0, 64)
    assert message == "" and fine.size == (64, 64)
    assert not np.array_equal(np.asarray(fine), np.asarray(coarse))
    # The preview is the dataset stage's own sketch of the photo at the model's resolution.
    expected = extract_sketch(pad_to_square(load_image(photo), 64), SketchConfig(block_size=31))
    assert np.array_equal(np.asarray(coarse), np.asarray(expected))
    canny, _ = extract(photo, "canny", 31, 2.0, 64)
    assert not np.array_equal(np.asarray(canny), np.asarray(coarse))
    settings = SketchSettings("adaptive", 31, 2.0)
    sketch, _ = pick_sketch("photo", None, None, photo, settings, generator.resolution)
    outcome = run_generation(generator, tmp_path / "out", Settings(prompt="a top", num_images=1, steps=STEPS),
                             sketch, source="photo", sketch_settings=settings)
    assert outcome.history[0].source == "photo" and outcome.history[0].sketch_settings == settings


def test_bad_uploads_and_settings_give_a_message_not_an_exception(generator, tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "notes.txt").write_text("a red dress")
    Image.new("RGB", (8, 8), "white").save(tmp_path / "dot.png")
    _sketch_file(tmp_path)
    (tmp_path / "cut.png").write_bytes((tmp_path / "box.png").read_bytes()[:60])
    reasons = {name: load_upload(tmp_path / name) for name in ("notes.png", "notes.txt", "dot.png", "cut.png")}
    assert all(image is None for image, _ in reasons.values())
    assert "not an image file" in reasons["notes.png"][1] and "accepted: jpg" in reasons["notes.txt"][1]
    assert "too small" in reasons["dot.png"][1] and "cannot" in reasons["cut.png"][1]
    assert all("\n" not in message for _, message in reasons.values())
    sketch, message = pick_sketch("photo", None, None, tmp_path / "notes.png", SketchSettings(), 32)
    assert sketch is None and "not an image file" in message
    _, message = extract(tmp_path / "box.png", "adaptive", 4, 2.0, 32)
    assert "block_size must be odd" in message
    for settings, reason in ((Settings(prompt="  ", num_images=1, steps=STEPS), "prompt is empty"),
                             (Settings(prompt="a dress", num_images=100), "from 1 to 8"),
                             (Settings(prompt="a dress", steps=10_000), "steps must be")):
        outcome = run_generation(generator, tmp_path / "out", settings, history=[])
        assert reason in outcome.message and outcome.files == [] and outcome.history == []
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.png"))
    long = run_generation(generator, tmp_path / "out", Settings(prompt="a dress " + "very " * 100, num_images=1,
                                                                steps=1))
    assert long.message == "" and len(long.files) == 1 and "truncated" in long.notes[0]


def test_numbers_from_the_page_or_an_api_caller_are_checked_like_generate(generator, tmp_path):
    nan, inf = float("nan"), float("inf")
    page = ("a dress", "", 1.0, 2.0, 7.5, 1.0, 1.0, 5.0, "unipc")  # as Gradio sends them: numbers as floats
    assert Settings.from_page(*page) == Settings(prompt="a dress", num_images=1, steps=2, seed=5)
    for index, value, reason in ((4, nan, "guidance_scale must be a finite number"),
                                 (4, inf, "guidance_scale must be a finite number"),
                                 (5, -inf, "controlnet_scale"), (6, nan, "lora_scale"), (7, nan, "seed must be"),
                                 (7, float(2**64), "seed must be"), (7, 2**64, "seed must be"), (3, 2.5, "steps"),
                                 (3, "many", "steps"), (2, inf, "number of images")):
        settings = Settings.from_page(*page[:index], value, *page[index + 1:])  # never raises
        outcome = run_generation(generator, tmp_path / "out", settings)
        assert reason in outcome.message and outcome.files == [] and "\n" not in outcome.message
    assert not (tmp_path / "out").exists()
    _sketch_file(tmp_path)
    for block_size, offset, reason in ((nan, 2.0, "block_size"), (inf, 2.0, "block_size"), (11, nan, "offset"),
                                       (11, inf, "offset")):
        image, message = extract(tmp_path / "box.png", "adaptive", block_size, offset, 32)
        assert image is None and reason in message


def test_history_row_restores_settings_and_reproduces_the_images(generator, tmp_path, one_thread):
    sketch, _ = load_upload(_sketch_file(tmp_path, "ellipse"))
    first = Settings(prompt="navy trousers", num_images=1, steps=STEPS, seed=3, guidance_scale=5.0,
                     controlnet_scale=1.2, lora_scale=0.3, scheduler="ddim", control_start=0.1, control_end=0.7)
    photo_settings = SketchSettings("xdog", 15, 4.0)
    page = PageSettings(SketchRegion(0.1, 0.0, 0.9, 0.75), cleanup=False)
    history = run_generation(generator, tmp_path / "out", first, sketch, source="photo",
                             sketch_settings=photo_settings, page=page).history
    history = run_generation(generator, tmp_path / "out", Settings(prompt="a skirt", num_images=1, steps=STEPS),
                             history=history, page=page).history  # no sketch: the page's settings act on nothing
    assert [entry.source for entry in history] == ["photo", "prompt"] and history[1].sketch is None
    entry = reuse(history, 0)
    assert control_values(entry) == ("navy trousers", "", 1, STEPS, 5.0, 1.2, 0.3, 3, "ddim", 0.1, 0.7, "xdog", 15,
                                     4.0)
    assert page_values(entry) == ("0.1,0,0.9,0.75", False) and page_values(history[1]) == ("", True)
    assert history_rows(history)[0][7:9] == [1.2, "0.1–0.7"] and history_rows(history)[1][8] == "0–1"
    assert history_rows(history)[0][11:] == ["0.1,0,0.9,0.75", "off"] and history_rows(history)[1][11:] == ["", ""]
    assert reuse(history, 5) is None and reuse(history, -1) is None
    # The restored settings, page settings and the kept sketch make the same garment again.
    restored = Settings.from_page(*[float(v) if isinstance(v, int) else v for v in control_values(entry)[:11]])
    restored_page = PageSettings.from_page(*page_values(entry))
    kept, _ = load_upload(entry.sketch)
    again = run_generation(generator, tmp_path / "again", restored, kept, history=history, page=restored_page)
    assert restored == first and restored_page == page and len(again.history) == 3
    assert read_params(again.files[0]).sketch_region == [0.1, 0.0, 0.9, 0.75]
    # Within a grey level: the LoRA scale went 0.3 -> 1.0 -> 0.3 in between, and unfusing then fusing the LoRA
    # into the UNet's weights rounds in the last bit.
    assert np.abs(_pixels(again.files[0]) - _pixels(entry.files[0])).max() <= 1


def _two_garment_page(folder: Path) -> Path:
    """A grid-ruled page (the paper's printing) with two garments side by side: a box left, a dress right."""
    page = Image.new("L", (256, 160), 255)
    pen = ImageDraw.Draw(page)
    for at in range(8, 256, 16):
        pen.line((at, 0, at, 159), fill=190)
    for at in range(8, 160, 16):
        pen.line((0, at, 255, at), fill=190)
    pen.rectangle((20, 25, 100, 135), outline=0, width=3)
    pen.polygon([(170, 20), (200, 20), (230, 135), (140, 135)], outline=0, width=3)
    path = folder / "page.png"
    page.save(path)
    return path


def test_the_page_region_and_cleanup_reach_the_generator_and_the_pngs(normalising, tmp_path, one_thread):
    sketch, _ = load_upload(_two_garment_page(tmp_path))
    page = PageSettings.from_page(" 0.5,0,1,1 ", True)
    assert page == PageSettings(SketchRegion(0.5, 0.0, 1.0, 1.0), True) and page.region_text() == "0.5,0,1,1"
    outcome = run_generation(normalising, tmp_path / "out", Settings(prompt="a dress", num_images=1, steps=STEPS),
                             sketch, source="upload", page=page)
    params = read_params(outcome.files[0])
    assert params.sketch_region == [0.5, 0.0, 1.0, 1.0] and params.sketch_cleanup is True
    # The image is generation's own for that region; what the model saw is the model view, and it is the right
    # half of the page alone (the box on the left never reached the model).
    single = normalising("a dress", sketch=sketch, steps=STEPS, seed=0, sketch_region="0.5,0,1,1")[0]
    assert np.array_equal(_pixels(outcome.files[0]), np.asarray(single.image).astype(int))
    seen, _ = model_view(normalising, sketch, page)
    assert np.array_equal(np.asarray(outcome.seen), np.asarray(seen))
    right = conditioning_preview(sketch.crop((128, 0, 256, 160)), normalising.resolution, normalising.conditioning)
    assert np.array_equal(np.asarray(seen), np.asarray(right))
    assert not np.array_equal(np.asarray(seen), np.asarray(model_view(normalising, sketch)[0]))
    # Cleanup off: the grid is a line like any other, and the PNG says so.
    raw = PageSettings(cleanup=False)
    kept = run_generation(normalising, tmp_path / "out", Settings(prompt="a dress", num_images=1, steps=STEPS),
                          sketch, source="upload", page=raw)
    assert read_params(kept.files[0]).sketch_cleanup is False and read_params(kept.files[0]).sketch_region is None
    assert np.array_equal(np.asarray(kept.seen), np.asarray(model_view(normalising, sketch, raw)[0]))
    assert (np.asarray(kept.seen) == 0).sum() > 2 * (np.asarray(model_view(normalising, sketch)[0]) == 0).sum()
    # A photo's region is in its extracted sketch, the one its tab shows: the page's view is what the model got.
    photo = tmp_path / "photo.png"
    garment(5, size=128).save(photo)
    extracted, _ = pick_sketch("photo", None, None, photo, SketchSettings(), normalising.resolution)
    ran = run_generation(normalising, tmp_path / "out", Settings(prompt="a top", num_images=1, steps=STEPS), extracted,
                         source="photo", page=PageSettings(SketchRegion(0.0, 0.0, 0.6, 1.0)))
    _, note, seen, _ = _page_outputs(normalising, "photo", str(photo), "adaptive", 11, 2.0, "0,0,0.6,1", True)
    assert note.startswith("removed: ") and read_params(ran.files[0]).sketch_region == [0.0, 0.0, 0.6, 1.0]
    assert np.array_equal(np.asarray(seen.resize(ran.seen.size, Image.Resampling.NEAREST)), np.asarray(ran.seen))


def test_the_explained_page_says_what_cleanup_removed(normalising, generator, tmp_path):
    sketch, _ = load_upload(_two_garment_page(tmp_path))
    view = page_view(normalising, sketch, PageSettings(SketchRegion(0.5, 0.0, 1.0, 1.0)))
    assert view.explained.size == sketch.size and view.explained.mode == "RGB"
    assert view.legend.startswith("removed: printing ") and view.legend.endswith("%") and "\n" not in view.legend
    # The region's box is drawn on the page, whose left half is greyed out: the left garment is no longer black.
    pixels = np.asarray(view.explained).astype(int)
    assert pixels[25:135, 20:100].min() > 100 and pixels[:, 128:].min() == 0
    assert page_view(normalising, sketch, PageSettings(cleanup=False)).legend.startswith("removed: nothing")
    # A ControlNet that takes sketches as drawn has no cleanup: nothing is shown removed.
    assert page_view(generator, sketch).legend.startswith("removed: nothing")
    assert page_view(normalising, None) == PageView(None, None, "")  # no sketch: nothing to explain


def test_a_bad_region_is_a_one_line_message(normalising, tmp_path):
    path = _two_garment_page(tmp_path)
    for text, reason in (("0.6,0,0.2,1", "x0 < x1"), ("left half", "fractions of the page"),
                         ("0,0,1", "four numbers"), ("nan,0,1,1", "four numbers"), ("0,0,2,1", "from 0 to 1")):
        with pytest.raises(ValueError, match=reason) as refused:
            PageSettings.from_page(text, True)
        assert "\n" not in str(refused.value) and str(refused.value).startswith("a sketch region")
        explained, note, seen, _ = _page_outputs(normalising, "upload", str(path), "adaptive", 11, 2.0, text, True)
        assert note == f"⚠️ {refused.value}"
    assert PageSettings.from_page("", True) == PageSettings() == PageSettings.from_page(None, None)
    with pytest.raises(ValueError, match="true or false"):
        PageSettings.from_page("", "yes")
    explained, note, seen, _ = _page_outputs(normalising, "upload", str(path), "adaptive", 11, 2.0, "0,0,0.5,1", True)
    assert note.startswith("removed: ") and explained.size == (256, 160) and seen.width >= 128


def test_the_paper_is_part_of_the_page_and_cleanup_takes_it_off():
    layer = Image.new("RGBA", (128, 128), (0, 0, 0, 0))
    ImageDraw.Draw(layer).rectangle((30, 20, 90, 110), outline=(0, 0, 0, 255), width=3)
    drawn_on_plain = np.asarray(canvas_sketch({**blank_canvas(128), "layers": [layer]}))
    # On the canvas's own size, what the model sees of a drawing on any paper is the drawing on plain paper.
    stroke = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
    ImageDraw.Draw(stroke).polygon([(150, 120), (362, 120), (400, 220), (340, 230), (330, 420), (182, 420),
                                    (172, 230), (112, 220)], outline=(0, 0, 0, 255), width=8)
    seen_on_plain = control_image(canvas_sketch({**blank_canvas(CANVAS), "layers": [stroke]}), 128)
    for name in PAPERS:
        sheet = paper(name, 128)
        luminance = np.asarray(sheet.convert("L"))
        assert sheet.mode == "RGBA" and sheet.size == (128, 128)
        # Printed light (a black line stands out), and printed at all but on plain paper.
        assert luminance.min() >= 150 and (luminance.min() < 250) == (name != "plain")
        assert canvas_sketch(blank_canvas(128, name)) is None  # paper alone is a blank canvas
        assert pick_sketch("draw", blank_canvas(128, name), None, None, SketchSettings(), 32)[1].startswith(
            "the canvas is blank")
        # The page is the paper with the strokes on it; what the model sees is the strokes alone.
        drawn = canvas_sketch({**blank_canvas(128, name), "layers": [layer]})
        assert (name == "plain") == np.array_equal(np.asarray(drawn), drawn_on_plain)
        page = canvas_sketch({**blank_canvas(CANVAS, name), "layers": [stroke]})
        assert agreement(control_image(page, 128), seen_on_plain) > 0.95, name
        # Another paper keeps the strokes.
        assert np.array_equal(np.asarray(canvas_sketch(repapered({**blank_canvas(128), "layers": [layer]}, 128, name))),
                              np.asarray(drawn))
    # The croquis: FIGURE_HEIGHT of the sheet tall, centred.
    rows, columns = np.nonzero(np.asarray(paper("figure", CANVAS).convert("L")) < 250)
    assert abs((rows.max() - rows.min()) / CANVAS - FIGURE_HEIGHT) < 0.02
    assert abs((rows.max() + rows.min()) / 2 - CANVAS / 2) < 3
    assert abs((columns.max() + columns.min()) / 2 - CANVAS / 2) < 3
    with pytest.raises(ValueError, match="unknown paper"):
        paper("graph", 64)


def test_a_model_without_controlnet_offers_the_prompt_only(tiny_base, tmp_path, one_thread):
    from fashionsd_x.apps.studio.ui import build_app

    text_only = GarmentGenerator.load(tiny_base, device="cpu")
    demo = build_app(text_only, tmp_path / "out")
    tabs = {block.id: block.visible for block in demo.blocks.values() if type(block).__name__ == "Tab"}
    assert tabs == {"draw": False, "upload": False, "photo": False, "prompt": True}
    # No sketch can ever reach the model, and there is no LoRA: neither strength slider is offered.
    sliders = {block.elem_id: block.visible for block in demo.blocks.values() if type(block).__name__ == "Slider"}
    assert sliders["sketch-strength"] is False and sliders["lora-strength"] is False and sliders["guidance"] is True
    assert sliders["sketch-start"] is False and sliders["sketch-end"] is False  # the sketch's span neither
    sketch, _ = load_upload(_sketch_file(tmp_path))
    refused = run_generation(text_only, tmp_path / "out", Settings(prompt="a dress", num_images=1, steps=STEPS), sketch)
    assert "needs a ControlNet" in refused.message and refused.files == []
    done = run_generation(text_only, tmp_path / "out", Settings(prompt="a dress", num_images=1, steps=STEPS))
    assert done.message == "" and done.history[0].source == "prompt" and read_params(done.files[0]).sketch is None


def test_the_header_says_what_the_model_is_and_prints_where_it_came_from(generator, tiny_base):
    text_only = GarmentGenerator.load(tiny_base, device="cpu")
    what, loaded = describe_model(generator)
    assert what == f"base {tiny_base.name} with a LoRA and a ControlNet"  # not "LoRA lora, ControlNet controlnet"
    assert loaded == [("base", str(tiny_base.resolve())), ("LoRA", generator.lora),
                      ("ControlNet", generator.controlnet_path)]
    assert describe_model(text_only) == (f"base {tiny_base.name}, no LoRA or ControlNet (prompt only)",
                                         [("base", str(tiny_base.resolve()))])


def test_cli_help_and_a_taken_port(tmp_path, capsys):
    code = ("import sys, fashionsd_x.apps.studio; "
            "print(sorted(m for m in ('gradio', 'torch', 'diffusers') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"  # the CLI imports the module for --help: it must stay light
    from fashionsd_x.cli import main

    with pytest.raises(SystemExit):
        main(["studio", "--help"])
    text = capsys.readouterr().out
    for option in ("--model MODEL", "--lora LORA", "--controlnet CONTROLNET", "--host HOST", "--port PORT"):
        assert option in text
    assert "default: 127.0.0.1" in text and "whole network" in text
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(StudioError, match="cannot listen on 127.0.0.1"):
            serve_studio(model=str(tmp_path / "never-loaded"), port=busy.getsockname()[1])


def test_browser_upload_prompt_generate_download_and_reuse(generator, page, tmp_path, one_thread):
    held: list[Any] = []

    def hold(route) -> None:  # the Upload tab's select reaches the server only after Generate
        if '"Upload sketch"' in (route.request.post_data or ""):
            held.append(route)
        else:
            route.continue_()

    with screenshots.serving(generator, tmp_path / "out") as url:
        page.route("**/gradio_api/run/predict", hold)
        links = screenshots.generate_in_browser(page, url, _sketch_file(tmp_path), "a red dress", steps=STEPS)
        assert held  # Generate used the tab on screen (the upload), not the session's last select (the canvas)
        for route in held:
            route.continue_()
        page.unroute("**/gradio_api/run/predict")
        assert page.locator("#gallery img").count() >= 1
        assert len(links) == 4  # the default number of images
        download = tmp_path / "download.png"
        download.write_bytes(urllib.request.urlopen(links[0], timeout=30).read())
        params = read_params(download)  # the PNG's text chunks survived the trip through Gradio
        assert (params.prompt, params.steps) == ("a red dress", STEPS)
        page.locator("#prompt textarea").fill("something else")
        region = page.locator("#sketch-region input")
        region.fill("0.5,0,0.2,1")  # its right edge left of its left: the page's own line, here and under Generate
        page.locator("#sketch-page-note").get_by_text("⚠️ a sketch region needs x0 < x1").wait_for(timeout=30_000)
        page.locator("#generate").click()
        page.locator("#message").get_by_text("a sketch region needs x0 < x1").wait_for(timeout=30_000)
        page.locator('#history [data-testid="cell-0-1"]').click()  # the first history row's prompt
        page.wait_for_function("document.querySelector('#prompt textarea').value == 'a red dress'", timeout=30_000)
        assert "restored" in page.locator("#message").inner_text() and region.input_value() == ""  # its region
        page.locator("#sketch-page-note").get_by_text("removed: ").wait_for(timeout=30_000)
        page.locator('#sketch-upload [aria-label="sketch.png"]').wait_for(timeout=30_000)  # the sketch it used
        (tmp_path / "notes.png").write_text("not an image")
        page.get_by_role("tab", name="From photo").click()
        page.locator("#photo-upload input[type=file]").set_input_files(str(tmp_path / "notes.png"))
        page.get_by_text("cannot use notes.png: not an image file").first.wait_for(timeout=30_000)  # a toast


# Every frame from page load: how often the canvas was on screen, and the most frames in a row it was while Gradio's
# editor could not take a stroke as drawn (brush not the tool yet, no white sheet, or its zoom still settling).
WATCH_CANVAS = """window.canvasWatch = {shown: 0, unready: 0}; let streak = 0;
  const tick = () => { const editor = window.editor, canvas = document.querySelector("#canvas canvas");
    const shown = canvas && canvas.checkVisibility({visibilityProperty: true}) && canvas.getBoundingClientRect().width;
    const ready = editor && editor.current_tool === "draw" && editor.background_image
                  && Math.abs(editor.image_container.scale.x - editor.scale_value) < 1e-3;
    window.canvasWatch.shown += shown ? 1 : 0;
    streak = shown && !ready ? streak + 1 : 0;
    window.canvasWatch.unready = Math.max(window.canvasWatch.unready, streak);
    requestAnimationFrame(tick); };
  requestAnimationFrame(tick);"""
# Every frame, from when it is installed: the most progress texts shown at once, whether a toast from before was gone
# while a run was in progress, and the times (ms) the last run's warning line first went and progress last showed.
# A progress text on screen: laid out, not in a tracker Gradio keeps transparent (class hide: an event with
# show_progress="hidden", e.g. the page's view of the sketch, still renders its timer there), and not empty.
SHOWN = 'el => el.offsetParent !== null && !el.closest(".hide") && el.textContent.trim() !== ""'
SHOWN_PROGRESS = f'[...document.querySelectorAll(".progress-text")].filter({SHOWN}).length'  # timers on screen
WATCH_PROGRESS = f"""() => {{ window.watched = {{progress: 0, toast_closed: false, line_gone: null, last_progress: null}};
  const shown = {SHOWN};
  const tick = () => {{ const progress = {SHOWN_PROGRESS};
    const now = performance.now(), watched = window.watched;
    watched.progress = Math.max(watched.progress, progress);
    if (progress) watched.last_progress = now;
    if (watched.line_gone === null && !document.querySelector("#message").textContent.includes("⚠"))
      watched.line_gone = now;
    if (progress && ![...document.querySelectorAll(".toast-body")].some(shown)) watched.toast_closed = true;
    requestAnimationFrame(tick); }};
  tick(); }}"""


def _drag_at_once(page, start: tuple[float, float], end: tuple[float, float]) -> None:
    """As soon as the canvas is on screen, drag from `start` to `end` (fractions of it), no tool picked."""
    canvas = page.locator("#canvas canvas").first
    canvas.wait_for(timeout=60_000)
    box = canvas.bounding_box()
    screenshots.drag(page, (box["x"], box["y"], box["width"], box["height"]), start, end)


def test_browser_draw_at_once_then_one_progress_and_no_stale_warning(generator, page, tmp_path, one_thread):
    (tmp_path / "notes.png").write_text("not an image")
    page.add_init_script(WATCH_CANVAS)
    with screenshots.serving(generator, tmp_path / "out") as url:
        page.goto(url)
        _drag_at_once(page, (0.2, 0.2), (0.3, 0.4))
        page.locator("#generate").click()  # no prompt yet: the drawing counts, the prompt is what is missing
        page.locator("#message").get_by_text("prompt is empty").wait_for(timeout=30_000)
        assert "canvas is blank" not in page.locator("#message").inner_text()
        page.get_by_label("Clear canvas").click()  # a fresh sheet comes from the server: drawing again at once
        _drag_at_once(page, (0.6, 0.6), (0.7, 0.8))

        page.locator("#prompt textarea").fill("a red dress")
        screenshots.set_number(page, "num-images", 2)
        screenshots.set_number(page, "steps", STEPS)
        page.get_by_role("tab", name="From photo").click()  # a warning toast, then back to the drawing
        page.locator("#photo-upload input[type=file]").set_input_files(str(tmp_path / "notes.png"))
        page.get_by_text("cannot use notes.png").first.wait_for(timeout=30_000)
        page.get_by_role("tab", name="Draw").click()
        assert "⚠" in page.locator("#message").inner_text()  # the empty prompt's warning, still up
        # The tab switch is a round trip that enables the sketch sliders, and another that shows the drawing as the
        # model reads it; on a loaded runner they can still be under way, a timer on those three sliders, and that
        # is not the Generate's progress this test counts.
        page.locator("#model-view-note").get_by_text("from this sketch").wait_for(timeout=30_000)
        page.wait_for_function(f"!({SHOWN_PROGRESS})", timeout=30_000)
        page.evaluate(WATCH_PROGRESS)
        page.locator("#generate").click()
        page.locator("#downloads a").nth(1).wait_for(timeout=60_000)
        page.wait_for_function("!document.querySelector('#message').textContent.includes('⚠')", timeout=30_000)
        watched, canvas = page.evaluate("window.watched"), page.evaluate("window.canvasWatch")
    # Progress shown once (it was on all six outputs); the last run's toast gone during this one, and its warning
    # line gone before the run ended (it used to stay until the new result replaced it). Timed, not counted in
    # frames: a loaded runner draws few frames, and Gradio renders Markdown a frame or two late.
    assert watched["progress"] == 1 and watched["toast_closed"], watched
    assert watched["line_gone"] is not None and watched["line_gone"] <= watched["last_progress"], watched
    # The canvas was never on screen while a drag would have been lost ("Preparing the canvas…" instead); the page
    # checks the editor once a frame, so it may lag a frame behind a change (the Clear button's).
    assert canvas["shown"] > 0 and canvas["unready"] <= 1, canvas
    [received] = (tmp_path / "out").rglob("sketch.png")
    rows, columns = np.nonzero(np.asarray(Image.open(received).convert("L")) < 128)
    assert min(columns.min(), rows.min()) > 0.55 * CANVAS  # the second stroke only: the first was cleared


def test_browser_upload_fills_its_panel_and_prompt_only_disables_the_sketch_strength(generator, page, tmp_path):
    sketch = Image.new("L", (128, 128), 255)
    ImageDraw.Draw(sketch).rectangle((16, 16, 111, 111), outline=0, width=2)  # 96 of the 128 px: 0.75
    sketch.save(tmp_path / "small.png")
    strength = page.locator("#sketch-strength input[type=range]")
    with screenshots.serving(generator, tmp_path / "out") as url:
        page.goto(url)
        assert strength.is_enabled()
        page.get_by_role("tab", name="Prompt only").click()
        for control in ("sketch-strength", "sketch-start", "sketch-end"):  # every control that weighs a sketch
            page.wait_for_function(f"document.querySelector('#{control} input[type=range]').disabled",
                                   timeout=30_000)
        page.get_by_role("tab", name="Upload sketch").click()
        for control in ("sketch-strength", "sketch-start", "sketch-end"):
            page.wait_for_function(f"!document.querySelector('#{control} input[type=range]').disabled",
                                   timeout=30_000)
        page.locator("#sketch-upload input[type=file]").set_input_files(str(tmp_path / "small.png"))
        shown = page.locator("#sketch-preview img")
        shown.wait_for(timeout=30_000)
        page.wait_for_function("document.querySelector('#sketch-preview img').complete", timeout=30_000)
        panel = page.locator("#sketch-preview").bounding_box()
        on_screen = np.asarray(Image.open(io.BytesIO(shown.screenshot())).convert("L"))
    rows, columns = np.nonzero(on_screen < 128)
    drawn = min(columns.max() - columns.min(), rows.max() - rows.min())
    # Scaled to fit the panel (300 px high, less its label), not shown at its own 128 px (96 px drawn).
    assert drawn >= 0.75 * 0.9 * min(panel["width"], panel["height"] - 40), (drawn, panel)


def test_the_sketch_span_reaches_the_pngs_and_a_bad_one_is_a_message(generator, tmp_path, one_thread):
    sketch, _ = load_upload(_sketch_file(tmp_path))
    page = ("a red dress", "", 1.0, 2.0, 7.5, 1.0, 1.0, 5.0, "unipc", 0.0, 0.5)  # as Gradio sends them
    settings = Settings.from_page(*page)
    assert (settings.control_start, settings.control_end) == (0.0, 0.5)
    outcome = run_generation(generator, tmp_path / "out", settings, sketch, source="upload")
    params = read_params(outcome.files[0])
    assert (params.control_start, params.control_end) == (0.0, 0.5)
    single = generator("a red dress", sketch=sketch, steps=2, seed=5, control_end=0.5)[0]
    assert np.array_equal(_pixels(outcome.files[0]), np.asarray(single.image).astype(int))
    for start, end, reason in ((0.6, 0.4, "control_start must be less than control_end"),
                               (0.0, float("nan"), "control_end must be a finite number"),
                               (-0.5, 1.0, "control_start must be a finite number from 0 to 1")):
        refused = run_generation(generator, tmp_path / "refused", Settings.from_page(*page[:9], start, end), sketch)
        assert reason in refused.message and "\n" not in refused.message and refused.files == []
    assert not (tmp_path / "refused").exists()


def _api(url: str) -> Any:
    """Gradio's own client for a served studio; files in answers stay on the server (their paths are checked)."""
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False)


def _generate_inputs(tab: str, canvas: Any = None, upload: Any = None, photo: Any = None) -> list:
    """Generate's inputs in its API order: the tab shown, the canvas, upload and photo, the photo's method, block
    size and offset, the region and cleanup, then the controls in Settings order (one image, one step)."""
    return [tab, canvas, upload, photo, "adaptive", 11, 2.0, "", True,
            "a red dress", "", 1, 1, 7.5, 1.0, 1.0, 0, "unipc", 0.0, 1.0]


def test_the_studio_keeps_gradio_files_in_a_folder_of_its_own_removed_when_it_closes(generator, tmp_path,
                                                                                      one_thread):
    before = os.environ.get("GRADIO_TEMP_DIR")
    with screenshots.serving(generator, tmp_path / "out") as url:
        folder = Path(os.environ["GRADIO_TEMP_DIR"])
        result = _api(url).predict(*_generate_inputs("prompt"), api_name="/generate")
        [shown] = [Path(item["image"]["path"]) for item in result[0]]  # the gallery's copy, served by Gradio
        [download] = [Path(item["path"]) for item in result[1]]
        assert shown.is_file() and shown.is_relative_to(folder) and download.is_relative_to(folder)
    assert not folder.exists()  # Gradio's copies went with it
    assert os.environ.get("GRADIO_TEMP_DIR") == before
    [kept] = generated_files(tmp_path / "out")  # the studio's own PNG stays where it was written
    assert kept.name == shown.name and read_params(kept).prompt == "a red dress"


def test_ctrl_c_removes_the_studios_gradio_folder(tiny_base, tmp_path):
    """`fsdx studio` as a user runs it, stopped with Ctrl-C; a GRADIO_TEMP_DIR the user set holds its folder."""
    from gradio_client import handle_file

    port = screenshots.free_port()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "OMP_NUM_THREADS": "1"}
    studio = subprocess.Popen([sys.executable, "-m", "fashionsd_x", "studio", "--model", str(tiny_base), "--port",
                               str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + 120
        while True:
            assert studio.poll() is None and time.monotonic() < deadline, studio.communicate()
            try:
                urllib.request.urlopen(url + "config", timeout=2).close()
                break
            except OSError:
                time.sleep(0.1)
        _api(url).predict(handle_file(str(_sketch_file(tmp_path))), api_name="/_preview_upload")
        [folder] = (tmp_path / "gradio").glob("fsdx-studio-gradio-*")
        assert list(folder.rglob("box.png"))  # the upload is in the studio's folder
        studio.send_signal(signal.SIGINT)
        _, errors = studio.communicate(timeout=60)
    finally:
        studio.kill()
    assert studio.returncode in (0, 130) and "Traceback" not in errors, errors
    assert not folder.exists() and not list((tmp_path / "gradio").rglob("*.png"))


def test_canvas_images_are_read_by_the_loader(tmp_path):
    layer = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(layer).line((10, 10, 50, 50), fill=(0, 0, 0, 255), width=4)
    buffer = io.BytesIO()
    layer.save(buffer, format="PNG")
    (tmp_path / "layer.png").write_bytes(buffer.getvalue())
    for source in (buffer.getvalue(), tmp_path / "layer.png"):  # the page's bytes, an API caller's file
        image = read_canvas_image(source)
        assert image.mode == "RGBA" and np.array_equal(np.asarray(image), np.asarray(layer))  # alpha kept
    deep = Image.fromarray(np.full((64, 64), 20_000, dtype=np.uint16))  # 16-bit grey, no alpha: as the loader reads it
    assert np.array_equal(np.asarray(read_canvas_image(_png_bytes(deep)).convert("RGB")),
                          np.asarray(load_image(_saved(deep, tmp_path / "deep.png"))))
    for source, reason in ((b"not an image", "not an image file"), (buffer.getvalue()[:60], "cannot decode"),
                           (_png_bytes(Image.new("RGBA", (8, 8))), "too small")):
        with pytest.raises(ImageLoadError, match=reason):
            read_canvas_image(source)
    sketch, message = pick_sketch("draw", unreadable_canvas("not an image file"), None, None, SketchSettings(), 32)
    assert sketch is None and message == "cannot use the canvas: not an image file"


def _saved(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_non_image_sent_through_the_api_is_a_message_not_a_traceback(generator, tmp_path, capfd):
    """Gradio decoded the canvas and checked an upload's name itself, and logged a traceback for a file that is not
    an image; every image input of every event now goes to the project's loader."""
    from gradio_client import handle_file

    (tmp_path / "notes.txt").write_text("a red dress")
    (tmp_path / "notes.png").write_text("not an image")
    text_file, fake_png = (handle_file(str(tmp_path / name)) for name in ("notes.txt", "notes.png"))
    bad_canvas = {"background": fake_png, "layers": [text_file], "composite": None}
    with screenshots.serving(generator, tmp_path / "out") as url:
        client = _api(url)
        messages = {tab: client.predict(*_generate_inputs(tab, bad_canvas, text_file, fake_png),
                                        api_name="/generate")[3] for tab in ("draw", "upload", "photo")}  # #message
        assert messages == {"draw": "⚠️ cannot use the canvas: not an image file (format not recognised)",
                            "upload": "⚠️ cannot use notes.txt: not an image file (accepted: jpg, jpeg, png, webp, "
                                      "bmp, tif, tiff, gif)",
                            "photo": "⚠️ cannot use notes.png: not an image file (format not recognised)"}
        # Every other event taking an image: the canvas, an upload or a photo that is not one.
        endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        called = []
        for name, endpoint in endpoints.items():
            kinds = [parameter["python_type"]["type"] for parameter in endpoint["parameters"]]
            if name == "/generate" or not any("filepath" in kind for kind in kinds):
                continue
            inputs = [(bad_canvas if kind.startswith("dict") else text_file) if "filepath" in kind
                      else parameter["parameter_default"] if parameter["parameter_has_default"]
                      else parameter["example_input"] for kind, parameter in zip(kinds, endpoint["parameters"])]
            client.predict(*inputs, api_name=name)  # an error from the server would raise here
            called.append(name)
        assert len(called) >= 8, called  # the upload's and photo's previews and views, the canvas's paper and views
        canvas_view = next(name for name in called if "canvas_value" in
                           [parameter["parameter_name"] for parameter in endpoints[name]["parameters"]])
        *_, note = client.predict(bad_canvas, text_file, fake_png, "adaptive", 11, 2.0, "", True,
                                  api_name=canvas_view)
        assert note == "⚠️ cannot use the canvas: not an image file (format not recognised)"
    log = capfd.readouterr()
    assert "Traceback" not in log.err + log.out, log.err
