"""Raw dataset layouts -> garment records. Each source module has `scan(root, ...) -> Scan`."""

from __future__ import annotations

from pathlib import Path

from fashionsd_x.data.sources import dresscode, folder, vitonhd
from fashionsd_x.data.sources.base import LayoutError, Record, Scan, Skip, dedupe

SOURCES = ("dresscode", "vitonhd", "folder")

__all__ = ["SOURCES", "LayoutError", "Record", "Scan", "Skip", "scan_source"]


def scan_source(source: str, root: Path, test_fraction: float = 0.1) -> Scan:
    """Records of ROOT in the named layout, duplicates ids skipped, sorted by split then id."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{source} root not found: {root} (pass the folder that holds the dataset)")
    if source == "folder":
        found = folder.scan(root, test_fraction)
    else:
        found = {"dresscode": dresscode.scan, "vitonhd": vitonhd.scan}[source](root)
    found = dedupe(found)
    found.records.sort(key=lambda record: (record.split, record.id))
    return found
