"""What every source produces: garment records to build from, and the items it had to skip."""

from __future__ import annotations

import codecs
import errno
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
        link = " (a broken symbolic link or a link loop)" if path.is_symlink() else ""
        raise LayoutError(f"{source} layout: missing {what} {path}{link}")
    return path


def file_problem(path: Path) -> str | None:
    """Why PATH cannot be read as a file, as words that follow "image" ("is a symbolic link loop"); None if it can.

    Path.is_file() says False for all of these alike, and Path.resolve() raises on a loop, so a caller that
    used them either lost the item without a word or crashed.
    """
    try:
        mode = os.stat(path).st_mode
    except ValueError:  # os functions refuse a NUL byte in a name
        return "has a NUL byte in its name"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "is a symbolic link loop"
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            return "is a broken symbolic link" if _is_link(path) else "not found"
        return f"cannot be read ({error.strerror or error})"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a pipe, socket or device)"
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    return None


def _is_link(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except (OSError, ValueError):
        return False


def not_utf8(error: UnicodeDecodeError) -> str:
    """A skip reason for text that is not UTF-8, with the first bad byte and what to do."""
    return (f"not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start}, e.g. Latin-1 or "
            "cp1252); re-save it as UTF-8")


def unicode_problem(value: Any) -> str | None:
    """Why a decoded value cannot be stored as text (a lone surrogate, e.g. from a JSON "\\ud800" escape)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            return f"not valid Unicode text (lone surrogate U+{ord(value[error.start]):04X})"
        return None
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, list):
        return next((problem for item in value if (problem := unicode_problem(item))), None)
    return None


def read_bytes(path: Path, what: str, source: str) -> bytes:
    """The bytes of a layout file (a UTF-8 byte order mark dropped); LayoutError if it cannot be read."""
    try:
        return path.read_bytes().removeprefix(codecs.BOM_UTF8)
    except OSError as error:
        raise LayoutError(f"{source} layout: cannot read {what} {path} ({error.strerror or error})") from None


def utf8_lines(path: Path, what: str, source: str, skipped: list[Skip]) -> Iterator[tuple[int, str]]:
    """Numbered lines of a UTF-8 text file; a line that is not UTF-8 becomes a skip, the others are kept.

    Lines end at \\n, \\r or \\r\\n only: str.splitlines() would also split inside a JSON string holding U+2028.
    """
    for number, raw in enumerate(read_bytes(path, what, source).splitlines(), 1):
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as error:
            skipped.append(Skip(f"{path}:{number}", f"line is {not_utf8(error)}"))


def read_pairs(pairs: Path, suffix: str, result: Scan, source: str) -> Iterator[tuple[str, str]]:
    """(garment id, garment file name) from the second column of a try-on pairs file ("<person> <garment>").

    Lines whose garment file does not end with SUFFIX (e.g. "_1.jpg"), or is not a plain file name (a path
    such as ../../x_1.jpg would read outside the layout), are recorded as malformed skips.
    """
    for number, line in utf8_lines(pairs, "pairs file", source, result.skipped):
        names = line.split()
        if not names:
            continue
        if len(names) != 2 or not names[1].endswith(suffix) or "/" in names[1] or "\\" in names[1]:
            result.skipped.append(Skip(f"{pairs}:{number}", f"malformed pairs line {line.strip()!r}"))
            continue
        yield names[1][: -len(suffix)], names[1]


def add_record(result: Scan, record: Record, caption_source: str) -> None:
    """Keep the record if it has a caption and its image can be read; otherwise record why it was skipped."""
    text_problem, file_issue = unicode_problem(record.text), file_problem(record.image_path)
    if not record.text:
        result.skipped.append(Skip(str(record.image_path), f"no caption in {caption_source}", record.id))
    elif text_problem:
        result.skipped.append(Skip(str(record.image_path), f"caption in {caption_source} is {text_problem}", record.id))
    elif file_issue:
        result.skipped.append(Skip(str(record.image_path), f"garment image {file_issue}", record.id))
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
    """Garment id -> caption phrases; LayoutError (one line) for a file that is unreadable, not UTF-8 or not JSON."""
    try:
        data = json.loads(read_bytes(path, "caption file", source).decode("utf-8"))
    except UnicodeDecodeError as error:
        raise LayoutError(f"{source} layout: {path} is {not_utf8(error)}") from None
    except json.JSONDecodeError as error:
        raise LayoutError(f"{source} layout: {path} is not valid JSON ({error})") from None
    except RecursionError:
        raise LayoutError(f"{source} layout: {path} nests too deeply to be a caption file") from None
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
