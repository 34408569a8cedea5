"""What every source produces: garment records to build from, and the items it had to skip."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

SPLITS = ("train", "test")


class LayoutError(ValueError):
    """ROOT does not look like the source's layout; str() names what is missing."""


@dataclass(frozen=True)
class Record:
    """One garment to put in the dataset: where its photo is and what the dataset row says about it."""

    id: str  # unique within the dataset
    image_path: Path  # the in-shop garment photo
    text: str  # caption used as the prompt
    category: str  # e.g. dresses, upper_body, t-shirt
    split: str  # train or test
    extra: dict[str, Any] = field(default_factory=dict)  # source-specific columns (folder source)


@dataclass(frozen=True)
class Skip:
    """An item left out, with the reason recorded in build_report.json."""

    path: str
    reason: str
    id: str = ""


@dataclass
class Scan:
    """A source's findings: the records in a deterministic order and the items it skipped."""

    records: list[Record] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)


def require(path: Path, what: str, source: str) -> Path:
    """Raise LayoutError naming the missing file or folder of a source layout."""
    if not path.exists():
        raise LayoutError(f"{source} layout: missing {what} {path}")
    return path


def read_pairs(pairs: Path, suffix: str, result: Scan) -> Iterator[tuple[str, str]]:
    """(garment id, garment file name) from the second column of a try-on pairs file ("<person> <garment>").

    Lines whose garment file does not end with SUFFIX (e.g. "_1.jpg") are recorded as malformed skips.
    """
    for number, line in enumerate(pairs.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        names = line.split()
        if not names:
            continue
        if len(names) != 2 or not names[1].endswith(suffix):
            result.skipped.append(Skip(f"{pairs}:{number}", f"malformed pairs line {line.strip()!r}"))
            continue
        yield names[1][: -len(suffix)], names[1]


def add_record(result: Scan, record: Record, caption_source: str) -> None:
    """Keep the record if it has a caption and its image exists; otherwise record why it was skipped."""
    if not record.text:
        result.skipped.append(Skip(str(record.image_path), f"no caption in {caption_source}", record.id))
    elif not record.image_path.is_file():
        result.skipped.append(Skip(str(record.image_path), "garment image not found", record.id))
    else:
        result.records.append(record)


def dedupe(scan: Scan) -> Scan:
    """Keep the first record of every id; later ones become skips (a dataset id must be unique)."""
    first: dict[str, Record] = {}
    kept, skipped = [], list(scan.skipped)
    for record in scan.records:
        if record.id in first:
            skipped.append(Skip(str(record.image_path), f"duplicate id {record.id!r} (first: {first[record.id].image_path})", record.id))
            continue
        first[record.id] = record
        kept.append(record)
    return Scan(kept, skipped)


def read_caption_json(path: Path, source: str) -> dict[str, list[str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LayoutError(f"{source} layout: {path} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise LayoutError(f"{source} layout: {path} must map garment ids to lists of phrases")
    return {str(key): _phrases(value) for key, value in data.items()}


def _phrases(value: object) -> list[str]:
    # Captions are lists of phrases; tolerate a single string rather than splitting it into letters.
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(item) for item in value if isinstance(item, (str, int, float))]
    return []
