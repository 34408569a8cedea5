"""VITON-HD Multimodal: upper-body in-shop garments with caption phrases.

Layout (only what is read):
    ROOT/captions.json                         {"03191": ["phrase", ...], ...}
    ROOT/train_pairs.txt, ROOT/test_pairs.txt  lines "<person id>_00.jpg <cloth id>_00.jpg"
    ROOT/train/cloth/<id>_00.jpg, ROOT/test/cloth/<id>_00.jpg
"""

from __future__ import annotations

from pathlib import Path

from fashionsd_x.data.sources.base import Record, Scan, Skip, read_caption_json, require
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
    for number, line in enumerate(pairs.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        names = line.split()
        if not names:
            continue
        if len(names) != 2 or not names[1].endswith("_00.jpg"):
            result.skipped.append(Skip(f"{pairs}:{number}", f"malformed pairs line {line.strip()!r}"))
            continue
        cloth_id = names[1][: -len("_00.jpg")]
        image_path = cloth_dir / names[1]
        text = caption_text(captions.get(cloth_id, []), [])
        if not text:
            result.skipped.append(Skip(str(image_path), "no caption in captions.json", cloth_id))
        elif not image_path.is_file():
            result.skipped.append(Skip(str(image_path), "cloth image not found", cloth_id))
        else:
            result.records.append(Record(cloth_id, image_path, text, CATEGORY, split))
