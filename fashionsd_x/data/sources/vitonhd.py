"""VITON-HD Multimodal: upper-body in-shop garments with caption phrases.

Layout (only what is read):
    ROOT/captions.json                         {"03191": ["phrase", ...], ...}
    ROOT/train_pairs.txt, ROOT/test_pairs.txt  lines "<person id>_00.jpg <cloth id>_00.jpg"
    ROOT/train/cloth/<id>_00.jpg, ROOT/test/cloth/<id>_00.jpg
"""

from __future__ import annotations

from pathlib import Path

from fashionsd_x.data.sources.base import Record, Scan, add_record, read_caption_json, read_pairs, require
from fashionsd_x.data.sources.dresscode import caption_text

NAME = "vitonhd"
CATEGORY = "upper_body"


def scan(root: Path) -> Scan:
    """Every cloth listed in train_pairs.txt and test_pairs.txt; the split is the folder it lives in."""
    captions = read_caption_json(require(root / "captions.json", "caption file", NAME), NAME)
    result = Scan()
    for split in ("train", "test"):
        pairs = require(root / f"{split}_pairs.txt", "pairs file", NAME)
        cloth_dir = require(root / split / "cloth", "cloth folder", NAME)
        _scan_pairs(pairs, cloth_dir, split, captions, result)
    return result


def _scan_pairs(pairs: Path, cloth_dir: Path, split: str, captions: dict, result: Scan) -> None:
    for cloth_id, file_name in read_pairs(pairs, "_00.jpg", result, NAME):
        record = Record(cloth_id, cloth_dir / file_name, caption_text(captions.get(cloth_id, []), []), CATEGORY, split)
        add_record(result, record, "captions.json")
