"""The names an evaluation's outputs use: its variants, its metrics (label, direction), sketch-style groups and
image file names. Shared by the protocol that computes them, the report that shows them and the apps that read
an evaluation folder, so none of those has to import another for a constant.
"""

from __future__ import annotations

VARIANTS = ("vanilla", "lora", "fashionsd-x")
# metric -> (label, higher is better)
METRICS = {
    "fid": ("FID", False), "kid_mean": ("KID", False), "clip_score": ("CLIP score", True), "ssim": ("SSIM", True),
    "sketch_mse": ("Sketch MSE", False), "edge_precision": ("Edge P", True), "edge_recall": ("Edge R", True),
    "edge_f1": ("Edge F1", True), "silhouette_iou": ("Silhouette IoU", True), "color_accuracy": ("Colour acc.", True),
    "pattern_accuracy": ("Pattern acc.", True),
}


def style_groups(rows: list[dict]) -> dict[str, list[int]]:
    """style -> indices of its rows, in order of first appearance; empty when the rows have no style column."""
    groups: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        if "style" in row:
            groups.setdefault(str(row["style"]), []).append(index)
    return groups


def image_stem(garment_id: str) -> str:
    """The file stem of a garment's image in OUT/images/<variant>/: its id with unsafe characters replaced."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in garment_id)
