"""Raw layouts -> records: ids, captions, categories, splits, and what gets skipped."""

from __future__ import annotations

import json

import pytest

from fashionsd_x.data.sources import LayoutError, scan_source
from fashionsd_x.data.sources.dresscode import caption_text
from tests.conftest import garment


def _by_id(scan):
    return {record.id: record for record in scan.records}


def test_dresscode_records_captions_and_splits(dresscode_root):
    scan = scan_source("dresscode", dresscode_root)
    records = _by_id(scan)
    assert set(records) == {"020714", "020715", "020716", "000001", "000003", "013563"}
    assert records["020714"].split == "train" and records["020716"].split == "test"
    assert records["000003"].category == "upper_body"
    # fine phrases first, then coarse ones not already present
    assert records["020714"].text == "floral print, short sleeves, dresses"
    assert records["020714"].image_path.name == "020714_1.jpg"  # the in-shop photo, not the model
    reasons = {skip.id: skip.reason for skip in scan.skipped}
    assert "no caption" in reasons["000002"]
    assert "not found" in reasons["013564"]
    assert [r.id for r in scan.records] == sorted(r.id for r in scan.records if r.split == "test") + sorted(
        r.id for r in scan.records if r.split == "train")


def test_caption_text_keeps_order_and_drops_repeats():
    assert caption_text(["a", "b"], ["b", "c", "a"]) == "a, b, c"
    assert caption_text([], []) == ""


def test_dresscode_subset_of_categories(dresscode_root):
    import shutil
    shutil.rmtree(dresscode_root / "lower_body")
    assert {r.category for r in scan_source("dresscode", dresscode_root).records} == {"dresses", "upper_body"}


@pytest.mark.parametrize("missing, named", [
    ("fine_captions.json", "fine_captions.json"),
    ("dresses/train_pairs.txt", "train_pairs.txt"),
    ("upper_body/test_pairs_paired.txt", "test_pairs_paired.txt"),
])
def test_dresscode_layout_errors_name_the_missing_part(dresscode_root, missing, named):
    (dresscode_root / missing).unlink()
    with pytest.raises(LayoutError, match=named):
        scan_source("dresscode", dresscode_root)


def test_dresscode_malformed_pairs_line_is_skipped(dresscode_root):
    with (dresscode_root / "dresses" / "train_pairs.txt").open("a") as handle:
        handle.write("just-one-token\n")
    scan = scan_source("dresscode", dresscode_root)
    assert any("malformed" in skip.reason for skip in scan.skipped)
    assert len(scan.records) == 6


def test_vitonhd_records(vitonhd_root):
    scan = scan_source("vitonhd", vitonhd_root)
    records = _by_id(scan)
    assert set(records) == {"00006", "00008", "00013", "03191", "03192"}
    assert records["03191"].split == "test" and records["00006"].split == "train"
    assert records["03191"].image_path == vitonhd_root / "test" / "cloth" / "03191_00.jpg"
    assert records["00006"].text == "crew neck, cotton t-shirt"
    assert {r.category for r in scan.records} == {"upper_body"}


def test_vitonhd_missing_cloth_folder(vitonhd_root):
    import shutil
    shutil.rmtree(vitonhd_root / "test" / "cloth")
    with pytest.raises(LayoutError, match="cloth folder"):
        scan_source("vitonhd", vitonhd_root)


def test_missing_root_is_a_layout_error(tmp_path):
    with pytest.raises(LayoutError, match="root not found"):
        scan_source("dresscode", tmp_path / "nowhere")


def test_folder_metadata_jsonl_keeps_extra_fields(synth_root):
    scan = scan_source("folder", synth_root)
    assert len(scan.records) == 12 and not scan.skipped
    record = scan.records[0]
    assert {"color", "pattern", "color_rgb"} <= set(record.extra)
    assert record.category == record.extra.get("category", record.category)
    assert {r.split for r in scan.records} == {"train", "test"}


def test_folder_split_is_deterministic_and_stable_when_catalogue_grows(synth_root):
    first = {r.id: r.split for r in scan_source("folder", synth_root, test_fraction=0.5).records}
    again = {r.id: r.split for r in scan_source("folder", synth_root, test_fraction=0.5).records}
    assert first == again
    lines = (synth_root / "metadata.jsonl").read_text().splitlines()
    (synth_root / "metadata.jsonl").write_text("\n".join(lines[:10]) + "\n")
    fewer = {r.id: r.split for r in scan_source("folder", synth_root, test_fraction=0.5).records}
    assert all(first[key] == split for key, split in fewer.items())


def test_folder_explicit_split_field_wins(tmp_path):
    root = tmp_path / "cat"
    root.mkdir()
    rows = []
    for index in range(4):
        garment(index).save(root / f"g{index}.png")
        rows.append({"file_name": f"g{index}.png", "text": f"garment {index}", "split": "test" if index == 0 else "train"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    splits = {r.id: r.split for r in scan_source("folder", root, test_fraction=0.0).records}
    assert splits == {"g0": "test", "g1": "train", "g2": "train", "g3": "train"}


def test_folder_captions_csv_and_txt(tmp_path):
    csv_root, txt_root = tmp_path / "csv", tmp_path / "txt"
    for root in (csv_root, txt_root):
        (root / "shop").mkdir(parents=True)
        for index in range(3):
            garment(index).save(root / "shop" / f"g{index}.jpg")
    (csv_root / "captions.csv").write_text(
        "file_name,text,season\n" + "".join(f"shop/g{i}.jpg,\"red top, cotton\",ss{i}\n" for i in range(3)))
    for index in range(3):
        (txt_root / "shop" / f"g{index}.txt").write_text(f"blue skirt {index}\n")
    csv_records = scan_source("folder", csv_root).records
    assert [r.text for r in csv_records] == ["red top, cotton"] * 3
    assert sorted(r.extra["season"] for r in csv_records) == ["ss0", "ss1", "ss2"]
    txt_records = scan_source("folder", txt_root).records
    assert sorted(r.text for r in txt_records) == ["blue skirt 0", "blue skirt 1", "blue skirt 2"]
    assert sorted(r.id for r in txt_records) == ["shop/g0", "shop/g1", "shop/g2"]


def test_folder_bad_rows_are_skipped_with_reasons(tmp_path):
    root = tmp_path / "cat"
    root.mkdir()
    for index in range(4):
        garment(index).save(root / f"g{index}.png")
    rows = [
        json.dumps({"file_name": "g0.png", "text": "a red dress"}),
        json.dumps({"file_name": "g1.png", "text": ""}),
        "{not json",
        json.dumps({"file_name": "missing.png", "text": "a ghost"}),
        json.dumps({"file_name": "g2.png", "text": "a blue top", "id": "g0"}),
        json.dumps({"file_name": "../escape.png", "text": "outside"}),
    ]
    (root / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    scan = scan_source("folder", root)
    assert [r.id for r in scan.records] == ["g0"]
    reasons = " | ".join(skip.reason for skip in scan.skipped)
    for expected in ("missing caption", "invalid JSON", "not found", "duplicate id", "outside ROOT", "no caption for this image"):
        assert expected in reasons, expected
    assert any(skip.path.endswith("g3.png") for skip in scan.skipped)  # never silently lost


def test_folder_without_captions_is_a_layout_error(tmp_path):
    (tmp_path / "cat").mkdir()
    garment(0).save(tmp_path / "cat" / "g0.png")
    with pytest.raises(LayoutError, match="metadata.jsonl, captions.csv"):
        scan_source("folder", tmp_path / "cat")


# Unreadable parts of the released layouts: a layout file is one clear LayoutError, an item is a skip by name.

def test_dresscode_unreadable_layout_files_are_one_clear_error(dresscode_root):
    (dresscode_root / "coarse_captions.json").write_bytes('{"000001": ["robe d\'été"]}'.encode("latin-1"))
    with pytest.raises(LayoutError, match=r"coarse_captions.json is not UTF-8 text \(byte 0xe9"):
        scan_source("dresscode", dresscode_root)
    (dresscode_root / "coarse_captions.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(LayoutError, match="nests too deeply"):
        scan_source("dresscode", dresscode_root)
    (dresscode_root / "coarse_captions.json").unlink()
    (dresscode_root / "coarse_captions.json").mkdir()
    with pytest.raises(LayoutError, match="cannot read caption file .*Is a directory"):
        scan_source("dresscode", dresscode_root)


def test_dresscode_bad_items_are_skipped_by_name(dresscode_root):
    images = dresscode_root / "dresses" / "images"
    (images / "020714_1.jpg").unlink()
    (images / "020714_1.jpg").symlink_to("020714_1.jpg")  # a link to itself
    (images / "020715_1.jpg").unlink()
    (images / "020715_1.jpg").symlink_to("gone.jpg")
    with (dresscode_root / "upper_body" / "train_pairs.txt").open("ab") as handle:
        handle.write("000009_0.jpg 000009é_1.jpg\n".encode("latin-1"))
        handle.write(b"000010_0.jpg ../../dresses/images/020716_1.jpg\n")
    fine = json.loads((dresscode_root / "fine_captions.json").read_text())
    (dresscode_root / "fine_captions.json").write_text(json.dumps({**fine, "000001": ["\ud800 lone surrogate"]}))
    scan = scan_source("dresscode", dresscode_root)
    reasons = {skip.id or skip.path.rsplit("/", 1)[-1]: skip.reason for skip in scan.skipped}
    assert reasons["020714"] == "garment image is a symbolic link loop"
    assert reasons["020715"] == "garment image is a broken symbolic link"
    assert reasons["train_pairs.txt:3"].startswith("line is not UTF-8 text (byte 0xe9")
    assert reasons["train_pairs.txt:4"].startswith("malformed pairs line")  # a path out of the category folder
    assert reasons["000001"].endswith("is not valid Unicode text (lone surrogate U+D800)")
    assert {r.id for r in scan.records} == {"020716", "000003", "013563"}


def test_vitonhd_pairs_file_that_is_a_folder_is_one_clear_error(vitonhd_root):
    (vitonhd_root / "test_pairs.txt").unlink()
    (vitonhd_root / "test_pairs.txt").mkdir()
    with pytest.raises(LayoutError, match="vitonhd layout: cannot read pairs file .*test_pairs.txt"):
        scan_source("vitonhd", vitonhd_root)


def test_folder_csv_rows_that_are_not_utf8_or_too_long_are_skipped(tmp_path):
    root = tmp_path / "cat"
    root.mkdir()
    for index in range(3):
        garment(index).save(root / f"g{index}.png")
    (root / "captions.csv").write_bytes("file_name,text\ng0.png,robe d'été\n".encode() + "g1.png,jupe plissée\n"
                                        .encode("latin-1") + b"g2.png,a,b\n")
    scan = scan_source("folder", root)
    assert [(r.id, r.text) for r in scan.records] == [("g0", "robe d'été")]
    reasons = {skip.path.rsplit("/", 1)[-1]: skip.reason for skip in scan.skipped}
    assert reasons["captions.csv:3"].startswith("row is not UTF-8 text (byte 0xe9")
    assert reasons["captions.csv:4"] == "row has more fields than the header (2)"
    assert "no caption" in reasons["g1.png"] and "no caption" in reasons["g2.png"]


@pytest.mark.parametrize("row, reason", [
    ({"text": ["a", "list"]}, "text must be a string, got list"),
    ({"id": 1.5}, "id must be a string or an integer, got float"),
    ({"category": {"name": "dress"}}, "category must be a string, got dict"),
    ({"image": "a.png"}, "field 'image' clashes with the columns the build writes"),
    ({"_path": "x"}, "field '_path' clashes"),
    ({"sku": 2**70}, "field 'sku': no dataset column can hold"),
    ({"tags": [1, "a"]}, "field 'tags': no dataset column can hold"),
    ({"text": "caf\ud800"}, "field 'text' is not valid Unicode text (lone surrogate U+D800)"),
])
def test_folder_rows_with_mistyped_or_clashing_fields_are_skipped(tmp_path, row, reason):
    root = tmp_path / "cat"
    root.mkdir()
    garment(0).save(root / "g0.png")
    garment(1).save(root / "g1.png")
    rows = [{"file_name": "g0.png", "text": "a red dress"}, {"file_name": "g1.png", "text": "a top", **row}]
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    scan = scan_source("folder", root)
    assert [r.id for r in scan.records] == ["g0"]
    row_skip, image_skip = scan.skipped
    assert row_skip.reason.startswith(reason) and row_skip.path.endswith("metadata.jsonl:2"), row_skip
    assert image_skip.path.endswith("g1.png") and image_skip.reason == "no caption for this image in metadata.jsonl"
