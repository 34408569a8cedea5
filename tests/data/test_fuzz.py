"""Property-based tests of the data stage's input surfaces (issue #13, part 4).

Sketch conditioning gets random images of every Pillow mode, size and aspect ratio; the folder source and the
build get random catalogues (rows of random keys, values and types, captions of random bytes, odd names,
links that loop, duplicates). The property is always the same: a valid result or the project's clear error,
never another exception, and never a good item lost or a bad one left out of the report.
Bounded so the whole file runs in well under a minute.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from datasets import load_from_disk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from fashionsd_x.data.build import build_dataset
from fashionsd_x.data.conditioning import (BlankSketchError, SketchConditioning, conditioning_preview,
                                           control_image, normalize_sketch)
from fashionsd_x.data.sources import scan_source
from tests.conftest import garment

# No example database: a run does not depend on what earlier runs found; a failure prints its example.
FUZZ = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

MODES = ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
         "I", "I;16", "I;16B", "I;16L", "F"]


# --- sketch conditioning -------------------------------------------------------------------------------------

@st.composite
def sketches(draw) -> Image.Image:
    """An image of any mode and shape: random bytes (NaN and negative values in F and I), a flat sheet, or lines."""
    mode = draw(st.sampled_from(MODES))
    size = (draw(st.integers(0, 300)), draw(st.integers(0, 300)))
    kind = draw(st.sampled_from(["noise", "flat", "lines"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "noise":
        length = len(Image.new(mode, size).tobytes())
        return Image.frombytes(mode, size, rng.integers(0, 256, length, dtype=np.uint8).tobytes())
    paper, ink = draw(st.integers(0, 255)), draw(st.integers(0, 255))
    sheet = Image.new("L", size, paper)
    if kind == "lines":
        pen = ImageDraw.Draw(sheet)
        for _ in range(draw(st.integers(1, 4))):
            pen.line([int(v) for v in rng.integers(0, max(*size, 1), 4)], fill=ink, width=draw(st.integers(1, 6)))
    return _as_mode(sheet, mode)


def _as_mode(sheet: Image.Image, mode: str) -> Image.Image:
    values = np.asarray(sheet)
    if mode.startswith("I;16"):  # convert() has no L -> I;16 path; the same picture as 16-bit values
        return Image.frombytes(mode, sheet.size, (values.astype(">u2" if mode == "I;16B" else "<u2") * 257).tobytes())
    via = {"La": "LA", "RGBa": "RGBA"}.get(mode)  # premultiplied modes are reached from their plain form only
    return (sheet.convert(via) if via else sheet).convert(mode)


conditionings = st.builds(SketchConditioning, normalize=st.booleans(),
                          line_width=st.floats(0.001, 0.1), ink_threshold=st.floats(0.01, 0.99))


def _clear_error(error: ValueError) -> None:
    """The project's clear error: a ValueError (BlankSketchError is one) whose message is one non-empty line."""
    message = str(error)
    assert message.strip() and "\n" not in message, repr(message)


@settings(FUZZ, max_examples=40)
@given(sketch=sketches(), resolution=st.integers(1, 72), conditioning=conditionings, invert=st.booleans())
def test_control_image_is_valid_or_a_clear_error(sketch, resolution, conditioning, invert):
    try:
        tensor = control_image(sketch, resolution, invert, conditioning)
    except ValueError as error:
        _clear_error(error)
        assert resolution < 8 or 0 in sketch.size or isinstance(error, BlankSketchError), error
        return
    assert tensor.shape == (3, resolution, resolution) and tensor.dtype == torch.float32
    assert torch.isfinite(tensor).all() and tensor.min() >= 0 and tensor.max() <= 1
    if conditioning.normalize:
        assert set(tensor.unique().tolist()) <= {0.0, 1.0}


@settings(FUZZ, max_examples=30)
@given(sketch=sketches(), resolution=st.integers(1, 72), conditioning=conditionings)
def test_normalize_sketch_and_preview_are_valid_or_a_clear_error(sketch, resolution, conditioning):
    try:
        lines = normalize_sketch(sketch, resolution, conditioning)
        preview = conditioning_preview(sketch, resolution, conditioning)
    except ValueError as error:
        _clear_error(error)
        return
    assert lines.shape == (resolution, resolution) and lines.dtype == np.uint8
    assert set(np.unique(lines).tolist()) <= {0, 255} and (lines == 0).any()
    assert preview.mode == "L" and preview.size == (resolution, resolution)
    if conditioning.normalize:
        assert np.array_equal(np.asarray(preview), lines)


@settings(FUZZ, max_examples=30)
@given(shape=st.lists(st.integers(0, 40), min_size=1, max_size=4),
       dtype=st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.bool_, np.int64]),
       seed=st.integers(0, 2**32 - 1), resolution=st.integers(8, 48))
def test_control_image_of_any_array_is_valid_or_a_clear_error(shape, dtype, seed, resolution):
    array = (np.random.default_rng(seed).random(shape) * 255).astype(dtype)
    try:
        tensor = control_image(array, resolution)
    except ValueError as error:
        _clear_error(error)
        return
    assert array.dtype == np.uint8 and array.ndim in (2, 3)
    assert tensor.shape == (3, resolution, resolution) and torch.isfinite(tensor).all()


def test_a_mark_that_thinning_would_erase_stays_in_the_conditioning():
    # Found by the fuzzer above: a 1 x 3 sheet with one dark pixel becomes a 2 x 2 block at 8 px, which
    # Zhang-Suen thinning removes whole; the conditioning came back all white instead of showing the mark.
    sheet = Image.fromarray(np.array([[0], [255], [255]], dtype=np.uint8))
    lines = normalize_sketch(sheet, 8)
    assert (lines[:4] == 0).any() and (lines[4:] == 255).all()


def test_float_sketch_with_nan_is_read_as_black_not_an_arbitrary_byte():
    values = np.full((40, 40), 255.0, dtype=np.float32)
    values[20, 5:35] = np.nan
    tensor = control_image(Image.fromarray(values, mode="F"), 40)
    assert tensor[:, 20, 5:35].eq(0).all() and tensor[:, :15].eq(1).all()


# --- source records and caption files ------------------------------------------------------------------------

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
# Files every random catalogue holds besides its good items; rows name them, or leave them to be found unlisted.
# zz_copy0.png has good0.png's bytes and sorts after it, so with .txt captions good0 is still the first claim.
FURNITURE = ["zz_copy0.png", "spare.png", "é ü.png", "sub/deep.png", "loop.png", "loop2.png", "broken.png",
             "folder.png", "notes.png", "empty.png", "tiny.png"]
USABLE = ["spare.png", "é ü.png", "sub/deep.png", "zz_copy0.png"]  # decodable images a random row may caption
ODD_NAMES = ["missing.png", "./good0.png", "sub/../good0.png", "../outside.png", "/etc/hostname", "", ".", "sub",
             "a\x00b.png", "x" * 300 + ".png", "metadata.jsonl", "GOOD0.PNG", "good0.png"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8)
    | st.sampled_from(["\ud800", "caf\udce9", "train", "test", "\u2028", "a\nb"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=5)
captions = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20).filter(str.strip)


@st.composite
def metadata_rows(draw, index: int) -> dict:
    """A row of random keys, values and types, each field often valid so that some random rows are good items.

    Extra keys carry the row's index, so no two rows give one field two types (a clear error of its own).
    """
    row = {}
    if draw(st.integers(0, 9)):
        odd = st.sampled_from(FURNITURE + ODD_NAMES) | st.text(max_size=10) | json_values
        row["file_name"] = draw(st.sampled_from(USABLE) if draw(st.booleans()) else odd)
    if draw(st.integers(0, 4)):
        row["text"] = draw(captions if draw(st.booleans()) else json_values)
    for name, valid in (("id", st.text(max_size=6) | st.integers(-5, 5)), ("split", st.sampled_from(["train", "test", ""])),
                        ("category", st.text(max_size=6))):
        if draw(st.integers(0, 3)) == 0:
            row[name] = draw(valid | json_values)
    for name, value in draw(st.dictionaries(st.text(max_size=5), json_values, max_size=2)).items():
        row[f"x{index}_{name}"] = value
    if draw(st.integers(0, 7)) == 0:
        row[draw(st.sampled_from(["image", "sketch", "_path", "_skip", "_x"]))] = draw(json_values)
    return row


@st.composite
def catalogues(draw) -> dict:
    """What a random catalogue holds: its caption format, good items first, then random rows and raw byte lines."""
    layout = draw(st.sampled_from(["metadata.jsonl", "captions.csv", "txt"]))
    good = draw(st.lists(captions, min_size=1, max_size=3))
    rows = [draw(metadata_rows(index)) for index in range(draw(st.integers(0, 6)))]
    junk = draw(st.lists(st.binary(max_size=24).map(lambda raw: raw.replace(b"\n", b"").replace(b"\r", b"")),
                         max_size=2))
    txt = draw(st.dictionaries(st.sampled_from(FURNITURE), st.binary(max_size=24) | captions.map(str.encode),
                               max_size=4))
    return {"layout": layout, "good": good, "rows": rows, "junk": junk, "txt": txt}


@lru_cache(maxsize=1)
def _photos() -> tuple[bytes, ...]:
    """Six distinct garment PNGs of 36 x 48 px (above the loader's 32 px minimum)."""
    encoded = []
    for index in range(6):
        buffer = io.BytesIO()
        garment(index, size=48).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return tuple(encoded)


def _write_catalogue(root: Path, spec: dict) -> None:
    photos = _photos()
    (root / "sub").mkdir(parents=True)
    (root / "folder.png").mkdir()
    for index in range(len(spec["good"])):
        (root / f"good{index}.png").write_bytes(photos[index])
    (root / "zz_copy0.png").write_bytes(photos[0])
    for name, photo in (("spare.png", photos[3]), ("é ü.png", photos[4]), ("sub/deep.png", photos[5])):
        (root / name).write_bytes(photo)
    (root / "loop.png").symlink_to("loop2.png")
    (root / "loop2.png").symlink_to("loop.png")
    (root / "broken.png").symlink_to("nowhere.png")
    (root / "notes.png").write_text("not an image")
    (root / "empty.png").write_bytes(b"")
    Image.new("RGB", (5, 5), "red").save(root / "tiny.png")
    good = [{"file_name": f"good{index}.png", "text": text, "split": "train"} for index, text in enumerate(spec["good"])]
    if spec["layout"] == "metadata.jsonl":
        lines = [json.dumps(row).encode() for row in good + spec["rows"]] + spec["junk"]
        (root / "metadata.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    elif spec["layout"] == "captions.csv":
        _write_csv(root / "captions.csv", good + spec["rows"])
    else:
        for name, caption in spec["txt"].items():
            (root / name).with_suffix(".txt").write_bytes(caption)
        for index, text in enumerate(spec["good"]):
            (root / f"good{index}.txt").write_text(text, encoding="utf-8")


def _write_csv(path: Path, rows: list[dict]) -> None:
    # Flat text only: a value that is not a string is written as its JSON, as a spreadsheet export would hold it.
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["file_name", "text", "split", "note"])
    for row in rows:
        cells = [row.get(name, "") for name in ("file_name", "text", "split")] + [row.get("x0_", "")]
        writer.writerow([cell if isinstance(cell, str) else json.dumps(cell) for cell in cells])
    path.write_bytes(buffer.getvalue().encode("utf-8", "surrogatepass"))


def _image_entries(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and not path.is_dir()]


def _check_scan(root: Path, spec: dict):
    """The scan's properties: good items kept with their captions, every image accounted for once, reasons given."""
    scan = scan_source("folder", root, test_fraction=0.0)
    records = {record.id: record for record in scan.records}
    for index, text in enumerate(spec["good"]):
        assert records[f"good{index}"].text == " ".join(text.split()), scan.skipped
    kept = [os.path.realpath(record.image_path) for record in scan.records]
    assert len(set(kept)) == len(kept) and len(records) == len(scan.records)
    assert len({Path(path).read_bytes() for path in kept}) == len(kept)  # no two records with identical bytes
    accounted = set(kept) | {os.path.realpath(skip.path.replace("\0", "")) for skip in scan.skipped}
    for entry in _image_entries(root):
        assert os.path.realpath(entry) in accounted, (entry, scan.skipped)
    for skip in scan.skipped:
        assert skip.reason.strip() and "\n" not in skip.reason, skip
    for record in scan.records:
        record.text.encode("utf-8")  # no lone surrogate reaches the dataset
    return scan


@settings(FUZZ, max_examples=40)
@given(spec=catalogues())
def test_folder_scan_keeps_every_good_item_and_reports_every_other(spec):
    with tempfile.TemporaryDirectory() as folder:
        _write_catalogue(Path(folder) / "raw", spec)
        _check_scan(Path(folder) / "raw", spec)


@settings(FUZZ, max_examples=20)
@given(spec=catalogues())
def test_folder_build_completes_and_its_report_names_every_item_left_out(spec):
    with tempfile.TemporaryDirectory() as folder:
        root, out = Path(folder) / "raw", Path(folder) / "out"
        _write_catalogue(root, spec)
        scan = _check_scan(root, spec)
        result = build_dataset("folder", root, out, resolution=32, test_fraction=0.0)
        report = json.loads((out / "build_report.json").read_bytes().decode("utf-8"))
        assert report["num_skipped"] == len(report["skipped"]) == len(result.report["skipped"])
        data = load_from_disk(str(out))
        built = {row_id: text for split in data for row_id, text in zip(data[split]["id"], data[split]["text"])}
        for index, text in enumerate(spec["good"]):
            assert built[f"good{index}"] == " ".join(text.split())
        left_out = {skip["id"] for skip in report["skipped"][len(scan.skipped):]}  # the build's own skips follow
        assert set(built) | left_out == {record.id for record in scan.records} and not set(built) & left_out
        assert sum(report["num_rows"].values()) == len(built)
