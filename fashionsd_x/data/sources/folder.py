"""A user's own catalogue: a folder of garment images with captions.

Captions come from the first of these found in ROOT:
    metadata.jsonl   the Hugging Face imagefolder convention: {"file_name": ..., "text": ..., other fields}
    captions.csv     a header row with file_name and text, other columns kept
    <image>.txt      a caption file beside each image
Fields other than file_name and text become dataset columns; `split` (train/test), `category` and `id`
are used when present. Without a split, items are split deterministically by `test_fraction`.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

from fashionsd_x.data.images import IMAGE_EXTENSIONS
from fashionsd_x.data.sources.base import SPLITS, LayoutError, Record, Scan, Skip

NAME = "folder"
DEFAULT_CATEGORY = "garment"
RESERVED = ("file_name", "text", "split", "category", "id")


def scan(root: Path, test_fraction: float = 0.1) -> Scan:
    """Records for every captioned image under ROOT; uncaptioned or unreadable entries are skipped."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    rows, skipped, caption_file = _caption_rows(root)
    result = Scan(skipped=skipped)
    listed: set[Path] = set()
    for where, row in rows:
        record = _record(root, where, row, result.skipped)
        if record is not None:
            listed.add(record.image_path.resolve())
            result.records.append(record)
    mentioned = {skip.path for skip in result.skipped}
    for image in _image_files(root):
        if image.resolve() not in listed and str(image) not in mentioned:
            result.skipped.append(Skip(str(image), f"no caption for this image in {caption_file}"))
    result.records = _assign_splits(result.records, test_fraction)
    return result


def _caption_rows(root: Path) -> tuple[list[tuple[str, dict]], list[Skip], str]:
    if (root / "metadata.jsonl").is_file():
        rows, skipped = _jsonl_rows(root / "metadata.jsonl")
        return rows, skipped, "metadata.jsonl"
    if (root / "captions.csv").is_file():
        return _csv_rows(root / "captions.csv"), [], "captions.csv"
    rows = [(str(image), {"file_name": image.relative_to(root).as_posix(), "text": text})
            for image, text in _txt_captions(root)]
    if not rows:
        raise LayoutError(f"{NAME} layout: no metadata.jsonl, captions.csv or <image>.txt captions in {root}")
    return rows, [], "a .txt file beside it"


def _jsonl_rows(path: Path) -> tuple[list[tuple[str, dict]], list[Skip]]:
    rows, skipped = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            skipped.append(Skip(f"{path}:{number}", f"invalid JSON line ({error.msg})"))
            continue
        if not isinstance(row, dict):
            skipped.append(Skip(f"{path}:{number}", "metadata line is not a JSON object"))
            continue
        rows.append((f"{path}:{number}", row))
    return rows, skipped


def _csv_rows(path: Path) -> list[tuple[str, dict]]:
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.DictReader(handle)
        missing = {"file_name", "text"} - set(reader.fieldnames or ())
        if missing:
            raise LayoutError(f"{NAME} layout: {path} needs the columns file_name and text (missing: {', '.join(sorted(missing))})")
        return [(f"{path}:{number}", dict(row)) for number, row in enumerate(reader, 2)]


def _txt_captions(root: Path) -> Iterator[tuple[Path, str]]:
    for image in _image_files(root):
        caption = image.with_suffix(".txt")
        if caption.is_file():
            yield image, caption.read_text(encoding="utf-8", errors="replace")


def _record(root: Path, where: str, row: dict, skipped: list[Skip]) -> Record | None:
    file_name = row.get("file_name")
    if not isinstance(file_name, str) or not file_name.strip():
        skipped.append(Skip(where, "metadata row has no file_name"))
        return None
    image_path = root / file_name
    garment_id = str(row.get("id") or Path(file_name).with_suffix("").as_posix())
    text = " ".join(str(row.get("text") or "").split())
    split = str(row.get("split") or "")
    if not _inside(root, image_path):
        skipped.append(Skip(where, f"file_name {file_name!r} points outside ROOT", garment_id))
    elif not text:
        skipped.append(Skip(str(image_path), "missing caption (empty text)", garment_id))
    elif not image_path.is_file():
        skipped.append(Skip(str(image_path), "image file not found", garment_id))
    elif split and split not in SPLITS:
        skipped.append(Skip(str(image_path), f"unknown split {split!r} (use train or test)", garment_id))
    else:
        extra = {key: value for key, value in row.items() if key not in RESERVED}
        category = str(row.get("category") or DEFAULT_CATEGORY)
        return Record(garment_id, image_path, text, category, split, extra)
    return None


def _assign_splits(records: list[Record], test_fraction: float) -> list[Record]:
    """Items without a split go to test when a hash of their id falls under test_fraction.

    Hashing the id (not shuffling) keeps an item's split stable when the catalogue grows.
    """
    assigned = [_with_split(record, "test" if _unit_hash(record.id) < test_fraction else "train")
                if not record.split else record for record in records]
    unsplit = [record for record in records if not record.split]
    if test_fraction > 0 and len(unsplit) >= 2 and not any(r.split == "test" for r in assigned):
        # A small catalogue can hash entirely into train; move the lowest-hash item so test is never empty.
        first = min(unsplit, key=lambda record: _unit_hash(record.id)).id
        assigned = [_with_split(r, "test") if r.id == first else r for r in assigned]
    return assigned


def _with_split(record: Record, split: str) -> Record:
    return Record(record.id, record.image_path, record.text, record.category, split, record.extra)


def _unit_hash(text: str) -> float:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:12], 16) / 16**12


def _image_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file())


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def extra_columns(records: list[Record]) -> list[str]:
    """The folder source's extra fields, in first-seen order (they become dataset columns)."""
    names: dict[str, Any] = {}
    for record in records:
        names.update(dict.fromkeys(record.extra))
    return list(names)
