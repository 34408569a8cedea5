"""A user's own catalogue: a folder of garment images with captions.

Captions come from the first of these found in ROOT:
    metadata.jsonl   the Hugging Face imagefolder convention: {"file_name": ..., "text": ..., other fields}
    captions.csv     a header row with file_name and text, other columns kept
    <image>.txt      a caption file beside each image
Fields other than file_name and text become dataset columns; `split` (train/test), `category` and `id`
are used when present. Without a split, items are split deterministically by `test_fraction`.

Every image under ROOT ends up either in the records or in the skips, with its reason:
- Each image enters the dataset once. Rows are read in file order and the first usable row naming an image
  wins; a later row naming the same file (spelt differently, e.g. ./a.jpg, or through a symbolic link) or a
  file with identical bytes is skipped as a duplicate of that row. A user who lists an image twice with two
  captions did not mean two training items, and a copy in both splits would leak test items into training.
- Captions and metadata are read as UTF-8 (a byte order mark is allowed). A line, row or .txt file that is
  not UTF-8 (a Latin-1 or cp1252 export) is skipped with the offending byte named, never stored with
  replacement characters; re-saving the file as UTF-8 brings the items back.
- A field of the wrong type (a caption that is a list), a lone surrogate, a value no dataset column can
  hold, or a field named like a column the build writes (image, sketch, _...) skips the row.
- Links that loop or point nowhere and unreadable files are skipped by name, listed or not.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa

from fashionsd_x.data.images import IMAGE_EXTENSIONS
from fashionsd_x.data.sources.base import (SPLITS, LayoutError, Record, Scan, Skip, file_problem, not_utf8,
                                           read_bytes, unicode_problem, utf8_lines)

NAME = "folder"
DEFAULT_CATEGORY = "garment"
RESERVED = ("file_name", "text", "split", "category", "id")
BUILD_COLUMNS = ("image", "sketch")  # written by the build; a metadata field of that name would collide
FIELD_TYPES = {"text": (str,), "category": (str,), "split": (str,), "id": (str, int)}


def scan(root: Path, test_fraction: float = 0.1) -> Scan:
    """Records for every captioned image under ROOT; every other image and every bad row is a skip with its reason."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    rows, skipped, caption_file = _caption_rows(root)
    result = Scan(skipped=skipped)
    claimed: dict[tuple[str, str], str] = {}  # ("file", real path) or ("bytes", sha256) -> the row that kept it
    for where, row in rows:
        record = _record(root, where, row, result.skipped)
        if record is not None and _first_claim(record, where, claimed, result.skipped):
            result.records.append(record)
    # An image is accounted for by a record or by a skip under its own path. A row rejected before its image
    # was looked at (a mistyped field) is a skip under its line, so its image is also reported as uncaptioned.
    named = {_real(record.image_path) for record in result.records} | {_real(skip.path) for skip in result.skipped}
    for image in _image_candidates(root):
        if _real(image) not in named:
            problem = file_problem(image)
            reason = f"image {problem}" if problem else f"no caption for this image in {caption_file}"
            result.skipped.append(Skip(str(image), reason))
    result.records = _assign_splits(result.records, test_fraction)
    return result


def _caption_rows(root: Path) -> tuple[list[tuple[str, dict]], list[Skip], str]:
    # lexists, not is_file: a metadata file that is a broken link must be reported, not passed over.
    if os.path.lexists(root / "metadata.jsonl"):
        rows, skipped = _jsonl_rows(root / "metadata.jsonl")
        return rows, skipped, "metadata.jsonl"
    if os.path.lexists(root / "captions.csv"):
        rows, skipped = _csv_rows(root / "captions.csv")
        return rows, skipped, "captions.csv"
    rows, skipped = _txt_rows(root)
    if not rows and not skipped:
        raise LayoutError(f"{NAME} layout: no metadata.jsonl, captions.csv or <image>.txt captions in {root}")
    return rows, skipped, "a .txt file beside it"


def _jsonl_rows(path: Path) -> tuple[list[tuple[str, dict]], list[Skip]]:
    rows: list[tuple[str, dict]] = []
    skipped: list[Skip] = []
    for number, line in utf8_lines(path, "metadata file", NAME, skipped):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            skipped.append(Skip(f"{path}:{number}", f"invalid JSON line ({error.msg})"))
            continue
        except RecursionError:
            skipped.append(Skip(f"{path}:{number}", "JSON line nests too deeply"))
            continue
        if not isinstance(row, dict):
            skipped.append(Skip(f"{path}:{number}", "metadata line is not a JSON object"))
            continue
        rows.append((f"{path}:{number}", row))
    return rows, skipped


def _csv_rows(path: Path) -> tuple[list[tuple[str, dict]], list[Skip]]:
    # surrogateescape keeps a non-UTF-8 byte recoverable, so the one bad row is skipped, not the whole file.
    text = read_bytes(path, "caption file", NAME).decode("utf-8", "surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows: list[tuple[str, dict]] = []
    skipped: list[Skip] = []
    try:
        header = reader.fieldnames or []
        missing = {"file_name", "text"} - set(header)
        if missing:
            raise LayoutError(f"{NAME} layout: {path} needs the columns file_name and text (missing: {', '.join(sorted(missing))})")
        if (problem := _undecodable(header)):
            raise LayoutError(f"{NAME} layout: the header of {path} is {problem}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if (problem := _undecodable(list(row.values()))):
                skipped.append(Skip(where, f"row is {problem}"))
            elif None in row:
                skipped.append(Skip(where, f"row has more fields than the header ({len(header)})"))
            else:
                rows.append((where, row))
    except csv.Error as error:
        raise LayoutError(f"{NAME} layout: {path} line {reader.line_num} is not valid CSV ({error})") from None
    return rows, skipped


def _undecodable(values: list[Any]) -> str | None:
    """not_utf8's reason for the first value holding bytes that surrogateescape kept (None when all are UTF-8)."""
    for value in values:
        try:
            if isinstance(value, str):
                value.encode("utf-8", "surrogateescape").decode("utf-8")
        except UnicodeDecodeError as error:
            return not_utf8(error)
    return None


def _txt_rows(root: Path) -> tuple[list[tuple[str, dict]], list[Skip]]:
    rows: list[tuple[str, dict]] = []
    skipped: list[Skip] = []
    for image in _image_candidates(root):
        caption = image.with_suffix(".txt")
        if not os.path.lexists(caption):
            continue
        try:
            text = caption.read_bytes().removeprefix(codecs.BOM_UTF8).decode("utf-8")
        except OSError as error:
            skipped.append(Skip(str(image), f"caption file {caption.name} cannot be read ({error.strerror or error})"))
        except UnicodeDecodeError as error:
            skipped.append(Skip(str(image), f"caption file {caption.name} is {not_utf8(error)}"))
        else:
            rows.append((str(image), {"file_name": image.relative_to(root).as_posix(), "text": text}))
    return rows, skipped


def _record(root: Path, where: str, row: dict, skipped: list[Skip]) -> Record | None:
    """The row as a record, or None after appending why it cannot be one."""
    file_name = row.get("file_name")
    if not isinstance(file_name, str) or not file_name.strip():
        skipped.append(Skip(where, "metadata row has no file_name"))
        return None
    problem = _row_problem(row)
    if problem:
        skipped.append(Skip(where, problem))
        return None
    image_path = root / file_name
    garment_id = str(row.get("id") if row.get("id") not in (None, "") else _stem(file_name))
    text = " ".join((row.get("text") or "").split())
    split = row.get("split") or ""
    image_problem = file_problem(image_path)
    if not _inside(root, image_path):
        skipped.append(Skip(where, f"file_name {file_name!r} points outside ROOT", garment_id))
    elif not text:
        skipped.append(Skip(str(image_path), "missing caption (empty text)", garment_id))
    elif image_problem:
        skipped.append(Skip(str(image_path), f"image {image_problem}", garment_id))
    elif split and split not in SPLITS:
        skipped.append(Skip(str(image_path), f"unknown split {split!r} (use train or test)", garment_id))
    else:
        extra = {key: value for key, value in row.items() if key not in RESERVED}
        return Record(garment_id, image_path, text, row.get("category") or DEFAULT_CATEGORY, split, extra)
    return None


def _row_problem(row: dict) -> str | None:
    """Why a row cannot become a record whatever its image: a mistyped field, invalid text, a clashing column."""
    for name, kinds in FIELD_TYPES.items():
        value = row.get(name)
        if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
            wanted = " or ".join("a string" if kind is str else "an integer" for kind in kinds)
            return f"{name} must be {wanted}, got {type(value).__name__} {_short(value)}"
    for name, value in row.items():
        problem = unicode_problem(name) or unicode_problem(value)
        if problem and name == "file_name":
            return f"file name is {problem} (a name that is not UTF-8); rename the file"
        if problem:
            return f"field {_short(name)} is {problem}"
        if name in RESERVED:
            continue
        if name in BUILD_COLUMNS or name.startswith("_"):
            return f"field {name!r} clashes with the columns the build writes (image, sketch, _...); rename it"
        if (problem := _unstorable(value)):
            return f"field {name!r}: {problem}"
    return None


def _unstorable(value: Any) -> str | None:
    try:
        pa.array([value])
    except (pa.ArrowException, OverflowError) as error:
        return f"no dataset column can hold {_short(value)} ({' '.join(str(error).split())[:120]})"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _stem(file_name: str) -> str:
    path = PurePosixPath(file_name)
    return (path.with_suffix("") if path.suffix else path).as_posix()


def _first_claim(record: Record, where: str, claimed: dict[tuple[str, str], str], skipped: list[Skip]) -> bool:
    """True when the record's image is new; a file, or identical bytes, that an earlier row kept is a skip."""
    try:
        digest = _sha256(record.image_path)
    except OSError as error:
        skipped.append(Skip(str(record.image_path), f"image cannot be read ({error.strerror or error})", record.id))
        return False
    keys = {("file", _real(record.image_path)): "the same image file", ("bytes", digest): "an identical image file"}
    for key, how in keys.items():
        if key in claimed:
            skipped.append(Skip(str(record.image_path), f"duplicate of {claimed[key]} ({how}); the first row is kept",
                                record.id))
            return False
    claimed.update(dict.fromkeys(keys, where))
    return True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def _image_candidates(root: Path) -> list[Path]:
    """Everything under ROOT named like an image except folders: files, and links that may be broken or loop."""
    return sorted(path for path in root.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS and not path.is_dir())


def _real(path: str | Path) -> str:
    # os.path.realpath, not Path.resolve: on Python 3.11 resolve() raises RuntimeError on a symbolic link loop.
    try:
        return os.path.realpath(path)
    except ValueError:  # a NUL byte in the name
        return str(path)


def _inside(root: Path, path: Path) -> bool:
    return Path(_real(path)).is_relative_to(_real(root))


def extra_columns(records: list[Record]) -> list[str]:
    """The folder source's extra fields, in first-seen order (they become dataset columns)."""
    names: dict[str, Any] = {}
    for record in records:
        names.update(dict.fromkeys(record.extra))
    return list(names)
