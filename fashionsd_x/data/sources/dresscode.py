"""Dress Code Multimodal: in-shop garment photos of three categories with fine and coarse caption phrases.

Layout (only what is read):
    ROOT/fine_captions.json, ROOT/coarse_captions.json      {"048392": ["phrase", ...], ...}
    ROOT/<category>/images/<id>_1.jpg                          the in-shop garment (<id>_0.jpg is the model)
    ROOT/<category>/train_pairs.txt, test_pairs_paired.txt     lines "<id>_0.jpg <id>_1.jpg"
"""

from __future__ import annotations

from pathlib import Path

from fashionsd_x.data.sources.base import LayoutError, Record, Scan, add_record, read_caption_json, read_pairs, require

CATEGORIES = ("dresses", "upper_body", "lower_body")
PAIR_FILES = {"train": "train_pairs.txt", "test": "test_pairs_paired.txt"}
NAME = "dresscode"


def scan(root: Path) -> Scan:
    """Every garment listed in the train and paired test pairs of each category present under ROOT."""
    fine = read_caption_json(require(root / "fine_captions.json", "caption file", NAME), NAME)
    coarse = read_caption_json(require(root / "coarse_captions.json", "caption file", NAME), NAME)
    categories = [name for name in CATEGORIES if (root / name).is_dir()]
    if not categories:
        raise LayoutError(f"{NAME} layout: no category folder ({', '.join(CATEGORIES)}) in {root}")
    result = Scan()
    for category in categories:
        for split, pairs_name in PAIR_FILES.items():
            pairs = require(root / category / pairs_name, "pairs file", NAME)
            require(root / category / "images", "images folder", NAME)
            _scan_pairs(pairs, category, split, fine, coarse, result)
    return result


def caption_text(fine: list[str], coarse: list[str]) -> str:
    """Fine phrases, then the coarse ones not already present, joined with ", " (order kept)."""
    phrases: list[str] = []
    for phrase in [*fine, *coarse]:
        phrase = " ".join(str(phrase).split())
        if phrase and phrase not in phrases:
            phrases.append(phrase)
    return ", ".join(phrases)


def _scan_pairs(pairs: Path, category: str, split: str, fine: dict, coarse: dict, result: Scan) -> None:
    for garment_id, file_name in read_pairs(pairs, "_1.jpg", result, NAME):
        text = caption_text(fine.get(garment_id, []), coarse.get(garment_id, []))
        record = Record(garment_id, pairs.parent / "images" / file_name, text, category, split)
        add_record(result, record, "fine_captions.json or coarse_captions.json")
