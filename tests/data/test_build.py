"""The dataset build end to end: what load_from_disk gives back, the report, determinism, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from datasets import load_from_disk
from PIL import Image

from fashionsd_x import limits
from fashionsd_x.data.build import SkippedItemsError, build_dataset
from fashionsd_x.data.sketch import SketchConfig, extract_sketch
from fashionsd_x.data.sources import LayoutError
from tests.conftest import garment
from tests.test_cli import _assert_one_line_error as assert_one_line_error
from tests.test_cli import fsdx, run_main


def _rows(dataset_dir):
    data = load_from_disk(str(dataset_dir))
    return {split: [data[split][i] for i in range(data[split].num_rows)] for split in data}


def test_dresscode_build_columns_sizes_and_report(dresscode_root, tmp_path):
    out = tmp_path / "dc"
    result = build_dataset("dresscode", dresscode_root, out, resolution=64)
    data = load_from_disk(str(out))
    assert set(data) == {"train", "test"}
    assert data["train"].column_names == ["id", "image", "sketch", "text", "category"]
    assert data["train"].num_rows == 4 and data["test"].num_rows == 2
    row = data["test"][0]
    assert isinstance(row["id"], str) and row["image"].size == (64, 64) and row["sketch"].size == (64, 64)
    assert row["image"].mode == "RGB" and row["sketch"].mode == "L"
    report = json.loads((out / "build_report.json").read_text())
    assert report == json.loads(json.dumps(result.report))
    assert report["counts"]["train"] == {"dresses": 2, "lower_body": 1, "upper_body": 1}
    assert report["num_skipped"] == 2
    assert {skip["id"] for skip in report["skipped"]} == {"000002", "013564"}
    assert report["parameters"]["resolution"] == 64 and report["parameters"]["sketch"]["block_size"] == 11
    assert {"datasets", "opencv-python-headless", "pillow", "numpy", "python"} <= set(report["versions"])


def test_image_is_padded_not_cropped_and_sketch_is_from_padded_image(vitonhd_root, tmp_path):
    build_dataset("vitonhd", vitonhd_root, tmp_path / "vh", resolution=64)
    row = load_from_disk(str(tmp_path / "vh"))["train"][0]
    pixels = np.asarray(row["image"])
    # the portrait source (72x96) is scaled to 48x64 and padded with white left and right
    assert (pixels[:, :6] == 255).all() and (pixels[:, -6:] == 255).all()
    assert np.array_equal(np.asarray(row["sketch"]), np.asarray(extract_sketch(row["image"], SketchConfig())))


def test_rebuild_is_identical_and_num_proc_does_not_change_content(synth_root, tmp_path):
    build_dataset("folder", synth_root, tmp_path / "a", resolution=64)
    build_dataset("folder", synth_root, tmp_path / "a", resolution=64)  # same command again replaces it
    build_dataset("folder", synth_root, tmp_path / "b", resolution=64, num_proc=2)
    first, second = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    assert first.keys() == second.keys()
    for split in first:
        assert [r["id"] for r in first[split]] == [r["id"] for r in second[split]]
        for one, two in zip(first[split], second[split]):
            assert np.array_equal(np.asarray(one["image"]), np.asarray(two["image"]))
            assert np.array_equal(np.asarray(one["sketch"]), np.asarray(two["sketch"]))
            assert one["text"] == two["text"] and one["color_rgb"] == two["color_rgb"]


def test_folder_extra_fields_become_columns(synth_root, tmp_path):
    build_dataset("folder", synth_root, tmp_path / "s", resolution=64)
    train = load_from_disk(str(tmp_path / "s"))["train"]
    assert {"color", "color_rgb", "pattern"} <= set(train.column_names)
    meta = {json.loads(line)["file_name"].rsplit("/", 1)[-1].split(".")[0]: json.loads(line)
            for line in (synth_root / "metadata.jsonl").read_text().splitlines()}
    for row in train.select_columns(["id", "category", "color"]):
        garment_id = row["id"].rsplit("/", 1)[-1]
        assert (row["category"], row["color"]) == (meta[garment_id]["category"], meta[garment_id]["color"])
    assert all(isinstance(value, list) and len(value) == 3 for value in train["color_rgb"])


def test_limit_caps_each_split(synth_root, tmp_path):
    result = build_dataset("folder", synth_root, tmp_path / "l", resolution=64, limit=1)
    assert result.report["num_rows"] == {"train": 1, "test": 1}


def _bad_catalogue(root):
    """Every kind of bad input a catalogue can hold, beside good items of unusual formats."""
    root.mkdir()
    good = {}
    garment(0).save(root / "plain.jpg")
    garment(1).convert("CMYK").save(root / "cmyk.jpg")
    sixteen = (np.asarray(garment(2).convert("L")).astype(np.uint16) * 257)
    Image.fromarray(sixteen).save(root / "deep.png")
    garment(3).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "palette.png")
    rgba = garment(4).convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 255))
    rgba.save(root / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    garment(5).save(root / "rotated.jpg", exif=exif, quality=95)
    garment(5).save(root / "upright.jpg", quality=95)
    for name in ("plain.jpg", "cmyk.jpg", "deep.png", "palette.png", "rgba.png", "rotated.jpg", "upright.jpg"):
        good[name] = f"good {name}"
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.png").write_text("not an image")
    data = (root / "plain.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 3])
    Image.new("RGB", (5, 5), "red").save(root / "tiny.png")
    bad = {"empty.jpg": "empty file", "notes.png": "not an image", "truncated.jpg": "cannot decode", "tiny.png": "too small"}
    rows = [{"file_name": name, "text": text, "split": "train"} for name, text in good.items()]
    rows += [{"file_name": name, "text": "bad", "split": "train"} for name in bad]
    rows += [{"file_name": "plain.jpg", "text": "duplicate of plain", "split": "train", "id": "plain"}]
    garment(6).save(root / "uncaptioned.jpg")
    (root / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return good, bad


def test_bad_inputs_are_skipped_with_reasons_and_good_ones_kept(tmp_path):
    good, bad = _bad_catalogue(tmp_path / "raw")
    result = build_dataset("folder", tmp_path / "raw", tmp_path / "out", resolution=64, test_fraction=0.0)
    train = load_from_disk(str(tmp_path / "out"))["train"]
    assert sorted(train["id"]) == sorted(name.rsplit(".", 1)[0] for name in good)
    skipped = {skip["path"].rsplit("/", 1)[-1]: skip["reason"] for skip in result.report["skipped"]}
    for name, reason in bad.items():
        assert reason in skipped[name], (name, skipped.get(name))
    assert "uncaptioned.jpg" in skipped
    # the second row of plain.jpg (new caption, same id) is a duplicate of the first; the first caption stays
    assert any("duplicate of" in skip["reason"] and skip["reason"].find("metadata.jsonl:1 ") > 0
               for skip in result.report["skipped"])
    assert [row["text"] for row in train if row["id"] == "plain"] == ["good plain.jpg"]
    images = {row["id"]: np.asarray(row["image"]) for row in train}
    assert images["rgba"][0, 0].tolist() == [255, 255, 255]
    assert images["deep"].mean() > 150  # 16-bit scaled, not clipped to white or black
    # EXIF orientation 6 = "rotate 90 degrees clockwise to view": the loaded image is the upright one turned
    upright, rotated = images["upright"].astype(int), images["rotated"].astype(int)
    assert np.abs(np.rot90(upright, k=-1) - rotated).mean() < 6 < np.abs(upright - rotated).mean()


def test_strict_fails_after_writing(tmp_path):
    _bad_catalogue(tmp_path / "raw")
    with pytest.raises(SkippedItemsError, match="skipped"):
        build_dataset("folder", tmp_path / "raw", tmp_path / "out", resolution=64, strict=True)
    assert (tmp_path / "out" / "build_report.json").is_file()


def test_refuses_to_replace_a_folder_it_did_not_build(synth_root, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    with pytest.raises(LayoutError, match="not a dataset built by fsdx"):
        build_dataset("folder", synth_root, precious, resolution=64)
    assert (precious / "thesis.txt").is_file()


def test_layout_mismatch_is_one_clear_error(vitonhd_root, tmp_path):
    with pytest.raises(LayoutError, match="fine_captions.json"):
        build_dataset("dresscode", vitonhd_root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_invalid_settings_are_rejected(synth_root, tmp_path):
    with pytest.raises(ValueError, match="block_size"):
        build_dataset("folder", synth_root, tmp_path / "o", block_size=4)
    with pytest.raises(ValueError, match="resolution"):
        build_dataset("folder", synth_root, tmp_path / "o", resolution=8)
    shutil.rmtree(tmp_path / "o", ignore_errors=True)


@pytest.mark.parametrize(("options", "message"), [
    (["--resolution", "100000"],
     "--resolution 100000: at most 4096 (a 100000 px square needs 2.8 TB; this machine has 16 GB available)"),
    (["--resolution", "4097"], "--resolution 4097: at most 4096 (the largest image side the data stages make)"),
    (["--resolution", "4096", "--num-proc", "4"],
     "--resolution 4096: at most 3779 (a 4096 px square in each of 4 workers needs 19 GB; this machine has 16 GB "
     "available)"),
    (["--num-proc", "9"],
     "--num-proc 9: at most 8 (4 per CPU and this machine has 2; more workers only add memory and switching)"),
    (["--limit", "10000001"], "--limit 10000001: at most 10000000 (items per split; Dress Code has 53,792 garments)"),
    (["--block-size", "1027"],
     "block_size 1027: at most 1025 (a neighbourhood a quarter of the largest image side; its work grows with it)"),
])
def test_sizes_and_counts_over_their_bounds_are_one_line_before_anything_is_read(options, message, synth_root, tmp_path,
                                                                                 capsys, monkeypatch):
    # Issue 29: --resolution 100000 decoded for minutes and was killed for memory, leaving .out.building behind.
    monkeypatch.setattr(limits, "available_memory", lambda: 16 * 10**9)
    monkeypatch.setattr(limits, "cpu_count", lambda: 2)
    code, error = run_main(capsys, "data", "build", "--source", "folder", "--root", synth_root, "--out",
                           tmp_path / "out", *options)
    assert (code, error) == (2, f"fsdx data build: error: {message}\n")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["synth"]  # no out, no .out.building


# Hostile catalogues from the probe of issue #13: each item is either in the dataset once or in the report
# with its reason, and a catalogue with nothing usable is one line on stderr with exit code 2.

def _loop(root, name):
    """NAME and NAME.loop under ROOT: two symbolic links pointing at each other."""
    (root / name).symlink_to(f"{name}.loop.png")
    (root / f"{name}.loop.png").symlink_to(name)


def _jsonl(root, rows):
    (root / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def _skips(result):
    return {skip["path"].rsplit("/", 1)[-1]: skip["reason"] for skip in result.report["skipped"]}


@pytest.mark.parametrize("caption_file", ["metadata.jsonl", "captions.csv"])
def test_row_naming_a_symlink_loop_is_skipped_not_a_traceback(tmp_path, caption_file):
    root = tmp_path / "raw"
    root.mkdir()
    garment(0).save(root / "a.png")
    _loop(root, "loop.png")
    if caption_file == "metadata.jsonl":
        _jsonl(root, [{"file_name": "a.png", "text": "a red dress"}, {"file_name": "loop.png", "text": "a loop"}])
    else:
        (root / "captions.csv").write_text("file_name,text\na.png,a red dress\nloop.png,a loop\n")
    result = build_dataset("folder", root, tmp_path / "out", resolution=32, test_fraction=0.0)
    assert load_from_disk(str(tmp_path / "out"))["train"]["id"] == ["a"]
    skips = _skips(result)
    assert skips["loop.png"] == "image is a symbolic link loop"
    assert skips["loop.png.loop.png"] == "image is a symbolic link loop"  # the other end, listed by no row


def test_same_image_listed_twice_is_in_the_dataset_once_under_its_first_caption(tmp_path):
    root = tmp_path / "raw"
    root.mkdir()
    garment(0).save(root / "a.png")
    garment(1).save(root / "b.png")
    shutil.copy(root / "b.png", root / "b_copy.png")
    (root / "alias.png").symlink_to("a.png")
    _jsonl(root, [
        {"file_name": "a.png", "text": "a red dress", "id": "dress-1"},
        {"file_name": "a.png", "text": "a blue dress"},  # same file, new caption, no id
        {"file_name": "./alias.png", "text": "a green dress"},  # the same file through a link
        {"file_name": "b.png", "text": "a skirt"},
        {"file_name": "b_copy.png", "text": "a skirt again"},  # identical bytes under another name
    ])
    result = build_dataset("folder", root, tmp_path / "out", resolution=32, test_fraction=0.0)
    train = load_from_disk(str(tmp_path / "out"))["train"]
    assert sorted(zip(train["id"], train["text"])) == [("b", "a skirt"), ("dress-1", "a red dress")]
    reasons = [skip["reason"] for skip in result.report["skipped"]]
    assert len(reasons) == 3 and result.report["num_skipped"] == 3
    assert reasons[0] == f"duplicate of {root / 'metadata.jsonl'}:1 (the same image file); the first row is kept"
    assert reasons[1].startswith(f"duplicate of {root / 'metadata.jsonl'}:1 (the same image file)")
    assert reasons[2].startswith(f"duplicate of {root / 'metadata.jsonl'}:4 (an identical image file)")


def test_latin1_captions_are_skipped_with_the_byte_named_never_stored_as_replacement_characters(tmp_path):
    jsonl_root, txt_root = tmp_path / "jsonl", tmp_path / "txt"
    for root in (jsonl_root, txt_root):
        root.mkdir()
        garment(0).save(root / "good.png")
        garment(1).save(root / "latin.png")
    lines = [json.dumps({"file_name": "good.png", "text": "robe d'été"}, ensure_ascii=False).encode("utf-8"),
             json.dumps({"file_name": "latin.png", "text": "jupe plissée"}, ensure_ascii=False).encode("latin-1")]
    (jsonl_root / "metadata.jsonl").write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")  # a BOM is fine
    (txt_root / "good.txt").write_bytes("\ufeffrobe d'été".encode("utf-8"))
    (txt_root / "latin.txt").write_bytes("jupe plissée".encode("latin-1"))
    for root in (jsonl_root, txt_root):
        out = tmp_path / f"{root.name}_out"
        result = build_dataset("folder", root, out, resolution=32, test_fraction=0.0)
        train = load_from_disk(str(out))["train"]
        assert list(zip(train["id"], train["text"])) == [("good", "robe d'été")]
        reasons = " | ".join(skip["reason"] for skip in result.report["skipped"])
        assert "not UTF-8 text (byte 0xe9" in reasons and "re-save it as UTF-8" in reasons
        assert "\ufffd" not in json.dumps(result.report, ensure_ascii=False)
    assert _skips(result)["latin.png"].startswith("caption file latin.txt is not UTF-8 text (byte 0xe9 at offset 10")


def test_cli_reports_an_unlisted_symlink_loop_and_a_catalogue_with_nothing_usable_is_one_line(tmp_path):
    root = tmp_path / "raw"
    root.mkdir()
    garment(0).save(root / "a.png")
    (root / "a.txt").write_text("a red dress")
    _loop(root, "loop.png")  # no caption file: today it was passed over without a word
    build = fsdx("data", "build", "--source", "folder", "--root", root, "--out", tmp_path / "ds", "--resolution", "32",
                 "--test-fraction", "0")
    assert build.returncode == 0, build.stderr
    report = json.loads((tmp_path / "ds" / "build_report.json").read_text())
    assert report["num_rows"] == {"train": 1, "test": 0}
    assert {skip["path"].rsplit("/", 1)[-1]: skip["reason"] for skip in report["skipped"]} == {
        "loop.png": "image is a symbolic link loop", "loop.png.loop.png": "image is a symbolic link loop"}
    assert "2 item(s) skipped" in build.stdout and "loop.png" in build.stdout

    (root / "a.txt").write_bytes("robe d'été".encode("latin-1"))
    failed = fsdx("data", "build", "--source", "folder", "--root", root, "--out", tmp_path / "ds2")
    assert_one_line_error(failed, "no usable item", "not UTF-8 text (byte 0xe9")
    assert not (tmp_path / "ds2").exists()


def test_a_field_that_is_empty_in_every_row_is_a_string_column(tmp_path):
    # Found by tests/data/test_fuzz.py: a field null in every row made map() fail casting to Arrow's null type.
    root = tmp_path / "raw"
    root.mkdir()
    garment(0).save(root / "a.png")
    garment(1).save(root / "b.png")
    _jsonl(root, [{"file_name": "a.png", "text": "a red dress"}, {"file_name": "b.png", "text": "a top", "note": None}])
    build_dataset("folder", root, tmp_path / "out", resolution=32, test_fraction=0.0)
    train = load_from_disk(str(tmp_path / "out"))["train"]
    assert train["note"] == [None, None] and train.features["note"].dtype == "string"
